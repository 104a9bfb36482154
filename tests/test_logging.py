"""Logging under `cluster-ext run`, as an operator uses it: --access-logfile
and --error-logfile written by real workers and a real primary, the access
log's formats (gunicorn's atoms, a JSON line), logrotate's rename followed by
SIGUSR1, --log-level, --log-config in JSON, YAML and INI, and the values
that are refused before anything starts."""
import json
import os
import re
import signal
import time

import pytest

from conftest import free_port
from test_cli import ROOT, refused
from test_web import WEBAPPS, stop, until
from test_web import cli as web_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

GUNICORN_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %(p)s'
GUNICORN_LINE = re.compile(
    r'127\.0\.0\.1 - (?P<user>\S+) \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
    r'"GET (?P<target>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)" (?P<us>\d+) <(?P<pid>\d+)>')
JSON_KEYS = {"time", "worker", "pid", "client", "method", "path", "query", "protocol",
             "status", "bytes", "duration", "referer", "user_agent"}


def cli(app, *options, spec="examples.asgi_app:app", workers=2, cwd=ROOT):
    """`cluster-ext run` of spec, in the repository's root (the example)."""
    return web_cli(app, spec, *options, workers=workers, cwd=cwd)


def get(port, path="/", **options):
    """One GET on a connection of its own (SCHED_RR: the workers in turn)."""
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **options)


