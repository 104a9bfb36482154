"""Fault injection: processes killed at the worst moments."""
import errno
import json
import os
import signal

import pytest

from conftest import run_app, wait_gone


def test_workers_sigkilled_mid_stream_leave_the_primary_whole():
    results = json.loads(run_app("fault_kill_stream.py", "8", timeout=60)[0])
    *rounds, fds = results
    assert len(rounds) == 8
    for r in rounds:
        assert r["n"] >= r["kill_after"]
        # no corrupt-frame 'error' for a cut last frame; disconnect, then exit
        assert r["events"][-2:] == ["disconnect", ["exit", None, "SIGKILL", False]], r
        assert [e for e in r["events"][:-2] if e != "ChannelClosedError"] == [], r
    assert fds["fds_after"] == fds["fds_before"]


def test_the_primary_out_of_descriptors_serves_every_connection_later(app):
    import socket
    import subprocess
    a = app("fault_emfile.py", stdin=subprocess.PIPE)
    port = int(a.wait_for("LISTENING").split()[1])
    a.proc.stdin.write(b"low\n")
    a.proc.stdin.flush()
    a.wait_for("LOW")
    # The kernel completes the handshakes; the primary cannot accept them.
    clients = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(5)]
    for c in clients:
        c.sendall(b"ping\n")
    a.proc.stdin.write(b"high\n")
    a.proc.stdin.flush()
    a.wait_for("HIGH")
    replies = []
    for c in clients:
        replies.append(c.recv(64))
        c.close()
    assert all(r.startswith(b"pong ") for r in replies), replies
    lines = a.finish(code=0)                     # stdin closes: disconnect, exit 0
    assert "LOW" in lines and "HIGH" in lines


def _ask(sock):
    """'pong <pid>' for a line on sock: the pid, or None if the connection
    was lost."""
    try:
        sock.sendall(b"ping\n")
        reply = sock.recv(64)
    except OSError:
        return None
    return int(reply.split()[1]) if reply.startswith(b"pong ") else None


def _ask_new(port):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _ask(sock)


def test_a_worker_out_of_descriptors_loses_only_what_it_cannot_take(app):
    import socket
    import subprocess
    import time
    a = app("fault_worker_emfile.py", stdin=subprocess.PIPE)
    port = int(a.wait_for("LISTENING").split()[1])
    held = {}                                    # a connection to each worker
    while len(held) < 2:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        pid = _ask(sock)
        if pid in held:
            sock.close()
        else:
            held[pid] = sock
    a.proc.stdin.write(b"low\n")
    a.proc.stdin.flush()
    low = int(a.wait_for("LOW").split()[1])
    other, = set(held) - {low}
    answers = [_ask_new(port) for _ in range(20)]
    # Worker 1 cannot take a connection: the first handed to it is lost
    # alone, it tells the primary (FRAME_FULL), and the rest go to the
    # other worker.
    assert set(answers) <= {other, None}, answers
    assert 1 <= answers.count(None) <= 2, answers
    # Neither its channel nor the connections it held went with them.
    assert _ask(held[low]) == low and _ask(held[other]) == other
    a.proc.stdin.write(b"high\n")
    a.proc.stdin.flush()
    a.wait_for("HIGH")
    # It finds room within 100 ms (FRAME_ROOM), and is handed connections
    # again.
    seen, deadline = [], time.monotonic() + 10
    while low not in seen and time.monotonic() < deadline:
        seen.append(_ask_new(port))
    assert low in seen and None not in seen, seen
    for sock in held.values():
        sock.close()
    lines = a.finish(code=0)                     # stdin closes: disconnect, exit 0
    # No 'error' on either worker's channel, and no exit before the end.
    assert sorted(line for line in lines if line.startswith(("error", "exit"))) == [
        "exit 1 0", "exit 2 0"], lines


def test_a_client_that_never_reads_stalls_nobody(app):
    import socket
    import subprocess
    a = app("fault_slow_reader.py", stdin=subprocess.PIPE)
    port = int(a.wait_for("LISTENING").split()[1])
    slow = socket.create_connection(("127.0.0.1", port), timeout=15)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"big\n")                       # and never read
    a.wait_for("BLOCKED")
    pids = set()
    for _ in range(20):                          # both workers, the slow one's too
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"ping\n")
            reply = c.recv(64)
        assert reply.startswith(b"pong "), reply
        pids.add(reply.split()[1])
    assert len(pids) == 2
    slow.close()
    a.finish(code=0)


