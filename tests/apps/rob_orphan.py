"""Workers stuck in `while True: pass` when their primary is SIGKILLed: they
cannot notice their channel closing, so only the parent-death signal can end
them. One exec worker and one fork(target=...) worker. With argv[1] (JSON
settings: an identity to take) the exec'd one is a shell's busy loop (this
interpreter may be where that user cannot run it). The primary prints
'pids <json list>' once both spin, then waits; the test kills it."""
import json
import shutil
import sys

import cluster_ext as cluster


def spin_after_report():
    def spin(err):
        while True:         # never returns: the loop is dead from here on
            pass
    cluster.worker.send("spinning", callback=spin)


if cluster.is_primary:
    spinning = []
    if len(sys.argv) > 1:
        cluster.setup_primary(exec=[shutil.which("sh"), "-c", "while :; do :; done"],
                              args=[], **json.loads(sys.argv[1]))
        spinning.append(cluster.fork().process.pid)     # it says nothing: it spins
    else:
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
