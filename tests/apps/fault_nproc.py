"""fork() refused by RLIMIT_NPROC: every way of forking a worker (exec, exec
with piped stdio, target=) must raise an OSError that says what happened,
leave cluster.workers empty, emit no 'fork', leak no descriptor and leave no
child; once the limit is raised the primary forks a worker that talks and
exits. Root is exempt from RLIMIT_NPROC, so as root the primary first becomes
nobody. Prints one JSON line ({"skip": why} when that is not possible)."""
import ctypes
import json
import os
import resource
import signal  # noqa: F401  (imported lazily by cluster_ext; nobody cannot read the stdlib here)

import cluster_ext as cluster

NOBODY = 65534


def children():
    kids = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            kids += f.read().split()
    return kids


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def become_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # A change of user makes /proc/self root's; we still want to read it.
    ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE


def hello():
    cluster.worker.send("hello")


if cluster.is_primary:
    result = {"attempts": []}
    forks = []
    cluster.on("fork", lambda w: forks.append(w.id))
    if os.geteuid() == 0:
        try:
            become_nobody()
        except PermissionError as exc:
            print(json.dumps({"skip": f"cannot become nobody: {exc}"}), flush=True)
            raise SystemExit(0) from None
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    fds_before = fd_count()
    resource.setrlimit(resource.RLIMIT_NPROC, (0, hard))
    for kind in ("exec", "exec_silent", "target"):
        cluster.setup_primary(silent=kind == "exec_silent")
        try:
            cluster.fork(target=hello if kind == "target" else None)
            raised = None
        except Exception as exc:
            raised = [type(exc).__name__, isinstance(exc, OSError),
                      getattr(exc, "errno", None), str(exc)]
        result["attempts"].append({"kind": kind, "raised": raised,
                                   "workers": len(cluster.workers),
                                   "fd_delta": fd_count() - fds_before,
                                   "children": children()})
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
    cluster.setup_primary(silent=False)

    good = cluster.fork(target=hello)
    result["good_id"] = good.id
    good.on("message", lambda msg, handle: result.update(good_said=msg) or good.disconnect())
    good.on("exit", lambda code, sig: result.update(good_exit=[code, sig and sig.name]))
    cluster.run()
    result["forks_seen"] = forks
    result["fd_delta_end"] = fd_count() - fds_before
    result["children_end"] = children()
    print(json.dumps(result), flush=True)
else:
    cluster.run()
