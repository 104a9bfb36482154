"""`cluster-ext run` configured as an operator does it: a TOML file
(--config, or [tool.cluster-ext] in the project's pyproject.toml), the
environment (CLUSTER_EXT_<OPTION>), and gunicorn's hooks named in the file;
each run in a project directory of its own, the application queried with
httpx."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, json_lines
from test_web import stop, until

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

CLUSTER_EXT = str(Path(sys.executable).parent / "cluster-ext")
WEBAPP = Path(__file__).parent / "webapps" / "webapp.py"

# The operator's hooks: each call is a JSON line on stdout, which says
# whether the application had been imported in that process.
HOOKS = '''\
import json, os, sys


def _say(hook, **facts):
    facts.update(hook=hook, pid=os.getpid(), app_imported="webapp" in sys.modules)
    os.write(1, ("HOOK " + json.dumps(facts) + "\\n").encode())


def on_starting():
    _say("on_starting")


def when_ready():
    _say("when_ready")


def post_fork(worker):
    _say("post_fork", worker=worker.id)


def worker_exit(worker, code, signal):
    _say("worker_exit", worker=worker.id, code=code, signal=signal and signal.name)


def on_reload():
    _say("on_reload")


def boom(*args):
    raise ValueError("boom")
'''

ALL_HOOKS = ("on_starting", "when_ready", "post_fork", "worker_exit", "on_reload")


@pytest.fixture
def project(tmp_path):
    """A project's directory: its application (webapp.py: / answers "hello
    <worker id> <pid>"), its hooks (ops_hooks.py), nothing else yet."""
    shutil.copy(WEBAPP, tmp_path)
    (tmp_path / "ops_hooks.py").write_text(HOOKS)
    return tmp_path


def run(app, project, *argv, env=None):
    """`cluster-ext run ARGV` in the project's directory: one stream of lines."""
    return app("cluster-ext", cmd=[CLUSTER_EXT, "run", *argv], cwd=project, merge_stderr=True,
               env=env)


def served_by(port, count, path="/"):
    """The ids of the workers that answered count requests, one connection
    each (SCHED_RR hands them out in turn)."""
    return [int(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).text.split()[1])
            for _ in range(count)]


def toml(**keys):
    """key = value lines, TOML's forms for strings, lists, numbers and bools."""
    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return f'"{v}"' if isinstance(v, str) else str(v)
    return "".join(f"{key} = {value(v)}\n" for key, v in keys.items())


def test_the_help_names_the_file_the_variables_and_the_hooks(project):
    out = subprocess.run([CLUSTER_EXT, "run", "--help"], cwd=project, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    for word in ("--config PATH", "[tool.cluster-ext]", "pyproject.toml", "CLUSTER_EXT_WORKERS",
                 "The\ncommand line wins over the environment, the environment over the file",
                 *(f"--{hook.replace('_', '-')} MODULE:FUNCTION" for hook in ALL_HOOKS)):
        assert word in out, word


# ---- a file's options take effect -----------------------------------------------------

def test_a_config_file_names_the_app_its_workers_and_its_address(app, project):
    """--config PATH: the app, three workers and the port from the file, with
    dashes or underscores in the keys, and nothing on the command line."""
    port = free_port()
    (project / "deploy.toml").write_text(toml(
        app="webapp:app", workers=3, bind=[f"127.0.0.1:{port}"], graceful_timeout=5,
        **{"heartbeat-timeout": 0}))
    a = run(app, project, "--config", "deploy.toml")
    assert "supervising 3 workers running webapp:app (heartbeat off)" in until(a, "supervising")
    until(a, "ready:")
    assert sorted(served_by(port, 3)) == [1, 2, 3]
    assert "stopping gracefully (timeout 5 s)" in "\n".join(stop(a))


def test_pyproject_is_read_unless_a_config_file_is_named(app, project):
    """[tool.cluster-ext] of the project's pyproject.toml when no --config
    is given, its workers over WEB_CONCURRENCY (-w's default, as under
    gunicorn); with --config, pyproject.toml is not read at all (its bad
    value here would stop the start), as gunicorn's -c wins over its
    default file."""
    port = free_port()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "shop"\n\n[tool.cluster-ext]\n'
        + toml(app="webapp:app", workers=2, bind=[f"127.0.0.1:{port}"]))
    a = run(app, project, env={"WEB_CONCURRENCY": "3"})
    assert "supervising 2 workers" in until(a, "supervising")
    until(a, "ready:")
    assert sorted(served_by(port, 2)) == [1, 2]
    stop(a)

    (project / "pyproject.toml").write_text("[tool.cluster-ext]\nworkers = 0\n")
    (project / "deploy.toml").write_text(toml(app="webapp:app", workers=1,
                                              bind=[f"127.0.0.1:{port}"]))
    a = run(app, project, "--config", "deploy.toml")
    until(a, "ready:")
    assert served_by(port, 1) == [1]
    stop(a)


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(app, project):
    """-w at all three levels: the command line's wins; the heartbeat and
    --bind in the environment and the file: the environment's win; the
    graceful timeout and APP in the file alone."""
    file_port, env_port = free_port(), free_port()
    (project / "deploy.toml").write_text(toml(
        app="webapp:app", workers=1, heartbeat_timeout=11, graceful_timeout=12,
        bind=[f"127.0.0.1:{file_port}"]))
    a = run(app, project, "--config", "deploy.toml", "-w", "3",
            env={"CLUSTER_EXT_WORKERS": "2", "CLUSTER_EXT_HEARTBEAT_TIMEOUT": "21",
                 "CLUSTER_EXT_BIND": f"127.0.0.1:{env_port}"})
    assert "supervising 3 workers running webapp:app (heartbeat 21 s)" in \
        until(a, "supervising")
    until(a, "ready:")
    assert sorted(served_by(env_port, 3)) == [1, 2, 3]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{file_port}/", timeout=10)
    assert "stopping gracefully (timeout 12 s)" in "\n".join(stop(a))


