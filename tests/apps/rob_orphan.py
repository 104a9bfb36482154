"""Workers stuck in `while True: pass` when their primary is SIGKILLed: they
cannot notice their channel closing, so only the parent-death signal can end
them. One exec worker and one fork(target=...) worker. The primary prints
'pids <json list>' once both spin, then waits; the test kills it."""
import json

import cluster_ext as cluster


def spin_after_report():
    def spin(err):
        while True:         # never returns: the loop is dead from here on
            pass
    cluster.worker.send("spinning", callback=spin)


if cluster.is_primary:
    spinning = []
    cluster.fork()
    cluster.fork(target=spin_after_report)

    @cluster.on("message")
    def report(w, msg, handle):
        spinning.append(w.process.pid)
        if len(spinning) == 2:
            print("pids " + json.dumps(spinning), flush=True)

    cluster.run()
else:
    spin_after_report()
    cluster.run()
