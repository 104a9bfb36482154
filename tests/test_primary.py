"""The primary's API: fork(target=...), settings and setup_primary(), roles
and misuse, the loop's entries, and SIGINT in workers, through real
processes (apps in tests/apps/prim_*.py)."""
import os
import types

import pytest

from conftest import only_json, run_app

# ---- fork(target=fn) --------------------------------------------------------------

def test_fork_target_runs_fn_as_a_worker():
    out = only_json(run_app("prim_target.py", "alone"))
    hello, pong = out["messages"]["1"]
    # inside the child: a worker with its own id, forked from the primary
    assert hello == {"is_worker": True, "is_primary": False, "id": 1, "workers": None,
                     "pid_ok": True, "forked_from_primary": True}
    assert out["target_id"] == 1 and out["target_pid"] != out["primary_pid"]
    # the other way: the primary's message reached it and it answered
    assert pong == ["pong", "ping"]
    assert out["exits"] == {"1": [0, None, True]}   # exit 0 after disconnect()
    assert "gave_up" not in out
    # no interpreter to start: 'online' comes at once (an exec'd worker takes
    # ~50 ms on an idle machine; the bound leaves room for a loaded one)
    assert out["online_after"] < 3.0


def test_fork_target_after_another_fork_keeps_the_first_worker_heard():
    """Regression: the child's after_fork() once unregistered the inherited
    channels from the epoll instance it shares with the primary."""
    out = only_json(run_app("prim_target.py", "after_exec"))
    assert "gave_up" not in out, out            # the watchdog had to SIGKILL it
    assert out["target_id"] == 2
    assert [m[0] if isinstance(m, list) else "hello" for m in out["messages"]["1"]] \
        == ["hello", "pong"], out
    assert out["exits"] == {"1": [0, None, True], "2": [0, None, True]}


# ---- settings and setup_primary() ------------------------------------------------------

SETTING_KEYS = ["args", "cwd", "exec", "exec_args", "gid", "max_message_size",
                "scheduling_policy", "serialization", "silent", "stdio", "uid"]


def test_settings_mapping_and_setup_event():
    out = only_json(run_app("prim_settings.py", "mapping"))
    assert out["is_proxy"] is True and out["type"] == types.MappingProxyType.__name__
    assert out["keys"] == SETTING_KEYS                  # every key, from import on
    assert out["defaults"] == {
        "exec": None, "args": ["mapping"], "exec_args": [], "cwd": None,
        "silent": False, "stdio": None, "uid": None, "gid": None,
        "serialization": "json", "max_message_size": 64 << 20,
        "scheduling_policy": out["SCHED_RR"]}
    assert out["assign"] == "TypeError"                 # read-only
    assert out["unknown"] == ["TypeError", True]        # names 'foo'
    # 'setup'(settings): synchronously, once per call, with the new settings
    assert out["setups_sync"] == [[True, ["mapping", "one"]]]
    assert out["setups_after_two_calls"] == 2           # setup_master too
    assert out["args_now"] == ["mapping", "two"]
    assert out["setups_after_fork"] == 2                # fork() emits none


@pytest.mark.parametrize("mode", ["exec", "target"])
def test_settings_and_env_reach_the_worker(mode, tmp_path):
    out = only_json(run_app("prim_settings.py", mode, str(tmp_path),
                            env={"PRIM_INHERITED": "yes", "PRIM_OVERRIDE": "old"}))
    worker = out["worker"]
    if mode == "exec":
        assert worker["argv"] == ["worker", "alpha", "beta"]       # args
        assert worker["xoptions"] == {"prim_flag": "on"}           # exec_args
    assert worker["cwd"] == os.path.realpath(tmp_path)             # cwd
    # env adds to os.environ; an override wins; the primary's own is unchanged
    assert worker["env"] == {"PRIM_INHERITED": "yes", "PRIM_OVERRIDE": "new",
                             "PRIM_EXTRA": "x"}
    assert out["primary_env"] == [None, "old"]
    # the markers are gone, so the worker's own subprocess is no worker
    assert worker["cluster_env"] == []
    code, stdout, stderr = worker["subprocess"]
    assert code == 0, stderr
    assert stdout == "[true, false, []]"     # is_primary, is_worker, CLUSTER_EXT_*


