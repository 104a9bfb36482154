"""What a stuck worker was doing, told before the heartbeat's SIGKILL: every
thread's stack and the requests it had in flight, in the primary's log and
in `cluster-ext status --json`, through `cluster-ext run` with real
clients (tests/webapps/stuck.py)."""
import os
import re
import socket
import sys
from datetime import datetime

import pytest

from conftest import free_port
from test_ops import command, sockdir, status  # noqa: F401  (sockdir: a fixture)
from test_web import WEBAPPS, cli, get, serving, stop, until

pytest.importorskip("uvicorn")

KILLED = "worker 1 exited (signal SIGKILL)"


def lines_through(a, text, timeout=30):
    """Every line read until one contains text, that one included."""
    lines = []
    while not lines or text not in lines[-1]:
        lines.append(until(a, "", timeout))
    return lines


def record(lines, worker=1):
    """The lines of a worker's timeout report: its head, then its own."""
    head = next(i for i, line in enumerate(lines)
                if f"worker {worker} (pid " in line and "at its timeout" in line)
    rest = [line for line in lines[head + 1:] if line.startswith(f"worker {worker} |")]
    return lines[head], rest


def memfds(pid):
    """The memfds a process holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")
        except OSError:          # closed since the listing
            pass
    return count


def stamp(line):
    """The time of a log line (`<date> <time,ms> cluster_ext[pid] ...`)."""
    return datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")


def test_a_stuck_web_worker_tells_its_stacks_before_its_kill(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = cli(app, "stuck:app", "--heartbeat-timeout", "2", "--control", str(path),
                  workers=1)
    serving(a, 1)
    # one descriptor more in the worker, which its own children never inherit
    assert get(port, "/fds")[2] == "[False] None\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET /block?s=60 HTTP/1.1\r\nhost: x\r\n\r\n")
        pid = int(until(a, "stuck ").split()[1])
        lines = lines_through(a, KILLED)
        assert client.recv(100) == b""          # closed with the worker, unanswered
    timed_out = next(i for i, line in enumerate(lines) if "worker 1 timed out after" in line)
    head, stacks = record(lines[timed_out:])
    assert (f"worker 1 (pid {pid}) at its timeout: 1 request in flight, the stacks of its "
            "threads:") in head, lines
    assert re.fullmatch(r"worker 1 \| GET /block \(for \d+\.\d s\)", stacks[0]), lines
    text = "\n".join(stacks)
    # both threads: the loop's, blocked in the handler, and the application's own
    assert "Current thread" in text and text.count("Thread 0x") == 1, text
    assert re.search(r'stuck\.py", line \d+ in block_the_loop', text), text
    assert re.search(r'stuck\.py", line \d+ in helper_thread_waits', text), text
    until(a, "worker 2 listening on")           # replaced
    assert memfds(a.pid) == 1                   # the primary closed the dead one's
    timeouts = status(path)["primary"]["timeouts"]
    assert [(t["worker"], t["pid"]) for t in timeouts] == [(1, pid)], timeouts
    assert "in block_the_loop" in timeouts[0]["stacks"], timeouts
    assert "in helper_thread_waits" in timeouts[0]["stacks"], timeouts
    assert timeouts[0]["at"] <= datetime.now().timestamp()
    [request] = timeouts[0]["requests"]
    assert request["method"] == "GET" and request["path"] == "/block", timeouts
    assert request["seconds"] > 0 and timeouts[0]["requests_unlisted"] == 0, timeouts
    code, out, err = command("status", str(path))        # the table says where to look
    assert code == 0, err
    assert re.fullmatch(rf"last heartbeat timeout: worker 1 \(pid {pid}\), \d+s ago, in GET "
                        r"/block \(for \d+\.\d s\); `status --json` has its stacks",
                        out.splitlines()[-1]), out
    stop(a)


def test_requests_past_the_table_are_counted(app, sockdir):  # noqa: F811
    """70 requests wait, then one blocks the loop: 64 are listed (the
    longest running), the other 7 counted."""
    path = sockdir / "ctl.sock"
    a, port = cli(app, "stuck:app", "--heartbeat-timeout", "2", "--control", str(path),
                  workers=1)
    serving(a, 1)
    clients = []
    try:
        for _ in range(70):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            clients[-1].sendall(b"GET /wait?for=a-minute HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(70):
            until(a, "waiting")
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        clients[-1].sendall(b"GET /block HTTP/1.1\r\nhost: x\r\n\r\n")
        lines = lines_through(a, KILLED)
    finally:
        for client in clients:
            client.close()
    head, stacks = record(lines)
    assert "at its timeout: 71 requests in flight (7 not listed), the stacks" in head, lines
    listed = [line for line in stacks if re.fullmatch(r"worker 1 \| GET /\w+ \(.*\)", line)]
    assert len(listed) == 64 and all("/wait (" in line for line in listed), listed
    [timeout] = status(path)["primary"]["timeouts"]
    assert len(timeout["requests"]) == 64 and timeout["requests_unlisted"] == 7, timeout
    assert {r["path"] for r in timeout["requests"]} == {"/wait"}, timeout
    stop(a)


def script(app, *options, env=None):
    """stuck.py as the workers of `cluster-ext run`: (the process, its port)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "1", *options, "stuck.py",
           str(port)]
    a = app("stuck.py", cmd=cmd, cwd=WEBAPPS, merge_stderr=True, env=env)
    serving(a, 1)
    return a, port