def found_in(path, pattern, count=1, timeout=20.0):
    """The lines of the file at path that match pattern, once there are
    count of them (polled up to timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        matching = [line for line in lines if re.search(pattern, line)]
        if len(matching) >= count:
            return matching
        assert time.monotonic() < deadline, f"{count} lines {pattern!r} not in {path}: {lines}"
        time.sleep(0.05)


def pids_in(lines, pattern=r"<(\d+)>"):
    return {int(re.search(pattern, line)[1]) for line in lines}


def served_by_every_worker(port, path, log, pids, pattern=r"<(\d+)>", timeout=20.0):
    """Requests for path until every worker in pids has a line for it in the
    file log (the primary hands each new connection to the next worker)."""
    deadline = time.monotonic() + timeout
    while True:
        assert get(port, path).status_code == 200
        lines = found_in(log, re.escape(path) + " ", count=0)
        if pids_in(lines, pattern) >= pids:
            return lines
        assert time.monotonic() < deadline, \
            f"not every worker of {pids} wrote {path} in {log}; the last: {lines[-4:]}"


def test_an_access_logfile_in_gunicorns_format_is_reopened_at_sigusr1(app, tmp_path):
    """gunicorn's atoms in the file each worker appends to; then logrotate's
    way without copytruncate: the files renamed, SIGUSR1 to the primary,
    and the primary and every worker write a new file at each path."""
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    a, port = cli(app, "--access-logfile", str(access), "--access-log-format", GUNICORN_FORMAT,
                  "--error-logfile", str(errors))
    found_in(errors, r"cluster_ext\[\d+\] ready: 2 workers")
    bodies = [get(port, f"/before?n={n}", auth=("ops", "secret"),
                  headers={"Referer": "https://example.org/", "User-Agent": "ops/1"}).text
              for n in range(4)]
    lines = found_in(access, "GET /before", count=4)
    entries = [GUNICORN_LINE.fullmatch(line) for line in lines]
    assert all(entries), lines
    assert [e["target"] for e in entries] == [f"/before?n={n}" for n in range(4)]
    assert {(e["user"], e["status"], e["referer"], e["agent"]) for e in entries} == \
        {("ops", "200", "https://example.org/", "ops/1")}
    assert [int(e["bytes"]) for e in entries] == [len(body.encode()) for body in bodies]
    workers = {int(body.split("pid ")[1]) for body in bodies}
    assert pids_in(lines) == workers and len(workers) == 2

    (tmp_path / "access.log").rename(tmp_path / "access.log.1")
    (tmp_path / "error.log").rename(tmp_path / "error.log.1")
    os.kill(a.pid, signal.SIGUSR1)
    line, = found_in(errors, "SIGUSR1 received")          # in the primary's new file
    assert line.endswith("SIGUSR1 received: log files reopened (1 here), the signal passed "
                         "on to 2 workers"), line
    served_by_every_worker(port, "/after", access, workers)
    rotated = (tmp_path / "access.log.1").read_text()
    assert rotated.count("GET /before") == 4
    assert "ready: 2 workers" in (tmp_path / "error.log.1").read_text()
    stop(a)
    found_in(errors, "all workers stopped")


def test_sigusr1_to_one_worker_reopens_its_own_files(app, tmp_path):
    """A worker signalled alone reopens its files; the others keep theirs."""
    access = tmp_path / "access.log"
    a, port = cli(app, "--access-logfile", str(access), "--access-log-format", "%(U)s %(p)s")
    until(a, "ready: 2 workers")
    for _ in range(4):
        get(port, "/before")
    workers = pids_in(found_in(access, "/before ", count=4))
    signalled, other = sorted(workers)
    access.rename(tmp_path / "access.log.1")
    os.kill(signalled, signal.SIGUSR1)
    served_by_every_worker(port, "/after", access, {signalled})
    served_by_every_worker(port, "/after", tmp_path / "access.log.1", {other})
    assert f"<{other}>" not in access.read_text()
    stop(a)


def test_the_default_access_line_is_uvicorns_in_the_file(app, tmp_path):
    """--access-logfile alone: the line --access-log prints, in the file."""
    access = tmp_path / "access.log"
    a, port = cli(app, "--access-logfile", str(access), workers=1)
    until(a, "ready: 1 workers")
    get(port, "/plain?x=1")
    line, = found_in(access, "/plain")
    assert re.fullmatch(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[worker 1\] '
                        r'127\.0\.0\.1:\d+ - "GET /plain\?x=1 HTTP/1\.1" 200 OK', line), line
    assert "/plain" not in "\n".join(stop(a))                # not on stdout too


def test_a_json_access_log_is_one_object_a_line(app, tmp_path):
    """--access-log-format json: each request as it ended, its status, size
    and duration among the documented keys; an error and a stream too."""
    access = tmp_path / "access.log"
    a, port = cli(app, "--access-logfile", str(access), "--access-log-format", "json",
                  spec="webapp:app", workers=1, cwd=WEBAPPS)
    until(a, "ready: 1 workers")
    pid = int(get(port, "/", headers={"User-Agent": "ops/1"}).text.split()[2])
    assert get(port, "/nothing?x=%C3%A9").status_code == 404
    assert get(port, "/boom").status_code == 500
    assert get(port, "/stream?n=3").text == "tick\n" * 3
    lines = found_in(access, ".", count=4)
    entries = [json.loads(line) for line in lines]
    assert all(set(entry) == JSON_KEYS for entry in entries), entries
    assert [(e["method"], e["path"], e["query"], e["status"]) for e in entries] == [
        ("GET", "/", "", 200), ("GET", "/nothing", "x=%C3%A9", 404), ("GET", "/boom", "", 500),
        ("GET", "/stream", "n=3", 200)]
    assert {(e["worker"], e["pid"], e["client"], e["protocol"], e["referer"])
            for e in entries} == {(1, pid, "127.0.0.1", "HTTP/1.1", None)}
    assert entries[0]["user_agent"] == "ops/1"
    assert entries[0]["bytes"] == len(f"hello 1 {pid}\n") and entries[3]["bytes"] == 15
    assert entries[3]["duration"] >= 0.3 and entries[0]["duration"] >= 0   # 3 ticks, 0.1 s apart
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", e["time"])
               for e in entries)
    assert any("[worker 1] ERROR Exception in ASGI application" in line for line in stop(a))


@pytest.mark.parametrize("level", ["warning", "info"])
def test_log_level_sets_the_primary_and_the_workers_lines(app, level):
    """warning: the primary's info lines (its lifecycle) are gone and a
    worker's error stays; info: the workers' own info lines appear too."""
    a, port = cli(app, "--log-level", level, spec="webapp:app", workers=1, cwd=WEBAPPS)
    until(a, "startup ")                                 # the application's own line
    deadline = time.monotonic() + 20
    while True:                                          # serving: nothing logged says so
        try:
            assert get(port, "/boom").status_code == 500
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lines = "\n".join(stop(a))
    assert "[worker 1] ERROR Exception in ASGI application" in lines
    info = ("ready: 1 workers", "worker 1 forked", "SIGTERM received", "all workers stopped",
            "[worker 1] INFO Application startup complete.")
    assert [text for text in info if text in lines] == ([] if level == "warning" else list(info))


LOG_CONFIG = {
    "version": 1,
    "formatters": {"plain": {"format": "%(process)d %(name)s %(levelname)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "{log}",
                          "formatter": "plain"}},
    "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False}
                for name in ("cluster_ext", "uvicorn.error", "uvicorn.access")},
}
LOG_CONFIG_INI = """\
[loggers]
keys=root,package,errors,access
[handlers]
keys=file
[formatters]
keys=plain
[logger_root]
handlers=
[logger_package]
level=INFO
handlers=file
propagate=0
qualname=cluster_ext
[logger_errors]
level=INFO
handlers=file
propagate=0
qualname=uvicorn.error
[logger_access]
level=INFO
handlers=file
propagate=0
qualname=uvicorn.access
[handler_file]
class=FileHandler
formatter=plain
args=('{log}',)
[formatter_plain]
format=%(process)d %(name)s %(levelname)s %(message)s
"""


def write_log_config(path, log):
    if path.suffix == ".json":
        path.write_text(json.dumps(LOG_CONFIG).replace("{log}", str(log)))
    elif path.suffix == ".yaml":
        yaml = pytest.importorskip("yaml")
        path.write_text(yaml.safe_dump(LOG_CONFIG).replace("{log}", str(log)))
    else:
        path.write_text(LOG_CONFIG_INI.replace("{log}", str(log)))


@pytest.mark.parametrize("name", ["logging.json", "logging.yaml", "logging.ini"])
def test_a_log_config_routes_the_primary_and_the_workers_loggers(app, tmp_path, name):
    """The same configuration in each form, applied in the primary (its
    package logger) and in each worker (uvicorn.error, at INFO: the
    lifespan's lines), before the application's import; its access log
    is the workers' (no --access-log asked for it)."""
    log, config = tmp_path / "app.log", tmp_path / name
    write_log_config(config, log)
    a, port = cli(app, "--log-config", str(config))
    ready, = found_in(log, r"^\d+ cluster_ext INFO ready: 2 workers")
    started = found_in(log, r"^\d+ uvicorn\.error INFO Application startup complete\.$", 2)
    assert len(pids_in(started, r"^(\d+)")) == 2 and int(ready.split()[0]) == a.pid
    assert get(port, "/configured").status_code == 200
    found_in(log, r'^\d+ uvicorn\.access INFO 127\.0\.0\.1:\d+ - "GET /configured HTTP/1\.1" 200$')
    lines = stop(a)
    assert not any("ready:" in line for line in lines), lines      # not on stderr too


def test_under_preload_a_worker_forked_after_sigusr1_writes_the_new_file(app, tmp_path):
    """--preload: the template configures logging before its import, and
    the workers forked from it inherit its files; one forked after a
    rotation (SIGTTIN here) writes the file at the path, not the renamed
    one the template holds."""
    log, config = tmp_path / "app.log", tmp_path / "logging.json"
    write_log_config(config, log)
    a, port = cli(app, "--log-config", str(config), "--preload", workers=1)
    first = found_in(log, "Application startup complete")
    log.rename(tmp_path / "app.log.1")
    os.kill(a.pid, signal.SIGUSR1)
    found_in(log, "SIGUSR1 received: log files reopened")
    os.kill(a.pid, signal.SIGTTIN)
    second = found_in(log, "Application startup complete")
    assert pids_in(first, r"^(\d+)") != pids_in(second, r"^(\d+)")
    assert (tmp_path / "app.log.1").read_text().count("Application startup complete") == 1
    stop(a)


@pytest.mark.parametrize("options,says", [
    (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    (["--access-log-format", "%(h)s %(x)s"], "argument --access-log-format: unknown atom "
                                             "%(x)s (gunicorn's are h, l, u, t, r, m"),
    (["--access-log-format", "%(s)d"], "argument --access-log-format: not a %-format of "
                                       "atoms such as %(h)s: %d format: a real number is"),
    (["--access-log-format", "%(h)s %"], "argument --access-log-format: not a %-format of "
                                         "atoms such as %(h)s: incomplete format"),
    (["--access-logfile", "{tmp}/missing/access.log"],
     "argument --access-logfile: {tmp}/missing/access.log: No such file or directory"),
    (["--error-logfile", "{tmp}"], "argument --error-logfile: {tmp}: Is a directory"),
    (["--log-config", "{tmp}/missing.json"],
     "argument --log-config: {tmp}/missing.json: No such file or directory"),
    (["--log-config", "{tmp}/missing.ini"],
     "argument --log-config: {tmp}/missing.ini: No such file or directory"),
    (["--log-config", "{tmp}/broken.json"],
     "argument --log-config: {tmp}/broken.json: not JSON: Expecting property name"),
    (["--log-config", "{tmp}/list.json"],
     "argument --log-config: {tmp}/list.json: not a logging.config dictionary"),
    (["--log-config", "{tmp}/handler.json"],
     "argument --log-config: {tmp}/handler.json: Unable to configure handler 'file': "
     "[Errno 2] No such file or directory"),
    (["--log-config", "{tmp}/empty.ini"], "argument --log-config: {tmp}/empty.ini: "),
])
@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_bad_logging_value_is_one_line_and_exit_2(tmp_path, options, says, command):
    if command == "demo" and options[0].startswith("--access"):
        pytest.skip("the access log is a web application's")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "handler.json").write_text(json.dumps(
        {"version": 1, "handlers": {"file": {"class": "logging.FileHandler",
                                             "filename": str(tmp_path / "no" / "x.log")}}}))
    (tmp_path / "empty.ini").write_text("[loggers]\n")
    options = [option.format(tmp=tmp_path) for option in options]
    argv = ([command, "--bind", f"127.0.0.1:{free_port()}", *options, "examples.asgi_app:app"]
            if command == "run" else [command, "--port", str(free_port()), *options])
    refused(argv, says.format(tmp=tmp_path))


def test_a_yaml_log_config_without_pyyaml_says_how_to_install_it(tmp_path):
    (tmp_path / "logging.yaml").write_text("version: 1\n")
    (tmp_path / "yaml.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'yaml'\", name='yaml')\n")
    refused(["run", "--log-config", str(tmp_path / "logging.yaml"), "examples.asgi_app:app"],
            f"argument --log-config: {tmp_path}/logging.yaml: reading YAML needs PyYAML: "
            "pip install PyYAML", env={"PYTHONPATH": str(tmp_path)})
