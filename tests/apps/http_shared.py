"""http.server on cluster.listen_socket() in two workers.

Primary lines: LISTENING <port>, exit <id> <code>; stdin 'disconnect'."""
import os
import threading

from disc_util import run_until_told, say_when_listening

import cluster_ext as cluster

if cluster.is_primary:
    say_when_listening(2)
    run_until_told(2)
else:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"pid {os.getpid()}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    # Non-blocking, as listen_socket() gives it: two workers poll the same
    # listening socket, and a blocking accept() would hang in the one that
    # loses the race. The connections it accepts are blocking, as usual.
    sock = cluster.listen_socket(0, "127.0.0.1")
    server = HTTPServer(sock.getsockname(), Hello, bind_and_activate=False)
    server.socket = sock
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    # The application ends its server on 'disconnecting'; shutdown() waits for
    # serve_forever(), so not on the loop's thread.
    cluster.worker.on("disconnecting",
                      lambda: threading.Thread(target=server.shutdown).start())
    cluster.run()
    serving.join(10)
