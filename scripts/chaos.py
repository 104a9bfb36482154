"""Chaos: a web application under `cluster-ext run`, loaded by HTTP clients,
while workers are SIGKILLed, SIGSTOPped and SIGCONTed, reloads (SIGHUP) and
resizes (SIGTTIN, SIGTTOU) come at seeded random moments; then a graceful stop.

  .venv/bin/python scripts/chaos.py [--seconds 60] [--seed 1] [--workers 2]
                                    [--clients 4] [--sched rr|none] [--json]

Every request is a GET of examples/asgi_app.py, which answers with the pid
of the worker that served it. Half of the clients keep their connection
alive, half open one per request. A failure is laid at a kill's door when
the connection's last answer came from the worker that was killed, or a kill
fell within the failed request's time, or the request was made between a
kill and the death the primary saw (a SIGKILLed worker takes a moment to
die, and is handed connections until then); every other failure happened on a
graceful path (reload, resize, stop, a stopped and continued worker) and
fails the run. The run also fails unless the primary's descriptors are the
same at the end as at the start, its RSS has not grown by more than
RSS_SLACK_KIB, no child of the primary is a zombie, no worker outlives the
primary, and the primary exits 0.

127.0.0.1 only; bounded: --seconds of chaos, then the stop within
--graceful-timeout. Exit status 0 when every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.asgi_app:app"
RSS_SLACK_KIB = 2048            # allocator noise; a leak grows with the run
STOP_AT_MOST = 2.0              # seconds a worker stays SIGSTOPped
CLIENT_TIMEOUT = 15.0           # longer than a stop: a stopped worker is slow, not lost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def control(path: str, line: str) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the primary closed the control connection")
            reply += chunk
    return json.loads(reply)


def proc_figures(pid: int) -> tuple[int, int]:
    """(open descriptors, RSS in KiB) of a process. The fewest descriptors of
    a few looks: the primary closes its end of our last control connection
    a moment after we close ours."""
    fds = min(len(os.listdir(f"/proc/{pid}/fd")) for _ in range(20)
              if time.sleep(0.02) is None)
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def children(pid: int) -> dict[int, str]:
    """The children of pid and their states (R, S, T, Z...)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid:
            found[int(entry)] = fields[0].decode()
    return found


class Clients:
    """HTTP clients in threads: every answer and every failure, timed."""

    def __init__(self, port: int, count: int, deadline: float) -> None:
        self.port, self.deadline = port, deadline
        self.lock = threading.Lock()
        self.served = 0
        # start, end, pid of the connection's last answer, why; and for the
        # report: the wall-clock start and whether the client keeps alive
        self.failures: list[tuple[float, float, int | None, str]] = []
        self.details: list[tuple[float, bool]] = []
        self.pids: set[int] = set()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i % 2 == 0,), daemon=True)
                        for i in range(count)]
        for t in self.threads:
            t.start()

    def client(self, keep_alive: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        last_pid: int | None = None
        while not self.done.is_set() and time.monotonic() < self.deadline:
            started, wall = time.monotonic(), time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=CLIENT_TIMEOUT)
                    last_pid = None
                conn.request("GET", "/", headers={} if keep_alive else {"Connection": "close"})
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                last_pid = int(body.rsplit("pid ", 1)[1])
                with self.lock:
                    self.served += 1
                    self.pids.add(last_pid)
                if not keep_alive or response.getheader("connection") == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
                with self.lock:
                    self.failures.append((started, time.monotonic(), last_pid, repr(exc)))
                    self.details.append((wall, keep_alive))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT + 5)


