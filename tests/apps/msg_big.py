"""One 8 MiB message each way, both in flight at once. argv: serialization.

Each big message carries random data and the sender's sha256 of it; the
receiver reports the length and the sha256 it computes. The primary prints
one JSON line with both sides' reports."""
import base64
import hashlib
import json
import os
import sys

import cluster_ext as cluster

SER = sys.argv[1]
SIZE = 8 << 20


def big(origin):
    if SER == "pickle":
        data = os.urandom(SIZE)                           # bytes: pickle only
    else:
        data = base64.b64encode(os.urandom(SIZE * 3 // 4)).decode()   # 8 MiB of text
    raw = data if isinstance(data, bytes) else data.encode()
    return {"origin": origin, "data": data, "sha": hashlib.sha256(raw).hexdigest()}


def verify(msg):
    data = msg["data"]
    raw = data if isinstance(data, bytes) else data.encode()
    return {"origin": msg["origin"], "type": type(data).__name__, "len": len(raw),
            "sent_sha": msg["sha"], "got_sha": hashlib.sha256(raw).hexdigest()}


if cluster.is_primary:
    cluster.setup_primary(serialization=SER)
    w = cluster.fork()
    result = {}

    w.on("online", lambda: w.send(big("primary")))

    @w.on("message")
    def on_message(msg, handle):
        if "data" in msg:
            result["primary_got"] = verify(msg)
        else:
            result["worker_got"] = msg
        if len(result) == 2:
            w.disconnect()

    cluster.run()
    print(json.dumps(result), flush=True)
else:
    @cluster.worker.on("message")
    def on_message(msg, handle):
        cluster.worker.send(verify(msg))      # only the report: small

    cluster.worker.send(big("worker"))        # crosses the primary's on the way
    cluster.run()
