"""SIGINT in a worker is ignored by default. MODE 'exec' / 'target': the
primary sends SIGINT once the worker's code runs, then a 'ping'; the worker
must answer and later exit normally. MODE 'at_online': SIGINT as soon as
'online' arrives, with the worker's boot held right after it reported
'online' (see below) so that the signal always lands in that window.
Prints one JSON line."""
import json
import os
import select
import signal
import sys

if os.environ.get("PRIM_HOLD_BOOT"):
    # Fault injection, worker of MODE 'at_online' only, before cluster_ext is
    # imported. The first read of SIGINT's handler (cluster_ext's boot step
    # after it reported 'online') waits up to 2 s for a signal: Python runs
    # the SIGINT handler in place at that moment, if there is one.
    _real_getsignal = signal.getsignal

    def _held_getsignal(sig):
        if sig == signal.SIGINT:
            signal.getsignal = _real_getsignal
            select.select([], [], [], 2.0)     # returns early if a handler raises
        return _real_getsignal(sig)

    signal.getsignal = _held_getsignal

import cluster_ext as cluster  # noqa: E402

MODE = sys.argv[1]


def worker_main():
    me = cluster.worker
    me.on("message", lambda msg, handle: me.send(["pong", msg]))
    me.send({"ready": True, "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN})


if cluster.is_primary:
    out = {"log": []}
    if MODE == "target":
        w = cluster.fork(target=worker_main)
    else:
        w = cluster.fork(env={"PRIM_HOLD_BOOT": "1"} if MODE == "at_online" else None)

    def interrupt():
        os.kill(w.process.pid, signal.SIGINT)
        out["log"].append("SIGINT sent")
        w.send("ping")

    if MODE == "at_online":
        w.on("online", interrupt)

    @w.on("message")
    def got(msg, handle):
        out["log"].append(msg)
        if isinstance(msg, dict) and MODE != "at_online":
            interrupt()
        elif msg == ["pong", "ping"]:
            w.disconnect()

    w.on("error", lambda exc: out["log"].append(["error", type(exc).__name__]))
    w.on("exit", lambda code, sig: out.update(exit=[code, sig and sig.name]))
    cluster.run()
    print(json.dumps(out), flush=True)
else:
    worker_main()
    cluster.run()
