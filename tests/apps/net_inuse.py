"""listen() on a port the test already holds. argv: port, 'cluster', 'plain'
or 'unheard'.

cluster: the worker's server emits 'error'; the worker reports it to the
primary (ERROR {...}) and lives on. Once the test has freed the port and
closed stdin, the primary asks the worker to listen on it again (LISTENING
{address, state}), which must now work; the worker serves one client and
then disconnects by itself (EXIT {...}).
plain: no cluster; the server's 'error' is printed, then run() returns.
unheard: a plain fork()'s worker whose server has no 'error' listener: the
error is raised, as Node's unheard 'error' is thrown (EXIT {...})."""
import sys

from net_util import line_server, on_stdin_eof, say

import cluster_ext as cluster

PORT, MODE = int(sys.argv[1]), sys.argv[2]


def describe(exc, server):
    return {"type": type(exc).__name__, "oserror": isinstance(exc, OSError),
            "errno": getattr(exc, "errno", None), "message": str(exc),
            "listening": server.listening}


if MODE == "plain":
    server = line_server()
    server.on("error", lambda exc: say("ERROR", **describe(exc, server)))
    server.on("listening", lambda: say("LISTENING", address=server.address()))
    server.listen(PORT, "127.0.0.1")
    cluster.run()
    say("DONE")
elif MODE == "unheard":
    if cluster.is_primary:
        w = cluster.fork()
        w.on("exit", lambda code, sig: say("EXIT", code=code, signal=sig and sig.name))
        cluster.run()
    else:
        line_server().listen(PORT, "127.0.0.1")
        cluster.run()
elif cluster.is_primary:
    w = cluster.fork()

    @w.on("message")
    def reported(msg, handle):
        say("ERROR", **msg)
        on_stdin_eof(lambda: w.send("retry"))

    cluster.on("listening", lambda w, address: say("LISTENING", address=address,
                                                   state=w.state))
    w.on("exit", lambda code, sig: say("EXIT", code=code, signal=sig and sig.name,
                                       ead=w.exited_after_disconnect))
    cluster.run()
    say("DONE")
else:
    def listen():
        server = line_server()
        # No 'listening' expected the first time; an 'error' must not kill us.
        server.on("error", lambda exc: cluster.worker.send(describe(exc, server)))
        # The retry: serve one client, then leave (disconnect waits for it).
        server.on("connection", lambda sock: cluster.worker.disconnect())
        server.listen(PORT, "127.0.0.1")

    cluster.worker.on("message", lambda msg, handle: listen())
    listen()
    cluster.run()
