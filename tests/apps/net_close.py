"""server.close(callback) in a worker waits for the open connections.

One worker; the test is the client. CONN/GONE lines report server.connections
as connections come and go (GONE: on the next turn, and in_close: inside the
socket's 'close'). A client line 'close' makes the worker call
server.close(); after a round trip to the primary (frames are ordered, so
the primary has seen the close by then) the worker writes its status to that
client: the callback must not have come yet. A line 'more' on a connection is
answered with 'still more'. Once the last client has gone, CLOSED {log}
tells what came in which order, and the worker disconnects."""
import json

from net_util import say

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    w = cluster.fork()
    w.on("message", lambda msg, handle: w.send("pong"))
    cluster.on("listening", lambda w, address: say("LISTENING", port=address[1]))
    w.on("exit", lambda code, sig: say("EXIT", code=code))
    cluster.run()
    say("DONE")
else:
    server = net.create_server()
    log = []
    asker = []

    def closed():
        log.append("callback")
        # next turn: every listener of this 'close' has run
        cluster.call_later(0, lambda: (say("CLOSED", log=log, connections=server.connections),
                                       cluster.worker.disconnect()))

    @server.on("connection")
    def connection(sock):
        say("CONN", connections=server.connections)
        buf = bytearray()

        @sock.on("data")
        def data(chunk):
            buf.extend(chunk)
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                if line == b"close":
                    server.close(closed)
                    asker.append(sock)
                    cluster.worker.send("ping")
                else:
                    sock.write(b"still " + line + b"\n")

        @sock.on("close")
        def gone(had_error):
            log.append(f"socket close {had_error}")
            in_close = server.connections     # this socket is closed: not counted
            cluster.call_later(0, lambda: say("GONE", connections=server.connections,
                                              in_close=in_close))

    server.on("close", lambda: log.append("server close"))

    @cluster.worker.on("message")
    def pong(msg, handle):
        status = {"callback": "callback" in log, "connections": server.connections,
                  "listening": server.listening}
        asker.pop().write(json.dumps(status).encode() + b"\n")

    server.listen(0, "127.0.0.1")
    cluster.run()
