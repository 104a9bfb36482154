"""supervise() scenarios; the test drives them with signals and reads lines.

  respawn    worker 1 exits 3 once: it is forked again; SIGTERM stops all
  slowrespawn  as respawn, with a respawn back-off of 30 s
  crashloop  every worker exits 1 at once: CrashLoopError ('died <id> <time>')
  linger     workers keep a long timer after disconnect: a second SIGTERM kills
  heartbeat  worker 1 busy-loops: the heartbeat SIGKILLs and replaces it
  foreign    the workers are not Python (sleep): the heartbeat SIGKILLs them
  reload     workers serve a port; SIGHUP replaces each of them
  retire     SIGTTOU retires the oldest (not replaced), SIGTTIN adds one
  drain      workers serve a port; SIGTERM waits for a held connection
  killall    as reload, with a respawn back-off of half a second, and each
             listening worker's pid: a test SIGKILLs every worker and
             connects while none is alive
  selfkill   worker 1 calls cluster.worker.kill(): its SIGTERM kills it, even
             where a supervised worker drains on its own SIGTERM
  deaf       workers serve a port from a blocking loop of their own and never
             read their channel (GRACE: the graceful timeout)
  giveback   one worker serves a port; a line "hold" makes it say "holding",
             keep its loop for HOLD seconds, then disconnect: what the primary
             handed it meanwhile (SCHED_RR) it gives back unread

LOG=1: the primary's log lines too, as "log <message>".
"""
import os
import sys
import time

import cluster_ext as cluster
from cluster_ext import net

MODE = sys.argv[1]


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


if cluster.is_primary:
    if os.environ.get("LOG"):
        import logging

        class Say(logging.Handler):
            def emit(self, record):
                say("log", record.getMessage())

        logging.getLogger("cluster_ext").addHandler(Say())
        logging.getLogger("cluster_ext").setLevel(logging.INFO)
    cluster.on("fork", lambda w: say("fork", w.id, round(time.monotonic(), 4)))
    cluster.on("online", lambda w: say("online", w.id))
    cluster.on("listening", lambda w, a: say("listening", w.id, a[1]))
    cluster.on("disconnect", lambda w: say("disconnect", w.id))
    if MODE == "killall":
        cluster.on("listening", lambda w, a: say("pid", w.process.pid))
    if MODE == "crashloop":      # when each respawn's back-off began
        cluster.on("exit", lambda w, code, sig: say("died", w.id, round(time.monotonic(), 4)))
    cluster.on("exit", lambda w, code, sig: say(
        "exit", w.id, code, sig.name if sig else None, w.exited_after_disconnect))
    size = 1 if MODE in ("heartbeat", "giveback", "foreign") else 2
    if MODE == "foreign":
        cluster.setup_primary(exec=["/bin/sh", "-c", "exec sleep 60"])
    try:
        backoff = {"crashloop": (0.01, 0.64), "killall": (0.5, 0.5),
                   "slowrespawn": (30, 30)}.get(MODE, (0.01, 0.05))
        cluster.supervise(size, backoff=backoff,
                          graceful_timeout=float(os.environ.get("GRACE", "10")),
                          heartbeat_timeout=0.5 if MODE in ("heartbeat", "foreign") else None)
    except cluster.CrashLoopError as exc:
        say("crashloop", exc)
    say("stopped")
else:
    me = cluster.worker
    if MODE in ("respawn", "slowrespawn") and me.id == 1:
        sys.exit(3)
    if MODE == "crashloop":
        sys.exit(1)
    if MODE == "selfkill" and me.id == 1:
        cluster.call_later(0, me.kill)
    if MODE == "linger":
        cluster.call_later(60, lambda: None)     # outlives the disconnect
    if MODE == "heartbeat" and me.id == 1:
        cluster.call_later(0.05, lambda: exec("while True: pass"))
    if MODE in ("reload", "drain", "killall", "giveback"):
        def answer(sock):
            if MODE == "giveback":
                sock.on("data", lambda d: hold() if d == b"hold\n"
                        else sock.end(f"pong {os.getpid()}\n".encode()))
            elif MODE == "drain":        # answer each line, keep the connection
                sock.on("data", lambda d: sock.write(f"pong {os.getpid()}\n".encode()))
            else:
                sock.on("data", lambda d: sock.end(f"pong {os.getpid()}\n".encode()))
        net.create_server(answer).listen(int(os.environ["PORT"]), "127.0.0.1")
    def hold():
        say("holding", os.getpid())
        time.sleep(float(os.environ["HOLD"]))     # the loop reads nothing meanwhile
        me.disconnect()

    if MODE == "deaf":
        import select
        sock = cluster.listen_socket(int(os.environ["PORT"]), "127.0.0.1")
        # One open file for every worker: its O_NONBLOCK is theirs too, so it
        # stays non-blocking, and another worker may take a connection first.
        while True:                      # the cluster's loop never turns again
            select.select([sock], [], [])
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            conn.setblocking(True)
            with conn:
                conn.recv(64)
                conn.sendall(f"pong {os.getpid()}\n".encode())
    cluster.run()
