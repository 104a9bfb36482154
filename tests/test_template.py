"""The worker template: a worker forked from it starts as an exec'd one
would (CLUSTER_EXT_TEMPLATE=0 is the reference, in the same test), ends as
one would, and a template that dies or whose primary dies leaves nothing."""
import contextlib
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from conftest import APPS, only_json, run_app

BOTH = {"template": {"CLUSTER_EXT_TEMPLATE": "1"}, "exec": {"CLUSTER_EXT_TEMPLATE": "0"}}


@contextlib.contextmanager
def holding():
    """start_probe.py hold, under the template: (the primary, its pids line)."""
    a = subprocess.Popen([sys.executable, "start_probe.py", "hold"], cwd=APPS,
                         env={**os.environ, **BOTH["template"]}, stdout=subprocess.PIPE,
                         text=True)
    try:
        yield a, json.loads(a.stdout.readline())
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        a.stdout.close()


def exits_within(pidfd, timeout=10):
    """Whether the process ends within timeout: a pidfd is readable once it has."""
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def test_a_worker_from_the_template_starts_as_an_exec_would(tmp_path):
    runs = {how: only_json(run_app("start_probe.py", "facts", str(tmp_path), env=env))
            for how, env in BOTH.items()}
    forked, execd = runs["template"], runs["exec"]
    # the template lives beside its worker, and is reaped with the last one
    assert forked["others_while_running"] == 1 and execd["others_while_running"] == 0
    assert forked["others_after"] == execd["others_after"] == 0
    assert forked["exit"] == execd["exit"] == [0, None]
    a, b = forked["worker"], execd["worker"]
    # forked from the template, which froze its preloads (thousands of objects;
    # an exec'd 3.12 freezes 375 at its start, others none)
    assert a.pop("frozen") > b.pop("frozen") + 1000
    assert len(a.pop("fds")) <= len(b.pop("fds"))     # nothing of the template's is left open
    for w in (a, b):
        w["env"].pop("PROBE_PRIMARY")
    assert a == b
    assert a["name"] == "__main__" and a["argv"][1:] == ["facts", str(tmp_path), "x"]
    assert a["xoptions"] == {"probe": "1"} and a["cwd"] == str(tmp_path)
    assert a["env"]["PROBE_EXTRA"] == "yes" and a["cluster_env"] == ["CLUSTER_EXT_TEMPLATE"]
    assert a["parent_is_primary"] is True
    assert a["cmdline"] == [sys.executable, "-X", "probe=1", str(APPS / "start_probe.py"),
                            "facts", str(tmp_path), "x"]           # what ps shows


@pytest.mark.parametrize("option", ["-I", "-P"])
def test_interpreter_options_that_leave_sys_path_alone(tmp_path, option):
    """-I and -P (3.11) put no script directory first: neither does the template."""
    if option == "-P" and sys.version_info < (3, 11):
        pytest.skip("-P is 3.11's")
    facts = {}
    for how, env in BOTH.items():
        done = subprocess.run([sys.executable, option, "start_probe.py", "facts", str(tmp_path)],
                              cwd=APPS, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        facts[how] = json.loads(done.stdout.splitlines()[-1])["worker"]
    assert facts["template"]["path0"] == facts["exec"]["path0"] != str(APPS)
    assert facts["template"]["path"] == facts["exec"]["path"]
    assert facts["template"]["flags"] == facts["exec"]["flags"]


def test_a_worker_from_the_template_ends_as_an_exec_would(tmp_path):
    ends = {}
    for how, env in BOTH.items():
        path = tmp_path / how
        done = subprocess.run([sys.executable, "start_probe.py", "exit", str(path)], cwd=APPS,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        ends[how] = (json.loads(done.stdout.splitlines()[-1]), done.stderr,
                     "atexit ran" in done.stdout, path.read_text())
    assert ends["template"] == ends["exec"]
    codes, stderr, atexit_ran, written = ends["template"]
    assert codes == {"exit7": [7, None], "raise": [1, None], "atexit": [0, None]}
    assert stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{APPS / "start_probe.py"}", line {stderr.split("line ")[1].split(",")[0]}, '
        "in <module>",
        '    raise LookupError("from the script")',
        "LookupError: from the script"]
    assert atexit_ran and written == "unclosed " * 1000


@pytest.mark.parametrize("how", BOTH)
def test_a_cwd_the_worker_cannot_take_fails_the_fork_as_the_exec_does(how):
    out = only_json(run_app("start_probe.py", "badcwd", env=BOTH[how]))
    # ENOENT raised by fork(), no worker, and the failed child reaped
    assert out == {"raised": ["FileNotFoundError", 2, True], "workers": 0,
                   "children": ["S"] if how == "template" else []}, out


def test_a_fork_while_the_fleet_serves_comes_from_the_same_template():
    """A restart or scale-up beside workers that serve is a fork of the
    template that started them, not an exec nor a new template's start."""
    out = only_json(run_app("start_probe.py", "serving", env=BOTH["template"]))
    first, second = out["reports"]["1"], out["reports"]["2"]
    assert first[0] > 1000 and second[0] > 1000, out
    assert len(out["templates"]) == 1, out
    # each takes the primary's environment as it was at its own fork
    assert first[1:] == ["here", "before"] and second[1:] == [None, "after"], out


def test_a_template_that_died_is_reaped_and_the_next_fork_is_execd():
    out = only_json(run_app("start_probe.py", "refork", env=BOTH["template"]))
    # the two workers, and no zombie: the dead template was reaped
    assert len(out["states"]) == 2 and "Z" not in out["states"], out
    assert out["children_after"] == 0, out


def test_ps_names_the_template():
    with holding() as (a, pids):
        with open(f"/proc/{pids['template']}/cmdline", "rb") as f:
            assert f.read().rstrip(b"\0") == \
                f"cluster_ext: worker template of primary {a.pid}".encode()


def test_the_template_dies_with_its_primary():
    with holding() as (a, pids):
        watches = {name: os.pidfd_open(pid) for name, pid in pids.items()}
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        assert {name: exits_within(fd) for name, fd in watches.items()} == \
            {"template": True, "worker": True}, pids


@pytest.mark.parametrize("how", BOTH)
def test_a_primary_run_with_c_code(how):
    code = ("import json, sys, cluster_ext as c\n"
            "if c.is_primary:\n"
            "    w = c.fork(); w.on('message', lambda m, h: (print(json.dumps(m)), w.kill()))\n"
            "    c.run()\n"
            "else:\n"
            "    c.worker.send([__name__, sys.argv, sys.path[0]])\n"
            "    c.run()\n")
    done = subprocess.run([sys.executable, "-c", code, "one"], env={**os.environ, **BOTH[how]},
                          capture_output=True, text=True, timeout=30, cwd=APPS)
    assert json.loads(done.stdout) == ["__main__", ["-c", "one"], ""], done.stderr
