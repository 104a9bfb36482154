"""A script served by `cluster-ext run` (no web application): each worker
counts the connections it answers in a prometheus_client Counter. argv: PORT."""
import sys

from prometheus_client import Counter

from cluster_ext import net

answered = Counter("script_connections", "connections answered")


def on_connection(sock):
    answered.inc()
    sock.end(b"counted\n")


net.create_server(on_connection).listen(int(sys.argv[1]), "127.0.0.1")