def test_a_stuck_script_worker_tells_its_stacks_too(app):
    a, port = script(app, "--heartbeat-timeout", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        until(a, "stuck ")
        lines = lines_through(a, KILLED)
    head, stacks = record(lines)
    assert "at its timeout: the stacks of its threads:" in head, lines    # no requests
    assert any(re.search(r'stuck\.py", line \d+ in spin_on_the_loop', line)
               for line in stacks), lines
    until(a, "worker 2 listening on")
    stop(a)


def test_a_worker_that_blocks_the_dump_is_killed_a_second_later(app):
    a, port = script(app, "--heartbeat-timeout", "1", env={"STUCK_BLOCK_SIGNALS": "1"})
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        until(a, "stuck ")
        lines = lines_through(a, KILLED)
    timed_out = next(line for line in lines if "worker 1 timed out after" in line)
    head, stacks = record(lines)
    assert "no stacks (none dumped within 1 s" in head and not stacks, lines
    # the kill waited for the dump a second at most (and the loop turned meanwhile)
    waited = (stamp(lines[-1]) - stamp(timed_out)).total_seconds()
    assert 0.9 <= waited < 2.0, lines
    until(a, "worker 2 listening on")
    stop(a)


def test_what_a_compromised_worker_wrote_is_bounded_and_escaped(app, sockdir):  # noqa: F811
    path = sockdir / "ctl.sock"
    a, port = script(app, "--heartbeat-timeout", "1", "--control", str(path),
                     env={"STUCK_GARBAGE": "1"})
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        until(a, "stuck ")
        lines = lines_through(a, KILLED)
    head, rest = record(lines)
    assert "at its timeout: 6 requests in flight (5 not listed), the stacks" in head, lines
    # the one slot with a time: cut, and every control, escape or bidi mark escaped
    assert re.fullmatch(r"worker 1 \| G\\x1b\[2J\ufffd\.\.\. /\\u202eevil\\x07\ufffd\.\.\. "
                        r"\(for \d+\.\d s\)", rest[0]), rest[0]
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;pwned\\x07" in text                 # 100 KiB in: read
    assert rest[-1] == f"worker 1 | [{(1 << 20) - (256 << 10)} more bytes not read]", rest[-1]
    [timeout] = status(path)["primary"]["timeouts"]
    assert len(timeout["stacks"]) < 300 << 10 and len(timeout["requests"]) == 1, timeout
    until(a, "worker 2 listening on")           # the primary carries on
    stop(a)


def test_a_worker_that_is_not_python_gets_only_its_sigkill(app):
    """No dump signal to a process that did not register for one: it might
    die of it (the default action), and no SIGKILL would be seen."""
    a = app("fleet.py", "foreign", env={"LOG": "1"})
    lines = []
    while not any(line.startswith("exit 1 ") for line in lines):
        lines.append(a.wait_for("", 30))
    assert "exit 1 None SIGKILL False" in lines, lines
    assert any("at its timeout: no stacks (it did not register for them" in line
               for line in lines), lines
    os.kill(a.pid, 15)
    a.finish(code=0)
