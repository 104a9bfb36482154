"""N workers each call listen(0, '127.0.0.1') twice. Every worker prints
WORKER {pid, addresses, types, state} (what its servers' address() gave, and
its own state on the next turn of the loop); the primary prints LISTENING
{cluster, worker} with what cluster 'listening'(worker, address) and each
worker's 'listening'(address) gave, once all 2N arrived, then waits for the
test to close stdin. The test's requests then say which server answered:
replies start with '1:' or '2:'."""
import os
import sys

from net_util import line_server, on_stdin_eof, say

import cluster_ext as cluster

N = int(sys.argv[1])

if cluster.is_primary:
    from_cluster, from_worker = [], []

    @cluster.on("listening")
    def listening(w, address):
        from_cluster.append({"pid": w.process.pid, "address": address,
                             "type": type(address).__name__, "state": w.state})
        if len(from_cluster) == 2 * N:
            say("LISTENING", cluster=from_cluster, worker=from_worker)

    for _ in range(N):
        w = cluster.fork()
        w.on("listening", lambda address, w=w: from_worker.append(
            {"pid": w.process.pid, "address": address, "type": type(address).__name__}))
    on_stdin_eof(cluster.disconnect)
    cluster.run()
    say("DONE")
else:
    servers = [line_server("1:"), line_server("2:")]
    heard = []

    def report():
        say("WORKER", pid=os.getpid(), heard=heard, state=cluster.worker.state,
            addresses=[s.address() for s in servers],
            types=[type(s.address()).__name__ for s in servers])

    def listening(i):
        heard.append(i)
        if len(heard) == 2:
            # next turn: the worker's state changes after the server's own
            # 'listening' listeners ran, as in Node
            cluster.call_later(0, report)

    # Both at once: the order of the listen() calls, not of the replies, keys
    # the shared port.
    for i, server in enumerate(servers):
        server.listen(0, "127.0.0.1", callback=lambda i=i: listening(i))
    cluster.run()