def test_fork_refused_by_rlimit_nproc_raises_a_clear_oserror_and_leaks_nothing():
    result = json.loads(run_app("fault_nproc.py")[0])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert [a["kind"] for a in result["attempts"]] == ["exec", "exec_silent", "target"]
    for a in result["attempts"]:
        _name, is_oserror, err, text = a["raised"]
        assert is_oserror and err == errno.EAGAIN, a
        assert text.endswith("fork() failed: Resource temporarily unavailable: the process "
                             "limit is reached (RLIMIT_NPROC, or the system's "
                             "pid_max/threads-max)"), a
        assert (a["workers"], a["fd_delta"], a["children"]) == (0, 0, []), a
    # the limit lifted, the primary forks, talks to and loses a worker as usual;
    # the refused forks emitted no 'fork' and used no worker id
    assert result["good_said"] == "hello"
    assert result["good_exit"] == [0, None]
    assert result["forks_seen"] == [result["good_id"]] == [1]
    assert (result["fd_delta_end"], result["children_end"]) == (0, [])


@pytest.mark.parametrize("seed", [1, 2])
def test_a_worker_sigkilled_at_any_point_of_a_reload_leaves_a_whole_fleet(seed):
    lines = run_app("fault_kill_reload.py", "kill", "8", str(seed), timeout=50)
    report, stopped = map(json.loads, lines)
    assert len(report["rounds"]) == 8
    for r in report["rounds"]:
        # the reload finished; 3 new workers, every one of them serving
        assert r["reload_done"] and r["every_worker_served"], r
        assert r["errors"] == [], r
    # the kills landed on old workers and on replacements, at different points
    assert {r["killed"][1] for r in report["rounds"]} == {"old", "new"}
    assert len({r["killed"][0] for r in report["rounds"]}) >= 3
    assert report["fds_end"] == report["fds_start"]
    assert stopped == {"stopped": True, "children": []}     # and no zombie


def test_a_reload_whose_new_code_cannot_start_keeps_the_old_workers():
    lines = run_app("fault_kill_reload.py", "bad", timeout=30)
    report, stopped = map(json.loads, lines)
    # three replacements died; the reload gave up (no callback, no crash-loop
    # stop), the old workers kept serving, and good code then replaced them
    assert report == {"log": [{"crashes": 3, "served_by_old": True, "errors": []},
                              {"replaced": True}], "crashes": 3}
    assert stopped == {"stopped": True, "children": []}


@pytest.mark.parametrize("seed", [3, 4])
def test_a_worker_sigkilled_at_any_point_of_its_disconnect_spares_the_rest(seed):
    report = json.loads(run_app("fault_kill_disconnect.py", "12", str(seed), timeout=50)[0])
    rounds = report["rounds"]
    assert len(rounds) == 12
    assert {r["point"] for r in rounds} == {
        "primary_sync", "primary_delay", "disconnecting", "waiting", "mid_reply",
        "last_connection"}
    for r in rounds:
        assert r["held"][0] >= 2 and r["held"][1] >= 1, r
        # 'disconnect' then 'exit' (SIGKILL, and it had been asked to leave)
        assert r["events"] == ["disconnect", ["exit", None, "SIGKILL", True]], r
        assert r["v_conns_ended"], r      # the dead worker's clients do not hang
        assert r["stay_answers"], r       # the other worker's do not notice
        assert r["new_served_by_stay"], r
    fds = report["fds_at_each_round"]
    assert fds == [fds[0]] * len(fds)
    assert report["children"] == [] and report["stay_exit"] == [0, None]


def session_members(sid):
    """Live processes (zombies excepted) of a session."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, _pgrp, session = f.read().rsplit(")", 1)[1].split()[:4]
        except OSError:
            continue
        if int(session) == sid and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.parametrize("activity", ["stream", "disconnect", "reload"])
@pytest.mark.parametrize("seed", [1, 2, 14, 31])   # points include 'at once' and a fork
def test_no_worker_outlives_a_primary_sigkilled_mid_activity(app, activity, seed):
    a = app("fault_kill_primary.py", activity, str(seed))
    point = a.wait_for("dying ", timeout=30)
    a.proc.wait(timeout=10)
    assert a.proc.returncode == -signal.SIGKILL, point
    left = session_members(a.pid)
    wait_gone(left, 10.0)                         # at once when all is well
    assert session_members(a.pid) == [], f"{point}: workers outlived their primary"
