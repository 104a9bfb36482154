"""A first cluster: one worker per core, a message each way, then a graceful
disconnect of every worker.

    python examples/hello_cluster.py
"""
import os

import cluster_ext as cluster

if cluster.is_primary:
    print(f"primary {os.getpid()}: forking {os.cpu_count()} workers")

    @cluster.on("online")
    def online(worker):
        worker.send({"hello": worker.id})

    @cluster.on("message")
    def message(worker, msg, handle):
        print(f"primary: worker {worker.id} (pid {worker.pid}) says {msg}")
        worker.disconnect()

    @cluster.on("exit")
    def exited(worker, code, signal):
        print(f"primary: worker {worker.id} exited (code={code}, signal={signal}, "
              f"asked={worker.exited_after_disconnect})")

    for _ in range(os.cpu_count() or 2):
        cluster.fork()
    cluster.run()
    print("primary: all workers gone")
else:
    @cluster.worker.on("message")
    def hello(msg, handle):
        cluster.worker.send({"pid": os.getpid(), "got": msg})

    cluster.run()
