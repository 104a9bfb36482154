"""How a worker ends after its disconnect, against how Python ends the same
script: one worker per PROBE_END ('return': the script ends, leaving an
unclosed file in a reference cycle and an atexit handler; 'exit7':
sys.exit(7) after run(); 'raise': an exception after run()), each writing
through `with` and `finally` around run(). argv: a directory for the files.
Prints the exit of each as one JSON line."""
import atexit
import json
import os
import sys

import cluster_ext as cluster

OUT = sys.argv[1]


class Holder:
    """A buffered file that only the collector frees: it is in a cycle."""

    def __init__(self, path):
        self.file = open(path, "w")
        self.me = self


if cluster.is_primary:
    out = {}
    for end in ("return", "exit7", "raise"):
        w = cluster.fork({"PROBE_END": end})
        w.on("online", w.disconnect)
        w.on("exit", lambda code, sig, end=end: out.update({end: [code, sig]}))
    cluster.run()
    print(json.dumps(out), flush=True)
else:
    end = os.environ["PROBE_END"]
    prefix = os.path.join(OUT, end)
    atexit.register(lambda: open(prefix + ".atexit", "w").close())
    try:
        with open(prefix + ".with", "w") as f:
            cluster.run()
            f.write("after run")
    finally:
        open(prefix + ".finally", "w").close()
    if end == "exit7":
        sys.exit(7)
    if end == "raise":
        raise LookupError("after run")
    Holder(prefix + ".cycle").file.write("unclosed " * 1000)
