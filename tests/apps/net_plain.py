"""A server in a plain process: no fork, no cluster. It listens by itself
(LISTENING {...}); the first client makes it close (CLOSING {...}) but is
still served; run() must return only once that connection has ended
(RETURNED {log})."""
from net_util import say

import cluster_ext as cluster
from cluster_ext import net

server = net.create_server()
log = []

server.on("listening", lambda: say(
    "LISTENING", address=server.address(), type=type(server.address()).__name__,
    listening=server.listening, is_primary=cluster.is_primary, workers=len(cluster.workers)))


@server.on("connection")
def connection(sock):
    log.append("connection")
    server.close(lambda: log.append("close callback"))
    say("CLOSING", connections=server.connections, listening=server.listening)

    @sock.on("data")
    def data(chunk):
        log.append("data")
        sock.end(b"served " + chunk)

    sock.on("close", lambda had_error: log.append(f"socket close {had_error}"))


server.on("close", lambda: log.append("server close"))
server.listen(0, "127.0.0.1")
cluster.run()
say("RETURNED", log=log, connections=server.connections)
