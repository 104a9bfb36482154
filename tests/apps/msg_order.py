"""API.md: a cluster event fires after the worker's own event of the same
name, 'message' included. The cluster listener is added first, so that
registration order cannot explain a right answer. The worker sends three
messages (the last with a handle, which takes another path); the primary
prints one JSON line: the order the listeners ran in and what each got."""
import json
import socket

import cluster_ext as cluster

if cluster.is_primary:
    log = []

    @cluster.on("message")
    def on_cluster(worker, msg, handle):
        log.append(["cluster", worker.id, msg, handle is not None])
        if handle is not None:
            handle.close()
        if msg == 2:
            worker.disconnect()

    w = cluster.fork()

    @w.on("message")
    def on_worker(msg, handle):
        log.append(["worker", w.id, msg, handle is not None])

    cluster.run()
    print(json.dumps(log), flush=True)
else:
    cluster.worker.send(0)
    cluster.worker.send(1)
    mine, _theirs = socket.socketpair()
    cluster.worker.send(2, mine)
    cluster.run()
