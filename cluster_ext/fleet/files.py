"""The primary's pid and ready files (supervise(pid_file=, ready_file=),
--pid-file, --ready-file), safe in a directory that other users write: no
name they can guess, no symlink followed, nothing written over, and only
our own file removed. Each file is opened, read or written once and closed
here. Imported on use by supervise() and the CLI, never by a worker."""
from __future__ import annotations

import errno
import os
import stat

from .. import _runtime

# What a file left at the path may hold to be replaced: one pid (or nothing).
_MAX_PID_TEXT = 32
_PID_MAX_LIMIT = 1 << 22         # Linux's: no pid is larger (and os.kill() would overflow)
_REPLACED = "(only a file that holds a dead primary's pid is replaced)"
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO"))


class RunFile:
    """A file this primary created at path, known by its device, inode and
    text: remove() unlinks path only while it still names that file with
    that text, so a file someone put in its place stays."""

    __slots__ = ("path", "identity", "text")

    def __init__(self, path: str, identity: tuple[int, int], text: str) -> None:
        self.path, self.identity, self.text = path, identity, text

    def is_ours(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:                  # gone, or a symlink now (ELOOP)
            return False
        try:
            st = os.fstat(fd)
            return ((st.st_dev, st.st_ino) == self.identity
                    and os.read(fd, len(self.text) + 1) == self.text.encode())
        finally:
            os.close(fd)

    def remove(self, what: str) -> None:
        """A failure is logged: the fleet has stopped or is stopping, and a
        file that cannot be removed must not change how it ends."""
        try:
            if self.is_ours():
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _runtime.log("warning", f"{what} not removed: {self.path}: {exc.strerror}")


def claim(path: str, text: str) -> RunFile:
    """At the start: makes way at path (make_way()), then writes text there
    (create()). A primary that started at the same moment and won the path
    is found by a second look: 'Already running on PID N'."""
    make_way(path)
    try:
        return create(path, text)
    except FileExistsError:
        make_way(path)
        return create(path, text)


def make_way(path: str) -> None:
    """At the start. Nothing at path: nothing to do. A regular file that
    holds one pid that is not a live primary's (see is_primary()), or
    nothing, was left by a primary that died: it is removed. Anything else
    raises FileExistsError: 'Already running on PID N' for a live primary's
    file, else what is in the way (a symbolic link, whoever it belongs to, a
    directory, a file that holds something else), left as it is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise _in_the_way(path, next((kind for is_kind, kind in _KINDS if is_kind(st.st_mode)),
                                     "not a regular file"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:     # a symlink since the lstat()
            raise _in_the_way(path, "a symbolic link") from None
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        st = os.fstat(fd)                # what was read is what is removed
        text = os.read(fd, _MAX_PID_TEXT + 1) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)
    if text is None:
        raise FileExistsError(errno.EEXIST, "replaced while it was checked", path)
    pid = text.strip()
    if pid and not (pid.isdigit() and len(text) <= _MAX_PID_TEXT):
        raise _in_the_way(path, "holds no pid", verb="")
    if pid and is_primary(int(pid)):
        raise FileExistsError(errno.EEXIST, f"Already running on PID {int(pid)}", path)
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FileExistsError(errno.EEXIST, "replaced while it was checked", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


def _in_the_way(path: str, what: str, verb: str = "is ") -> FileExistsError:
    return FileExistsError(errno.EEXIST, f"exists and {verb}{what} {_REPLACED}", path)


def is_primary(pid: int) -> bool:
    """pid is a live process that has loaded cluster_ext's engine (as every
    primary has; its command line may be any script that calls
    supervise()). A zombie is dead. A process whose memory map this user may
    not read is a primary if its command line names cluster_ext; one that
    /proc hides (hidepid) is taken for a primary, since it cannot be told
    apart. Our own pid is not: a file that holds it was left by an earlier
    process of that pid (a container's pid 1, restarted)."""
    if not 0 < pid <= _PID_MAX_LIMIT or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                             # another user's process: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[:1] in ([b"Z"], [b"X"]):
                return False
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                return any(b"/cluster_ext/_core." in line for line in f)
        except PermissionError:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            return b"cluster_ext" in cmdline or b"cluster-ext" in cmdline
    except (FileNotFoundError, ProcessLookupError):
        try:                             # ended meanwhile, or hidden from us
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def probe(path: str) -> None:
    """At the start, for a file written later: its directory takes a new
    file (it exists, we may write in it, it is not read-only). An error
    names path."""
    try:
        fd, temp = _temporary(path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    os.close(fd)
    _unlink_quietly(temp)


def create(path: str, text: str) -> RunFile:
    """Writes text to a new file at path, whole or not at all, never over
    anything already there (FileExistsError) and never through a symlink:
    a temporary file of an unguessable name beside it, created with
    O_EXCL|O_NOFOLLOW, written, fsync'd (a full disk that allocates late
    says so here), then hard-linked to path, which fails rather than
    replace what is there (rename() replaces). The temporary file is gone
    on every path out. An error names path, not the temporary file."""
    temp = None
    try:
        fd, temp = _temporary(path)
        try:
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        _link(temp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        if temp is not None:
            _unlink_quietly(temp)
    return RunFile(path, (st.st_dev, st.st_ino), text)


def _temporary(path: str) -> tuple[int, str]:
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{os.urandom(8).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(temp, flags, 0o644), temp


def _link(temp: str, path: str) -> None:
    try:
        os.link(temp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        # A filesystem without hard links (vfat, some network ones): a
        # check, then rename(), which would replace a file that appeared
        # between the two.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
        os.rename(temp, path)


def _unlink_quietly(temp: str) -> None:
    try:
        os.unlink(temp)
    except OSError:                      # renamed away, or nothing more we can do
        pass
