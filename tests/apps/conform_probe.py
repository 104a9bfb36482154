"""Everything a process can observe of how it was started, as one JSON line:
the conformance test runs this program as a primary whose worker reports
it (PROBE_HOW=exec: fork(); target: fork(target=)), and alone with the
environment that worker had (PROBE_PRIMARY set: print the facts and end).
It is run as a script, as a directory's or a zipapp's __main__.py, with -m
and with -c, so it reads its own source from PROBE_SOURCE where it has no
file. The primary ignores SIGUSR1, handles SIGTERM and SIGHUP in Python,
blocks SIGUSR2, renices itself and lowers a limit: what a worker inherits
or gets back to its default is then visible."""
import json
import os
import resource
import signal
import sys

import cluster_ext as cluster
from cluster_ext import _core


def typed(x: int) -> None:      # its annotation stays a type, unless a __future__ leaked
    pass


def fd_kinds(skip):
    kinds = []
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if fd in skip:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:         # the listing's own descriptor, closed by now
            continue
        kinds.append([fd if fd < 3 else None, target.split(":[")[0].split(":", 1)[0]])
    return kinds


def handler(sig):
    h = signal.getsignal(sig)
    return h.name if isinstance(h, signal.Handlers) else getattr(h, "__qualname__", repr(h))


def proc_status(*keys):
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k in keys}


def facts(channel_fd=-1):
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    umask = os.umask(0)
    os.umask(umask)
    status = proc_status("SigIgn", "SigCgt", "SigBlk")
    sigint = 1 << (signal.SIGINT - 1)
    return {
        "main": {
            "name": main.__name__, "file": getattr(main, "__file__", None),
            "loader": type(getattr(main, "__loader__", None)).__name__,
            "spec": spec and spec.name, "package": main.__package__,
            "builtins": type(main.__dict__["__builtins__"]).__name__,
            "annotation": repr(typed.__annotations__["x"]),
            "future": sorted(k for k in vars(main) if k in (
                "annotations", "division", "generator_stop", "barry_as_FLUFL")),
        },
        "argv": sys.argv, "orig_argv": sys.orig_argv, "path": sys.path,
        "flags": list(sys.flags), "xoptions": sys._xoptions,
        "stdio": [None if s is None else [s.fileno(), s.encoding, s.errors,
                                          s.line_buffering, s.write_through]
                  for s in (sys.stdin, sys.stdout, sys.stderr)],
        "process": {
            "env": [[k, "*" if k == "PROBE_PRIMARY" else v] for k, v in os.environ.items()],
            "cwd": os.getcwd(), "umask": umask,
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            "groups": sorted(os.getgroups()),
            "signals": {s.name: handler(s) for s in signal.valid_signals()
                        if isinstance(s, signal.Signals) and s != signal.SIGINT
                        and s not in (signal.SIGKILL, signal.SIGSTOP)},
            # what the kernel holds, SIGINT aside: a worker ignores it
            "kernel": {k: int(v, 16) & ~sigint for k, v in status.items()},
            "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "sched": [os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0),
                      sorted(os.sched_getaffinity(0))],
            "rlimits": {name: resource.getrlimit(getattr(resource, name))
                        for name in dir(resource) if name.startswith("RLIMIT_")},
            "fds": fd_kinds({channel_fd}),
            "engine": _core.settings(),
        },
        "sigint": handler(signal.SIGINT),
    }


def primary():
    how = os.environ["PROBE_HOW"]
    settings = json.loads(os.environ.get("PROBE_SETTINGS", "{}"))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGHUP, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    os.nice(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1000), hard))
    os.environ["PROBE_PRIMARY"] = str(os.getpid())
    cluster.setup_primary(**settings)
    out = {}
    env = {"PROBE_EXTRA": "yes", "CLUSTER_EXT_SPIN_US": "7"}
    if how == "target":
        w = cluster.fork(env, target=lambda: cluster.worker.send(facts(channel_fd())))
    else:
        w = cluster.fork(env)

    def got(msg, handle):
        out["worker"] = msg
        w.disconnect()

    w.on("message", got)
    w.on("exit", lambda code, sig: out.update(exit=[code, sig]))
    cluster.run()
    print(json.dumps(out), flush=True)


def channel_fd():
    return cluster.worker._chan.fd


if __name__ != "__main__":      # imported for its facts() (webapps/preload_app.py)
    pass
elif cluster.is_worker:          # exec'd (a fork(target=) child never gets here)
    cluster.worker.send(facts(channel_fd()))
    cluster.run()
elif "PROBE_PRIMARY" in os.environ:
    print(json.dumps(facts()), flush=True)
else:
    primary()
