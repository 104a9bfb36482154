"""A worker writes 50 KB through a buffered file it never closes (kept in a
module-level list), and a line through sys.stdout without a flush (a pipe:
block-buffered), registers an atexit handler, starts a non-daemon thread
that writes a file after a moment, then disconnects. The primary registered
an atexit handler before forking: it must run once, in the primary, not again
in the worker. argv: PATH, and 'target' (fork(target=)) or 'exec' (the
worker runs this script; its run() returns after the disconnect, so "after
run" prints and the script ends in sys.exit(7)). Prints one JSON line."""
import atexit
import json
import os
import sys
import threading

import cluster_ext as cluster

PATH = sys.argv[1]
MODE = sys.argv[2]
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
    late = threading.Event()
    threading.Thread(target=lambda: late.wait(0.3) or open(PATH + ".thread", "w").close()
                     ).start()                  # non-daemon: the exit waits for it
    cluster.worker.disconnect()


if cluster.is_worker:
    child_main()
    cluster.run()
    print("after run", flush=True)
    sys.exit(7)
atexit.register(primary_atexit)
w = cluster.fork(target=child_main) if MODE == "target" else cluster.fork()
exits = []
w.on("exit", lambda code, sig: exits.append([code, sig]))
cluster.run()
with open(PATH, "rb") as f:
    data = f.read()
print(json.dumps({"exit": exits, "bytes": len(data), "intact": data == PAYLOAD,
                  "worker_atexit": os.path.exists(PATH + ".atexit"),
                  "thread_joined": os.path.exists(PATH + ".thread")}), flush=True)
