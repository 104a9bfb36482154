"""Graceful recycling (--max-requests, --max-lifetime, --max-rss): a worker
past a limit is replaced as in a reload, its replacement listening before it
disconnects, one at a time across the fleet; logged with the reason and
counted in status. Real fleets, real HTTP clients, the primary's own log."""
import os
import re
import time

import pytest

from test_ops import sockdir, status, until_all  # noqa: F401 (sockdir: a fixture)
from test_web import Load, cli, get, serving, stop, until

pytest.importorskip("uvicorn")


def events(lines):
    """The log's lifecycle, in order: (what, worker id) for each fork,
    listening, recycling, recycled, disconnect and exit line."""
    found = []
    for line in lines:
        m = re.search(r"worker (\d+) (forked|listening on|disconnected|exited|recycled in)"
                      r"|recycling worker (\d+)", line)
        if m:
            found.append(("recycling", int(m[3])) if m[3] else (m[2].split()[0], int(m[1])))
    return found


def most_alive(found):
    """The most workers alive at once, from forks and exits."""
    alive = most = 0
    for what, _ in found:
        alive += {"forked": 1, "exited": -1}.get(what, 0)
        most = max(most, alive)
    return most


def replaced_before_retired(found, old):
    """The worker forked for old's recycle listened before old disconnected."""
    start = found.index(("recycling", old))
    new = next(wid for what, wid in found[start:] if what == "forked")
    return found.index(("listening", new)) < found.index(("disconnected", old))


def test_a_worker_is_recycled_after_max_requests(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "webapp:app", "--max-requests", "5", "--control", str(path))
    serving(a)
    bodies = [get(port)[2].split() for _ in range(10)]       # RR: 5 for each worker
    assert {wid for _, wid, _ in bodies} == {"1", "2"}, bodies
    line = until(a, "recycling worker 1: ")
    assert "requests: 5 answered (its limit 5)" in line, line
    until(a, "worker 1 recycled in")
    until(a, "recycling worker 2: ")
    until(a, "worker 2 recycled in")
    figures = status(path)
    assert figures["primary"]["recycles"] == {"requests": 2, "lifetime": 0, "rss": 0}, figures
    assert {w["id"] for w in figures["workers"]} == {3, 4}, figures
    assert all(w["requests"] == 0 for w in figures["workers"]), figures
    lines = stop(a)
    found = events(lines)
    assert replaced_before_retired(found, 1) and replaced_before_retired(found, 2), found
    assert most_alive(found) == 3, found


def test_workers_past_their_lifetime_are_recycled_one_at_a_time(app):
    a, _ = cli(app, "webapp:app", "-w", "3", "--max-lifetime", "1",
               "--max-lifetime-jitter", "0.5")
    serving(a, 3)
    # in the order their jittered lifetimes end, and on: their replacements' end too
    until_all(a, [f"worker {wid} recycled in" for wid in (1, 2, 3)])
    lines = stop(a)
    found = events(lines)
    for wid in (1, 2, 3):
        assert replaced_before_retired(found, wid), found
    assert most_alive(found) == 4, found            # never more than one extra
    running = None                                  # one recycle at a time
    for what, wid in found:
        if what == "recycling":
            assert running is None, found
            running = wid
        elif what == "recycled":
            assert running == wid, found
            running = None
    assert any("lifetime: 1 s passed" in line for line in lines), lines


def test_a_worker_past_max_rss_is_recycled_and_the_others_serve_on(app):
    a, port = cli(app, "webapp:app", "--max-rss", "300")
    serving(a)
    grown, other = (1, 2) if get(port, "/grow?mb=400")[2].split()[1] == "1" else (2, 1)
    line = until(a, f"recycling worker {grown}: ")
    assert re.search(r"rss: \d+ MiB resident \(its limit 300\)", line), line
    until(a, f"worker {grown} recycled in")
    lines = stop(a)
    assert not any(f"recycling worker {other}" in line for line in lines), lines


@pytest.mark.load
@pytest.mark.parametrize("keep_alive", [False, True])
def test_recycling_under_load_fails_no_request(app, keep_alive):
    """Every worker recycled about once a second for 8 s (RECYCLE_SECONDS,
    to run it longer by hand) under HTTP load: no request fails (gunicorn's
    --max-requests resets connections)."""
    a, port = cli(app, "webapp:app", "--max-lifetime", "1", "--max-lifetime-jitter", "0.2")
    serving(a)
    load = Load(port, clients=4, keep_alive=keep_alive)
    try:
        load.wait_ok(100)
        seconds = float(os.environ.get("RECYCLE_SECONDS", 8))
        deadline = time.monotonic() + seconds
        recycled = 0
        while time.monotonic() < deadline:
            until(a, "recycled in", timeout=max(0.1, deadline - time.monotonic() + 5))
            recycled += 1
        load.wait_ok(100)
    finally:
        load.stop()
    lines = stop(a)
    assert load.errors == [], load.errors[:5]
    assert recycled >= seconds * 0.75, lines
    assert most_alive(events(lines)) == 3, lines


@pytest.mark.parametrize("limits,says", [
    ({"max_requests": 0}, "max_requests must be an int of 1 or more, not 0"),
    ({"max_requests": 10, "max_requests_jitter": -1}, "max_requests_jitter must be an int of 0"),
    ({"max_requests": 1.5}, "max_requests must be an int of 1 or more, not 1.5"),
    ({"max_lifetime": 0}, "max_lifetime must be positive"),
    ({"max_lifetime": -1}, "max_lifetime must be"),
    ({"max_rss": 0}, "max_rss must be a positive number of MiB, not 0"),
    ({"max_rss": "1G"}, "max_rss must be a positive number of MiB"),
])
def test_a_bad_limit_is_a_value_error_before_any_fork(limits, says):
    import cluster_ext as cluster
    with pytest.raises(ValueError, match=re.escape(says)):
        cluster.supervise(1, **limits)
    assert cluster.workers == {}
