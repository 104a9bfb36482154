"""The primary's descriptor count across fork/exit cycles, one worker at a
time (MODE 'exec' or 'target'): 1 + 50 cycles, each forks a worker, waits for
its 'exit', then forks the next. Counted at the start, at the first and the
last 'exit' (the same point of a cycle) and after run(). Prints one JSON line."""
import json
import os
import sys

import cluster_ext as cluster

MODE = sys.argv[1]
CYCLES = 50


def fd_count():
    return len(os.listdir("/proc/self/fd"))


if cluster.is_primary:
    counts = {"start": fd_count()}
    exits = []

    def cycle(left):
        w = cluster.fork() if MODE == "exec" else cluster.fork(target=lambda: None)
        w.on("online", w.disconnect)

        @w.on("exit")
        def next_one(code, sig):
            exits.append([code, sig and sig.name])
            if "first_exit" not in counts:
                counts["first_exit"] = fd_count()
            if left > 0:
                cycle(left - 1)
            else:
                counts["last_exit"] = fd_count()

    cycle(CYCLES)
    cluster.run()
    counts["after_run"] = fd_count()
    print(json.dumps({"counts": counts, "cycles": len(exits),
                      "bad_exits": [e for e in exits if e != [0, None]],
                      "workers": len(cluster.workers)}), flush=True)
else:
    cluster.run()
