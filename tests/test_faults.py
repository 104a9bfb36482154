"""Fault injection: processes killed at the worst moments."""
import json

from conftest import run_app


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
