"""The primary's pid and ready files (supervise(pid_file=, ready_file=),
--pid-file, --ready-file), safe in a directory that other users write: no
name they can guess, no symlink followed, no temporary file left behind.
Each file is opened, written and closed here. Imported on use by
supervise() and the CLI, never by a worker."""
from __future__ import annotations

import os

from . import _runtime


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


def create(path: str, text: str) -> None:
    """Writes text to path, whole or not at all, never through a symlink:
    a temporary file of an unguessable name beside it, created with
    O_EXCL|O_NOFOLLOW, written, fsync'd (a full disk that allocates late
    says so here), then renamed over path. The temporary file is gone on
    every path out. An error names path, not the temporary file."""
    temp = None
    try:
        fd, temp = _temporary(path)
        try:
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        if temp is not None:
            _unlink_quietly(temp)


def remove(path: str, what: str) -> None:
    """A failure is logged: the fleet has stopped or is stopping, and a
    file that cannot be removed must not change how it ends."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _runtime.log("warning", f"{what} not removed: {path}: {exc.strerror}")


def _temporary(path: str) -> tuple[int, str]:
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{os.urandom(8).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(temp, flags, 0o644), temp


def _unlink_quietly(temp: str) -> None:
    try:
        os.unlink(temp)
    except OSError:                      # renamed away, or nothing more we can do
        pass
