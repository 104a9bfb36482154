#!/usr/bin/env python3
"""Reload under load: `python -m cluster_ext run -w 4` serving the kit's
ping/pong protocol, driven by ../shared/bench/loadgen before, during and after
a rolling reload (SIGHUP). Prints the errors (must be 0), how long the reload
took, and conn/s in each phase; the last line is one JSON object.

    python3 bench/reload_under_load.py [--python .venv/bin/python] [--workers 4]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))


def loadgen_path():
    path = os.environ.get("LOADGEN") or os.path.join(KIT, "loadgen")
    if not os.path.exists(path):
        subprocess.run(["make", "-s", "-C", KIT], check=True)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The supervised cluster, its log lines timestamped as they come."""

    def __init__(self, python, workers, port):
        self.proc = subprocess.Popen(
            [python, "-m", "cluster_ext", "run", "-w", str(workers),
             os.path.join(HERE, "pong_app.py"), "--port", str(port)],
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines, self.cond = [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip()))
                self.cond.notify_all()

    def wait_count(self, text, count, timeout=60):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [t for t, line in self.lines if text in line]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit(f"no {count} x {text!r}:\n" +
                                     "\n".join(line for _, line in self.lines))
                self.cond.wait(left)


def load(loadgen, port, seconds):
    out = subprocess.run([loadgen, "-p", str(port), "-c", "64", "-d", str(seconds), "-w", "0"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    a = ap.parse_args()
    loadgen, port = loadgen_path(), free_port()
    c = Cluster(a.python, a.workers, port)
    try:
        c.wait_count("listening on", a.workers)
        before = load(loadgen, port, a.seconds)
        result = {}

        def reload_during():
            time.sleep(a.seconds / 4)               # load is flowing by then
            t0 = time.monotonic()
            os.kill(c.proc.pid, signal.SIGHUP)
            done = c.wait_count("as asked", a.workers)
            result["reload_s"] = round(done - t0, 3)

        reloader = threading.Thread(target=reload_during)
        reloader.start()
        during = load(loadgen, port, a.seconds * 2)
        reloader.join()
        after = load(loadgen, port, a.seconds)
    finally:
        os.kill(c.proc.pid, signal.SIGTERM)
        code = c.proc.wait(timeout=60)
    phases = {"before": before, "during": during, "after": after}
    errors = sum(p["errors"] for p in phases.values())
    print("| phase | conn/s | errors |")
    print("|---|---|---|")
    for name, p in phases.items():
        print(f"| {name} | {p['conns_per_s']:.0f} | {p['errors']} |")
    print(f"reload of {a.workers} workers: {result.get('reload_s')} s; errors: {errors}; "
          f"cluster exit code: {code}")
    print(json.dumps({"reload_under_load": {
        "workers": a.workers, "errors": errors, "reload_s": result.get("reload_s"),
        "conns_per_s": {k: round(p["conns_per_s"]) for k, p in phases.items()},
        "err_detail": {k: p["err"] for k, p in phases.items()}, "exit_code": code}}))
    return 0 if errors == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