def test_silent_pipes_worker_output_to_the_primary():
    lines = run_app("prim_silent.py")
    out = only_json(lines)
    assert out["stdout"] == "hello from worker 1\n"
    assert out["stderr"] == "complaint on stderr\n"
    assert out["ended"] == ["stderr", "stdout"]
    assert out["exits"] == [[0, None]]
    # it went to the primary's listeners, not to the primary's stdout
    assert not [line for line in lines if line.startswith("hello from worker")]


# ---- roles and misuse -----------------------------------------------------------------

def test_roles_and_misuse():
    out = only_json(run_app("prim_misuse.py", "all",
                            env={"CLUSTER_EXT_SCHED_POLICY": "rr"}))
    # is_primary, is_master, is_worker, worker is None, workers == {}
    assert out["roles"] == [True, True, False, True, True]
    assert out["setup_master_is_setup_primary"] is True
    rr = out["default"]
    assert out["set_none"][0] == "ok" and out["set_none"][1] != rr
    assert out["setting_follows"] == out["set_none"][1]
    assert out["set_rr"] == ["ok", rr]
    assert out["set_bad"][0] == "ValueError" and "99" in out["set_bad"][1]
    assert out["after_bad"] == rr
    assert out["set_after_fork"][0] == "RuntimeError"
    assert out["after_fork_policy"] == rr
    assert out["kill_bad_name"][0] == "ValueError" and "SIGNOPE" in out["kill_bad_name"][1]
    assert out["alive_after_bad_kill"] is True
    worker = out["worker"]
    # in the worker: is_primary, is_master, is_worker, worker set, workers None
    assert worker["roles"] == [False, False, True, True, True]
    assert worker["fork"][0] == "RuntimeError"
    assert worker["fork_target"][0] == "RuntimeError"
    assert worker["kill_bad_name"][0] == "ValueError"
    assert out["exit"] == [0, None]


@pytest.mark.parametrize("env_value, expected", [
    (None, "RR"), ("none", "NONE"), ("rr", "RR")])
def test_scheduling_policy_default_and_environment(monkeypatch, env_value, expected):
    monkeypatch.delenv("CLUSTER_EXT_SCHED_POLICY", raising=False)
    env = {} if env_value is None else {"CLUSTER_EXT_SCHED_POLICY": env_value}
    out = only_json(run_app("prim_misuse.py", "policy", env=env))
    assert out["RR"] != out["NONE"]
    assert out["policy"] == out["setting"] == out[expected]


# ---- the loop ---------------------------------------------------------------------------

def test_call_later_and_cancel():
    out = only_json(run_app("prim_loop.py", "timers"))
    # in deadline order; neither cancelled timer ran (nor kept the loop alive)
    assert out["log"] == ["zero", "first", "second"]
    assert out["elapsed"] < 5.0


def test_an_unrefd_timer_fires_but_never_keeps_the_loop_alive():
    out = only_json(run_app("prim_loop.py", "unref"))
    assert out["log"] == ["unref'd", "ref'd again", "ref'd"]
    assert out["elapsed"] < 5.0           # not the 60 s timer


def test_call_soon_threadsafe_runs_on_the_loop_thread():
    out = only_json(run_app("prim_loop.py", "threadsafe"))
    assert out["log"] == [["from thread", True]]
    assert out["elapsed"] < 5.0           # not the 60 s timer: stop() ended run()


def test_stop_returns_after_the_current_callback():
    out = only_json(run_app("prim_loop.py", "stop"))
    assert out["log"] == ["rest of the stopping callback", "run returned",
                          "due with the stop", "second run"]
    assert out["elapsed"] < 5.0


def test_run_reraises_a_listener_exception():
    out = only_json(run_app("prim_loop.py", "raise"))
    assert out["log"] == [["run raised", "KeyError", "raised in a listener"],
                          ["exit", 0, None]]


# ---- SIGINT in a worker -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exec", "target"])
def test_worker_ignores_sigint(mode):
    out = only_json(run_app("prim_sigint.py", mode))
    assert out["log"] == [{"ready": True, "sigint_ignored": True}, "SIGINT sent",
                          ["pong", "ping"]]
    assert out["exit"] == [0, None]


def test_worker_ignores_sigint_from_online_on():
    """Regression: a worker once sent 'online' before it ignored SIGINT."""
    out = only_json(run_app("prim_sigint.py", "at_online"))
    assert out["log"] == ["SIGINT sent", {"ready": True, "sigint_ignored": True},
                          ["pong", "ping"]], out
    assert out["exit"] == [0, None]
