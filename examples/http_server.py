"""http.server (stdlib) on a socket shared through the primary.

    python -m cluster_ext run -w 4 examples/http_server.py --port 8000
"""
import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cluster_ext as cluster

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=8000)
args = ap.parse_args()


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


sock = cluster.listen_socket(args.port, "127.0.0.1")
server = ThreadingHTTPServer(sock.getsockname(), Hello, bind_and_activate=False)
server.socket = sock
threading.Thread(target=server.serve_forever, daemon=True).start()
if cluster.is_worker:
    # End the application's server as the disconnect begins; shutdown() waits
    # for serve_forever(), so not on the event loop's thread.
    cluster.worker.on("disconnecting", lambda: threading.Thread(target=server.shutdown).start())
cluster.run()
