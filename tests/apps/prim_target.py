"""fork(target=fn): the child runs fn as a worker, without exec. MODE
'alone': one target worker; MODE 'after_exec': an exec worker is forked
first and must still be heard once the target worker exists. Prints one
JSON line with what each side saw."""
import json
import os
import sys
import time

import cluster_ext as cluster

MODE = sys.argv[1] if len(sys.argv) > 1 else "alone"
PRIMARY_PID = os.getpid()


def child_main():
    """Runs in the forked child, as worker code."""
    me = cluster.worker
    me.send({"is_worker": cluster.is_worker, "is_primary": cluster.is_primary,
             "id": me.id, "workers": cluster.workers, "pid_ok": me.pid == os.getpid(),
             "forked_from_primary": os.getppid() == PRIMARY_PID})
    # and the other way: answer the primary's ping
    me.on("message", lambda msg, handle: me.send(["pong", msg]))


if cluster.is_primary:
    log = {"messages": {}}
    t0 = time.monotonic()
    if MODE == "after_exec":
        first = cluster.fork()
    w = cluster.fork(target=child_main)
    log["target_id"], log["target_pid"] = w.id, w.process.pid

    @cluster.on("online")
    def online(x):
        if x is w:
            log["online_after"] = time.monotonic() - t0

    @cluster.on("message")
    def message(x, msg, handle):
        log["messages"].setdefault(x.id, []).append(msg)
        if not x.is_connected():
            return                  # read while its channel was draining
        if isinstance(msg, dict):
            x.send("ping")
        else:
            x.disconnect()

    def give_up():
        # A watchdog, so that a worker the primary cannot hear fails the test
        # in seconds instead of hanging it.
        log["gave_up"] = sorted(cluster.workers)
        for x in list(cluster.workers.values()):
            x.kill("SIGKILL")

    watchdog = cluster.call_later(5.0, give_up)

    @cluster.on("exit")
    def exited(x, code, sig):
        log.setdefault("exits", {})[x.id] = [code, sig and sig.name,
                                              x.exited_after_disconnect]
        if not cluster.workers:
            watchdog.cancel()

    cluster.run()
    log["primary_pid"] = os.getpid()
    print(json.dumps(log), flush=True)
else:
    child_main()           # an exec worker does the same
    cluster.run()
