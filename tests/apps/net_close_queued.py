"""server.close() with connections its accept queue holds, outside any
drain: Node's close() stops accepting, so no 'connection' comes for them and
their clients see the connection reset. A plain server in a program that is
no cluster's worker. CLIENTS {outcomes, connections}."""
import socket

from net_util import say

import cluster_ext as cluster
from cluster_ext import net

server = net.create_server()
connections = []
server.on("connection", lambda sock: connections.append(sock))


def listening():
    port = server.address()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    server.close()                      # they are queued: the loop has not turned since
    cluster.call_later(0, lambda: outcomes(clients))


def outcomes(clients):
    seen = []
    for client in clients:
        try:
            seen.append("eof" if client.recv(1) == b"" else "data")
        except ConnectionResetError:
            seen.append("reset")
        except TimeoutError:
            seen.append("held")         # accepted, and kept open by a 'connection'
        client.close()
    say("CLIENTS", outcomes=seen, connections=len(connections))
    for sock in connections:
        sock.destroy()


server.listen(0, "127.0.0.1", callback=listening)
cluster.run()
