"""API.md's exit table, event order and states, each through real processes."""
import pytest

from conftest import json_lines, run_app

TABLE = {
    # mode: (exited_after_disconnect, code, signal)
    "primary_disconnect": (True, 0, None),
    "primary_kill": (True, None, "SIGTERM"),
    "worker_disconnect": (True, 0, None),
    "worker_kill": (True, None, "SIGTERM"),
    "worker_exit3": (False, 3, None),
    "worker_raise": (False, 1, None),
    "sigkill": (False, None, "SIGKILL"),
    # a plain fork()'s worker keeps Python's SIGTERM: only supervise()'s drain on it
    "sigterm": (False, None, "SIGTERM"),
    "sigrt": (False, None, "SIGRTMIN+5"),
}


@pytest.mark.parametrize("mode", sorted(TABLE))
def test_exit_table(mode):
    ead, code, sig = TABLE[mode]
    result = json_lines(run_app("exit_table.py", mode))[0]
    events = result["events"]
    names = [e["ev"] for e in events]
    assert names == ["fork", "online", "online", "w.disconnect", "disconnect",
                     "w.exit", "exit"], names
    exit_ev = events[-1]
    assert exit_ev["extra"] == [code, sig]
    assert exit_ev["ead"] is ead
    assert exit_ev["state"] == "dead" and exit_ev["dead"] is True
    assert exit_ev["in_workers"] is False
    disc = events[3]
    assert disc["connected"] is False and disc["state"] == "disconnected"
    assert disc["in_workers"] is True
    # no zombie after run(): every child was reaped
    assert result["zombie"] is None
