"""Robustness: stuck workers, repeated calls, a dead primary, reaping,
descriptor leaks, a corrupt channel and a failing exec, through real
processes (apps in tests/apps/rob_*.py)."""
import errno
import json
import os
import shutil
import signal
import sys
import time

import pytest

from conftest import APPS, only_json, pid_alive, run_app, wait_gone

# ---- a worker stuck in `while True: pass` --------------------------------------

def test_kill_ends_a_busy_worker_with_sigterm():
    events = only_json(run_app("rob_busy.py", "kill"))["events"]
    assert [e[0] for e in events] == ["disconnect", "exit"], events
    _, code, sig, ead, _elapsed = events[1]
    assert (code, sig) == (None, "SIGTERM")
    assert ead is True


def test_disconnect_timeout_sigkills_a_busy_worker():
    events = only_json(run_app("rob_busy.py", "disconnect_timeout"))["events"]
    assert [e[0] for e in events] == ["disconnect", "exit"], events
    _, code, sig, ead, elapsed = events[1]
    assert (code, sig) == (None, "SIGKILL")
    assert ead is True
    # killed by the timeout, not before it, and not long after it
    assert 0.45 <= elapsed < 5.0, elapsed


# ---- repeated and late calls ------------------------------------------------------

def test_disconnect_twice_and_kill_on_dead_are_harmless():
    result = only_json(run_app("rob_double.py", "disconnect"))
    assert result["errors"] == []
    # exactly one of each, in the guaranteed order, despite the extra calls
    assert result["events"] == [
        "w.disconnect", "disconnect", ["w.exit", 0, None], ["exit", True],
        ["late", "dead", True]]


def test_kill_after_an_unasked_exit_keeps_exited_after_disconnect_false():
    result = only_json(run_app("rob_double.py", "exit3"))
    assert result["errors"] == []
    # settled at 'exit' (False: nobody asked) and never changed after
    assert result["events"] == [
        "w.disconnect", "disconnect", ["w.exit", 3, None], ["exit", False],
        ["late", "dead", False]]


# ---- cluster.disconnect(callback) ------------------------------------------------------

def test_cluster_disconnect_callback_after_every_worker_disconnected():
    log = only_json(run_app("rob_cluster_disconnect.py", "three"))["log"]
    calls = [i for i, e in enumerate(log) if e[0] == "callback"]
    assert len(calls) == 1, log                    # exactly once
    assert log[0] == "returned"                    # never from inside disconnect()
    w_disc = [i for i, e in enumerate(log) if e[0] == "w.disconnect"]
    assert sorted(log[i][1] for i in w_disc) == [1, 2, 3], log
    # after each worker's own 'disconnect' ...
    assert max(w_disc) < calls[0], log
    # ... and no worker was still connected when it ran
    assert log[calls[0]][1] == [], log
    # every worker went on to exit normally
    assert sorted(e[1:] for e in log if e[0] == "exit") == [[1, 0], [2, 0], [3, 0]]


def test_cluster_disconnect_callback_after_every_cluster_disconnect_event():
    """Regression: the callback once ran inside the last worker's own
    'disconnect', before the cluster's 'disconnect'(worker)."""
    log = only_json(run_app("rob_cluster_disconnect.py", "three"))["log"]
    call = next(i for i, e in enumerate(log) if e[0] == "callback")
    c_disc = [i for i, e in enumerate(log) if e[0] == "disconnect"]
    assert len(c_disc) == 3, log
    assert max(c_disc) < call, log


def test_cluster_disconnect_without_workers_calls_back_asynchronously():
    log = only_json(run_app("rob_cluster_disconnect.py", "none"))["log"]
    # 'returned' is logged right after disconnect() returns: the callback
    # must come after it, and only once
    assert log == ["returned", ["callback", []]]


# ---- the primary dies ------------------------------------------------------------------

@pytest.mark.parametrize("identity", [
    {}, pytest.param({"uid": 65534, "gid": 65534}, marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="only root can give its workers another identity"))],
    ids=["", "another-identity"])
def test_busy_workers_die_with_a_sigkilled_primary(app, identity):
    """Also when they took another identity: the kernel clears the
    parent-death signal at a change of credentials."""
    a = app("rob_orphan.py", json.dumps(identity))
    pids = json.loads(a.wait_for("pids ")[len("pids "):])
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    os.kill(a.pid, signal.SIGKILL)            # the primary only, not its group
    wait_gone(pids, 10.0)                     # at once when all is well
    survivors = [p for p in pids if pid_alive(p)]
    for pid in survivors:                     # they spin: not left to the machine
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "workers outlived their primary"
    a.proc.wait()
    assert a.proc.returncode == -signal.SIGKILL


# ---- reaping ----------------------------------------------------------------------------

def test_no_zombie_and_own_subprocess_keeps_its_status():
    result = only_json(run_app("rob_reap.py"))
    # the application's own child was not reaped by cluster_ext: Popen sees 7
    # (a stolen status would read as 0)
    assert result["popen_code"] == 7
    assert result["workers_reaped"] == [True, True]
    assert result["leftover"] is None        # waitpid(-1) -> ChildProcessError


