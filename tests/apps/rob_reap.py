"""Reaping by pid only. Before forking workers the primary starts a
subprocess of its own that exits 7 and waits (WNOWAIT) until it is a zombie,
so that a waitpid(-1) anywhere in cluster_ext would steal its status. Two
workers (exec and target) come and go. After run(): Popen.wait() must still
see 7, and no child is left unreaped. Prints one JSON line."""
import json
import os
import subprocess

import cluster_ext as cluster

if cluster.is_primary:
    mine = subprocess.Popen(["sh", "-c", "exit 7"])
    # Blocks until it has exited, but leaves it unreaped (a zombie).
    os.waitid(os.P_PID, mine.pid, os.WEXITED | os.WNOWAIT)
    pids = []
    for w in (cluster.fork(), cluster.fork(target=lambda: None)):
        pids.append(w.process.pid)
        w.on("online", w.disconnect)
    cluster.run()

    code = mine.wait()        # Python's Popen reaps its own pid
    workers_reaped = []
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
            workers_reaped.append(False)
        except ChildProcessError:
            workers_reaped.append(True)
    try:
        leftover = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        leftover = None
    print(json.dumps({"popen_code": code, "workers_reaped": workers_reaped,
                      "leftover": leftover}), flush=True)
else:
    cluster.run()
