"""N messages each way at once, primary->worker and worker->primary, with a
sequence number in each. argv: serialization ('json' or 'pickle'), N.

The primary prints one JSON line: the sequence numbers it got from the worker
(compressed to a check), the worker's own check of what it got, and the Python
type a tuple message arrived as (list under JSON, tuple under pickle: proof
that the setting reached both ends)."""
import json
import sys

import cluster_ext as cluster

SER, N = sys.argv[1], int(sys.argv[2])


def message(i):
    # a tuple: JSON turns it into a list, pickle keeps it
    return ("seq", i, "x" * (i % 50))


def check(seqs):
    """{'count', 'in_order', 'first_bad'}: in_order means exactly 0..N-1."""
    bad = next((k for k, s in enumerate(seqs) if s != k), None)
    return {"count": len(seqs), "in_order": bad is None and len(seqs) == N,
            "first_bad": bad}


if cluster.is_primary:
    cluster.setup_primary(serialization=SER)
    w = cluster.fork()
    got, result = [], {}

    @w.on("online")
    def flood():
        # all N in one callback, without waiting for 'drain': send() queues them
        for i in range(N):
            w.send(message(i))

    @w.on("message")
    def collect(msg, handle):
        if isinstance(msg, dict):             # the worker's report, after its N
            result["worker"] = msg
            result["primary"] = check(got)
            w.disconnect()
            return
        if not got:
            result["type"] = type(msg).__name__
        assert msg[2] == "x" * (msg[1] % 50)  # the payload came through intact
        got.append(msg[1])

    cluster.run()
    print(json.dumps(result), flush=True)
else:
    got, first_type = [], []

    @cluster.worker.on("message")
    def collect(msg, handle):
        if not got:
            first_type.append(type(msg).__name__)
        ok = msg[2] == "x" * (msg[1] % 50)
        got.append(msg[1] if ok else -1)
        if len(got) == N:
            # the report follows our own N messages, which were queued first
            cluster.worker.send(dict(check(got), type=first_type[0]))

    # our N go out while the primary's N come in
    for i in range(N):
        cluster.worker.send(message(i))
    cluster.run()
