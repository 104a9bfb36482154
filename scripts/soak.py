"""Soak: a long, bounded run that has to leave the primary where it began.

  .venv/bin/python scripts/soak.py [--cycles 1000] [--messages 1000000]
                                   [--connections 100000] [--rounds 2]

Three phases, each first at a small scale (warm-up: imports and caches
settle) and then at full scale, --rounds times over:
  cycles       workers forked and disconnected (exec'ed and fork(target=)
               alternately, two lanes at once);
  messages     two workers, requests and replies both ways, windows of
               1,000, payloads from 20 B to 64 KiB (total = --messages);
  connections  two workers serving one port (SCHED_RR: every connection
               passes through the primary), a client process with 4 threads;
               1 in 100 clients resets its connection instead of reading.
After each phase the primary's descriptor count, its RSS and its zombie
children are printed. Flat is the only pass: the same descriptors
throughout, RSS within RSS_SLACK_KIB of the start (the allocator's high
water is reached in the first round) and within ROUND_SLACK_KIB from one
full round to the next (a leak grows with the work), no zombie, every
cycle, message and connection accounted for; the exit status says which.
Not part of CI (minutes, not seconds)."""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import cluster_ext as cluster
from cluster_ext import net

RSS_SLACK_KIB = 1024
ROUND_SLACK_KIB = 256
WINDOW = 1000


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def zombies() -> int:
    count = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as st:
                        count += st.read().rsplit(")", 1)[1].split()[0] == "Z"
                except FileNotFoundError:
                    pass
    return count


def snapshot() -> dict:
    gc.collect()
    # Free heap pages go back to the system: RSS then follows live memory,
    # not the allocator's high water of the last 64 KiB message.
    ctypes.CDLL(None).malloc_trim(0)
    return {"fds": fd_count(), "rss_kib": rss_kib(), "zombies": zombies()}


# ---- the phases (primary) -------------------------------------------------------------

def cycles(total: int, done) -> None:
    """Two lanes of fork -> 'online' -> disconnect() -> 'exit'."""
    started = [0]
    finished = {"cycles": 0, "bad_exits": 0}

    def lane() -> None:
        if started[0] == total:
            if finished["cycles"] == total:
                done(finished)
            return
        started[0] += 1
        w = cluster.fork(target=idle_worker) if started[0] % 2 else cluster.fork(
            env={"SOAK_ROLE": "idle"})
        w.once("online", w.disconnect)

        @w.once("exit")
        def exited(code, sig):
            finished["cycles"] += 1
            finished["bad_exits"] += code != 0 or sig is not None
            lane()

    lane()
    lane()


def messages(total: int, done) -> None:
    """Two workers; each sends total/4 requests in windows and gets as many
    replies: total messages in all."""
    per_worker = total // 4
    result = {"messages": 0, "bad": 0}
    finished = []
    for _ in range(2):
        w = cluster.fork(env={"SOAK_ROLE": "messages", "SOAK_COUNT": str(per_worker)})

        @w.on("message")
        def on_message(msg, handle, w=w):
            if "report" in msg:
                result["messages"] += msg["report"]["sent"] + msg["report"]["got"]
                result["bad"] += msg["report"]["bad"]
                w.disconnect()
                return
            w.send({"seq": msg["seq"], "echo": msg["body"]})

        @w.on("exit")
        def exited(code, sig):
            finished.append((code, sig))
            if len(finished) == 2:
                result["bad"] += sum(c != 0 or s is not None for c, s in finished)
                done(result)


def connections(total: int, done) -> None:
    """Two serving workers; a client process makes total connections."""
    workers = [cluster.fork(env={"SOAK_ROLE": "server"}) for _ in range(2)]
    listening = []

    def client(port: int) -> None:
        out = subprocess.run([sys.executable, __file__, "--client", str(port), str(total)],
                             stdout=subprocess.PIPE, check=True).stdout
        cluster.call_soon_threadsafe(finish, json.loads(out))

    def finish(result: dict) -> None:
        exits = []

        def exited(code, sig):
            exits.append(code != 0 or sig is not None)
            if len(exits) == 2:
                done({**result, "bad_exits": sum(exits)})

        for w in workers:
            w.on("exit", exited)
            w.disconnect()

    @cluster.on("listening")
    def on_listening(w, address):
        listening.append(w.id)
        if len(listening) == 2:
            cluster.off("listening", on_listening)
            threading.Thread(target=client, args=(address[1],), daemon=True).start()


# ---- the workers ------------------------------------------------------------------------

def idle_worker() -> None:
    pass


def message_worker() -> None:
    count = int(os.environ["SOAK_COUNT"])
    state = {"sent": 0, "got": 0, "bad": 0}
    bodies = ["x" * 20, "y" * 2000, "z" * 65536]

    def body(seq: int) -> str:
        return bodies[2] if seq % 1000 == 999 else bodies[seq % 2]

    def send_window() -> None:
        for _ in range(min(WINDOW, count - state["sent"])):
            cluster.worker.send({"seq": state["sent"], "body": body(state["sent"])})
            state["sent"] += 1

    @cluster.worker.on("message")
    def reply(msg, handle):
        state["bad"] += msg["echo"] != body(msg["seq"]) or msg["seq"] != state["got"]
        state["got"] += 1
        if state["got"] == count:
            cluster.worker.send({"report": state})
        elif state["got"] == state["sent"]:
            send_window()

    send_window()


