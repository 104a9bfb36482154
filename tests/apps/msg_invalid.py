"""A message send() must refuse, in both roles: it raises at once and leaves
the channel as it was, so the messages around it still arrive.
argv: 'json' (an object()), 'pickle' (a lambda) or 'oversize'
(max_message_size=1024). The bad part sits after a good one, so that a
serializer that fails half-way has already produced some bytes.

Each side sends 'before', the bad message (with a callback, which must never
run), and 'after'; the worker echoes what it gets. The primary prints one JSON
line."""
import json
import sys

import cluster_ext as cluster

MODE = sys.argv[1]
BAD = {"json": lambda: {"ok": 1, "bad": object()},
       "pickle": lambda: {"ok": 1, "bad": lambda: None},
       "oversize": lambda: "x" * 2000}[MODE]()
# under the 1024 limit: must go through in oversize mode (and the others)
OK_BIG = "y" * 1000


def try_bad(sender, log):
    """Sends BAD; returns what it raised (type name, text), or None."""
    def callback(err):
        log.append(["callback ran", repr(err)])
    try:
        sender.send(BAD, callback=callback)
    except Exception as exc:              # noqa: BLE001 - the test checks the type
        return [type(exc).__name__, str(exc)]
    return None


if cluster.is_primary:
    if MODE == "oversize":
        cluster.setup_primary(max_message_size=1024)
    else:
        cluster.setup_primary(serialization=MODE)
    w = cluster.fork()
    result = {"received": [], "stray": []}

    @w.on("online")
    def go():
        w.send("before")
        result["primary_raised"] = try_bad(w, result["stray"])
        w.send(OK_BIG)
        w.send("after")

    @w.on("message")
    def on_message(msg, handle):
        if isinstance(msg, dict):             # the worker's report: the last message
            result["worker_raised"] = msg["raised"]
            result["stray"] += msg["stray"]
            w.disconnect()
            return
        # the 1000-byte one is checked whole, and logged by name
        result["received"].append("echo:OK_BIG" if msg == "echo:" + OK_BIG else msg)

    cluster.run()
    print(json.dumps(result), flush=True)
else:
    stray = []
    send = cluster.worker.send
    send("w-before")
    raised = try_bad(cluster.worker, stray)
    send("w-after")

    @cluster.worker.on("message")
    def echo(msg, handle):
        send("echo:" + msg)                   # proof it arrived, in order
        if msg == "after":
            # by now a stray callback of the bad send would have run
            send({"raised": raised, "stray": stray})

    cluster.run()
