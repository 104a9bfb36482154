"""--reload, as a developer uses it: `cluster-ext run --reload -w 2` on a
project in a scratch folder, its files rewritten on disk while httpx asks
which code each worker serves."""
import os
import re
import signal
import time

import pytest

from test_web import cli, serving, until

httpx = pytest.importorskip("httpx")
pytest.importorskip("watchfiles")

APP = '''\
import os

VERSION = "{version}"
with open(os.environ["IMPORTS_LOG"], "a") as log:     # who imported the application
    log.write(f"{{os.getpid()}}\\n")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body",
                "body": f"{{VERSION}} {{os.getpid()}}".encode()}})
'''


def project(tmp_path, version="v1"):
    folder = tmp_path.resolve() / "project"
    folder.mkdir()
    (folder / "versioned.py").write_text(APP.format(version=version))
    return folder


def start(app, folder, *options, workers=2):
    # PYTHONDONTWRITEBYTECODE off, as in a developer's shell (the suite's may set it)
    return cli(app, "versioned:app", "--reload", *options, workers=workers, cwd=folder,
               env={"IMPORTS_LOG": str(folder.parent / "imports.log"),
                    "PYTHONDONTWRITEBYTECODE": ""})


def answers(port, client, count):
    """(version, pid) of count GETs, each on a new connection: under SCHED_RR
    the primary hands them to the workers in turn. Each must be answered,
    during a reload too."""
    found = []
    for _ in range(count):
        r = client.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"})
        assert r.status_code == 200, r
        version, pid = r.text.split()
        found.append((version, int(pid)))
    return found


def until_served(port, version, workers=2, timeout=45):
    """Polls until every worker serves version: 2 * workers GETs in a row
    answered by it, from workers distinct pids; returns them."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while True:
            found = answers(port, client, 2 * workers)
            pids = {pid for v, pid in found}
            if {v for v, _ in found} == {version} and len(pids) == workers:
                return pids
            assert time.monotonic() < deadline, f"still {found}, waiting for {version}"


def ctrl_c(a, timeout=20):
    """Ctrl-C at a terminal: SIGINT to the whole process group. The run ends
    with 0, promptly, without a traceback; returns its lines."""
    t0 = time.monotonic()
    os.killpg(a.pid, signal.SIGINT)
    lines = a.finish(code=0, timeout=timeout)
    assert time.monotonic() - t0 < timeout / 2, lines
    assert not any("Traceback" in line for line in lines), lines
    return lines


def reloads(lines):
    return [line for line in lines if re.search(r" changed: reloading \d+ workers", line)]


@pytest.mark.timeout(120)
def test_a_saved_file_rolls_every_worker_onto_the_new_code(app, tmp_path):
    """Each worker, replaced one at a time as SIGHUP replaces it, serves the
    code saved on disk, even saved within the second of the code before;
    no request fails meanwhile, a save of two files is one reload, and the
    primary never imports the application."""
    folder = project(tmp_path)
    a, port = start(app, folder)
    until(a, f"reloading on changes to *.py in {folder}")
    serving(a)
    old = until_served(port, "v1")
    source = folder / "versioned.py"
    before = source.stat()
    (folder / "helper.py").write_text("GREETING = 'hello'\n")
    source.write_text(APP.format(version="v2"))
    # as a save within the second of the code before: its .pyc, had a
    # worker written one, would pass for the new code (same size, same mtime)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    new = until_served(port, "v2")
    assert not new & old, (old, new)
    until(a, "reload done")
    lines = ctrl_c(a)
    assert len(reloads(lines)) == 1, lines
    assert re.search(r"(helper\.py, versioned\.py|versioned\.py) changed: reloading 2 workers",
                     reloads(lines)[0]), lines
    assert sum("reload done in" in line for line in lines) == 1, lines
    importers = {int(pid) for pid in (folder.parent / "imports.log").read_text().split()}
    assert a.pid not in importers and old | new <= importers, (a.pid, importers)


@pytest.mark.timeout(120)
def test_only_the_files_watched_reload(app, tmp_path):
    """A text file, a hidden file, a file in a hidden directory and one in a
    --reload-exclude directory change first, then a page that
    --reload-include names, in a second --reload-dir: one reload, for the
    page alone (the changes come to the watcher in order)."""
    folder = project(tmp_path)
    shared = tmp_path.resolve() / "shared"
    (shared / "templates").mkdir(parents=True)
    for where in ("drafts", ".venv/lib"):
        (folder / where).mkdir(parents=True)
    a, port = start(app, folder, "--reload-dir", str(folder), "--reload-dir", str(shared),
                    "--reload-include", "*.html", "--reload-exclude", "drafts")
    until(a, f"reloading on changes to *.py, *.html in {folder}, {shared}")
    serving(a)
    old = until_served(port, "v1")
    (folder / "notes.txt").write_text("not code\n")
    (folder / ".scratch.py").write_text("x = 1\n")
    (folder / ".venv/lib/site.py").write_text("x = 1\n")
    (folder / "drafts/idea.py").write_text("x = 1\n")
    (shared / "templates/page.html").write_text("<p>hello</p>\n")
    line = until(a, "changed: reloading")
    assert line.endswith(f"{shared}/templates/page.html changed: reloading 2 workers"), line
    until(a, "reload done")
    assert not until_served(port, "v1") & old         # replaced, by the same code
    lines = ctrl_c(a)
    assert len(reloads(lines)) == 1, lines


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [False, True], ids=["", "preload"])
def test_code_that_cannot_start_keeps_the_old_workers_until_the_fix(app, tmp_path, preload):
    """A syntax error saved: the replacement (or under --preload, the new
    template) cannot import it, the old workers serve on, and the error is
    logged once, with where it is; no respawn tries it again. The save that
    fixes it rolls the workers onto the fix."""
    folder = project(tmp_path)
    a, port = start(app, folder, *(["--preload"] if preload else []))
    serving(a)
    old = until_served(port, "v1")
    (folder / "versioned.py").write_text(APP.format(version="v2") + "def broken(:\n")
    until(a, "reload stopped after")
    assert until_served(port, "v1") == old
    (folder / "versioned.py").write_text(APP.format(version="v3"))
    assert not until_served(port, "v3") & old
    until(a, "reload done")
    lines = ctrl_c(a)
    text = "\n".join(lines)
    assert text.count("SyntaxError") == 1, text
    where = APP.format(version="v2").count("\n") + 1          # the line of def broken(:
    assert text.count(f'versioned.py", line {where}') == 1, text
    assert re.search(r"reload stopped, the workers keep their code: (worker \d+ failed to "
                     r"boot|the new preload template cannot serve): 'versioned:app': "
                     r"importing 'versioned' failed:", text), text
    assert len(reloads(lines)) == 2, lines
