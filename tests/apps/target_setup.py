"""fork(target=) as the exec'd start does it: a cwd the child cannot take
fails fork() (the child reaped, nothing of the primary's run in it), and
nothing the primary wrote and had not flushed is written twice. The
primary writes a line to stdout and bytes to a file without flushing, has
an atexit handler, then forks with a bad cwd, then with a good one. argv:
a file path. Prints one JSON line."""
import atexit
import json
import os
import sys

import cluster_ext as cluster

atexit.register(lambda: print("primary atexit", flush=True))
print("primary line")                       # unflushed: stdout is a pipe
held = open(sys.argv[1], "w")
held.write("once")                          # unflushed


def children():
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return f.read().split()


out = {}
cluster.setup_primary(cwd="/nonexistent/dir")
try:
    cluster.fork(target=lambda: None)
except OSError as exc:
    out["raised"] = [type(exc).__name__, exc.errno]
out["after_failure"] = {"workers": len(cluster.workers), "children": children()}
cluster.setup_primary(cwd="/")
w = cluster.fork(target=lambda: cluster.worker.send(os.getcwd()))
w.on("message", lambda msg, handle: (out.update(cwd=msg), w.disconnect()))
w.on("exit", lambda code, sig: out.update(exit=[code, sig]))
cluster.run()
held.close()
print(json.dumps(out), flush=True)
