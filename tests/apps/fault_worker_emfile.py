"""A worker runs out of descriptors (RLIMIT_NOFILE) while SCHED_RR hands it
connections. A hand-off it cannot take arrives without its descriptor
(MSG_CTRUNC): only that connection is lost, the worker keeps its channel and
the connections it holds, and once it has descriptors again it is served
to like any other.

stdin: 'low' (worker 1 is left no free descriptor), 'high' (its limit
restored), EOF (disconnect); stdout: LISTENING <port>, LOW <pid>, HIGH, and
from the primary 'error <id> <errno>' and 'exit <id> <code>'. Every
connection answers each line with 'pong <pid>'."""
import os
import resource

from disc_util import on_commands, say, say_when_listening, serve_lines

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    say_when_listening(2)
    cluster.on("exit", lambda w, code, sig: say("exit", w.id, code))

    @cluster.on("fork")
    def watch(w):
        w.on("error", lambda exc: say("error", w.id, getattr(exc, "errno", None)))

    @cluster.on("message")
    def relay(w, msg, handle):
        say(*msg)

    def command(words):
        if words in (["low"], ["high"]):
            cluster.workers[1].send(words[0])
        elif words == ["eof"]:
            cluster.disconnect()

    on_commands(command)
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    @cluster.worker.on("message")
    def command(msg, handle):
        if msg == "low":
            # The limit bounds descriptor numbers: at the lowest free one,
            # none is left.
            lowest = os.dup(0)
            os.close(lowest)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, limits[1]))
            cluster.worker.send(["LOW", os.getpid()])
        elif msg == "high":
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            cluster.worker.send(["HIGH"])

    def serve(sock):
        sock.on("error", lambda exc: None)
        serve_lines(sock, lambda line: f"pong {os.getpid()}")

    net.create_server(serve).listen(0, "127.0.0.1")
    cluster.run()
