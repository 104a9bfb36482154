"""supervise() scenarios; the test drives them with signals and reads lines.

  respawn    worker 1 exits 3 once: it is forked again; SIGTERM stops all
  crashloop  every worker exits 1 at once: CrashLoopError
  linger     workers keep a long timer after disconnect: a second SIGTERM kills
  heartbeat  worker 1 busy-loops: the heartbeat SIGKILLs and replaces it
  reload     workers serve a port; SIGHUP replaces each of them
"""
import os
import sys

import cluster_ext as cluster
from cluster_ext import net

MODE = sys.argv[1]


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


if cluster.is_primary:
    cluster.on("online", lambda w: say("online", w.id))
    cluster.on("listening", lambda w, a: say("listening", w.id, a[1]))
    cluster.on("disconnect", lambda w: say("disconnect", w.id))
    cluster.on("exit", lambda w, code, sig: say(
        "exit", w.id, code, sig.name if sig else None, w.exited_after_disconnect))
    size = 1 if MODE == "heartbeat" else 2
    try:
        cluster.supervise(size, backoff=(0.01, 0.05), graceful_timeout=10,
                          heartbeat_timeout=0.5 if MODE == "heartbeat" else None)
    except cluster.CrashLoopError as exc:
        say("crashloop", exc)
    say("stopped")
else:
    me = cluster.worker
    if MODE == "respawn" and me.id == 1:
        sys.exit(3)
    if MODE == "crashloop":
        sys.exit(1)
    if MODE == "linger":
        cluster.call_later(60, lambda: None)     # outlives the disconnect
    if MODE == "heartbeat" and me.id == 1:
        cluster.call_later(0.05, lambda: exec("while True: pass"))
    if MODE == "reload":
        def answer(sock):
            sock.on("data", lambda d: sock.end(f"pong {os.getpid()}\n".encode()))
        net.create_server(answer).listen(int(os.environ["PORT"]), "127.0.0.1")
    cluster.run()
