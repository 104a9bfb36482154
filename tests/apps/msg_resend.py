"""A message that could not be encoded, fixed by the application and sent
again, must go through: a refused send() leaves no state behind in the
serializer. argv: serialization. The bad value sits in a nested container,
as application state often does.

The primary prints one JSON line: what each send raised, and what the worker
echoed back."""
import json
import sys
import threading

import cluster_ext as cluster

SER = sys.argv[1]

if cluster.is_primary:
    cluster.setup_primary(serialization=SER)
    w = cluster.fork()
    result = {"raised": [], "echoed": []}

    def attempt(msg):
        try:
            w.send(msg)
            result["raised"].append(None)
        except TypeError as exc:
            result["raised"].append(str(exc))

    @w.on("online")
    def go():
        inner = {"n": 1, "when": threading.Lock()}   # neither JSON nor picklable
        state = {"name": "job", "inner": inner}
        attempt(state)                         # refused: TypeError
        inner["when"] = "2024-01-01"           # the application fixes its value
        attempt(state)                         # the same objects, now valid
        attempt({"other": [inner]})            # and inner inside something new
        w.send("end")

    @w.on("message")
    def on_message(msg, handle):
        if msg == "end":
            w.disconnect()
        else:
            result["echoed"].append(msg)

    cluster.run()
    print(json.dumps(result), flush=True)
else:
    cluster.worker.on("message", lambda msg, handle: cluster.worker.send(msg))
    cluster.run()
