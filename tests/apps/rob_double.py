"""Repeated and late calls are harmless: disconnect() twice in one tick,
again after 'disconnect', then kill() and disconnect() on the dead worker.
MODE 'disconnect': the primary disconnects the worker; MODE 'exit3': the
worker exits 3 by itself (exited_after_disconnect must stay False even when
kill() comes after the exit). Prints one JSON line."""
import json
import sys

import cluster_ext as cluster

MODE = sys.argv[1]

if cluster.is_primary:
    events = []
    errors = []
    w = cluster.fork()

    def safely(what, fn):
        try:
            fn()
        except Exception as exc:        # "harmless": nothing may raise
            errors.append(f"{what}: {exc!r}")

    @w.on("online")
    def online():
        if MODE == "disconnect":
            safely("disconnect 1", w.disconnect)
            safely("disconnect 2", w.disconnect)    # same tick
        else:
            w.send("exit3")

    @w.on("disconnect")
    def disconnected():
        events.append("w.disconnect")
        safely("disconnect after 'disconnect'", w.disconnect)

    @w.on("exit")
    def exited(code, sig):
        events.append(["w.exit", code, sig and sig.name])
        # The process is gone (and reaped): none of this may signal anything.
        safely("kill on dead", w.kill)
        safely("kill SIGKILL on dead", lambda: w.kill("SIGKILL"))
        safely("disconnect on dead", w.disconnect)
        cluster.call_later(0.05, late)

    def late():
        # A later tick, after 'exit' has been fully dispatched.
        safely("late kill", w.kill)
        safely("late disconnect", w.disconnect)
        events.append(["late", w.state, w.exited_after_disconnect])

    cluster.on("disconnect", lambda w: events.append("disconnect"))
    cluster.on("exit", lambda w, code, sig: events.append(
        ["exit", w.exited_after_disconnect]))
    cluster.run()
    print(json.dumps({"events": events, "errors": errors}), flush=True)
else:
    @cluster.worker.on("message")
    def order(msg, handle):
        if msg == "exit3":
            sys.exit(3)

    cluster.run()
