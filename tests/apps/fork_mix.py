"""Exec and fork(target=...) workers side by side, the target ones forked from
inside callbacks: every channel keeps working in the primary (the child of a
fork must not touch the primary's shared epoll set), every worker answers."""
import json
import os

import cluster_ext as cluster


def answer():
    # fork(target) child: is a worker, with no trace of the primary's workers
    assert cluster.is_worker and cluster.workers is None
    cluster.worker.on("message", lambda m, h: cluster.worker.send(
        {"id": cluster.worker.id, "pid": os.getpid(), "got": m}))


if cluster.is_primary:
    replies = {}
    total = 4

    @cluster.on("message")
    def reply(worker, msg, handle):
        replies[msg["id"]] = msg["got"]
        if len(replies) == total:
            cluster.disconnect()

    @cluster.on("online")
    def online(worker):
        worker.send(f"hello {worker.id}")
        if worker.id == 2:                       # a fork from inside a callback
            cluster.fork(target=answer)

    cluster.fork()
    cluster.fork(target=answer)
    cluster.fork()
    cluster.run()
    print(json.dumps({"replies": replies, "fds": sorted(os.listdir("/proc/self/fd"))}))
else:
    answer()
    cluster.run()
