"""Each way a worker ends (API.md's exit table): prints one JSON line with the
events the primary saw, in order, and what each handler read."""
import json
import os
import signal
import sys

import cluster_ext as cluster

MODE = sys.argv[1]

if cluster.is_primary:
    seen = []

    def snap(tag, w, *extra):
        seen.append({"ev": tag, "state": w.state, "ead": w.exited_after_disconnect,
                     "connected": w.is_connected(), "dead": w.is_dead(),
                     "in_workers": w.id in cluster.workers,
                     "extra": [getattr(e, "name", e) for e in extra]})

    w = cluster.fork()
    w.on("online", lambda: snap("online", w))
    w.on("disconnect", lambda: snap("w.disconnect", w))
    w.on("exit", lambda code, sig: snap("w.exit", w, code, sig))
    cluster.on("fork", lambda w: snap("fork", w))
    cluster.on("online", lambda w: snap("online", w))
    cluster.on("disconnect", lambda w: snap("disconnect", w))
    cluster.on("exit", lambda w, code, sig: snap("exit", w, code, sig))

    @w.on("online")
    def act():
        if MODE == "primary_disconnect":
            assert w.disconnect() is w
        elif MODE == "primary_kill":
            w.kill()
        elif MODE in ("sigkill", "sigterm"):
            os.kill(w.process.pid, signal.SIGKILL if MODE == "sigkill" else signal.SIGTERM)
        elif MODE == "sigrt":            # a real-time signal: no member of signal.Signals
            os.kill(w.process.pid, signal.SIGRTMIN + 5)
        else:
            w.send(MODE)

    cluster.run()
    leftover = []
    try:
        leftover = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        leftover = None
    print(json.dumps({"events": seen, "zombie": leftover}), flush=True)
else:
    @cluster.worker.on("message")
    def order(mode, handle):
        if mode == "worker_disconnect":
            cluster.worker.disconnect()
        elif mode == "worker_kill":
            cluster.worker.kill()
        elif mode == "worker_exit3":
            sys.exit(3)
        elif mode == "worker_raise":
            raise RuntimeError("uncaught in a worker")

    cluster.run()
