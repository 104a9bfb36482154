"""setup_primary(silent=True): the worker's stdout and stderr come to the
primary as 'data' events on worker.process.stdout / .stderr instead of going
to the terminal. Prints one JSON line."""
import json
import sys

import cluster_ext as cluster

if cluster.is_primary:
    cluster.setup_primary(silent=True)
    w = cluster.fork()
    got = {"stdout": b"", "stderr": b""}
    ended = []
    for name in ("stdout", "stderr"):
        stream = getattr(w.process, name)

        def data(chunk, name=name):
            got[name] += chunk

        stream.on("data", data)
        stream.on("end", lambda name=name: ended.append(name))
    exits = []
    w.on("exit", lambda code, sig: exits.append([code, sig and sig.name]))
    cluster.run()
    print(json.dumps({"stdout": got["stdout"].decode(), "stderr": got["stderr"].decode(),
                      "ended": sorted(ended), "exits": exits}), flush=True)
else:
    print(f"hello from worker {cluster.worker.id}", flush=True)
    print("complaint on stderr", file=sys.stderr, flush=True)
    cluster.worker.disconnect()       # and the process ends
    cluster.run()
