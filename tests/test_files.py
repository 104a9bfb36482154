"""The pid and ready files in a directory that other users write (a sticky,
world-writable one, as /tmp), on a full disk and in a missing directory,
from the outside: `cluster-ext run` with --pid-file and --ready-file.

Another user is uid 65534 (nobody): what it plants is made by root and
handed over with lchown, since nobody can neither reach the test's
directory nor exec this Python."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from test_web import get, stop, until

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_EXT = str(Path(sys.executable).parent / "cluster-ext")
SPEC = "examples.asgi_app:app"
NOBODY = 65534
FLAGS = ["--pid-file", "--ready-file"]


def start(app, *options, spec=SPEC, cwd=ROOT, cmd=(), env=None):
    """`cluster-ext run -w 1` (after cmd, a wrapper that execs it): the
    process, one stream of lines, and its port."""
    port = free_port()
    argv = [*cmd, CLUSTER_EXT, "run", "-w", "1", "--bind", f"127.0.0.1:{port}", *options, spec]
    return app("files", cmd=argv, cwd=cwd, merge_stderr=True, env=env), port


def serve(app, *options, **kw):
    a, port = start(app, *options, **kw)
    until(a, "ready: 1 workers, 1 listening")
    return a, port


def refused(app, *options):
    """The one line of a start that is refused (exit 2, before any fork)."""
    a, _ = start(app, *options)
    lines = a.finish(code=2, timeout=15)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def precious(tmp_path):
    """A root-owned file that another user would like overwritten."""
    path = tmp_path / "precious"
    path.write_text("precious\n")
    return path


@pytest.fixture
def shared(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("planting as another user needs root")
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o1777)                            # as /tmp
    return path


@pytest.fixture
def full(tmp_path):
    """A 64 KiB tmpfs with no page left."""
    path = tmp_path / "full"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as exc:
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        assert exc.value.errno == errno.ENOSPC, exc.value
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "-l", str(path)])


def test_a_symlink_at_the_old_temporary_name_is_not_followed(app, shared, precious):
    """Another user plants PATH.<pid>.tmp, the name the primary used to
    write through, as a symlink to a root-owned file: the file is left
    alone, and so are the symlinks."""
    pid_file, ready_file = shared / "app.pid", shared / "ready"
    plant = (f'for f in {pid_file} {ready_file}; do ln -s {precious} "$f.$$.tmp" && '
             f'chown -h {NOBODY}:{NOBODY} "$f.$$.tmp" || exit 99; done; exec "$@"')
    a, port = serve(app, "--pid-file", str(pid_file), "--ready-file", str(ready_file),
                    cmd=["sh", "-c", plant, "sh"])
    planted = {shared / f"app.pid.{a.pid}.tmp", shared / f"ready.{a.pid}.tmp"}
    assert precious.read_text() == "precious\n"
    assert pid_file.read_text() == ready_file.read_text() == f"{a.pid}\n"
    assert not pid_file.is_symlink() and not ready_file.is_symlink()
    assert get(port)[0] == 200
    stop(a)
    assert precious.read_text() == "precious\n"
    assert set(shared.iterdir()) == planted
    assert all(p.is_symlink() and p.lstat().st_uid == NOBODY for p in planted)


def test_a_pid_file_on_a_full_disk_is_exit_2_and_leaves_nothing(app, full):
    path = full / "app.pid"
    line = refused(app, "--pid-file", str(path))
    assert line == f"cluster-ext run: error: --pid-file {path}: No space left on device"
    assert os.listdir(full) == ["filler"]


def test_a_ready_file_on_a_full_disk_is_logged_and_the_fleet_serves(app, full):
    path = full / "ready"
    a, port = start(app, "--ready-file", str(path))
    line = until(a, "ready file not written")
    assert line.endswith(f"ready file not written: {path}: No space left on device")
    until(a, "ready: 1 workers, 1 listening")
    assert get(port)[0] == 200
    assert os.listdir(full) == ["filler"]
    lines = stop(a)
    assert not any("Traceback" in line for line in lines), lines
    assert os.listdir(full) == ["filler"]


@pytest.mark.parametrize("flag", FLAGS)
def test_a_missing_directory_is_exit_2_with_one_line(app, tmp_path, flag):
    path = tmp_path / "missing" / "app.file"
    line = refused(app, flag, str(path))
    assert line == f"cluster-ext run: error: {flag} {path}: No such file or directory"
    assert list(tmp_path.iterdir()) == []