def test_the_workers_keep_what_the_primary_read_when_the_file_changes(app, project):
    """The primary reads the file once and hands its workers what it took:
    a reload after the file was changed (here broken, and the access log
    turned off) serves as before, rather than a fleet of mixed settings or
    replacements that cannot start."""
    port = free_port()
    config = project / "deploy.toml"
    config.write_text(toml(app="webapp:app", workers=1, bind=[f"127.0.0.1:{port}"],
                           access_log=True))
    a = run(app, project, "--config", str(config))
    until(a, "ready:")
    served_by(port, 1, "/before")
    assert "[worker 1]" in until(a, "GET /before")
    config.write_text(toml(app="webapp:app", workers=0, access_log=False, wrokers=1))
    os.kill(a.pid, signal.SIGHUP)
    until(a, "reload done")
    assert served_by(port, 1, "/after") == [2]
    assert "[worker 2]" in until(a, "GET /after")
    stop(a)


# ---- what is wrong is one line that names the file and the key --------------------------

BAD = [   # (the file's lines, what follows "FILE: " on the one line; {cli}: what the
          #  command line says of the same value, after "argument FLAG: ")
    ("wrokers = 2", "wrokers: not an option of cluster-ext run (did you mean workers?)"),
    ("workers = 0", "workers: {cli}", ["-w", "0"]),
    ("graceful_timeout = -1", "graceful_timeout: {cli}", ["--graceful-timeout", "-1"]),
    ('sched = "fast"', "sched: {cli}", ["--sched", "fast"]),
    ('metrics = "99999"', "metrics: {cli}", ["--metrics", "99999"]),
    ('post-fork = "ops_hooks"', "post-fork: {cli}", ["--post-fork", "ops_hooks"]),
    ('preload = "yes"', "preload: takes true or false, not 'yes'"),
    ("workers = [2]", "workers: takes a string or a number, not a list"),
    ('bind = ["127.0.0.1:8000", [1]]', "bind: takes a string or a number, not a list"),
    ("args = 1", "args: takes a list of strings, not 1"),
    ('config = "other.toml"', "config: a config file cannot name another"),
    ("workers = 1\nworkers = 2", "not TOML: Cannot overwrite a value (at line 2, column 12)"),
    ("graceful-timeout = 5\ngraceful_timeout = 6", "graceful_timeout: given twice, as "
                                                    "graceful-timeout and graceful_timeout"),
    ('app_dir = "missing"', "app_dir: {cli}", ["--app-dir", "missing"]),
    # options added since the file was: nothing here knows of them
    ('umask = "888"', "umask: {cli}", ["--umask", "888"]),
    ('user = "no-such-user"', "user: {cli}", ["--user", "no-such-user"]),
    ('on_reload = "nowhere:hook"', "on_reload: nowhere:hook: no module named 'nowhere' "
                                   "(looked in {project} and sys.path)"),
    ('on_reload = "ops_hooks:nothing"', "on_reload: ops_hooks:nothing: ops_hooks has no "
                                        "'nothing'"),
]


