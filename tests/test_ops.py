"""Operating a running cluster: the control socket (`cluster-ext run
--control PATH` and the status, reload, scale and stop commands) and the
Prometheus endpoint (--metrics), through real processes, the commands run as a
user runs them, raw Unix sockets and real HTTP clients."""
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import free_port
from test_web import WEBAPPS, cli, get, serving, stop, until

pytest.importorskip("uvicorn")

SCRIPT = Path(sys.executable).parent / "cluster-ext"
COLUMNS = ["ID", "PID", "STATE", "AGE", "RESTARTS", "RSS", "CPU%", "CONNS", "SERVED",
           "REQUESTS", "IN-FLIGHT", "LAG", "BACKLOG", "MSGS IN/OUT"]


@pytest.fixture
def sockdir(tmp_path):
    """A folder for control sockets, short enough for AF_UNIX's 108 bytes."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    short = tempfile.mkdtemp(prefix="ops", dir="/tmp")
    try:
        yield Path(short)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def command(*args, module=False):
    """A client command as a user types it (the cluster-ext script, or
    python -m cluster_ext): (exit code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "cluster_ext", *args] if module else [str(SCRIPT), *args]
    # -m from the tests' directory: the root's own unbuilt tree would come first
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).parent)
    return done.returncode, done.stdout, done.stderr


def status(path, module=False):
    """`cluster-ext status PATH --json`, parsed."""
    code, out, err = command("status", str(path), "--json", module=module)
    assert code == 0, (out, err)
    figures = json.loads(out)
    assert figures["ok"] is True, figures
    return figures


