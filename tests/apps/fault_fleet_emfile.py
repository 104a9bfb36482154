"""supervise() in a primary out of descriptors (issue 24, item 2): a respawn's
socketpair() fails with EMFILE. The primary logs it and tries again with a
back-off, never counting it as a crash; a reload stops, a grow waits; once
descriptors are free again the fleet is whole.

Under SCHED_NONE, 'fill-at-fork': a worker forked, the descriptors are
taken before it asks for its listening socket, whose copy then fails with
EMFILE: its listen fails, and the primary goes on.

stdin: 'fill' (the soft RLIMIT_NOFILE lowered to what is open and a few more,
then every free descriptor taken, and taken again whenever a worker's are
freed), 'fill-at-fork' (the same, at each fork rather than now and at each
exit), 'free' (all of them given back, the limit restored);
stdout: 'pid <id> <pid>' for each listening worker, FULL, FREED, the
primary's log lines ('log <message>'), 'stopped' or 'crashloop <why>'."""
import logging
import os
import resource
import sys

from disc_util import on_commands, say

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="log %(message)s")
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    filling = set()                      # when: 'exit', 'fork'

    def fill(when):
        while when in filling:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def command(words):
        if words in (["fill"], ["fill-at-fork"]):
            in_use = len(os.listdir("/proc/self/fd")) - 1     # listdir's own fd
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, limits[1]))
            filling.add("exit" if words == ["fill"] else "fork")
            if words == ["fill"]:
                fill("exit")
            say("FULL", len(held))
        elif words == ["free"]:
            filling.clear()
            while held:
                os.close(held.pop())
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            say("FREED")

    # A dead worker's channel and pidfd are closed by its 'exit': taken at once.
    cluster.on("exit", lambda w, code, sig: fill("exit"))
    cluster.on("fork", lambda w: fill("fork"))
    cluster.on("listening", lambda w, address: say("pid", w.id, w.process.pid))
    on_commands(command)
    try:
        cluster.supervise(2, backoff=(0.05, 0.4))
    except cluster.CrashLoopError as exc:
        say("crashloop", exc)
    say("stopped")
else:
    def answer(sock):
        sock.on("data", lambda data: sock.end(f"pong {os.getpid()}\n".encode()))

    net.create_server(answer).listen(int(os.environ["PORT"]), "127.0.0.1")
    cluster.run()
