"""cluster.disconnect(callback). MODE 'three': 3 workers that take
different times to let go (worker n lingers n*0.1 s in its 'disconnecting'
handler before its channel closes); MODE 'none': no worker at all. Prints
one JSON line: the primary's log in order."""
import json
import sys
import time

import cluster_ext as cluster

MODE = sys.argv[1]

if cluster.is_primary:
    log = []

    def callback():
        log.append(["callback", sorted(w.id for w in cluster.workers.values()
                                       if w.is_connected())])

    def disconnect_all():
        cluster.disconnect(callback)
        log.append("returned")

    if MODE == "three":
        online = []
        for _ in range(3):
            w = cluster.fork()
            # the worker's own event, then the cluster's (API.md's order)
            w.on("disconnect", lambda w=w: log.append(["w.disconnect", w.id]))

        @cluster.on("online")
        def count(w):
            online.append(w.id)
            if len(online) == 3:
                disconnect_all()

        cluster.on("disconnect", lambda w: log.append(["disconnect", w.id]))
        cluster.on("exit", lambda w, code, sig: log.append(["exit", w.id, code]))
    else:
        disconnect_all()
    cluster.run()
    print(json.dumps({"log": log}), flush=True)
else:
    @cluster.worker.on("disconnecting")
    def linger():
        # Stands for work the worker finishes before it lets go (busy, as
        # work is); the channel closes after this returns. Different for each
        # worker on purpose.
        done = time.monotonic() + 0.1 * cluster.worker.id
        while time.monotonic() < done:
            pass

    cluster.run()
