"""A WSGI application served by wsgiref through a shared descriptor (the same
way `uvicorn.run(app, fd=sock.fileno())` or any server that takes a socket
would be).

    python -m cluster_ext run -w 4 examples/wsgi_app.py --port 8000
"""
import argparse
import os
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import cluster_ext as cluster

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=8000)
args = ap.parse_args()


def app(environ, start_response):
    body = f"wsgi {environ['PATH_INFO']} from pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


sock = cluster.listen_socket(args.port, "127.0.0.1")
server = WSGIServer(sock.getsockname(), QuietHandler, bind_and_activate=False)
server.socket = sock
server.server_name, server.server_port = sock.getsockname()[:2]   # what server_bind() would set
server.setup_environ()
server.set_app(app)
threading.Thread(target=server.serve_forever, daemon=True).start()
if cluster.is_worker:
    cluster.worker.on("disconnecting", lambda: threading.Thread(target=server.shutdown).start())
cluster.run()
