#!/usr/bin/env python3
"""Recycling under load: `cluster-ext run --max-requests` beside gunicorn's
--max-requests (its UvicornWorker, the same uvicorn protocol), each with two
workers serving examples/asgi_app.py, driven by wrk for a while, keep-alive
and with a connection per request. N is set so that each worker is recycled
about once a second. Prints, for each server and load: requests, failed
requests (wrk's socket errors and non-2xx answers), and workers recycled (as
each server logs them); the
last line is one JSON object.

    python3 bench/recycle_under_load.py [--python .venv/bin/python] [--seconds 60]
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

# The servers run in examples/: in the repository's root, the unbuilt source
# tree would shadow the installed package for gunicorn's workers.
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {seconds} s")


def command(py, server, port, max_requests):
    bind = f"127.0.0.1:{port}"
    recycle = ["--max-requests", str(max_requests), "--max-requests-jitter",
               str(max_requests // 10)]
    if server == "cluster_ext":
        return [os.path.join(os.path.dirname(py), "cluster-ext"), "run", "-w", "2", "--bind",
                bind, *recycle, "asgi_app:app"]
    return [py, "-m", "gunicorn", "-w", "2", "-k", "uvicorn.workers.UvicornWorker", "-b", bind,
            "--log-level", "info", *recycle, "asgi_app:app"]


def wrk(port, seconds, close):
    cmd = ["wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out)[1])
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx[1]) if non2xx else 0)
    return requests, failed


def run(py, server, seconds, close, max_requests):
    port = free_port()
    log = open(f"/tmp/recycle-{server}-{os.getpid()}.log", "w+")
    proc = subprocess.Popen(command(py, server, port, max_requests), cwd=EXAMPLES, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port)
        requests, failed = wrk(port, seconds, close)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    log.seek(0)
    if server == "cluster_ext":
        recycled = sum("recycled in" in line for line in log)
    else:                                # the arbiter's boots, less the first two
        recycled = sum("Booting worker" in line for line in log) - 2
    log.close()
    os.unlink(log.name)
    return {"server": server, "load": "close" if close else "keep-alive",
            "requests": requests, "failed": failed, "recycled": recycled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    py = os.path.abspath(args.python)
    rows = []
    for close in (False, True):
        # Each worker recycled about once a second: its share of a short trial's rate.
        port = free_port()
        proc = subprocess.Popen(command(py, "cluster_ext", port, 10**9), cwd=EXAMPLES,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            wait_port(port)
            trial, _ = wrk(port, 3, close)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        max_requests = max(100, trial // 3 // 2)
        for server in ("cluster_ext", "gunicorn"):
            row = run(py, server, args.seconds, close, max_requests)
            row["max_requests"] = max_requests
            rows.append(row)
            print(f"{row['server']:12} {row['load']:10} max-requests {max_requests:6}  "
                  f"requests {row['requests']:8}  failed {row['failed']:6}  "
                  f"recycled {row['recycled']}",
                  flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