class Chaos:
    """The primary, its control socket, and what was done to its workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.scratch = tempfile.mkdtemp(prefix="cx-chaos-", dir="/tmp")
        self.control = os.path.join(self.scratch, "control.sock")
        self.log = open(os.path.join(self.scratch, "primary.log"), "w+")
        # The console script, as the README runs it: in the repository's root,
        # `python -m cluster_ext` would find the unbuilt source tree first.
        cmd = [str(Path(sys.executable).parent / "cluster-ext"), "run", "-w", str(args.workers),
               "--sched", args.sched, "--bind", f"127.0.0.1:{self.port}",
               "--graceful-timeout", str(args.graceful_timeout), "--control", self.control,
               APP]
        self.primary = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.kills: list[tuple[float, int]] = []       # (when, pid) SIGKILLed
        self.actions: dict[str, int] = {}
        self.all_pids: set[int] = set()
        self.timeline: list[tuple[float, str]] = []    # (wall clock, what was done)

    def status(self) -> dict:
        return control(self.control, "status")

    def wait_ready(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.primary.poll() is not None:
                raise SystemExit(f"the primary exited {self.primary.returncode}: "
                                 f"{self.read_log()[-2000:]}")
            try:
                figures = self.status()
                if figures["primary"]["state"] == "ready":
                    self.all_pids.update(w["pid"] for w in figures["workers"])
                    return figures
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready within {timeout} s: {self.read_log()[-2000:]}")
            time.sleep(0.05)

    def read_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def workers(self) -> list[dict]:
        workers = [w for w in self.status()["workers"] if w["state"] == "listening"]
        self.all_pids.update(w["pid"] for w in workers)
        return workers

    def act(self) -> None:
        """One seeded random action on the fleet."""
        workers = self.workers()
        size = len(workers)
        choices = ["kill", "stop", "reload", "grow", "shrink"]
        weights = [3, 3, 2, 1 if size < 4 else 0, 1 if size > 1 else 0]
        action = self.rng.choices(choices, weights)[0]
        self.actions[action] = self.actions.get(action, 0) + 1
        self.timeline.append((time.time(), action))
        # a worker listed by status may have ended since (a reload retired it)
        if action == "kill" and workers:
            pid = self.rng.choice(workers)["pid"]
            self.kills.append((time.monotonic(), pid))
            self.timeline[-1] = (time.time(), f"kill {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif action == "stop" and workers:
            pid = self.rng.choice(workers)["pid"]
            self.timeline[-1] = (time.time(), f"stop {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                time.sleep(self.rng.uniform(0.1, STOP_AT_MOST))
                os.kill(pid, signal.SIGCONT)
                self.timeline.append((time.time(), f"cont {pid}"))
        elif action == "reload":
            os.kill(self.primary.pid, signal.SIGHUP)
        elif action == "grow":
            os.kill(self.primary.pid, signal.SIGTTIN)
        elif action == "shrink":
            os.kill(self.primary.pid, signal.SIGTTOU)

    def deaths(self) -> dict[int, float]:
        """When the primary saw each killed worker die (monotonic time, from
        its log): a worker dies some time after its SIGKILL, up to a second
        on a loaded machine, and is handed connections until then."""
        offset = time.time() - time.monotonic()
        pids: dict[str, int] = {}
        seen: dict[int, float] = {}
        for line in self.read_log().splitlines():
            words = line.split()
            if "forked (pid" in line:
                pids[words[4]] = int(words[7].rstrip(")"))
            elif "exited (signal SIGKILL" in line and words[4] in pids:
                wall = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                seen[pids[words[4]]] = wall + int(line[20:23]) / 1000 - offset
        return seen

    def killed(self, failure: tuple[float, float, int | None, str],
               deaths: dict[int, float]) -> bool:
        """Whether a failure belongs to a connection of a killed worker: the
        worker last answered it, or the failure overlaps the time from the
        kill to the death (0.1 s either side)."""
        started, ended, pid, _ = failure
        return any(p == pid or (started - 0.1 <= deaths.get(p, when) and when <= ended + 0.1)
                   for when, p in self.kills)


def stamp(wall: float) -> str:
    """wall as the log's asctime stamps it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)) + f",{int(wall % 1 * 1000):03d}"


def described(failure: tuple[float, float, int | None, str], detail: tuple[float, bool]) -> str:
    started, ended, pid, why = failure
    wall, keep_alive = detail
    kind = "keep-alive" if keep_alive else "connection per request"
    return (f"{why} at {stamp(wall)} after {ended - started:.3f} s, {kind}, "
            f"last answered by {pid}")


