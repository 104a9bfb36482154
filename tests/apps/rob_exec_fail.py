"""A worker whose program cannot be executed: fork() must raise at once (an
OSError from execve's errno), leave cluster.workers empty, emit no 'fork',
leak no descriptor and no child; the primary then still forks a good worker.
Prints one JSON line."""
import json
import os

import cluster_ext as cluster

if cluster.is_primary:
    result = {}
    forks = []
    cluster.on("fork", lambda w: forks.append(w.id))
    fds_before = len(os.listdir("/proc/self/fd"))
    cluster.setup_primary(exec=["/nonexistent/binary"])
    try:
        cluster.fork()
        result["raised"] = None
    except Exception as exc:
        result["raised"] = [type(exc).__name__, isinstance(exc, OSError),
                            getattr(exc, "errno", None)]
    result["workers_after_fail"] = len(cluster.workers)
    result["fd_delta"] = len(os.listdir("/proc/self/fd")) - fds_before
    try:
        result["zombie"] = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        result["zombie"] = None

    cluster.setup_primary(exec=None)          # back to this script
    good = cluster.fork()
    result["good_id"] = good.id
    good.on("online", good.disconnect)
    good.on("exit", lambda code, sig: result.update(good_exit=[code, sig and sig.name]))
    cluster.run()
    result["forks_seen"] = forks
    print(json.dumps(result), flush=True)
else:
    cluster.run()
