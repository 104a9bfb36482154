"""How a worker ends after its disconnect, beside how Python ends the same
script run alone. PROBE_END picks the end: 'return' (the script ends),
'exit7' (sys.exit(7) after run()), 'raise' (an exception after run()),
'closed' (the script closes sys.stdout and returns), 'frozen' (the
application called gc.freeze()). Each writes through `with` and `finally`
around run(), then leaves for the exit to finalize: an unclosed gzip file, a
NamedTemporaryFile, a suspended generator with a `finally`, an object with
__del__, a buffered file in a reference cycle, and a line through C's stdio
(ctypes printf). 'clean' leaves nothing but output (a line through sys.stdout
unflushed, one through C's stdio) and notes, with an audit hook, whether the
interpreter's teardown ran. argv: a directory for the files. As the primary: one worker
per end, and their exits as one JSON line; with PROBE_END set and no
cluster (PROBE_ALONE=1), the same script run alone."""
import atexit
import ctypes
import gc
import gzip
import json
import os
import sys
import tempfile

import cluster_ext as cluster

OUT = sys.argv[1]
ENDS = ("return", "exit7", "raise", "closed", "frozen", "clean")
KEEP = []


class Holder:
    """A buffered file that only the collector frees: it is in a cycle."""

    def __init__(self, path):
        self.file = open(path, "w")
        self.me = self


class Noted:
    def __init__(self, path):
        self.path = path

    def __del__(self, open=open):        # builtins are gone late in the teardown
        open(self.path, "w").close()


def generator(path, open=open):
    try:
        yield
    finally:
        open(path, "w").close()


def leave_for_the_exit(prefix):
    if END == "frozen":
        gc.freeze()
    zipped = gzip.open(prefix + ".gz", "wt")
    zipped.write("zipped " * 1000)
    KEEP.append(zipped)
    KEEP.append(tempfile.NamedTemporaryFile(dir=OUT, prefix=END + ".tmp."))
    suspended = generator(prefix + ".generator")
    next(suspended)
    KEEP.append(suspended)
    KEEP.append(Noted(prefix + ".del"))
    Holder(prefix + ".cycle").file.write("unclosed " * 1000)
    ctypes.CDLL(None).printf(b"printf from C\n")


if cluster.is_primary and not os.environ.get("PROBE_ALONE"):
    out = {}
    for end in ENDS:
        w = cluster.fork({"PROBE_END": end})
        w.on("online", w.disconnect)
        w.on("exit", lambda code, sig, end=end: out.update({end: [code, sig]}))
    cluster.run()
    print(json.dumps(out), flush=True)
else:
    END = os.environ["PROBE_END"]
    prefix = os.path.join(OUT, END)
    if END == "clean":
        def teardown_ran(event, args, path=prefix + ".teardown", opener=os.open,
                         closer=os.close, flags=os.O_CREAT | os.O_WRONLY):
            # late in the teardown: the modules are cleared, the defaults stay
            if event == "cpython.PyInterpreterState_Clear":
                closer(opener(path, flags))
        sys.addaudithook(teardown_ran)
    atexit.register(lambda: open(prefix + ".atexit", "w").close())
    try:
        with open(prefix + ".with", "w") as f:
            if cluster.is_worker:
                cluster.run()
            f.write("after run")
    finally:
        open(prefix + ".finally", "w").close()
    if END == "clean":
        print("clean end")                          # unflushed: stdout is a pipe
        ctypes.CDLL(None).printf(b"clean printf from C\n")
    else:
        leave_for_the_exit(prefix)
    if END == "exit7":
        sys.exit(7)
    if END == "raise":
        raise LookupError("after run")
    if END == "closed":
        sys.stdout.close()
