"""Helpers shared by the disc_*.py scenario apps (imported, never run)."""
import os
import sys
import threading

import cluster_ext as cluster


def say(*parts):
    """One line for the test, in one write: workers share the primary's stdout,
    and print() makes two writes (text, newline) under PYTHONUNBUFFERED, which
    lets another process's line slip in between."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def say_when_listening(count):
    """Primary: 'LISTENING <port>' once count workers listen."""
    seen = []

    @cluster.on("listening")
    def listening(worker, address):
        seen.append(worker.id)
        if len(seen) == count:
            say("LISTENING", address[1])


def run_until_told(workers):
    """Primary: forks the workers, says 'exit <id> <code>' for each, and
    disconnects them all on the test's 'disconnect' command; runs the loop."""
    cluster.on("exit", lambda w, code, sig: say("exit", w.id, code))
    on_commands(lambda words: words == ["disconnect"] and cluster.disconnect())
    for _ in range(workers):
        cluster.fork()
    cluster.run()


def set_policy(name):
    cluster.scheduling_policy = {"rr": cluster.SCHED_RR, "none": cluster.SCHED_NONE}[name]


def stream_to_primary(batch, max_size):
    """Worker: batch messages of random sizes up to max_size a loop turn,
    for as long as the process lives; what comes back is dropped."""
    import random

    def stream():
        for _ in range(batch):
            cluster.worker.send({"blob": "x" * random.randint(1, max_size)})
        cluster.call_later(0, stream)

    cluster.worker.on("message", lambda msg, handle: None)
    stream()


def on_commands(handler):
    """Primary: the test writes commands on our stdin, one a line; each runs
    as handler(words) on the loop's thread, and ['eof'] once stdin closes.
    A daemon thread with os.read (no buffered stdin lock held at exit): the
    primary's loop must never block on anything but itself."""
    def reader():
        buf = b""
        while True:
            chunk = os.read(0, 4096)
            if not chunk:
                cluster.call_soon_threadsafe(handler, ["eof"])
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cluster.call_soon_threadsafe(handler, line.decode().split())

    threading.Thread(target=reader, daemon=True).start()


def serve_lines(sock, answer):
    """Writes answer(line) + newline for every line that comes on a net.Socket
    (a line may arrive in pieces, or several in one chunk)."""
    buf = [b""]

    def on_data(data):
        buf[0] += data
        while b"\n" in buf[0]:
            line, buf[0] = buf[0].split(b"\n", 1)
            sock.write(answer(line.decode()) + "\n")

    sock.on("data", on_data)


def show(value):
    """One word for the test: 'Signals.SIGTERM' for a signal.Signals (a bare
    int would show as '15'), repr() for anything else."""
    import signal
    if isinstance(value, signal.Signals):
        return f"Signals.{value.name}"
    return repr(value)