def around(log: str, start: float, end: float) -> str:
    """The log's stamped lines from start to end (wall-clock seconds)."""
    low, high = stamp(start), stamp(end)
    return "\n".join(line for line in log.splitlines() if low <= line[:23] <= high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sched", choices=("rr", "none"), default="rr")
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="the report as one JSON object")
    args = parser.parse_args()

    chaos = Chaos(args)
    clients = None
    try:
        figures = chaos.wait_ready()
        fds_start, rss_start = proc_figures(chaos.primary.pid)
        chaos_end = time.monotonic() + args.seconds
        clients = Clients(chaos.port, args.clients, chaos_end + 30)
        while time.monotonic() < chaos_end:
            time.sleep(chaos.rng.uniform(0.2, 1.5))
            chaos.act()
        # quiet: the fleet goes back to its first size and settles, every
        # worker serving again (the same number of workers: the same fds)
        control(chaos.control, f"scale {args.workers}")
        settled = time.monotonic() + args.graceful_timeout + 30
        figures = chaos.wait_ready(timeout=args.graceful_timeout + 30)
        while len(figures["workers"]) != args.workers:
            if time.monotonic() > settled:
                raise SystemExit(f"the fleet did not go back to {args.workers} workers: "
                                 f"{figures['workers']}\n{chaos.read_log()[-2000:]}")
            time.sleep(0.05)
            figures = chaos.wait_ready(timeout=args.graceful_timeout + 30)
        served_before = clients.served
        deadline = time.monotonic() + 10
        while clients.served < served_before + 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        fds_end, rss_end = proc_figures(chaos.primary.pid)
        zombies = [pid for pid, state in children(chaos.primary.pid).items() if state == "Z"]
        clients.stop()
        chaos.primary.send_signal(signal.SIGTERM)
        code = chaos.primary.wait(args.graceful_timeout + 15)
    finally:
        if clients is not None:
            clients.stop()
        if chaos.primary.poll() is None:
            chaos.primary.kill()
            chaos.primary.wait()
    survivors = sorted(pid for pid in chaos.all_pids if os.path.exists(f"/proc/{pid}"))
    deaths = chaos.deaths()
    on_kills = [f for f in clients.failures if chaos.killed(f, deaths)]
    graceful = [(f, d) for f, d in zip(clients.failures, clients.details, strict=True)
                if not chaos.killed(f, deaths)]
    report = {
        "seconds": args.seconds, "seed": args.seed, "sched": args.sched,
        "actions": chaos.actions, "requests_served": clients.served,
        "requests_failed": len(clients.failures), "failed_on_killed_workers": len(on_kills),
        "failed_on_graceful_paths": len(graceful),
        "graceful_failures": [described(f, d) for f, d in graceful[:10]],
        "restarts": figures["primary"]["restarts"], "reloads": figures["primary"]["reloads"],
        "workers_seen": len(chaos.all_pids | clients.pids),
        "primary_fds": [fds_start, fds_end], "primary_rss_kib": [rss_start, rss_end],
        "zombies": len(zombies), "workers_outliving_the_primary": survivors,
        "exit_status": code,
    }
    checks = {
        "no failure on a graceful path": not graceful,
        "requests served": clients.served > 0,
        "descriptors flat": fds_end <= fds_start,     # fewer: slow to close at the start
        "RSS flat": rss_end - rss_start <= RSS_SLACK_KIB,
        "no zombie": not zombies,
        "no worker outlives the primary": not survivors,
        "exit status 0": code == 0,
    }
    report["failed_checks"] = [name for name, ok in checks.items() if not ok]
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
    if report["failed_checks"]:
        log = chaos.read_log()
        if graceful:        # the primary's log around each: what the fleet was doing
            for (started, ended, _, _), (wall, _) in graceful[:3]:
                print(around(log, wall - 2, wall + ended - started + 1), file=sys.stderr)
                print("chaos:", [(stamp(t), what) for t, what in chaos.timeline
                                 if wall - 3 <= t <= wall + ended - started + 1],
                      file=sys.stderr)
        else:
            print(log[-3000:], file=sys.stderr)
    return 1 if report["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
