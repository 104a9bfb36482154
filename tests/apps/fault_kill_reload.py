"""Reloads of a supervised fleet with faults in them.

MODE 'kill' ROUNDS SEED: each round reloads 3 workers and SIGKILLs one of
them (an old one or a replacement, drawn from the seed) at a point of the
reload drawn from the seed (the k-th fleet event after reload()), so the
kill lands before, during or after a replacement, or on a worker being
retired. Every reload must still finish; afterwards
the fleet is 3 new workers, all of them serving (a client thread checks
each one answers) and the primary's descriptor count is where it began.

MODE 'bad': the new code crashes at start. The reload gives up after
RELOAD_TRIES replacements died, without its callback and without a
crash-loop stop; the old workers go on serving, and a reload with good
code then replaces them.

Prints one JSON line with the rounds, then stops the fleet with SIGTERM."""
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

MODE = sys.argv[1]
SIZE = 3 if MODE == "kill" else 2


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def children():
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return f.read().split()


def live_workers():
    return [w for w in cluster.workers.values() if not w.is_dead()]


def fleet_listening():
    alive = live_workers()
    return len(alive) == SIZE and all(w.state == "listening" for w in alive)


def check_serving(port, then):
    """Off the loop's thread (SCHED_RR: the primary must keep accepting):
    enough connections for the round robin to reach every worker."""
    def client():
        pids, errors = set(), []
        for _ in range(3 * SIZE):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"ping\n")
                    pids.add(int(c.makefile().readline().split()[1]))
            except (OSError, IndexError, ValueError) as exc:
                errors.append(repr(exc))
        cluster.call_soon_threadsafe(then, pids, errors)
    threading.Thread(target=client, daemon=True).start()


class Rounds:
    def __init__(self, rounds, seed):
        self.left = rounds
        self.rng = random.Random(seed)
        self.port = None
        self.results = []
        self.fds_start = None
        self.waiting_for_fleet = None        # a round's last step, once the fleet is whole
        self.on_event = None                 # a round's event counter
        for name in ("fork", "online", "listening", "disconnect", "exit"):
            cluster.on(name, lambda *_, name=name: self.on_event and self.on_event(name))

    def on_listening(self, worker, address):
        self.port = address[1]
        if self.waiting_for_fleet is not None:
            self.waiting_for_fleet()
        elif self.fds_start is None and fleet_listening():
            self.fds_start = fd_count()
            self.next_round()

    def next_round(self):
        if self.left == 0:
            self.finish()
            return
        self.left -= 1
        # The kill lands at the k-th fleet event after reload() (0: at once):
        # points in the reload's own sequence, whatever the machine's speed.
        r = {"kill_at": self.rng.randint(0, 14), "victim": self.rng.choice(["old", "new"]),
             "reload_done": False}
        old_ids = {w.id for w in live_workers()}
        pending = {"reload", "kill"}
        seen = [0]

        def step_done(what):
            pending.discard(what)
            if not pending:
                self.on_event = None
                self.waiting_for_fleet = fleet_whole
                fleet_whole()

        def reloaded():
            r["reload_done"] = True
            if "kill" in pending and "killed" not in r:
                kill("reload done")
            step_done("reload")

        def on_event(name):
            seen[0] += 1
            if seen[0] == r["kill_at"] and "killed" not in r:
                kill(name)

        def kill(when):
            alive = live_workers()
            pick = [w for w in alive if (w.id in old_ids) == (r["victim"] == "old")] or alive
            victim = self.rng.choice(sorted(pick, key=lambda w: w.id))
            r["killed"] = [when, "old" if victim.id in old_ids else "new", victim.state]
            victim.once("exit", lambda *_: step_done("kill"))
            try:
                os.kill(victim.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass        # reaped already (a retiring worker): its 'exit' is on its way

        def fleet_whole():
            alive = live_workers()
            if len(alive) != SIZE or any(w.id in old_ids or w.state != "listening"
                                         for w in alive):
                return                   # respawns still on their way
            self.waiting_for_fleet = None
            pids = {w.process.pid for w in alive}

            def served(seen, errors):
                r["every_worker_served"] = seen == pids
                r["errors"] = errors
                self.results.append(r)
                self.next_round()

            check_serving(self.port, served)

        self.on_event = on_event
        cluster.reload(reloaded)
        if r["kill_at"] == 0:
            kill("reload()")

    def finish(self):
        report = {"rounds": self.results, "fds_start": self.fds_start,
                  "fds_end": fd_count()}
        print(json.dumps(report), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


class BadDeploy:
    def __init__(self):
        self.log = []
        self.started = False
        self.crashes = 0

    def on_listening(self, worker, address):
        self.port = address[1]
        if not self.started and fleet_listening():
            self.started = True
            self.old = {w.process.pid for w in live_workers()}
            cluster.setup_primary(args=["crash"])
            cluster.reload(lambda: self.log.append("bad reload callback"))

    def on_exit(self, worker, code, sig):
        if code == 3:
            self.crashes += 1
            if self.crashes == 3:
                check_serving(self.port, self.old_still_serving)

    def old_still_serving(self, pids, errors):
        self.log.append({"crashes": self.crashes, "served_by_old": pids == self.old,
                         "errors": errors})
        cluster.setup_primary(args=["bad"])
        cluster.reload(self.good_reload_done)

    def good_reload_done(self):
        new = {w.process.pid for w in live_workers()}
        self.log.append({"replaced": len(new) == SIZE and not new & self.old})
        print(json.dumps({"log": self.log, "crashes": self.crashes}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


if cluster.is_primary:
    if MODE == "kill":
        plan = Rounds(int(sys.argv[2]), int(sys.argv[3]))
    else:
        plan = BadDeploy()
        cluster.on("exit", plan.on_exit)
    cluster.on("listening", plan.on_listening)
    cluster.supervise(SIZE, graceful_timeout=5, backoff=(0.05, 0.2))
    print(json.dumps({"stopped": True, "children": children()}), flush=True)
else:
    if sys.argv[1:] == ["crash"]:
        raise SystemExit(3)
    server = net.create_server(lambda sock: serve_lines(sock, lambda line: f"pong {os.getpid()}"))
    server.listen(0, "127.0.0.1")
    cluster.run()