def ask(path, data, count=1):
    """count reply lines to data, sent on a new connection to the control socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        with s.makefile("rb") as f:
            replies = []
            for _ in range(count):
                line = f.readline()
                assert line.endswith(b"\n"), (line, replies[-3:])
                replies.append(json.loads(line))
    return replies


def status_until(path, predicate, timeout=10):
    """The status figures (asked on a raw connection) once predicate holds."""
    deadline = time.monotonic() + timeout
    while True:
        figures = ask(path, b"status\n")[0]
        if predicate(figures):
            return figures
        assert time.monotonic() < deadline, figures


def table(text):
    """The head line of `cluster-ext status` and its rows as lists of cells."""
    head, columns, *rows = text.splitlines()
    assert re.split(r"\s{2,}", columns) == COLUMNS, text
    return head, [re.split(r"\s{2,}", row) for row in rows]


def until_all(a, texts, timeout=20):
    """Reads lines until each of texts has been in one, in any order."""
    waiting = set(texts)
    deadline = time.monotonic() + timeout
    while waiting:
        line = until(a, "", max(0.01, deadline - time.monotonic()))
        waiting = {text for text in waiting if text not in line}


# ---- the control socket ----------------------------------------------------------------

def test_status_shows_every_worker_with_its_figures(app, sockdir):
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    bodies = [get(port)[2].split() for _ in range(6)]     # a connection per request
    pids = {int(wid): int(pid) for _, wid, pid in bodies}
    assert len(pids) == 2, bodies
    # the clients have closed: once the workers have seen it, nothing is open
    figures = status_until(path, lambda f: all(w["connections"] == 0 for w in f["workers"]))
    rows = figures["workers"]
    assert {w["id"]: w["pid"] for w in rows} == pids
    assert [w["served"] for w in rows] == [3, 3], rows    # RR turns connection by connection
    assert [w["requests"] for w in rows] == [3, 3], rows  # HTTP requests: one a connection
    for w in rows:
        assert w["state"] == "listening" and w["restarts"] == 0, w
        assert w["rss"] > 0 and w["age"] >= 0 and w["cpu_seconds"] >= 0, w
        assert w["cpu_percent"] >= 0, w
        assert w["messages_received"] == w["messages_sent"] == 0, w
    primary = figures["primary"]
    assert primary["pid"] == a.pid and primary["supervised"] is True, primary
    assert primary["state"] == "ready" and primary["workers_wanted"] == 2, primary
    assert primary["restarts"] == primary["crashes"] == primary["crash_loops"] == 0, primary
    assert primary["reloads"] == primary["reloads_stopped"] == 0, primary
    assert primary["last_reload_seconds"] is None, primary
    assert primary["recycles"] == {"requests": 0, "lifetime": 0, "rss": 0}, primary
    assert primary["since"] <= time.time(), primary

    code, out, err = command("status", str(path))         # the table, for a person
    assert code == 0, err
    head, cells = table(out)
    assert head == f"primary {a.pid}: ready, 2 of 2 workers, 0 restarts, 0 reloads", out
    assert [(int(c[0]), int(c[1])) for c in cells] == sorted(pids.items()), out
    for c in cells:
        assert c[2] == "listening" and re.fullmatch(r"\d+s", c[3]), out
        assert c[4] == "0" and re.fullmatch(r"\d+\.\d (KiB|MiB|GiB)", c[5]), out
        assert float(c[6]) >= 0 and c[7:11] == ["0", "3", "3", "0"], out
        assert re.fullmatch(r"\d+ms|-", c[11]) and c[12:] == ["0", "0/0"], out

    again = status(path, module=True)                     # python -m cluster_ext
    assert [(w["id"], w["pid"], w["served"]) for w in again["workers"]] == \
        [(w["id"], w["pid"], w["served"]) for w in rows]
    stop(a)


def test_the_messages_of_each_worker_are_counted(app, sockdir):
    """A script's primary (cluster.control()) answers each /ask: one message
    in and one out for the worker that served it."""
    path = sockdir / "ctl.sock"
    port = free_port()
    a = app("ops_script.py", cmd=[sys.executable, "ops_script.py", str(port), str(path)],
            cwd=WEBAPPS, merge_stderr=True)
    until(a, "listening")
    until(a, "listening")
    assert all(w["messages_received"] == w["messages_sent"] == 0
               for w in status(path)["workers"])
    answers = [get(port, "/ask")[2].strip() for _ in range(5)]
    asked = Counter(int(answer.rsplit(" ", 1)[1]) for answer in answers)
    assert sorted(asked.values()) == [2, 3], answers
    figures = status(path)
    assert {w["id"]: (w["messages_received"], w["messages_sent"])
            for w in figures["workers"]} == {wid: (n, n) for wid, n in asked.items()}
    code, out, err = command("status", str(path))
    assert code == 0, err
    _, cells = table(out)
    assert {int(c[0]): c[13] for c in cells} == {wid: f"{n}/{n}" for wid, n in asked.items()}
    lines = stop(a)
    assert "control closed" in lines, lines               # supervise() returned with it open
    assert not path.exists()


def test_reload_replaces_every_worker_and_waits_for_the_end(app, sockdir):
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    old = {w["pid"] for w in status(path)["workers"]}
    code, out, err = command("reload", str(path))
    assert code == 0, err
    assert re.fullmatch(r"reloaded in \d+\.\d s: 0 connections reset, 0 requests failed\n",
                        out), out
    figures = status(path)
    rows = figures["workers"]
    assert [w["id"] for w in rows] == [3, 4], rows
    assert all(w["restarts"] == 1 and w["state"] == "listening" for w in rows), rows
    new = {w["pid"] for w in rows}
    assert len(new) == 2 and not new & old, (old, new)
    primary = figures["primary"]
    assert primary["reloads"] == 1 and primary["reloads_stopped"] == 0, primary
    assert primary["last_reload_seconds"] > 0, primary
    assert primary["reload_seconds"] == primary["last_reload_seconds"], primary
    assert primary["state"] == "ready", primary
    code, out, err = command("status", str(path))
    assert code == 0 and re.search(r", 1 reloads \(last \d+\.\d s\)$", out.splitlines()[0]), out
    assert {int(get(port)[2].split()[2]) for _ in range(4)} == new
    lines = stop(a)
    assert any("reload asked on the control socket" in line for line in lines), lines


def test_a_reload_asked_during_a_reload_joins_it(app, sockdir):
    """Two asks at once make one reload: every worker forked before the second
    ask is replaced (the first replacement too), both askers get the end, and
    the fleet never holds more than one extra worker."""
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    first, second = (socket.socket(socket.AF_UNIX) for _ in range(2))
    with first, second:
        for s in (first, second):
            s.settimeout(30)
            s.connect(str(path))
        first.sendall(b"reload\n")
        until(a, "worker 3 forked")
        second.sendall(b"reload\n")
        replies = [json.loads(s.makefile("rb").readline()) for s in (first, second)]
    assert all(r["ok"] is True for r in replies), replies
    figures = status(path)
    assert [(w["id"], w["state"]) for w in figures["workers"]] == \
        [(4, "listening"), (5, "listening")], figures
    assert figures["primary"]["reloads"] == 1, figures["primary"]
    lines = stop(a)
    forks = [int(line.split(" worker ")[1].split()[0]) for line in lines if " forked (pid " in line]
    assert forks == [1, 2, 3, 4, 5], lines         # the reload's: 3, 4, 5, one at a time


def test_scale_grows_and_shrinks_the_fleet(app, sockdir):
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    code, out, err = command("scale", str(path), "3")
    assert (code, out) == (0, "3 workers wanted\n"), err
    until(a, "worker 3 listening")
    figures = status(path)
    assert [(w["id"], w["state"]) for w in figures["workers"]] == \
        [(1, "listening"), (2, "listening"), (3, "listening")], figures
    assert figures["primary"]["workers_wanted"] == 3
    assert len({get(port)[2].split()[1] for _ in range(6)}) == 3

    code, out, err = command("scale", str(path), "1")
    assert (code, out) == (0, "1 workers wanted\n"), err
    until_all(a, ["worker 1 exited (code 0, as asked)", "worker 2 exited (code 0, as asked)"])
    figures = status(path)
    assert [(w["id"], w["state"]) for w in figures["workers"]] == [(3, "listening")], figures
    assert figures["primary"]["workers_wanted"] == 1
    assert get(port)[2].split()[1] == "3"

    for bad in ("0", "-1"):                       # told before asking the primary
        code, out, err = command("scale", str(path), bad)
        assert (code, out, err) == (2, "", "cluster-ext scale: error: argument N: must be "
                                    f"at least 1, not {bad}\n")
    code, out, err = command("scale", str(path), "5000")
    assert code == 1 and out == "", (out, err)
    assert err.startswith("cluster-ext scale: scale takes a number of workers"), err
    assert [w["id"] for w in status(path)["workers"]] == [3]
    lines = stop(a)
    assert any("scale to 3 workers asked on the control socket" in line for line in lines)


@pytest.mark.timeout(90)
def test_a_shrink_during_a_reload_ends_at_the_size_asked(app, sockdir):
    """scale 2 while a reload of 4 replaces its first worker: the shrink
    retires that worker, and its replacement takes another's place; the
    fleet ends with 2 workers, all of the new code, not 3."""
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path), workers=4)
    serving(a, 4)
    os.kill(a.pid, signal.SIGHUP)
    until(a, "worker 5 forked")                   # replacing worker 1
    assert ask(path, b"scale 2\n")[0]["ok"] is True
    figures = status_until(path, lambda f: f["primary"]["reloads"] == 1, timeout=60)
    assert [w["state"] for w in figures["workers"]] == ["listening"] * 2, figures
    assert all(w["id"] > 4 for w in figures["workers"]), figures
    assert figures["primary"]["workers_wanted"] == 2
    assert len({get(port)[2].split()[1] for _ in range(4)}) == 2
    stop(a)


@pytest.mark.timeout(90)
def test_a_shrink_at_a_reloads_last_replacement_ends_at_the_size_asked(app, sockdir):
    """scale 1 while a reload of 2 replaces its last worker: the shrink
    retires that worker, and the reload, with no old worker left, would end
    with its replacement as an extra; the fleet ends with 1 worker."""
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    os.kill(a.pid, signal.SIGHUP)
    until(a, "worker 4 forked")                   # replacing worker 2, the last
    assert ask(path, b"scale 1\n")[0]["ok"] is True
    figures = status_until(path, lambda f: f["primary"]["reloads"] == 1 and
                           len(f["workers"]) == 1, timeout=60)
    assert [w["state"] for w in figures["workers"]] == ["listening"], figures
    assert figures["workers"][0]["id"] > 2, figures
    assert figures["primary"]["workers_wanted"] == 1
    stop(a)


def test_stop_ends_the_cluster_and_removes_the_socket(app, sockdir):
    path = sockdir / "ctl.sock"
    a, _ = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    code, out, err = command("stop", str(path))
    assert (code, out) == (0, ""), err
    lines = a.finish(code=0)
    text = "\n".join(lines)
    assert "stop asked on the control socket" in text, text
    assert "worker 1 exited (code 0, as asked)" in text, text
    assert "worker 2 exited (code 0, as asked)" in text, text
    assert not path.exists()
    code, _, err = command("status", str(path))
    assert code == 2 and f"no primary answered on {path}" in err, err


def test_malformed_requests_get_an_error_and_the_primary_carries_on(app, sockdir):
    path = sockdir / "ctl.sock"
    a, _ = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    bad = [
        (b"\x00\xff\x01garbage\n", "unknown command"),
        (b"{bad\n", "malformed JSON request"),
        (b'{"command": 1}\n', 'a JSON request is an object with a "command" string'),
        (b"[1, 2]\n", "unknown command '[1,"),
        (b'"status"\n', "unknown command"),
        (b"scale x\n", "scale takes a number of workers"),
        (b"scale\n", "scale takes a number of workers"),
        (b"scale 0\n", "scale takes a number of workers from 1 to 1024"),
        (b'{"command": "scale", "workers": true}\n', "scale takes a number of workers"),
        (b'{"command": "scale", "workers": 2.5}\n', "scale takes a number of workers"),
        (b"scale 3 4\n", "too many words"),
        (b"status now\n", "status takes no argument"),
        (b'{"command": "stop", "workers": 1}\n', "stop takes no argument"),
        (b"launch\n", "unknown command 'launch'"),
        (b"\n", "empty request"),
    ]
    with socket.socket(socket.AF_UNIX) as s:                # one connection, turn by turn
        s.settimeout(10)
        s.connect(str(path))
        with s.makefile("rb") as f:
            for request, expected in bad:
                s.sendall(request)
                reply = json.loads(f.readline())
                assert reply["ok"] is False and expected in reply["error"], (request, reply)
                assert not reply["error"].startswith("internal error"), (request, reply)
    # pipelined: answered in order
    first, second, third = ask(path, b"status\r\nbogus\nscale 2\n", count=3)
    assert first["ok"] is True and len(first["workers"]) == 2, first
    assert second["ok"] is False and "unknown command 'bogus'" in second["error"], second
    assert third == {"ok": True, "workers_wanted": 2}, third
    # a line over 64 KiB with no end: refused, and that connection ended
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"x" * (65 * 1024))
        with s.makefile("rb") as f:
            assert json.loads(f.readline()) == {"ok": False, "error": "request too long"}
            assert f.read() == b""
    # clients that leave without a request, or halfway through one
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"sta")
    figures = status(path)
    assert [w["state"] for w in figures["workers"]] == ["listening"] * 2, figures
    assert figures["primary"]["workers_wanted"] == 2, figures
    lines = stop(a)
    assert not any("control request" in line for line in lines), lines   # no defect logged


def test_many_pipelined_requests_are_all_answered(app, sockdir):
    """2,000 requests in one write are answered one by one, in order, without
    one call nested per request (which once hit the recursion limit and took
    the primary down)."""
    path = sockdir / "ctl.sock"
    a, _ = cli(app, "webapp:app", "--control", str(path), workers=1)
    serving(a, 1)
    replies = ask(path, b"bogus\n" * 2000, count=2000)     # 12 KB: one read by the primary
    assert all(r["ok"] is False and "unknown command" in r["error"] for r in replies)
    assert ask(path, b"status\n")[0]["ok"] is True
    stop(a)


def test_a_digit_int_cannot_read_is_a_plain_error(app, sockdir):
    """'scale \u00b2': a digit to str.isdigit(), not to int()."""
    path = sockdir / "ctl.sock"
    a, _ = cli(app, "webapp:app", "--control", str(path), workers=1)
    serving(a, 1)
    reply = ask(path, "scale \u00b2\n".encode())[0]
    assert reply["ok"] is False, reply
    assert reply["error"].startswith("scale takes a number of workers"), reply
    stop(a)


def test_a_control_path_in_use_or_not_a_socket(app, sockdir):
    path = sockdir / "ctl.sock"
    a, _ = cli(app, "webapp:app", "--control", str(path))
    serving(a)
    b, _ = cli(app, "webapp:app", "--control", str(path))   # its own port
    text = "\n".join(b.finish(code=2))
    assert f"{path} is live: another primary serves on it" in text, text
    assert "forked" not in text, text
    assert status(path)["primary"]["pid"] == a.pid        # the first serves on
    stop(a)
    assert not path.exists()

    stale = socket.socket(socket.AF_UNIX)                  # a primary killed: the file stays
    stale.bind(str(path))
    stale.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    c, _ = cli(app, "webapp:app", "--control", str(path), workers=1)
    serving(c, 1)
    assert status(path)["primary"]["pid"] == c.pid
    stop(c)
    assert not path.exists()

    path.write_text("not a socket\n")
    d, _ = cli(app, "webapp:app", "--control", str(path), workers=1)
    text = "\n".join(d.finish(code=2))
    assert f"{path} exists and is not a socket" in text, text
    assert "forked" not in text, text
    assert path.read_text() == "not a socket\n"
    code, _, err = command("status", str(path))
    assert code == 2 and f"no primary answered on {path}" in err, err
    code, _, err = command("stop", str(sockdir / "nothing.sock"))
    assert code == 2 and "no primary answered" in err, err


# ---- /metrics --------------------------------------------------------------------------

PER_WORKER = ["cluster_ext_worker_restarts", "cluster_ext_worker_age_seconds",
              "cluster_ext_worker_resident_memory_bytes", "cluster_ext_worker_cpu_seconds_total",
              "cluster_ext_worker_open_connections", "cluster_ext_worker_connections_total",
              "cluster_ext_worker_requests_total", "cluster_ext_worker_messages_received_total",
              "cluster_ext_worker_messages_sent_total"]


def scrape(port, conn=None):
    """GET /metrics, parsed by prometheus_client: sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families
    status_code, headers, body = get(port, "/metrics", conn=conn)
    assert status_code == 200, body
    assert headers["content-type"].startswith("text/plain; version="), headers
    samples = defaultdict(list)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def one(samples, name):
    [(labels, value)] = samples[name]
    assert labels == {}, (name, labels)
    return value


