"""How loaded each worker is (requests in flight, loop lag, the SCHED_RR
backlog, the latency histogram by status class) in `cluster-ext status` and
on /metrics, and what a reload cost its clients in `cluster-ext reload` and
the primary's log: `cluster-ext run webapp:app` with real HTTP clients."""
import http.client
import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import free_port
from test_ops import ask, command, sockdir, status, status_until  # noqa: F401  (a fixture)
from test_web import cli, get, serving, stop, until

pytest.importorskip("uvicorn")

LAG_PROBE = 0.1      # cluster_ext._saturation's: a stall shows as itself minus up to this


def worker_row(figures, pid):
    [row] = [w for w in figures["workers"] if w["pid"] == pid]
    return row


def metrics(port):
    """Every sample of /metrics, parsed by prometheus_client: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families
    code, _, body = get(port, "/metrics")
    assert code == 200, body
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(body)
            for s in family.samples]


def per_worker(samples, name):
    return {int(labels["pid"]): value for n, labels, value in samples if n == name}


def observed(app, folder, *options):
    """webapp served with its control socket (in folder) and /metrics: (the
    process, its port, the socket's path, /metrics' port)."""
    pytest.importorskip("prometheus_client")
    path, metrics_port = folder / "ctl.sock", free_port()
    a, port = cli(app, "webapp:app", "--control", str(path),
                  "--metrics", f"127.0.0.1:{metrics_port}", *options)
    serving(a)
    return a, port, path, metrics_port


def open_request(port, path):
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return client


def test_requests_held_open_are_in_flight_on_their_worker(app, sockdir):  # noqa: F811
    a, port, path, metrics_port = observed(app, sockdir)
    clients = [open_request(port, "/slow?s=30") for _ in range(5)]
    try:
        held = {}
        for _ in clients:                      # "slow begins <pid>", once the app runs it
            pid = int(until(a, "slow begins").split()[-1])
            held[pid] = held.get(pid, 0) + 1
        figures = status(path)
        assert {w["pid"]: w["in_flight"] for w in figures["workers"]} == held, figures
        assert per_worker(metrics(metrics_port),
                          "cluster_ext_worker_requests_in_flight") == held
    finally:
        for client in clients:
            client.close()
    # a client that leaves takes its request out of flight
    status_until(path, lambda f: all(w["in_flight"] == 0 for w in f["workers"]))
    stop(a)


def test_a_blocked_loop_shows_its_lag(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path), workers=1)
    serving(a, 1)
    code, _, body = get(port, "/block?s=0.6")
    assert code == 200, body
    pid = int(body.split()[2])
    lag = worker_row(status(path), pid)["loop_lag"]
    assert 0.6 - LAG_PROBE <= lag < 5, lag
    code, out, err = command("status", str(path))
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(f"1   {pid}")
               or line.split()[:2] == ["1", str(pid)])
    assert re.search(r"\s(5\d\d|6\d\d)ms\s", row), out
    stop(a)


def test_the_latency_histogram_counts_by_status_class_and_survives_a_reload(app, sockdir):  # noqa: F811
    a, port, path, metrics_port = observed(app, sockdir)
    for _ in range(6):
        assert get(port)[0] == 200
    for _ in range(3):
        assert get(port, "/nothing")[0] == 404
    assert get(port, "/slow?s=0.3")[0] == 200     # one past the 0.25 s bucket

    def histogram():
        samples = metrics(metrics_port)
        found = {}
        for name, labels, value in samples:
            if name.startswith("cluster_ext_request_duration_seconds"):
                by_class = found.setdefault(labels["status_class"], {"buckets": []})
                if name.endswith("_bucket"):
                    by_class["buckets"].append((float(labels["le"]), value))
                else:
                    by_class[name.rsplit("_", 1)[1]] = value
        return found

    found = histogram()
    assert set(found) == {"2xx", "4xx"}, found
    assert found["2xx"]["count"] == 7 and found["4xx"]["count"] == 3, found
    for by_class in found.values():
        bounds = [bound for bound, _ in by_class["buckets"]]
        counts = [count for _, count in by_class["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), by_class
        assert counts == sorted(counts), by_class          # cumulative
        assert counts[-1] == by_class["count"], by_class
        assert 0 < by_class["sum"] < by_class["count"] * 5, by_class
    buckets = dict(found["2xx"]["buckets"])
    assert buckets[0.25] == 6 and buckets[0.5] == 7, found   # the slow one, and only it
    assert found["2xx"]["sum"] >= 0.3, found
    json_histogram = status(path)["request_duration"]
    assert {k: v["count"] for k, v in json_histogram.items()} == {"2xx": 7, "4xx": 3}

    code, out, err = command("reload", str(path))            # every worker replaced
    assert code == 0, (out, err)
    assert get(port, "/nothing")[0] == 404
    after = histogram()
    assert after["2xx"]["count"] == 7 and after["4xx"]["count"] == 4, after
    assert after["2xx"]["sum"] == pytest.approx(found["2xx"]["sum"]), after
    stop(a)


def test_the_rr_backlog_of_a_stopped_worker(app, sockdir):  # noqa: F811
    """A stopped worker is handed connections (before it is seen behind)
    that it does not take: they are its backlog, exactly, until it resumes."""
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path), "--sched", "rr")
    serving(a)
    figures = status(path)
    assert [w["rr_backlog"] for w in figures["workers"]] == [0, 0], figures
    stopped = figures["workers"][0]["pid"]
    os.kill(stopped, signal.SIGSTOP)
    clients = []
    try:
        for _ in range(8):
            clients.append(open_request(port, "/"))
        backlog = worker_row(status(path), stopped)["rr_backlog"]
        assert backlog >= 1, backlog
    finally:
        os.kill(stopped, signal.SIGCONT)
    answered_by_stopped = 0
    for client in clients:
        with client, client.makefile("rb") as reply:
            assert reply.readline().startswith(b"HTTP/1.1 200 "), "unanswered"
            while reply.readline() not in (b"\r\n", b""):
                pass
            answered_by_stopped += int(reply.readline().split()[2]) == stopped
    assert backlog == answered_by_stopped
    status_until(path, lambda f: all(w["rr_backlog"] == 0 for w in f["workers"]))
    stop(a)


def test_under_sched_none_there_is_no_rr_backlog(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path), "--sched", "none")
    serving(a)
    assert [w["rr_backlog"] for w in status(path)["workers"]] == [None, None]
    stop(a)


def load(port, done, outcomes, limit=5000, seconds=30):
    """Requests one after another until done is set (bounded): half on one
    kept-alive connection, half a connection each."""
    deadline = time.monotonic() + seconds
    conn = None
    for n in range(limit):
        if done.is_set() or time.monotonic() > deadline:
            return
        try:
            if n % 2:
                outcomes.append(get(port)[0])
            else:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                outcomes.append(get(port, conn=conn)[0])
        except (OSError, http.client.HTTPException) as exc:
            outcomes.append(repr(exc))
            if conn is not None:
                conn.close()
            conn = None


def test_a_reload_under_load_reports_nothing_lost(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    done, outcomes = threading.Event(), []
    loader = threading.Thread(target=load, args=(port, done, outcomes))
    loader.start()
    try:
        code, out, err = command("reload", str(path))
    finally:
        done.set()
        loader.join(40)
    assert code == 0, (out, err)
    assert re.fullmatch(r"reloaded in \d+\.\d s: 0 connections reset, 0 requests failed\n",
                        out), out
    assert outcomes and set(outcomes) == {200}, [o for o in outcomes if o != 200]
    line = until(a, "reload done in")
    assert re.search(r"reload done in \d+\.\d s: 2 workers replaced, 0 connections reset, "
                     r"0 requests failed$", line), line
    stop(a)


def test_a_request_past_the_graceful_timeout_is_reported_failed(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path), "--graceful-timeout", "1",
                  workers=1)
    serving(a, 1)
    with open_request(port, "/slow?s=5") as client:
        until(a, "slow begins")
        code, out, err = command("reload", str(path))
        assert client.recv(100) == b""           # cut, unanswered
    assert code == 0, (out, err)
    reset, failed = map(int, re.fullmatch(
        r"reloaded in \d+\.\d s: (\d+) connections reset, (\d+) requests failed\n", out).groups())
    assert reset >= 1 and failed >= 1, out
    line = until(a, "reload done in")
    assert f"1 workers replaced, {reset} connections reset, {failed} requests failed" in line, \
        line
    stop(a)
