"""The pid and ready files in a directory that other users write (a sticky,
world-writable one, as /tmp), on a full disk and in a missing directory,
from the outside: `cluster-ext run` with --pid-file and --ready-file.

Another user is uid 65534 (nobody): what it plants is made by root and
handed over with lchown, since nobody can neither reach the test's
directory nor exec this Python."""
import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from test_web import WEBAPPS, get, stop, until

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


def dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


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


def plant_symlink(path, target):
    path.symlink_to(target)
    os.lchown(path, NOBODY, NOBODY)


@contextlib.contextmanager
def tmpfs(path, options):
    """A 64 KiB tmpfs mounted at path (made) with options, for the block."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options}size=64k", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "-l", str(path)])


@pytest.fixture
def full(tmp_path):
    """A 64 KiB tmpfs with no page left."""
    with tmpfs(tmp_path / "full", "") as path:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as exc:
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        assert exc.value.errno == errno.ENOSPC, exc.value
        yield path


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


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("kind", ["symlink", "text", "directory"])
def test_what_is_not_ours_at_the_path_is_refused_and_left_alone(app, shared, precious,
                                                                flag, kind):
    """A symlink another user planted at the path, a file that holds no pid
    or a directory: exit 2 with one line, nothing followed, written,
    replaced or removed."""
    path = shared / "app.file"
    if kind == "symlink":
        plant_symlink(path, precious)
        why = "exists and is a symbolic link"
    elif kind == "text":
        path.write_text("precious\n")
        why = "exists and holds no pid"
    else:
        path.mkdir()
        why = "exists and is a directory"
    line = refused(app, flag, str(path))
    assert line == (f"cluster-ext run: error: argument {flag}: {path}: {why} (only a file "
                    "that holds a dead primary's pid is replaced)")
    assert precious.read_text() == "precious\n"
    assert list(shared.iterdir()) == [path]
    if kind == "symlink":
        assert path.is_symlink() and path.lstat().st_uid == NOBODY
    elif kind == "text":
        assert path.read_text() == "precious\n"
    else:
        assert path.is_dir()


@pytest.mark.parametrize("flag", FLAGS)
def test_a_file_in_use_by_a_live_primary_is_refused(app, tmp_path, flag):
    """A second primary with the first one's file: gunicorn's words, exit 2;
    the first one's file stays until the first one stops."""
    path = tmp_path / "app.file"
    first, _ = serve(app, flag, str(path))
    line = refused(app, flag, str(path))
    assert line == (f"cluster-ext run: error: argument {flag}: {path}: "
                    f"Already running on PID {first.pid}")
    assert path.read_text() == f"{first.pid}\n"
    stop(first)
    assert not path.exists()


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("left", ["dead", "not-a-primary", "empty"])
def test_a_stale_file_is_replaced(app, tmp_path, flag, left):
    """Left by a primary that died: its pid is no process, or has been taken
    by a process that is not a primary (here cat), or the file is empty."""
    path = tmp_path / "app.file"
    other = None
    if left == "dead":
        path.write_text(f"{dead_pid()}\n")
    elif left == "not-a-primary":
        other = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
        path.write_text(f"{other.pid}\n")
    else:
        path.write_text("")
    try:
        a, _ = serve(app, flag, str(path))
        assert path.read_text() == f"{a.pid}\n"
        stop(a)
        assert list(tmp_path.iterdir()) == []
    finally:
        if other is not None:
            other.stdin.close()
            other.wait()


@pytest.mark.parametrize("flag", FLAGS)
def test_a_file_that_is_no_longer_ours_is_left_at_stop(app, tmp_path, flag):
    """Replaced while the primary runs (another primary's now): its stop
    removes only its own."""
    path, other = tmp_path / "app.file", tmp_path / "other"
    a, _ = serve(app, flag, str(path))
    other.write_text("4242\n")
    os.replace(other, path)
    stop(a)
    assert path.read_text() == "4242\n"


def test_a_symlink_planted_at_the_ready_file_before_readiness_is_left_alone(
        app, shared, precious):
    """Planted after the start and before the fleet is ready: not followed,
    not replaced, not removed; the fleet serves and says so."""
    path = shared / "ready"
    a, port = start(app, "--ready-file", str(path), spec="webapp:app", cwd=WEBAPPS,
                    env={"WEBAPP_SLOW_STARTUP": "2"})
    until(a, "starting slowly")                    # the lifespan startup waits 2 s
    plant_symlink(path, precious)
    line = until(a, "ready file not written")
    assert line.endswith(f"ready file not written: {path}: File exists")
    until(a, "ready: 1 workers, 1 listening")
    assert get(port)[0] == 200
    stop(a)
    assert precious.read_text() == "precious\n"
    assert list(shared.iterdir()) == [path] and path.is_symlink()


def test_a_pid_file_on_a_full_disk_is_exit_2_and_leaves_nothing(app, full):
    path = full / "app.pid"
    line = refused(app, "--pid-file", str(path))
    assert line == f"cluster-ext run: error: argument --pid-file: {path}: No space left on device"
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


@pytest.fixture
def readonly(tmp_path):
    """A read-only tmpfs: root may write in any directory but on such a one."""
    with tmpfs(tmp_path / "readonly", "ro,") as path:
        yield path


@pytest.mark.parametrize("flag", [*FLAGS, "--control"])
def test_a_directory_that_cannot_be_written_is_exit_2_with_one_line(app, readonly, flag):
    """Told before anything is logged or forked (--control was told after
    the 'supervising' line), in argparse's words."""
    path = readonly / "app.file"
    line = refused(app, flag, str(path))
    assert line == (f"cluster-ext run: error: argument {flag}: {path}: its directory "
                    f"{readonly} is not writable")


@pytest.mark.parametrize("flag", FLAGS)
def test_a_missing_directory_is_exit_2_with_one_line(app, tmp_path, flag):
    path = tmp_path / "missing" / "app.file"
    line = refused(app, flag, str(path))
    assert line == (f"cluster-ext run: error: argument {flag}: {path}: its directory "
                    f"{path.parent} does not exist")
    assert list(tmp_path.iterdir()) == []
