"""A worker that reload() forked is timed from its fork like any other:
dying after a healthy while is no crash. One supervised worker; twice, a
reload brings in a worker that serves, then exits 3 after 0.8 s (longer than
CRASH_WINDOW, set to 0.5 s here, with CRASH_LOOP at 2); the fleet replaces
it with one that stays. Miscounted as crashes, the two deaths would stop the
fleet with CrashLoopError. Lines: 'crashloop ...' or 'whole', then 'stopped'."""
import os
import signal
import sys

from disc_util import say

import cluster_ext as cluster
from cluster_ext import net
from cluster_ext.fleet import supervisor

if cluster.is_primary:
    supervisor.CRASH_WINDOW = 0.5
    supervisor.CRASH_LOOP = 2
    reloads, dying = [], set()
    cluster.on("message", lambda w, msg, handle: dying.add(w.id))

    @cluster.on("listening")
    def listening(w, address):
        if w.id in dying:
            return                      # the replacement that will exit 3
        if len(reloads) == 2:
            say("whole")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        reloads.append(w.id)
        cluster.setup_primary(args=["die"])
        cluster.reload()

    @cluster.on("exit")
    def exited(w, code, sig):
        if code == 3:
            cluster.setup_primary(args=["serve"])   # its replacement stays

    try:
        cluster.supervise(1, backoff=(0.01, 0.01), graceful_timeout=5)
    except cluster.CrashLoopError as exc:
        say("crashloop", exc)
    say("stopped")
else:
    if sys.argv[1:] == ["die"]:
        cluster.worker.send("die")      # before 'listening': frames keep their order
        cluster.call_later(0.8, sys.exit, 3)
    net.create_server(lambda sock: sock.end()).listen(0, "127.0.0.1")
    cluster.run()
