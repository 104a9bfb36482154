"""Frames fed straight to a Worker's _on_frame, as the channel delivers them,
in a serialization the Worker is not set to. argv: ROLE ('primary' or
'worker': the side the Worker is on) and SER (its serialization, 'json' or
'pickle'). In order:

1. a frame flagged with the other serialization: under json, a pickle whose
   __reduce__ calls record(); under pickle, a valid JSON list (the hot path
   of a plain JSON frame once took it);
2. the same with a socket handle on a descriptor, which must be closed;
3. a frame in the Worker's own serialization, which must arrive.

Then, as a control, the pickle of 1 is loaded by hand, which must call
record(): the payload was live. Prints one JSON line."""
import json
import os
import pickle
import socket
import sys

from cluster_ext import _worker

ROLE, SER = sys.argv[1], sys.argv[2]
CALLED = []


def record(what):
    CALLED.append(what)
    return what


class Payload:
    def __reduce__(self):
        return record, ("unpickled",)


own = _worker.SERIALIZATIONS[SER]
other = 1 - own
foreign = pickle.dumps(Payload()) if other == _worker.SER_PICKLE else b'["foreign"]'

w = _worker.Worker(7, os.getpid(), primary_side=ROLE == "primary", serialization=own)
events = []
w.on("message", lambda msg, handle: events.append(["message", msg, repr(handle)]))
w.on("error", lambda exc: events.append(["error", type(exc).__name__, str(exc)]))

w._on_frame(_worker._FRAME_USER, other, foreign, ())
a, b = socket.socketpair()
fd = a.detach()
w._on_frame(_worker._FRAME_USER, other | _worker.HANDLE_SOCKET << _worker.HANDLE_SHIFT,
            foreign, (fd,))
try:
    os.fstat(fd)
    fd_closed = False
except OSError:
    fd_closed = True
b.close()
w._on_frame(_worker._FRAME_USER, own, _worker.encode(["own"], own), ())
called_by_frames = list(CALLED)
pickle.loads(pickle.dumps(Payload()))
print(json.dumps({"events": events, "called_by_frames": called_by_frames,
                  "fd_closed": fd_closed, "payload_live": CALLED[-1:] == ["unpickled"]}))