def server_worker() -> None:
    def on_connection(sock):
        sock.on("data", lambda data: sock.end(b"pong\n"))
        sock.on("error", lambda exc: None)    # the resetting clients
    net.create_server(on_connection).listen(0, "127.0.0.1")


# ---- the client process -------------------------------------------------------------------

def client_main(port: int, total: int) -> None:
    counts = {"served": 0, "reset_by_us": 0, "failed": 0}
    lock = threading.Lock()
    linger0 = struct.pack("ii", 1, 0)

    def run(n: int, offset: int) -> None:
        mine = {"served": 0, "reset_by_us": 0, "failed": 0}
        for i in range(n):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    c.sendall(b"ping\n")
                    if (offset + i) % 100 == 99:
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                        mine["reset_by_us"] += 1
                        continue
                    reply = c.recv(16)
                    mine["served" if reply == b"pong\n" else "failed"] += 1
            except OSError:
                mine["failed"] += 1
        with lock:
            for k, v in mine.items():
                counts[k] += v

    threads = [threading.Thread(target=run, args=(total // 4, k * (total // 4)))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts))


# ---- the primary ---------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    plan = [("cycles", cycles, args.cycles), ("messages", messages, args.messages),
            ("connections", connections, args.connections)]
    warmup = [(name + " (warm-up)", fn, max(4, n // 100)) for name, fn, n in plan]
    steps = warmup + plan * args.rounds
    cold = snapshot()
    report = {"cold": cold, "phases": []}
    print(f"cold start: {cold['fds']} fds, RSS {cold['rss_kib']} KiB", flush=True)

    def run_step(i: int) -> None:
        if i == len(steps):
            cluster.stop()
            return
        name, fn, n = steps[i]
        t0 = time.monotonic()

        def done(result: dict) -> None:
            after = snapshot()
            took = time.monotonic() - t0
            report["phases"].append({"phase": name, "n": n, "seconds": round(took, 1),
                                     "result": result, **after})
            print(f"{name:24} {n:>9,} in {took:6.1f} s ({n / took:>9,.0f}/s)   "
                  f"fds {after['fds']:3}   RSS {after['rss_kib']:7} KiB   "
                  f"zombies {after['zombies']}   {json.dumps(result)}", flush=True)
            cluster.call_later(0, run_step, i + 1)

        fn(n, done)

    cluster.call_later(0, run_step, 0)
    cluster.run()
    phases = report["phases"]
    start = phases[len(warmup) - 1]               # after the warm-up
    rounds_end = phases[len(warmup) + len(plan) - 1::len(plan)]
    end = phases[-1]
    problems = []
    if any(p["fds"] != start["fds"] for p in phases):
        problems.append(f"descriptors {[p['fds'] for p in phases]}")
    if end["rss_kib"] - start["rss_kib"] > RSS_SLACK_KIB:
        problems.append(f"RSS {start['rss_kib']} -> {end['rss_kib']} KiB")
    for before, after in zip(rounds_end, rounds_end[1:], strict=False):
        if after["rss_kib"] - before["rss_kib"] > ROUND_SLACK_KIB:
            problems.append(f"RSS grew by round: {[p['rss_kib'] for p in rounds_end]} KiB")
            break
    if any(p["zombies"] for p in phases):
        problems.append("zombies")
    for i in range(len(warmup), len(phases), len(plan)):
        c, m, k = (p["result"] for p in phases[i:i + len(plan)])
        if c["cycles"] != args.cycles or c["bad_exits"]:
            problems.append(f"cycles {c}")
        if m["messages"] != args.messages // 4 * 4 or m["bad"]:
            problems.append(f"messages {m}")
        expected = args.connections // 4 * 4
        if k["served"] + k["reset_by_us"] != expected or k["failed"] or k["bad_exits"]:
            problems.append(f"connections {k}")
    print(f"start (after warm-up): {start['fds']} fds, RSS {start['rss_kib']} KiB; "
          f"after each round: {[p['rss_kib'] for p in rounds_end]} KiB; "
          f"end: {end['fds']} fds, RSS {end['rss_kib']} KiB "
          f"({end['rss_kib'] - start['rss_kib']:+} KiB); zombies: "
          f"{max(p['zombies'] for p in phases)}")
    print("PASS: flat" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main(int(sys.argv[2]), int(sys.argv[3]))
    elif cluster.is_primary:
        sys.exit(main())
    else:
        role = os.environ.get("SOAK_ROLE", "idle")
        {"idle": idle_worker, "messages": message_worker, "server": server_worker}[role]()
        cluster.run()
