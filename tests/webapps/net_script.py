"""A script server under `cluster-ext run`: a net server on the port in
argv[1] that greets each client, on the script's own loop."""
import sys

import cluster_ext as cluster
from cluster_ext import net

net.create_server(lambda sock: sock.end(b"hello\n")).listen(int(sys.argv[1]), "127.0.0.1")
cluster.run()