def by_worker(samples, name):
    return {(labels["worker"], labels["pid"]): value for labels, value in samples[name]}


def test_metrics_for_prometheus(app):
    pytest.importorskip("prometheus_client")
    metrics_port = free_port()
    a, port = cli(app, "webapp:app", "--metrics", f"127.0.0.1:{metrics_port}")
    serving(a)
    assert any(f"metrics on http://127.0.0.1:{metrics_port}/metrics" in line
               for line in a.lines), a.lines
    workers = {(wid, pid) for _, wid, pid in (get(port)[2].split() for _ in range(4))}
    assert len(workers) == 2, workers

    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    samples = scrape(metrics_port, conn)
    assert scrape(metrics_port, conn)["cluster_ext_workers"]   # keep-alive: a second one
    assert {(labels["worker"], labels["pid"], labels["state"])
            for labels, _ in samples["cluster_ext_worker_info"]} == \
        {(wid, pid, "listening") for wid, pid in workers}
    for name in PER_WORKER:
        assert set(by_worker(samples, name)) == workers, (name, samples[name])
    assert sum(by_worker(samples, "cluster_ext_worker_connections_total").values()) == 4
    assert sum(by_worker(samples, "cluster_ext_worker_requests_total").values()) == 4
    assert {labels["reason"]: value for labels, value in samples["cluster_ext_recycles_total"]} \
        == {"requests": 0, "lifetime": 0, "rss": 0}
    assert all(v > 0 for v in by_worker(samples,
                                        "cluster_ext_worker_resident_memory_bytes").values())
    assert set(by_worker(samples, "cluster_ext_worker_restarts").values()) == {0}
    expected = {"cluster_ext_workers": 2, "cluster_ext_workers_wanted": 2,
                "cluster_ext_ready": 1, "cluster_ext_restarts_total": 0,
                "cluster_ext_crashes_total": 0, "cluster_ext_crash_loops_total": 0,
                "cluster_ext_reload_duration_seconds_count": 0,
                "cluster_ext_reload_duration_seconds_sum": 0,
                "cluster_ext_reloads_stopped_total": 0}
    assert {name: one(samples, name) for name in expected} == expected
    assert one(samples, "process_resident_memory_bytes") > 0      # the primary's own
    assert one(samples, "process_cpu_seconds_total") >= 0

    # the rest of HTTP, on the same keep-alive connection while it lasts
    status_code, headers, body = get(metrics_port, "/nope", conn=conn)
    assert status_code == 404, body
    conn.request("POST", "/metrics", body=b"x=1")
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("allow") == "GET, HEAD", r.read()
    r.read()
    conn.request("HEAD", "/metrics")
    r = conn.getresponse()
    assert r.status == 200 and int(r.getheader("content-length")) > 0 and r.read() == b""
    assert scrape(metrics_port, conn)["cluster_ext_ready"]
    conn.close()
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as s:
        s.sendall(b"NOT A REQUEST\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):                      # then the primary closes it
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 "), reply

    os.kill(a.pid, signal.SIGHUP)
    until(a, "worker 1 exited (code 0, as asked)")
    until(a, "worker 2 exited (code 0, as asked)")        # the reload's end
    samples = scrape(metrics_port)
    assert one(samples, "cluster_ext_reload_duration_seconds_count") == 1
    assert one(samples, "cluster_ext_reload_duration_seconds_sum") > 0
    assert one(samples, "cluster_ext_ready") == 1
    restarts = by_worker(samples, "cluster_ext_worker_restarts")
    assert sorted(wid for wid, _ in restarts) == ["3", "4"], restarts
    assert set(restarts.values()) == {1}, restarts
    stop(a)


def test_a_metrics_port_in_use_stops_before_any_fork(app, sockdir):
    pytest.importorskip("prometheus_client")
    path = sockdir / "ctl.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        a, _ = cli(app, "webapp:app", "--control", str(path), "--metrics", str(port))
        text = "\n".join(a.finish(code=2))
    assert f"cannot listen on 127.0.0.1:{port}" in text, text
    assert "forked" not in text, text
    assert not path.exists()                               # the control socket opened first
    b, _ = cli(app, "webapp:app", "--metrics", "nowhere")
    text = "\n".join(b.finish(code=2))
    assert "argument --metrics: takes [HOST:]PORT" in text and "forked" not in text, text


# ---- bounds: nobody holds the primary through its services (issue 24, item 2) ----------

def closed_by_the_primary(socks, count, timeout=20.0):
    """Waits until count of socks are readable (an answer, an end); returns
    (those, the others). Not select(): the test holds more than 1024 fds."""
    readable = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while len(readable) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(readable)} of {len(socks)} closed, not {count}"
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                readable.append(key.fileobj)
    return readable, [s for s in socks if s not in readable]


