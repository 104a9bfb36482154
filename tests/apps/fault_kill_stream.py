"""SIGKILL workers in the middle of message streams, both directions, at
points drawn from a fixed seed: the primary sees 'disconnect' then 'exit'
(SIGKILL, not asked), never an exception, and its descriptors come back to
where they were. The worker dies mid-write: its last frame is cut."""
import json
import os
import random
import signal
import sys

from disc_util import stream_to_primary

import cluster_ext as cluster

ROUNDS = int(sys.argv[1])

if cluster.is_primary:
    rng = random.Random(1234)
    base_fds = len(os.listdir("/proc/self/fd"))
    results = []

    def round_(n):
        if n == ROUNDS:
            results.append({"fds_before": base_fds,
                            "fds_after": len(os.listdir("/proc/self/fd"))})
            print(json.dumps(results), flush=True)
            return
        w = cluster.fork()
        kill_after = rng.randint(1, 300)
        got = {"n": 0, "events": []}
        w.on("error", lambda exc: got["events"].append(type(exc).__name__))

        @w.on("message")
        def on_message(msg, handle):
            got["n"] += 1
            if got["n"] == kill_after:
                os.kill(w.process.pid, signal.SIGKILL)
            elif got["n"] < kill_after:
                # and a stream the other way, still queued when it dies
                for _ in range(3):
                    w.send({"blob": "y" * rng.randint(1, 20000)})

        w.on("disconnect", lambda: got["events"].append("disconnect"))

        @w.on("exit")
        def on_exit(code, sig):
            got["events"].append(["exit", code, sig.name if sig else None,
                                  w.exited_after_disconnect])
            results.append({"kill_after": kill_after, **got})
            round_(n + 1)

    round_(0)
    cluster.run()
else:
    stream_to_primary(20, 60000)
    cluster.run()
