"""A fork(target=) worker writes 50 KB through a buffered file it never
closes (kept in a module-level list), and a line through sys.stdout without a
flush (a pipe: block-buffered), registers an atexit handler, then disconnects. The primary
registered an atexit handler before forking: it must run once, in the
primary, not again in the worker. Prints one JSON line."""
import atexit
import json
import os
import sys

import cluster_ext as cluster

PATH = sys.argv[1]
OPEN_FILES = []
PAYLOAD = bytes(range(256)) * 200                # 51,200 bytes


def primary_atexit():
    os.write(1, f"primary atexit in {'primary' if cluster.is_primary else 'worker'}\n".encode())


def worker_atexit():
    with open(PATH + ".atexit", "w") as f:
        f.write("ran")


def child_main():
    f = open(PATH, "wb")                         # buffered, never closed
    OPEN_FILES.append(f)
    f.write(PAYLOAD)
    atexit.register(worker_atexit)
    sys.stdout.write("worker wrote, unflushed\n")  # stdout is a pipe: still buffered
    cluster.worker.disconnect()


atexit.register(primary_atexit)
w = cluster.fork(target=child_main)
exits = []
w.on("exit", lambda code, sig: exits.append([code, sig]))
cluster.run()
with open(PATH, "rb") as f:
    data = f.read()
print(json.dumps({"exit": exits, "bytes": len(data), "intact": data == PAYLOAD,
                  "worker_atexit": os.path.exists(PATH + ".atexit")}), flush=True)
