"""Another loop drives the engine: it waits on the engine's one descriptor
(_core.fileno()) and calls _core.turn(0) when it is readable, the way an
asyncio loop will (add_reader). Timers, child exits and messages all show up
on that descriptor."""
import json
import select

import cluster_ext as cluster
from cluster_ext import _core

if cluster.is_primary:
    seen = []
    cluster.call_later(0.01, seen.append, "timer")
    w = cluster.fork()
    w.on("online", lambda: w.send("hi"))
    w.on("message", lambda msg, handle: (seen.append(msg), w.disconnect()))
    w.on("exit", lambda code, sig: seen.append(["exit", code]))
    turns = 0
    while len(seen) < 3 and turns < 1000:
        ready, _, _ = select.select([_core.fileno()], [], [], 5.0)
        if not ready:
            break
        _core.turn(0)
        turns += 1
    print(json.dumps({"seen": seen, "bounded": turns < 1000}), flush=True)
else:
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(msg + "!"))
    cluster.run()
