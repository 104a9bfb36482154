"""The kit's protocol ("ping\\n" -> "pong <pid>\\n", then close) as a
`python -m cluster_ext run` application."""
import argparse
import os

from cluster_ext import net

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
args = ap.parse_args()
REPLY = f"pong {os.getpid()}\n".encode()


def on_connection(sock):
    sock.set_no_delay()
    sock.on("data", lambda data: sock.end(REPLY))


net.create_server(on_connection).listen(args.port, "127.0.0.1")
