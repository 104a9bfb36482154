"""A worker SIGKILLed at points of its own disconnect. argv: ROUNDS SEED.

Worker 'stay' serves throughout; each round forks a worker V beside it,
a client thread holds connections to both, and the primary calls
V.disconnect() with a kill point drawn from the seed: in the primary right
after disconnect() returns or a few ms later, or in V itself on
'disconnecting' (its servers not closed yet), just after (waiting for its
held connections), with half a reply written, or as its last held
connection closes. Each round then checks what a user would: V gave
'disconnect' then 'exit' (SIGKILL, asked); every connection V held ended
(no client hangs); stay's held connection still answers; every new
connection is served, by stay. At the end the primary's descriptor count
is where it began and stay is its only child. Prints one JSON line."""
import json
import os
import random
import signal
import socket
import sys
import threading

from disc_util import serve_lines

import cluster_ext as cluster
from cluster_ext import net

POINTS = ["primary_sync", "primary_delay", "disconnecting", "waiting", "mid_reply",
          "last_connection"]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def children():
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return sorted(int(p) for p in f.read().split())


def ask(conn, line):
    conn.sendall(line.encode() + b"\n")
    return conn.makefile().readline().split()


def ended(conn):
    """True once the peer closed (EOF or reset); False if it hangs."""
    conn.settimeout(5)
    try:
        while conn.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    conn.close()                         # our side too: V waits for it
    return True


class Round:
    """The client side of one round, on its own thread (SCHED_RR: the
    primary must go on accepting while clients wait)."""

    def __init__(self, port, v_pid, stay_pid, release, then):
        self.port, self.v_pid, self.stay_pid = port, v_pid, stay_pid
        self.release = release           # say 'bye' on V's connections
        self.v_conns, self.stay_conns = [], []
        self.v_disconnecting = threading.Event()
        self.v_gone = threading.Event()
        threading.Thread(target=self.run, args=(then,), daemon=True).start()

    def run(self, then):
        report = {}
        try:
            # RR alternates: a few connections reach both workers
            for _ in range(6):
                c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                pid = int(ask(c, "hold")[1])
                (self.v_conns if pid == self.v_pid else self.stay_conns).append(c)
                if self.v_conns and self.stay_conns and len(self.v_conns) >= 2:
                    break
            report["held"] = [len(self.v_conns), len(self.stay_conns)]
            cluster.call_soon_threadsafe(then, "held", report)
            self.v_disconnecting.wait(20)
            if self.release:             # else the kill has to end them
                for c in self.v_conns:
                    c.sendall(b"bye\n")
            report["v_conns_ended"] = all(ended(c) for c in self.v_conns)
            self.v_gone.wait(20)
            report["stay_answers"] = all(ask(c, "ping") == ["pong", str(self.stay_pid)]
                                         for c in self.stay_conns)
            served = []
            for _ in range(4):
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                    served.append(int(ask(c, "ping")[1]))
            report["new_served_by_stay"] = served == [self.stay_pid] * 4
        except (OSError, IndexError, ValueError) as exc:
            report["error"] = repr(exc)
        for c in self.v_conns + self.stay_conns:
            c.close()
        cluster.call_soon_threadsafe(then, "done", report)


def primary(rounds, seed):
    rng = random.Random(seed)
    results = []
    stay = cluster.fork()
    state = {"fds": [], "left": rounds}

    def next_round(address=None):
        state["fds"].append(fd_count())
        if state["left"] == 0:
            finish()
            return
        state["left"] -= 1
        point = rng.choice(POINTS)
        r = {"point": point, "events": []}
        this = {}
        v = cluster.fork()
        v.on("disconnect", lambda: r["events"].append("disconnect"))
        v.on("error", lambda exc: r["events"].append(["error", repr(exc)]))

        def v_exit(code, sig):
            r["events"].append(["exit", code, sig and sig.name, v.exited_after_disconnect])
            this["client"].v_gone.set()

        def client_says(what, report):
            r.update(report)
            if what == "held":
                if point not in ("primary_sync", "primary_delay"):
                    v.send({"kill_at": point})
                v.disconnect()
                if point == "primary_sync":
                    os.kill(v.process.pid, signal.SIGKILL)
                elif point == "primary_delay":
                    r["delay"] = round(rng.uniform(0.0, 0.02), 4)
                    cluster.call_later(r["delay"], os.kill, v.process.pid, signal.SIGKILL)
                this["client"].v_disconnecting.set()
            else:
                results.append(r)
                next_round()

        @v.once("listening")
        def v_listening(address):
            this["client"] = Round(address[1], v.process.pid, stay.process.pid,
                                   point == "last_connection", client_says)

        v.on("exit", v_exit)

    def finish():
        stay.disconnect()
        stay.on("exit", lambda code, sig: print(json.dumps({
            "rounds": results, "fds_at_each_round": state["fds"],
            "children": children(), "stay_exit": [code, sig]}),
            flush=True))

    stay.once("listening", next_round)
    cluster.run()


def worker():
    me = str(os.getpid())
    held = set()
    kill_at = [None]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_connection(sock):
        def answer(line):
            if line == "hold":
                held.add(sock)
            elif line == "bye":
                cluster.call_later(0, sock.end)    # after this answer
            return f"{'held' if line == 'hold' else 'pong'} {me}"
        serve_lines(sock, answer)

        @sock.on("close")
        def closed(had_error):
            held.discard(sock)
            if kill_at[0] == "last_connection" and not held:
                die()

    @cluster.worker.on("message")
    def told(msg, handle):
        kill_at[0] = msg["kill_at"]

    @cluster.worker.on("disconnecting")
    def disconnecting():
        point = kill_at[0]
        if point == "disconnecting":
            die()
        elif point == "waiting":
            cluster.call_later(0, die)   # once disconnect() has closed the servers
        elif point == "mid_reply":
            for sock in held:
                sock.write("half a rep")
            cluster.call_later(0, die)

    server = net.create_server(on_connection)
    server.listen(0, "127.0.0.1")
    cluster.run()


if cluster.is_primary:
    primary(int(sys.argv[1]), int(sys.argv[2]))
else:
    worker()
