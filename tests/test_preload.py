"""--preload: a template imports the application once, every worker forks
from it and is the same process an exec'd worker is, and a reload starts a
new template, so that code changed on disk is served."""
import json
import os
import shutil
import signal

import pytest

from conftest import APPS, free_port, pid_alive, wait_gone
from test_web import WEBAPPS, get, serving, stop, until
from test_web import cli as web_cli


def cli(app, spec, *options, env=None, **kw):
    """test_web's cli(), with conform_probe (preload_app's facts) importable."""
    return web_cli(app, spec, *options, env={"PYTHONPATH": str(APPS), **(env or {})}, **kw)


def copy_app(tmp_path):
    shutil.copy(WEBAPPS / "preload_app.py", tmp_path / "preload_app.py")
    return tmp_path


def imports(folder):
    return (folder / "imports.log").read_text().splitlines()


def facts(port):
    status, _, body = get(port, "/facts")
    assert status == 200, body
    return json.loads(body)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def test_workers_fork_from_one_template_and_a_reload_serves_new_code(app, tmp_path):
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    until(a, "preload template")
    serving(a)
    template = int(imports(folder)[0].split()[0])
    assert imports(folder) == [f"{template} v1 worker=True"]    # once, for both workers
    seen = {}
    for _ in range(10):
        f = facts(port)
        seen[f["pid"]] = f
    assert len(seen) == 2, seen
    # the workers are the primary's children, beside the template
    assert {f["ppid"] for f in seen.values()} == {a.pid}
    assert {f["imported_by"] for f in seen.values()} == {template}
    assert sorted([template, *seen]) == children(a.pid)
    source = folder / "preload_app.py"
    source.write_text(source.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    os.kill(a.pid, signal.SIGHUP)
    until(a, "reload done")
    new = {f["pid"]: f for f in (facts(port) for _ in range(10))}
    assert {f["version"] for f in new.values()} == {"v2"}, new
    assert len(new) == 2 and not set(new) & set(seen)
    assert len(imports(folder)) == 2 and imports(folder)[1].endswith(" v2 worker=True")
    new_template = int(imports(folder)[1].split()[0])
    wait_gone([template], 10)               # the old template was let go
    assert sorted([new_template, *new]) == children(a.pid)
    stop(a)
    wait_gone([new_template, *new], 10)


def comparable(f, port):
    """A worker's facts, without what differs between any two runs (and the
    option that asked for a template)."""
    for key in ("pid", "ppid", "imported_by", "worker"):
        f.pop(key)
    for key in ("argv", "orig_argv"):
        f[key] = [arg.replace(str(port), "PORT") for arg in f[key] if arg != "--preload"]
    return f


def test_a_preloaded_worker_is_the_process_an_execd_one_is(app, tmp_path):
    folder = copy_app(tmp_path)
    found = {}
    for how in ("exec", "preload"):
        options = ["--preload"] if how == "preload" else []
        a, port = cli(app, "preload_app:app", *options, workers=1, cwd=folder)
        serving(a, 1)
        found[how] = comparable(facts(port), port)
        stop(a)
    preloaded, execd = found["preload"], found["exec"]
    assert preloaded.pop("version") == execd.pop("version") == "v1"
    for key in execd:
        assert preloaded[key] == execd[key], key
    assert preloaded == execd
    process = execd["process"]
    assert not any(k.startswith("CLUSTER_EXT_") for k, _ in process["env"])
    assert process["mask"] == [] and process["signals"]["SIGTERM"] != "SIG_IGN"
    assert execd["main"]["annotation"] == "<class 'int'>"


def test_an_environment_past_a_message_still_forks_from_the_template(app, tmp_path):
    """300 KB of environment (variables of 100 KB, near the kernel's bound
    for one) is more than one request to the template can carry: what
    changed since the template started is sent, and the worker forked from
    it has the whole environment, in order, as an exec'd one would."""
    folder = copy_app(tmp_path)
    big = {f"CX_TEST_BIG{i}": str(i) * 100_000 for i in range(3)}
    found = {}
    for how in ("exec", "preload"):
        options = ["--preload"] if how == "preload" else []
        a, port = cli(app, "preload_app:app", *options, workers=1, cwd=folder, env=big)
        serving(a, 1)
        f = facts(port)
        found[how] = f["process"]["env"]
        if how == "preload":
            assert f["imported_by"] != f["pid"]        # the template imported it
        lines = stop(a)
        assert not any("preload template" in line and "killing" in line for line in lines)
    assert found["preload"] == found["exec"]
    assert all(dict(found["preload"])[name] == value for name, value in big.items())


def test_a_fork_target_worker_holds_none_of_the_templates_channel(app, tmp_path):
    """A fork(target=) worker of a primary that preloads is forked from the
    primary, whose descriptors it inherits: the template's channel is not
    one of them (closed at the fork), as an exec'd worker never gets it."""
    import sys
    folder = copy_app(tmp_path)
    shutil.copy(WEBAPPS / "preload_target.py", folder / "preload_target.py")
    port = free_port()
    a = app("preload_target.py", cmd=[sys.executable, str(folder / "preload_target.py"),
                                      str(port)],
            cwd=folder, env={"PYTHONPATH": str(APPS)}, merge_stderr=True)
    said = until(a, "seqpackets")
    assert json.loads(said) == {"seqpackets": []}, said
    stop(a)


def test_an_application_that_cannot_be_imported_stops_before_any_fork(app, tmp_path):
    folder = copy_app(tmp_path)
    source = folder / "preload_app.py"
    source.write_text(source.read_text() + "\nraise LookupError('no such table')\n")
    a, _ = cli(app, "preload_app:app", "--preload", cwd=folder)
    lines = a.finish(code=2)
    text = "\n".join(lines)
    assert "cannot serve preload_app:app: " in text and "LookupError: no such table" in text
    assert not any("forked" in line for line in lines), lines
    assert len(imports(folder)) == 1                # the template's, alone


def test_a_reload_to_code_that_cannot_start_keeps_the_workers_serving(app, tmp_path):
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    serving(a)
    before = {facts(port)["pid"] for _ in range(4)}
    source = folder / "preload_app.py"
    source.write_text(source.read_text() + "\nraise LookupError('bad deploy')\n")
    os.kill(a.pid, signal.SIGHUP)
    line = until(a, "reload stopped")
    assert "the workers keep their code: the new preload template cannot serve" in line, line
    assert {facts(port)["pid"] for _ in range(4)} == before
    assert {facts(port)["version"] for _ in range(4)} == {"v1"}
    stop(a)


def test_a_lost_template_is_replaced_and_workers_start_meanwhile(app, tmp_path):
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    serving(a)
    template = int(imports(folder)[0].split()[0])
    os.kill(template, signal.SIGKILL)
    until(a, f"preload template {template} exited (signal SIGKILL)")
    wait_gone([template], 10)
    victim = facts(port)["pid"]
    os.kill(victim, signal.SIGKILL)
    until(a, "listening on")                       # its replacement serves
    assert victim not in {facts(port)["pid"] for _ in range(6)}
    stop(a)
    assert not pid_alive(template)


@pytest.mark.parametrize("spec", ["preload_app:app"])
def test_the_template_ends_with_the_fleet(app, tmp_path, spec):
    folder = copy_app(tmp_path)
    a, _ = cli(app, spec, "--preload", cwd=folder)
    serving(a)
    template = int(imports(folder)[0].split()[0])
    os.kill(a.pid, signal.SIGINT)                  # as Ctrl-C: the group's signal too
    os.kill(template, signal.SIGINT)
    a.finish(code=0)
    wait_gone([template], 10)


def set_version(folder, version):
    source = folder / "preload_app.py"
    text = source.read_text()
    old = text.split('VERSION = "', 1)[1].split('"', 1)[0]
    source.write_text(text.replace(f'VERSION = "{old}"', f'VERSION = "{version}"'))


def versions(port, n=8):
    return {facts(port)["version"] for _ in range(n)}


def test_a_reload_asked_while_a_template_imports_serves_the_newest_code(app, tmp_path):
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    serving(a)
    (folder / "slow").write_text("1.0")
    set_version(folder, "v2")
    os.kill(a.pid, signal.SIGHUP)
    until(a, "preload_app v2 imported")            # by the new template, which sleeps
    set_version(folder, "v3")                      # deployed again during that import
    os.kill(a.pid, signal.SIGHUP)
    until(a, "joining the reload running")
    until(a, "reload done")
    assert versions(port) == {"v3"}
    stop(a)


def test_a_worker_respawned_while_the_template_imports_is_replaced_too(app, tmp_path):
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    serving(a)
    victim = facts(port)["pid"]
    (folder / "slow").write_text("1.5")
    set_version(folder, "v2")
    os.kill(a.pid, signal.SIGHUP)
    until(a, "SIGHUP received")
    os.kill(victim, signal.SIGKILL)                # respawned from the old template
    until(a, "reload done")
    assert versions(port) == {"v2"}
    stop(a)


def test_a_template_that_answers_with_another_pid_is_not_believed(app, tmp_path):
    """The template runs the application's code: a compromised one answers
    a fork with the primary's own pid (which a disconnect's timeout would
    SIGKILL). The primary checks that the pid is its own child, kills the
    template, and execs the worker instead."""
    folder = copy_app(tmp_path)
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder,
                  env={"PRELOAD_LIE": "1"})
    serving(a)
    assert "not the primary's child: killing it" in "\n".join(a.lines), a.lines
    assert {f["ppid"] for f in (facts(port) for _ in range(6))} == {a.pid}
    stop(a)


def test_a_sighup_while_the_first_template_imports_imports_again(app, tmp_path):
    """A deploy during a slow first import: the primary, which has no
    fleet yet, does not die of the signal; a new template imports again."""
    folder = copy_app(tmp_path)
    (folder / "slow").write_text("1.0")
    a, port = cli(app, "preload_app:app", "--preload", cwd=folder)
    until(a, "preload_app v1 imported")            # the template sleeps now
    set_version(folder, "v2")
    os.kill(a.pid, signal.SIGHUP)
    until(a, "a new template imports it again")
    serving(a)
    assert versions(port) == {"v2"}
    stop(a)
