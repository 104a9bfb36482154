"""The other direction: raw garbage written on a worker's channel from the
primary's end. The worker reports 'error' (EPROTO) and 'disconnect' and
exits 0 from inside run(), as a Node worker does when its channel closes
without a disconnect() (process.exit(0)); the primary sees 'disconnect'
then a clean 'exit', and another worker beside it is untouched. Prints the
worker's lines, then one JSON line with the primary's log."""
import json
import os

from disc_util import say

import cluster_ext as cluster

if cluster.is_primary:
    log = []
    bad, good = cluster.fork(), cluster.fork()
    online = []

    @cluster.on("online")
    def both_online(w):
        online.append(w)
        if len(online) == 2:
            # The channel's descriptor, reached directly: no API writes raw bytes.
            os.write(bad._chan.fd, b"\xff" * 64)

    bad.on("error", lambda exc: log.append(["bad.error", repr(exc)]))
    bad.on("disconnect", lambda: (log.append("bad.disconnect"), good.send("ping")))
    bad.on("exit", lambda code, sig: log.append(["bad.exit", code, sig and sig.name]))
    good.on("message", lambda msg, handle: (log.append(["good.message", msg]),
                                            good.disconnect()))
    good.on("exit", lambda code, sig: log.append(["good.exit", code, sig and sig.name]))
    cluster.run()
    print(json.dumps({"log": log}), flush=True)
else:
    w = cluster.worker
    w.on("error", lambda exc: say(f"worker {w.id} error", type(exc).__name__, exc.errno))
    w.on("disconnect", lambda: say(f"worker {w.id} disconnect"))
    w.on("message", lambda msg, handle: w.send("pong"))
    cluster.run()
    say(f"worker {w.id} loop ended")