def descendants(pid):
    """{pid: state} of every process under pid, from /proc."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:              # gone meanwhile
                continue
            parent[int(name)] = (int(fields[1]), fields[0])
    found, frontier = {}, [pid]
    while frontier:
        top = frontier.pop()
        for child, (ppid, state) in parent.items():
            if ppid == top and child not in found:
                found[child] = state
                frontier.append(child)
    return found


def lines_until_all(a, prefixes):
    """Reads lines until one has begun with each prefix."""
    left = set(prefixes)
    while left:
        line = a.read_line(20)
        assert line is not None, f"ended before {left}: {a.lines}\n{a.stderr()}"
        left = {p for p in left if not line.startswith(p)}


@pytest.mark.parametrize("role", ["pid1", "subreaper"])
def test_a_primary_that_inherits_orphans_reaps_them_and_no_other_status(app, role):
    """Issue 25, item 2: as a container's PID 1 (here a pid namespace's) or a
    child subreaper, the primary inherits every orphan of its workers'
    subprocesses; gunicorn as PID 1 reaps them, and so must it, without
    taking a worker's status or its own Popen's."""
    if role == "pid1":
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("unshare --pid needs root and util-linux")
        a = app("rob_pid1.py", cmd=["unshare", "--pid", "--fork", "--mount-proc",
                                    sys.executable, str(APPS / "rob_pid1.py")])
        assert a.wait_for("primary ") == "primary 1"
        with open(f"/proc/{a.pid}/task/{a.pid}/children") as f:
            primary = int(f.read().split()[0])      # unshare's one child
    else:
        a = app("rob_pid1.py", env={"SUBREAPER": "1"})
        a.wait_for("primary ")
        primary = a.pid
    lines_until_all(a, ["orphaned 1", "orphaned 2", "popen "])
    assert "popen 7" in a.lines, a.lines             # its own child kept its status
    # Every orphan (sleep 0.1) has exited by now, or soon will: then nothing
    # under the primary is a zombie, and only the workers are left. /proc is
    # the only witness of a zombie, so it is read until then, with a deadline.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        under = descendants(primary)
        if "Z" not in under.values() and len(under) == 2:
            break
        time.sleep(0.1)
    assert "Z" not in under.values() and len(under) == 2, under
    os.kill(primary, signal.SIGTERM)
    lines = a.finish(code=0)
    exits = sorted(line for line in lines if line.startswith("exit "))
    assert exits == ["exit 1 0 None True", "exit 2 0 None True"], lines   # not stolen
    assert lines[-1] == "stopped"


# ---- descriptors -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exec", "target"])
def test_no_descriptor_leak_over_fork_exit_cycles(mode):
    result = only_json(run_app("rob_fd_leak.py", mode, timeout=50))
    assert result["cycles"] == 51
    assert result["bad_exits"] == []
    assert result["workers"] == 0
    counts = result["counts"]
    assert counts["start"] == counts["first_exit"] == counts["last_exit"] \
        == counts["after_run"], counts


# ---- a corrupt channel -----------------------------------------------------------------

@pytest.mark.parametrize("mode, errno_name", [("badtype", "EPROTO"),
                                              ("oversize", "EMSGSIZE"),
                                              ("overlimit", "EMSGSIZE"),
                                              ("nofds", "EPROTO")])
def test_garbage_on_one_channel_spares_the_others(mode, errno_name):
    log = only_json(run_app("rob_garbage.py", mode))["log"]
    names = [e[0] for e in log]
    assert names.count("bad.error") == 1, log
    err = log[names.index("bad.error")]
    _, _type, is_oserror, err_no, _connected = err
    assert is_oserror is True and err_no == getattr(errno, errno_name), log
    # 'error' first, then 'disconnect' for that worker
    assert names.index("bad.error") < names.index("bad.disconnect"), log
    # the other worker still answered a round trip after it, and left cleanly
    assert names.index("bad.disconnect") < names.index("good.message"), log
    assert ["good.message", "pong"] in log
    assert ["good.exit", 0, None] in log
    assert "bad.exit" in names
    assert names[-1] == "run returned", log


def test_garbage_from_the_primary_ends_that_worker_cleanly():
    lines = run_app("rob_garbage_down.py")
    log = only_json(lines)["log"]
    # EPROTO, then 'disconnect', then exit 0 from inside run(), as Node's
    # process.exit(0): the line after run() never comes
    assert [line for line in lines if line.startswith("worker 1")] == [
        "worker 1 error OSError 71", "worker 1 disconnect"], lines
    # the other worker's disconnect completes: its run() returns
    assert [line for line in lines if line.startswith("worker 2")] == [
        "worker 2 disconnect", "worker 2 loop ended"], lines
    assert log[0] == "bad.disconnect" and ["bad.exit", 0, None] in log, log
    # the other worker answered after it and left cleanly; no 'error' in the
    # primary: nothing was wrong with what the worker wrote
    assert log.index("bad.disconnect") < log.index(["good.message", "pong"]), log
    assert ["good.exit", 0, None] in log, log
    assert not any(e[0] == "bad.error" for e in log if isinstance(e, list)), log


def test_a_truncated_last_frame_is_dropped_without_an_error():
    log = only_json(run_app("rob_garbage.py", "truncated"))["log"]
    names = [e[0] for e in log]
    assert "bad.error" not in names, log
    assert names.index("bad.disconnect") < names.index("bad.exit"), log
    assert ["good.message", "pong"] in log
    assert ["good.exit", 0, None] in log
    assert names[-1] == "run returned", log


# ---- exec fails ----------------------------------------------------------------------------

def test_fork_with_a_missing_executable_raises_and_leaks_nothing():
    result = only_json(run_app("rob_exec_fail.py"))
    assert result["raised"] == ["FileNotFoundError", True, 2]   # ENOENT
    assert result["workers_after_fail"] == 0
    assert result["fd_delta"] == 0
    assert result["zombie"] is None
    # the primary is not broken by it: a good worker forks, runs and exits,
    # and the failed fork emitted no 'fork'
    assert result["good_exit"] == [0, None]
    assert result["forks_seen"] == [result["good_id"]]
