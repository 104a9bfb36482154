"""A rolling replacement under load. argv: POLICY (rr|none) WHO (primary|worker).

Three workers listen on one port; each answers every line with 'w<id>'.
On the test's 'roll' command the primary replaces them one at a time, as
API.md's reload does: fork a new worker, wait for its 'listening', then
disconnect one old worker (the primary's worker.disconnect(), or with WHO
'worker' a message after which the worker calls cluster.worker.disconnect()
itself), wait for its exit, and go on to the next. The test
runs clients all along and counts every refused, reset or empty reply.
Lines: 'ready PORT', 'replaced w<old> by w<new>', 'exit w<id> ...', 'rolled',
'primary done'; stdin: 'roll', then 'quit' (or EOF) disconnects the rest."""
import sys

from disc_util import on_commands, say, serve_lines, set_policy, show

import cluster_ext as cluster
from cluster_ext import net

WHO = sys.argv[2]

if cluster.is_primary:
    set_policy(sys.argv[1])
    old = [cluster.fork() for _ in range(3)]
    listening = set()

    @cluster.on("listening")
    def on_listening(w, address):
        listening.add(w.id)
        if len(listening) == 3:
            say("ready", address[1])

    cluster.on("exit", lambda w, code, sig: say(
        f"exit w{w.id} code={show(code)} signal={show(sig)} ead={w.exited_after_disconnect}"))

    def replace_next():
        if not old:
            say("rolled")
            return
        new = cluster.fork()

        @new.once("listening")
        def new_is_listening(address):
            retired = old.pop(0)
            if WHO == "worker":
                retired.send("leave")
            else:
                retired.disconnect()
            say(f"replaced w{retired.id} by w{new.id}")
            retired.once("exit", lambda code, sig: replace_next())

    def command(words):
        if words[0] == "roll":
            replace_next()
        else:                            # 'quit', or the test closed our stdin
            cluster.disconnect()

    on_commands(command)
    cluster.run()
    say("primary done")
else:
    tag = f"w{cluster.worker.id}"
    server = net.create_server(lambda sock: serve_lines(sock, lambda line: tag))
    server.listen(0, "127.0.0.1")
    cluster.worker.on("message", lambda msg, handle: cluster.worker.disconnect())  # 'leave'
    cluster.run()
