"""--preload's tests: an ASGI application that answers /facts with what its
worker can observe of how it started (as conform_probe.py's facts), the
version its source held when it was imported and which process imported
it; each import is logged to imports.log beside this file."""
import json
import os
import resource
import signal
import sys

import cluster_ext as cluster
from cluster_ext import _core

VERSION = "v1"
IMPORTED_BY = os.getpid()
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "imports.log"), "a") as log:
    log.write(f"{IMPORTED_BY} {VERSION} worker={cluster.is_worker}\n")


def handler(sig):
    h = signal.getsignal(sig)
    return h.name if isinstance(h, signal.Handlers) else getattr(h, "__qualname__", repr(h))


def fd_kinds(skip):
    kinds = []
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if fd in skip:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kinds.append([fd if fd < 3 else None, target.split(":[")[0].split(":", 1)[0]])
    return kinds


def facts():
    umask = os.umask(0)
    os.umask(umask)
    with open("/proc/self/status") as f:
        status = {k: v.strip() for k, _, v in (line.partition(":") for line in f)
                  if k in ("SigIgn", "SigCgt", "SigBlk")}
    main = sys.modules["__main__"]
    return {
        "version": VERSION, "imported_by": IMPORTED_BY, "pid": os.getpid(),
        "ppid": os.getppid(), "worker": cluster.worker.id,
        "argv": sys.argv, "orig_argv": sys.orig_argv, "path": sys.path,
        "flags": list(sys.flags), "main": [main.__name__, getattr(main, "__file__", None)],
        "env": list(os.environ.items()), "cwd": os.getcwd(), "umask": umask,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "groups": sorted(os.getgroups()),
        "signals": {s.name: handler(s) for s in signal.valid_signals()
                    if isinstance(s, signal.Signals)
                    and s not in (signal.SIGKILL, signal.SIGSTOP)},
        "kernel": status,
        "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "sched": [os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)],
        "rlimits": {name: resource.getrlimit(getattr(resource, name))
                    for name in dir(resource) if name.startswith("RLIMIT_")},
        "fds": fd_kinds({cluster.worker._chan.fd}),
        "engine": _core.settings(),
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps(facts()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