def refused(project, argv, env=None):
    """cluster-ext run ARGV in the project: exit 2 and one line on stderr,
    before anything is logged or forked; that line."""
    proc = subprocess.run([CLUSTER_EXT, "run", *argv], cwd=project, capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.rstrip("\n")


@pytest.mark.parametrize("lines,says,flag", [(*case, None)[:3] for case in BAD],
                         ids=[case[0].replace("\n", " ") for case in BAD])
def test_a_bad_key_or_value_in_the_file_is_one_line_naming_both(project, lines, says, flag):
    """The same line whether the file is named or is pyproject.toml's table,
    and for a value the command line would refuse, what it would say."""
    if flag is not None:
        said = refused(project, [*flag, "webapp:app"])
        assert said.startswith("cluster-ext run: error: argument "), said
        cli = said.split(": ", 3)[3]
    says = says.format(cli=cli if flag is not None else "", project=project)
    (project / "deploy.toml").write_text(lines + "\n")
    assert refused(project, ["--config", "deploy.toml", "webapp:app"]) == \
        f"cluster-ext run: error: deploy.toml: {says}"
    (project / "pyproject.toml").write_text("[tool.cluster-ext]\n" + lines + "\n")
    line = refused(project, ["webapp:app"])
    if says.startswith("not TOML"):      # the table's header is the file's first line
        says = re.sub(r"line (\d+)", lambda m: f"line {int(m[1]) + 1}", says)
        assert line == f"cluster-ext run: error: pyproject.toml: {says}"
    else:
        assert line == f"cluster-ext run: error: pyproject.toml [tool.cluster-ext]: {says}"


@pytest.mark.parametrize("name,value,says", [
    ("CLUSTER_EXT_WORKERS", "0", "must be at least 1, not 0"),
    ("CLUSTER_EXT_PRELOAD", "maybe", "takes 1 or 0 (true or false, yes or no, on or off), "
                                     "not 'maybe'"),
    ("CLUSTER_EXT_BIND", "'127.0.0.1:1", "No closing quotation, as a shell splits it"),
    ("CLUSTER_EXT_CONFIG", "missing.toml", None),
])
def test_a_bad_variable_is_one_line_naming_it(project, name, value, says):
    line = refused(project, ["webapp:app"], env={name: value})
    if says is None:                      # the file it names, as --config's
        assert line == "cluster-ext run: error: argument --config: missing.toml: No such " \
                       "file or directory"
    else:
        assert line == f"cluster-ext run: error: environment variable {name}: {says}"


def test_no_app_anywhere_is_the_usage_error_it_was(project):
    assert refused(project, ["-w", "2"]) == "cluster-ext run: error: the following " \
        "arguments are required: APP (or app in the config file)"


def test_no_option_reads_a_variable_the_package_sets_or_reads():
    """CLUSTER_EXT_<OPTION> for every option of run, found in the parser: none
    may be one of the variables cluster_ext uses for itself (a worker's
    CLUSTER_EXT_WORKER_ID, CLUSTER_EXT_SCHED_POLICY...), as an option added
    later could make it."""
    from cluster_ext.cli import config, options
    run_parser = options.command_parser(options.parser("cluster-ext"), "run")
    ours = {config.env_name(key) for key in config.keys(run_parser)}
    assert {"CLUSTER_EXT_WORKERS", "CLUSTER_EXT_GRACEFUL_TIMEOUT", "CLUSTER_EXT_APP",
            "CLUSTER_EXT_BIND", "CLUSTER_EXT_POST_FORK"} <= ours
    root = Path(__file__).resolve().parent.parent
    used = set()
    for source in (*(root / "cluster_ext").rglob("*.py"), *(root / "src").glob("*.c")):
        used |= set(re.findall(r"[\"'](CLUSTER_EXT_[A-Z_]*[A-Z])[\"'=]", source.read_text()))
    assert {config.TAKEN, "CLUSTER_EXT_WORKER_ID", "CLUSTER_EXT_DEBUG"} <= used
    assert not ours & used, ours & used


# ---- hooks --------------------------------------------------------------------------------

def hooks_config(project, port, *, preload=False, **hooks):
    (project / "deploy.toml").write_text(toml(
        app="webapp:app", workers=2, bind=[f"127.0.0.1:{port}"], preload=preload,
        **{name: f"ops_hooks:{hooks.get(name, name)}" for name in ALL_HOOKS}))


def forked(lines):
    """{worker id: pid} from the primary's log."""
    return {int(m[1]): int(m[2]) for m in
            (re.search(r"worker (\d+) forked \(pid (\d+)\)", line) for line in lines) if m}


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_each_hook_runs_where_and_when_it_says(app, project, preload):
    port = free_port()
    hooks_config(project, port, preload=preload)
    a = run(app, project, "--config", "deploy.toml")
    until(a, "ready:")
    assert until(a, "HOOK").startswith('HOOK {"hook": "when_ready"')
    killed = served_by(port, 1)[0]
    os.kill(forked(a.lines)[killed], signal.SIGKILL)
    until(a, "worker 3 listening")
    os.kill(a.pid, signal.SIGHUP)
    until(a, "reload done")
    lines = stop(a)
    said = json_lines([line[len("HOOK "):] for line in lines if line.startswith("HOOK ")])
    primary, pids = a.pid, forked(lines)
    assert sorted(pids) == [1, 2, 3, 4, 5]       # 2, a respawn, a reload's 2

    # in the primary, which has never imported the application
    for s in said:
        assert s["pid"] == (pids[s["worker"]] if s["hook"] == "post_fork" else primary), s
        assert s["app_imported"] == (preload and s["hook"] == "post_fork"), s
    assert said[0]["hook"] == "on_starting"
    first_fork = next(i for i, line in enumerate(lines) if "forked" in line)
    assert lines.index(hook_line("on_starting", primary)) < first_fork
    assert [s["hook"] for s in said].count("when_ready") == 1    # not again at the reload
    # post_fork in each worker, respawned and the reload's too, before its
    # application's import (under --preload, the template imported it)
    assert sorted(s["worker"] for s in said if s["hook"] == "post_fork") == [1, 2, 3, 4, 5]
    # worker_exit with how each worker ended
    exits = {s["worker"]: (s["code"], s["signal"]) for s in said if s["hook"] == "worker_exit"}
    assert exits == {**dict.fromkeys(pids, (0, None)), killed: (None, "SIGKILL")}
    # on_reload as the reload began, before its log line and its first fork
    assert lines.index(hook_line("on_reload", primary)) < \
        next(i for i, line in enumerate(lines) if "SIGHUP received" in line)


def hook_line(hook, pid):
    return f'HOOK {{"hook": "{hook}", "pid": {pid}, "app_imported": false}}'


def test_a_hook_that_raises_is_reported_once_and_the_fleet_goes_on(app, project):
    port = free_port()
    hooks_config(project, port, **dict.fromkeys(ALL_HOOKS, "boom"))
    a = run(app, project, "--config", "deploy.toml")
    until(a, "ready:")
    assert sorted(served_by(port, 2)) == [1, 2]
    os.kill(a.pid, signal.SIGHUP)
    until(a, "reload done")
    assert sorted(served_by(port, 2)) == [3, 4]
    lines = stop(a)
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    where = f"(at {project / 'ops_hooks.py'}:{HOOKS.splitlines().index('def boom(*args):') + 2})"
    for hook, times in (("on_starting", 1), ("when_ready", 1), ("on_reload", 1),
                        ("worker_exit", 4)):
        reported = [line for line in lines
                    if f"hook {hook} (ops_hooks:boom) raised ValueError: boom" in line]
        assert len(reported) == times, text
        assert all(line.endswith(f"{where}; going on") for line in reported), reported
    for worker in (1, 2, 3, 4):
        assert sum(line == f"worker {worker}: hook post_fork (ops_hooks:boom) raised "
                           f"ValueError: boom {where}; going on" for line in lines) == 1, text


def test_a_hook_whose_module_raises_on_import_stops_the_start(project):
    (project / "ops_hooks.py").write_text("import json\nraise RuntimeError('not configured')\n")
    port = free_port()
    hooks_config(project, port)
    assert refused(project, ["--config", "deploy.toml"]) == (
        "cluster-ext run: error: deploy.toml: on_starting: ops_hooks:on_starting: importing "
        f"it raised RuntimeError: not configured (at {project / 'ops_hooks.py'}:2)")
