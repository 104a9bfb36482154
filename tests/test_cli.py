"""python -m cluster_ext: the demo and `run` on each example, from the outside."""
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import cluster_ext as cluster
from conftest import free_port, pid_alive

ROOT = Path(__file__).resolve().parent.parent


class Cli:
    def __init__(self, *argv, command=None):
        # From the repository's root, where a new user types the README's command.
        command = command or [str(Path(sys.executable).parent / "cluster-ext")]
        self.proc = subprocess.Popen([*command, *argv],
                                     cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.log = []

    def wait_log(self, text, count=1, timeout=20):
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.log) < count:
            assert time.monotonic() < deadline, f"no {text!r} in {self.log}"
            line = self.proc.stderr.readline().decode()
            assert line, f"ended before {text!r}: {self.log}"
            self.log.append(line.rstrip())

    def stop(self, sig=signal.SIGINT):
        os.kill(self.proc.pid, sig)                 # the primary only
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.extend(err.decode().splitlines())
        return self.proc.returncode


@pytest.fixture
def cli():
    started = []

    def start(*argv, **kwargs):
        c = Cli(*argv, **kwargs)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()


def test_help_speaks_to_a_newcomer(tmp_path):
    # python -m cluster_ext, from a directory that is not the source tree's root
    out = subprocess.run([sys.executable, "-m", "cluster_ext", "run", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    for word in ("APP", "--workers", "--sched", "--graceful-timeout",
                 "--heartbeat-timeout", "examples:", "--bind", "--interface", "module:attribute",
                 "WEB_CONCURRENCY", "--env-file", "--app-dir", "--version", "--ssl-certfile",
                 "--ssl-keyfile", "--ssl-keyfile-password", "--ssl-ca-certs", "--ssl-ciphers"):
        assert word in out


def test_the_console_script_is_the_cli():
    script = Path(sys.executable).parent / "cluster-ext"
    out = subprocess.run([str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("usage: cluster-ext ") and "run" in out and "demo" in out


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"],
                                  ["run", "examples.asgi_app:app", "--version"]])
def test_version_names_cluster_ext_and_python(argv):
    """As an operator reports what runs (uvicorn and gunicorn have it):
    cluster_ext's version and the interpreter's, exit 0, nothing started."""
    script = Path(sys.executable).parent / "cluster-ext"
    r = subprocess.run([str(script), *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == f"cluster-ext {cluster.__version__} (Python {platform.python_version()})\n"


def test_python_m_in_the_unbuilt_root_runs_the_installed_package(cli):
    """python -m cluster_ext typed in the repository's root, where the package
    found first is the source tree's, whose _core was never built: the
    installed package runs, as from any other directory, in the same
    process (its pid is the one that serves and stops)."""
    if list((ROOT / "cluster_ext").glob("_core.*.so")):
        pytest.skip("this source tree has a built extension (an in-place build)")
    python_m = [sys.executable, "-m", "cluster_ext"]
    r = subprocess.run([*python_m, "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: python -m cluster_ext "), r.stdout
    port = free_port()
    c = cli("demo", "-w", "1", "--port", str(port), command=python_m)
    c.wait_log("listening on")
    assert f"primary {c.proc.pid}:" in c.log[0], c.log
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100).startswith(b"hello from worker")
    assert c.stop(signal.SIGINT) == 0


def test_an_import_of_the_unbuilt_tree_says_what_to_do():
    """python -c 'import cluster_ext' in the repository's root, where the
    package is the source tree's, whose _core was never built: the import
    error names what happened and what to run."""
    if list((ROOT / "cluster_ext").glob("_core.*.so")):
        pytest.skip("this source tree has a built extension (an in-place build)")
    r = subprocess.run([sys.executable, "-c", "import cluster_ext"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("ImportError: cluster_ext: "), r.stderr
    assert "not built" in r.stderr and "pip install -e ." in r.stderr, r.stderr


def test_demo_answers_and_stops_on_sigint(cli):
    port = free_port()
    c = cli("demo", "-w", "2", "--port", str(port))
    c.wait_log("listening on", count=2)
    # the primary's children are its two workers, and nothing else of ours
    with open(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children") as f:
        assert len(f.read().split()) == 2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        hello = s.recv(100)
        assert hello.startswith(b"hello from worker")
        s.sendall(b"ping\n")
        assert s.recv(100).endswith(b"] ping\n")
    assert c.stop(signal.SIGINT) == 0
    exits = [line for line in c.log if "exited" in line]
    assert len(exits) == 2 and all("code 0, as asked" in line for line in exits), exits


@pytest.mark.parametrize("example,kind", [("asyncio_echo.py", "line")])
def test_run_serves_each_example(cli, example, kind):
    port = free_port()
    c = cli("run", "-w", "2", str(ROOT / "examples" / example), "--port", str(port))
    c.wait_log("listening on", count=2)
    pids = set()
    for i in range(10):
        if kind == "line":
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"ping {i}\n".encode())
                reply = s.recv(100).decode()
            assert reply.endswith(f"] ping {i}\n")
            pids.add(reply.split("]")[0])
        else:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=10) as r:
                body = r.read().decode()
            assert "pid" in body
            pids.add(body.split()[-1])
    assert pids
    assert c.stop(signal.SIGTERM) == 0
    assert sum("exited (code 0, as asked)" in line for line in c.log) == 2, c.log


def test_an_echo_connection_of_the_example_survives_a_reload(cli):
    """examples/asyncio_echo.py: a connection open across SIGHUP keeps its
    worker, which answers it, until the client ends it; the reload then goes
    on and every old worker exits 0."""
    port = free_port()
    c = cli("run", "-w", "2", "--graceful-timeout", "60",
            str(ROOT / "examples" / "asyncio_echo.py"), "--port", str(port))
    c.wait_log("listening on", count=2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"before\n")
        pid = s.recv(100).split(b"]")[0]
        os.kill(c.proc.pid, signal.SIGHUP)
        # A replacement serves: the primary has told worker 1 to disconnect
        # (before it logs the line), whether or not it is the one we hold.
        c.wait_log("listening on", count=3)
        s.sendall(b"during\n")
        assert s.recv(100) == pid + b"] during\n"       # its own worker still answers
    c.wait_log("exited (code 0, as asked)", count=2)   # both old workers, held by nobody
    c.wait_log("listening on", count=4)
    assert c.stop(signal.SIGTERM) == 0
    assert sum("exited (code 0, as asked)" in line for line in c.log) == 4, c.log


def test_run_has_a_heartbeat_by_default_and_0_turns_it_off(cli):
    echo = str(ROOT / "examples" / "asyncio_echo.py")
    c = cli("run", "-w", "1", echo, "--port", str(free_port()))
    c.wait_log("supervising")
    assert "(heartbeat 30 s)" in c.log[-1], c.log       # gunicorn's --timeout
    c.wait_log("listening on")
    assert c.stop(signal.SIGTERM) == 0
    # 0 is off (it was a ValueError traceback, exit 1)
    port = free_port()
    c = cli("run", "-w", "1", "--heartbeat-timeout", "0", echo, "--port", str(port))
    c.wait_log("supervising")
    assert "(heartbeat off)" in c.log[-1], c.log
    c.wait_log("listening on")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping\n")
        assert s.recv(100).endswith(b"] ping\n")
    assert c.stop(signal.SIGTERM) == 0
    # a stopped worker is killed and replaced
    c = cli("run", "-w", "1", "--heartbeat-timeout", "1", echo, "--port", str(free_port()))
    c.wait_log("listening on")
    with open(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children") as f:
        worker, = map(int, f.read().split())
    os.kill(worker, signal.SIGSTOP)
    c.wait_log("worker 1 exited (signal SIGKILL)", timeout=10)
    # named as such before its exit (gunicorn's WORKER TIMEOUT), not only a SIGKILL
    timed_out = [i for i, line in enumerate(c.log) if "worker 1 timed out after " in line]
    assert timed_out and c.log[timed_out[0]].endswith(" s (no heartbeat): killing it"), c.log
    assert timed_out[0] < next(i for i, line in enumerate(c.log) if "exited" in line), c.log
    c.wait_log("listening on", count=2)
    assert c.stop(signal.SIGTERM) == 0
    for bad in ("-1", "nan", "soon"):
        c = cli("run", "--heartbeat-timeout", bad, echo)
        assert c.proc.wait(timeout=20) == 2
        assert b"--heartbeat-timeout" in c.proc.stderr.read()


def workers_of(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def after(log, first, then):
    """The line with then comes after the line with first."""
    return next(i for i, line in enumerate(log) if first in line) < \
        next(i for i, line in enumerate(log) if then in line)


def test_the_log_names_each_signal_and_what_it_starts(cli):
    """An operator's signals, each logged as it arrives with what it
    starts; a reload's end with its duration and what it replaced."""
    c = cli("run", "-w", "2", str(ROOT / "examples" / "asyncio_echo.py"),
            "--port", str(free_port()))
    c.wait_log("listening on", count=2)
    os.kill(c.proc.pid, signal.SIGHUP)
    c.wait_log("SIGHUP received: reloading 2 workers")
    c.wait_log("reload done in ")
    assert c.log[-1].endswith(" s: 2 workers replaced, 0 connections reset, "
                              "0 requests failed"), c.log
    assert after(c.log, "worker 2 exited (code 0, as asked)", "reload done in "), c.log
    os.kill(c.proc.pid, signal.SIGTTIN)
    c.wait_log("SIGTTIN received: scaling to 3 workers")
    c.wait_log("listening on", count=5)
    os.kill(c.proc.pid, signal.SIGTTOU)
    c.wait_log("SIGTTOU received: scaling to 2 workers")
    c.wait_log("exited (code 0, as asked)", count=3)
    assert c.stop(signal.SIGTERM) == 0
    assert "SIGTERM received: stopping gracefully (timeout 30 s)" in "\n".join(c.log), c.log


@pytest.mark.parametrize("signals,says", [
    ((signal.SIGINT,), "SIGINT received: stopping gracefully (timeout 30 s)"),
    ((signal.SIGQUIT,), "SIGQUIT received: stopping at once (SIGKILL to 2 workers)"),
    ((signal.SIGTERM, signal.SIGTERM), "SIGTERM received: stopping at once (SIGKILL to 2")])
def test_a_stop_signal_is_logged_with_what_it_does(cli, signals, says):
    """SIGQUIT stops at once, as gunicorn's and nginx's quick shutdown (it
    was the default action: the primary dumped core and left its workers);
    so does a second SIGTERM. Held by a stopped worker, the graceful stop
    would take its whole timeout: at once, it does not."""
    c = cli("run", "-w", "2", "--heartbeat-timeout", "0", str(ROOT / "examples" /
                                                              "asyncio_echo.py"),
            "--port", str(free_port()))
    c.wait_log("listening on", count=2)
    workers = workers_of(c.proc.pid)
    for worker in workers:
        os.kill(worker, signal.SIGSTOP)
    for sig in signals[:-1]:
        os.kill(c.proc.pid, sig)
        c.wait_log(f"{sig.name} received: stopping gracefully")
    if signals[-1] == signal.SIGINT:
        for worker in workers:
            os.kill(worker, signal.SIGCONT)
    assert c.stop(signals[-1]) == 0
    assert says in "\n".join(c.log), c.log
    assert all(not pid_alive(worker) for worker in workers)


def test_a_reload_that_kills_says_so_at_its_end(cli):
    """A worker that does not finish within the graceful timeout is named
    as it is killed, and the reload's end counts it."""
    c = cli("run", "-w", "1", "--heartbeat-timeout", "0", "--graceful-timeout", "1",
            str(ROOT / "examples" / "asyncio_echo.py"), "--port", str(free_port()))
    c.wait_log("listening on")
    worker, = workers_of(c.proc.pid)
    os.kill(worker, signal.SIGSTOP)
    os.kill(c.proc.pid, signal.SIGHUP)
    c.wait_log("SIGHUP received: reloading 1 workers")
    c.wait_log("reload done in ")
    assert c.log[-1].endswith(": 1 workers replaced, 0 connections reset, 0 requests failed; "
                              "1 old workers ended by SIGKILL"), c.log
    assert after(c.log, "worker 1 still running 1 s after its disconnect: killing it",
                 "worker 1 exited (signal SIGKILL"), c.log
    assert c.stop(signal.SIGTERM) == 0


BAD_VALUES = [   # (argv, with {tmp} for a scratch folder; the one line's start)
    (["run", "-w", "0"], "argument -w/--workers: must be at least 1, not 0"),
    (["run", "-w", "-3"], "argument -w/--workers: must be at least 1, not -3"),
    (["run", "--workers", "many"], "argument -w/--workers: not a whole number"),
    (["run", "--threads", "0"], "argument --threads: must be at least 1, not 0"),
    (["run", "--graceful-timeout", "-1"], "argument --graceful-timeout: must be more than 0"),
    (["run", "--graceful-timeout", "0"], "argument --graceful-timeout: must be more than 0"),
    (["run", "--graceful-timeout", "1e12"], "argument --graceful-timeout: must be more"),
    (["run", "--drain-delay", "-1"], "argument --drain-delay: must be 0 or more"),
    (["run", "--heartbeat-timeout", "-1"], "argument --heartbeat-timeout: must be 0 or more"),
    (["run", "--timeout-keep-alive", "-1"], "argument --timeout-keep-alive: must be 0 or"),
    (["run", "--limit-concurrency", "0"], "argument --limit-concurrency: must be at least 1"),
    (["run", "--backlog", "0"], "argument --backlog: must be at least 1, not 0"),
    (["run", "--metrics", "99999"], "argument --metrics: takes [HOST:]PORT"),
    (["run", "--max-requests", "0"], "argument --max-requests: must be at least 1, not 0"),
    (["run", "--max-lifetime", "0"], "argument --max-lifetime: must be more than 0"),
    (["run", "--max-rss", "nan"], "argument --max-rss: must be a positive number of MiB"),
    (["run", "--pid-file", "{tmp}/missing/app.pid"],
     "argument --pid-file: {tmp}/missing/app.pid: its directory {tmp}/missing does not exist"),
    (["run", "--ready-file", "{tmp}/missing/ready"],
     "argument --ready-file: {tmp}/missing/ready: its directory {tmp}/missing does not"),
    (["run", "--control", "{tmp}/missing/ctl.sock"],
     "argument --control: {tmp}/missing/ctl.sock: its directory {tmp}/missing does not"),
    (["run", "--bind", "unix:{tmp}/missing/app.sock"],
     "argument -b/--bind: {tmp}/missing/app.sock: its directory {tmp}/missing does not"),
    (["run", "--pid-file", "{tmp}/file/app.pid"],
     "argument --pid-file: {tmp}/file/app.pid: {tmp}/file is not a directory"),
    (["run", "--app-dir", "{tmp}/missing"], "argument --app-dir: {tmp}/missing: no such directory"),
    (["run", "--app-dir", "{tmp}/file"], "argument --app-dir: {tmp}/file: not a directory"),
    (["run", "--env-file", "{tmp}/missing.env"],
     "argument --env-file: {tmp}/missing.env: No such file or directory"),
    (["run", "--env-file", "{tmp}"], "argument --env-file: {tmp}: Is a directory"),
    (["demo", "--port", "70000"], "argument --port: must be a port from 0 to 65535"),
    (["demo", "-w", "0"], "argument -w/--workers: must be at least 1, not 0"),
]


@pytest.mark.parametrize("argv,says,where", [
    pytest.param(argv, says, where, id=f"{' '.join(argv)} {where}")
    for argv, says in BAD_VALUES
    for where in (["before APP", "after APP"] if argv[0] == "run" else ["demo"])])
def test_a_bad_value_is_one_line_and_exit_2_before_anything_starts(tmp_path, argv, says,
                                                                   where):
    """Each value checked before anything is logged, forked or written:
    argparse's one line, exit 2. They were tracebacks after 'supervising 2
    workers' (-w 0), values taken (--threads 0, --graceful-timeout -1) or
    a crash once the workers served (--ready-file in a missing directory).
    A web APP takes its options after it too (uvicorn's order)."""
    command, *options = [arg.format(tmp=tmp_path) for arg in argv]
    (tmp_path / "file").write_text("")
    if command == "demo":
        full = [command, *options]
    else:
        bind = ["--bind", f"127.0.0.1:{free_port()}"]
        full = ([command, *bind, *options, "examples.asgi_app:app"] if where == "before APP"
                else [command, "examples.asgi_app:app", *bind, *options])
    refused(full, says.format(tmp=tmp_path))
    assert os.listdir(tmp_path) == ["file"]                  # nothing written


def refused(argv, says, env=None):
    """cluster-ext argv ends at once with exit 2 and one line on stderr that
    begins as argparse's do with says: nothing logged or forked."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cluster-ext"), *argv],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after 20 s: the value was taken\n{err}")
    assert proc.returncode == 2, err
    assert err.startswith(f"cluster-ext {argv[0]}: error: {says}"), err
    assert err.count("\n") == 1 and out == "", err          # nothing logged or forked


@pytest.mark.parametrize("options,says", [
    (["--ssl-certfile", "{missing}"], "argument --ssl-certfile: {missing}: No such file or"),
    (["--ssl-certfile", "{tmp}"], "argument --ssl-certfile: {tmp}: Is a directory"),
    (["--ssl-certfile", "{key}"], "argument --ssl-certfile: {key}: no PEM certificate in it"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{missing}"],
     "argument --ssl-keyfile: {missing}: No such file or directory"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{other_key}"],
     "argument --ssl-keyfile: {other_key}: not the key of the certificate in {cert}"),
    (["--ssl-certfile", "{cert}"],
     "argument --ssl-certfile: {cert}: no PEM private key that can be read (give the key "
     "with --ssl-keyfile; an encrypted key needs --ssl-keyfile-password)"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted_key}"],
     "argument --ssl-keyfile: {encrypted_key}: no PEM private key that can be read (an "
     "encrypted key needs --ssl-keyfile-password)"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted_key}",
      "--ssl-keyfile-password", "wrong"],
     "argument --ssl-keyfile: {encrypted_key}: no PEM private key that can be read (check "
     "--ssl-keyfile-password)"),
    (["--ssl-keyfile", "{key}"], "argument --ssl-keyfile: needs --ssl-certfile"),
    (["--ssl-ciphers", "ECDHE"], "argument --ssl-ciphers: needs --ssl-certfile"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ca-certs", "{key}"],
     "argument --ssl-ca-certs: {key}: no PEM certificate in it"),
    (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}", "--ssl-ciphers", "NONE-SUCH"],
     "argument --ssl-ciphers: OpenSSL selects no cipher from 'NONE-SUCH'"),
])
def test_tls_files_that_cannot_serve_are_one_line_before_any_fork(tls, tmp_path, options,
                                                                   says):
    """The primary loads the files as each worker's uvicorn.Config would:
    what would fail every worker's start (a key prompted for on the
    terminal, even) is one line and exit 2."""
    paths = {name: str(path) for name, path in vars(tls).items() if name != "client"}
    paths.update(tmp=str(tmp_path), missing=str(tmp_path / "missing.pem"))
    refused(["run", "--bind", f"127.0.0.1:{free_port()}",
             *(option.format(**paths) for option in options), "examples.asgi_app:app"],
            says.format(**paths))


def test_an_env_file_without_python_dotenv_says_how_to_install_it(tmp_path):
    (tmp_path / ".env").write_text("NAME=value\n")
    (tmp_path / "dotenv.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'dotenv'\", name='dotenv')\n")
    refused(["run", "--env-file", str(tmp_path / ".env"), "examples.asgi_app:app"],
            "argument --env-file: needs python-dotenv: pip install python-dotenv",
            env={"PYTHONPATH": str(tmp_path)})


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("value,says", [("0", "must be at least 1, not 0"),
                                        ("four", "not a whole number: 'four'"),
                                        ("", "not a whole number: ''")])
def test_a_bad_web_concurrency_is_one_line_naming_it(command, value, says):
    """WEB_CONCURRENCY is -w's default, as under gunicorn and uvicorn, whose
    bad value is a traceback there; here it is one line that names it."""
    argv = [command, "--bind", f"127.0.0.1:{free_port()}", "examples.asgi_app:app"] \
        if command == "run" else [command, "--port", str(free_port())]
    refused(argv, "environment variable WEB_CONCURRENCY (the default of -w/--workers): "
                  f"{says}", env={"WEB_CONCURRENCY": value})


def test_run_reports_a_missing_app(cli):
    c = cli("run", "nothing_here.py")
    assert c.proc.wait(timeout=20) == 2
