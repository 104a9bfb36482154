"""PID 1 duty: a supervising primary that inherits orphans reaps them, and
takes no other status. Run as PID 1 of a pid namespace (unshare --pid
--fork --mount-proc) or, with SUBREAPER=1, as a child subreaper.

The primary starts a subprocess of its own that exits 7 and leaves it a
zombie for 3 s (past the reaper's grace) before Popen.wait(): 'popen 7'.
Each of two workers orphans 20 grandchildren over 2 s (sh -c 'sleep 0.1 &':
sh exits, its sleep is reparented to the primary), then says
'orphaned <id>'. Exits print 'exit <id> <code> <signal> <asked>'."""
import ctypes
import os
import subprocess

import cluster_ext as cluster

PR_SET_CHILD_SUBREAPER = 36


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


if cluster.is_primary:
    if os.environ.get("SUBREAPER"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    mine = subprocess.Popen(["sh", "-c", "exit 7"])
    # Blocks until it has exited, but leaves it unreaped (a zombie).
    os.waitid(os.P_PID, mine.pid, os.WEXITED | os.WNOWAIT)
    cluster.call_later(3, lambda: say("popen", mine.wait()))
    cluster.on("exit", lambda w, code, sig: say(
        "exit", w.id, code, sig.name if sig else None, w.exited_after_disconnect))
    say("primary", os.getpid())
    cluster.supervise(2)
    say("stopped")
else:
    left = [20]

    def orphan():
        subprocess.run(["sh", "-c", "sleep 0.1 &"], check=True)
        left[0] -= 1
        if left[0]:
            cluster.call_later(0.1, orphan)
        else:
            say("orphaned", cluster.worker.id)

    orphan()
    cluster.run()
