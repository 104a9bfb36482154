"""A user message in a serialization the channel is not set to, written as a
raw FRAME_USER frame (the engine's Channel.send, with the flags a peer
chooses): the receiver decodes with its own setting only, so the frame is an
'error' and nothing in it runs. argv: MODE DIR.

- 'pickle_up': a json primary; the worker sends a frame flagged pickle whose
  payload's __reduce__ is os.mkdir(DIR/unpickled). Once, a json primary
  unpickled it: with workers dropped to another user and a root primary, any
  code as root.
- 'pickle_down': the same frame from a json primary to its worker.
- 'json_up': a pickle primary; the worker sends a frame flagged json.

After the foreign frame each side sends 'after' in the channel's own
serialization, which must still arrive. The primary prints one JSON line:
its log, and whether DIR/unpickled exists."""
import json
import os
import pickle
import sys

import cluster_ext as cluster
from cluster_ext import _core, _worker

MODE, DIR = sys.argv[1], sys.argv[2]
MARK = os.path.join(DIR, "unpickled")


class Payload:
    def __reduce__(self):
        return os.mkdir, (MARK,)


def foreign_frame(sender):
    """The frame no sender of ours writes: the other serialization's flags."""
    if MODE == "json_up":
        sender._send_frame(_core.FRAME_USER, b'["foreign"]', flags=_worker.SER_JSON)
    else:
        sender._send_frame(_core.FRAME_USER, pickle.dumps(Payload()),
                           flags=_worker.SER_PICKLE)


if cluster.is_primary:
    cluster.setup_primary(serialization="pickle" if MODE == "json_up" else "json")
    log = []
    w = cluster.fork()
    w.on("error", lambda exc: log.append(["error", type(exc).__name__, str(exc)[:200]]))
    w.on("exit", lambda code, sig: log.append(["exit", code, sig and sig.name]))

    @w.on("online")
    def online():
        if MODE == "pickle_down":
            foreign_frame(w)
            w.send("after")

    @w.on("message")
    def message(msg, handle):
        log.append(["message", msg])
        if msg in ("after", ["worker got", "after"]):
            w.disconnect()

    try:
        cluster.run()
        log.append(["run returned"])
    except BaseException as exc:
        log.append(["run raised", repr(exc)])
    print(json.dumps({"log": log, "unpickled": os.path.exists(MARK)}), flush=True)
else:
    worker = cluster.worker
    worker.on("error", lambda exc: worker.send(
        ["worker error", type(exc).__name__, str(exc)[:200]]))
    worker.on("message", lambda msg, handle: worker.send(["worker got", msg]))
    if MODE != "pickle_down":
        foreign_frame(worker)
        worker.send("after")
    cluster.run()
