"""Each native constructor that takes a descriptor (Channel, Stream,
Listener, Balancer) made to fail at each of its Python allocations in turn
(_testcapi.set_nomemory): it raises MemoryError, never crashes, and never
closes a descriptor it does not own; stdin (fd 0) must be the same file
afterwards. The descriptor it was handed is closed all the same (it owns it
even on failure). Prints one JSON line ({"skip": why} without _testcapi)."""
import json
import os
import socket

try:
    import _testcapi
except ImportError:
    print(json.dumps({"skip": "no _testcapi in this Python"}), flush=True)
    raise SystemExit(0) from None

from cluster_ext import _core


def ignore(*args):
    pass


def make(kind):
    """A fresh descriptor of the right kind, the constructor to take it and
    its arguments, built beforehand: a call through Python code (a lambda)
    could fail to allocate its frame before the constructor is reached,
    and the descriptor would not be the constructor's to close."""
    if kind == "Channel":
        a, b = socket.socketpair()
        b.close()
        fd = a.detach()
        return fd, _core.Channel, (fd, ignore, ignore, 1 << 20, 1 << 16)
    if kind == "Stream":
        r, w = os.pipe()
        os.close(w)
        return r, _core.Stream, (r, ignore, ignore, 1 << 16)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = listener.detach()
    if kind == "Listener":
        return fd, _core.Listener, (fd, ignore, False, 16)
    return fd, _core.Balancer, (fd, 1)


def stdin_identity():
    st = os.fstat(0)
    return st.st_dev, st.st_ino


before = stdin_identity()
result = {"stdin_intact": True, "memory_errors": {}, "left_open": []}
for kind in ("Channel", "Stream", "Listener", "Balancer"):
    errors = 0
    for start in range(64):
        fd, construct, args = make(kind)
        # An allocation can come from a free list instead of the allocator;
        # emptying the lists' one makes the Balancer's list allocate.
        spare = [[] for _ in range(100)]
        _testcapi.set_nomemory(start, start + 1)
        try:
            obj = construct(*args)
        except MemoryError:
            obj = None
        finally:
            _testcapi.remove_mem_hooks()
        del spare
        if obj is None:
            errors += 1
            try:                 # handed over: the constructor closed it
                os.close(fd)
                result["left_open"].append([kind, start])
            except OSError:
                pass
        else:
            (obj.destroy if kind == "Stream" else obj.close)()
            _core.turn(0)        # deliver the close
        try:
            intact = stdin_identity() == before
        except OSError:
            intact = False
        if not intact:
            result["stdin_intact"] = False
            result["broken_by"] = [kind, start]
            break
        if obj is not None:
            break                # past its last allocation
    result["memory_errors"][kind] = errors
    if not result["stdin_intact"]:
        break
print(json.dumps(result), flush=True)