def reply_of(sock):
    sock.settimeout(10)
    with sock.makefile("rb") as f:
        return f.read()


REFUSED_REQUEST = (b'{"ok":false,"error":"refused: too many connections, or the primary\'s '
                   b'descriptors run short; try again later"}\n')


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.load
def test_idle_connections_to_metrics_and_control_change_nothing_for_the_fleet(app, sockdir):
    """300 idle connections to /metrics and 300 to the control socket: past
    64 each, or past what leaves the fleet its reserve of descriptors, they
    are refused at once (a 503, an error line); the rest are closed after the
    idle timeout (10 s), a slowloris among them; meanwhile the web port
    serves, a killed worker is respawned and a fresh client is answered."""
    pytest.importorskip("prometheus_client")
    path, metrics_port = sockdir / "ctl.sock", free_port()
    a, port = cli(app, "webapp:app", "--control", str(path),
                  "--metrics", f"127.0.0.1:{metrics_port}")
    serving(a)
    pids = {w["id"]: w["pid"] for w in status(path)["workers"]}
    # A slowloris first: it trickles a request in, and is closed all the same.
    slow = socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
    slow_since = time.monotonic()
    tcp, unix = [slow], []
    try:
        tcp += [socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
                for _ in range(300)]
        refused, held = closed_by_the_primary(tcp[1:], 300 - 63)
        assert all(reply_of(s).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                   for s in refused)
        assert len(held) == 63                   # 64 with the slowloris
        assert get(port)[0] == 200

        # Few descriptors left: the control socket stops short of the reserve.
        before = open_fds(a.pid)
        limit = before + 60
        reserve = min(128, limit // 4)
        resource.prlimit(a.pid, resource.RLIMIT_NOFILE,
                         (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            unix.append(s)
            # Blocking, to wait while the backlog is full (a timeout would
            # make it EAGAIN at once), for 10 s at most.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
            s.connect(str(path))
        # Accepted descriptors that Python has not seen yet count too: a few
        # more may be refused than the reserve alone would.
        closed_by_the_primary(unix, 300 - (limit - reserve - before))

        # The fleet has its descriptors: the port serves, a worker respawns.
        assert get(port)[0] == 200
        os.kill(pids[1], signal.SIGKILL)
        until(a, "worker 3 listening on")
        assert {get(port)[2].split()[1] for _ in range(4)} == {"2", "3"}
        # A connection still in the backlog is accepted to be refused, and
        # holds a descriptor for that moment: the count settles below.
        deadline = time.monotonic() + 10
        while open_fds(a.pid) > limit - reserve:
            assert time.monotonic() < deadline, (open_fds(a.pid), limit - reserve)

        # Past the idle timeout every connection held is closed, the
        # slowloris too, though a byte of its request came every 0.25 s.
        trickle = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100
        slow_closed = None
        with selectors.DefaultSelector() as sel:
            for s in [slow, *held, *unix]:
                sel.register(s, selectors.EVENT_READ)
            waiting = {slow, *held, *unix}
            deadline = time.monotonic() + 25
            while waiting:
                assert time.monotonic() < deadline, f"{len(waiting)} still open"
                if slow in waiting:
                    try:
                        slow.send(trickle[:1])
                        trickle = trickle[1:]
                    except OSError:
                        pass                     # closed: the select says so
                for key, _ in sel.select(0.25):
                    sel.unregister(key.fileobj)
                    waiting.discard(key.fileobj)
                    if key.fileobj is slow:
                        slow_closed = time.monotonic() - slow_since
        assert 9 <= slow_closed <= 15, slow_closed
        assert reply_of(slow) == b""
        assert all(reply_of(s) == b"" for s in held)
        answers = Counter(reply_of(s) for s in unix)
        assert 0 < answers.pop(b"") < 64, answers     # held, closed once idle
        assert list(answers) == [REFUSED_REQUEST], answers
    finally:
        for s in [*tcp, *unix]:
            s.close()
    samples = scrape(metrics_port)                # a fresh client is answered
    assert one(samples, "cluster_ext_workers") == 2
    assert [w["id"] for w in status(path)["workers"]] == [2, 3]
    lines = stop(a)
    text = "\n".join(lines)
    assert "metrics: connection refused: 64 connections are open, the most it serves at " \
           "once" in text, text
    assert re.search(r"control socket: connection refused: the primary's descriptors run "
                     rf"short \(\d+ of RLIMIT_NOFILE {limit} open; the last {reserve} are "
                     r"kept for the workers\)", text), text
    assert "Traceback" not in text, text
