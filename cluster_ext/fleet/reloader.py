"""--reload, for development: a rolling reload (rolling.py, as SIGHUP starts
one) whenever the application's files change on disk. uvicorn's --reload
restarts its one process, and cannot with --workers (uvicorn#1413); here the
requests in flight finish, and new code that cannot start leaves the old
workers serving (the reload says why, once).

watchfiles' watch() blocks, so it runs in a thread of the primary that only
reads paths (the application is never imported here) and hands each burst of
changes to the loop (_runtime.call_soon_threadsafe), where the fleet is
changed. A thread is safe beside the forks of `cluster-ext run`: its workers
are exec'd, or forked by a preload template, never fork(target=) from here."""
from __future__ import annotations

import os
import threading
from pathlib import PurePosixPath

from .. import _runtime
from .rolling import rolling_restart

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from watchfiles import Change

DEFAULT_INCLUDES = ("*.py",)
# uvicorn's (.*, .py[cod], .sw.*, ~*) as they are meant: its .py[cod] and
# .sw.* match only files of those very names (editors' swap files are hidden,
# so .* has them); and editors' backups.
DEFAULT_EXCLUDES = (".*", "*.py[cod]", "*~", "~*")
SHOWN = 3                        # changed files the log line names, then "and N more"
STOP_TIMEOUT = 5.0               # seconds close() waits for the thread (it looks every 50 ms)


def watched(dirs: Iterable[str]) -> list[str]:
    """The directories to watch, their links resolved, each once: one below
    another is watched with it."""
    found = list(dict.fromkeys(os.path.realpath(d) for d in dirs))     # in their order
    return [d for d in found
            if not any(d != other and d.startswith(other.rstrip("/") + "/")
                       for other in found)]


class PathFilter:
    """Which changed paths reload (watchfiles' watch_filter). A path in a
    directory that an exclude matches, below the watched one (.git, .venv,
    a --reload-exclude), is passed over; any other counts when it matches
    a --reload-include and no --reload-exclude, or a default include and
    no exclude at all: --reload-include .env watches that hidden file. A
    default exclude that a --reload-include names is dropped, as uvicorn
    drops it (--reload-include '.*'). Patterns match as PurePath.match()
    matches, as uvicorn's do: a name, or a path's last parts for a pattern
    with /, the whole of it for an absolute one."""

    def __init__(self, roots: Sequence[str], includes: Sequence[str],
                 excludes: Sequence[str]) -> None:
        self.roots = [root.rstrip("/") + "/" for root in roots]
        self.includes, self.excludes = list(includes), list(excludes)
        self.default_excludes = [p for p in DEFAULT_EXCLUDES if p not in self.includes]

    def __call__(self, change: Change, path: str) -> bool:
        root = next((r for r in self.roots if path.startswith(r)), None)
        if root is None:                 # a watched directory itself
            return False
        file = PurePosixPath(path)
        under = PurePosixPath(root)
        every_exclude = (*self.excludes, *self.default_excludes)
        for folder in PurePosixPath(path[len(root):]).parents[:-1]:
            if any((under / folder).match(p) for p in every_exclude):
                return False
        if any(file.match(p) for p in self.excludes):
            return False
        if any(file.match(p) for p in self.includes):
            return True
        return (not any(file.match(p) for p in self.default_excludes)
                and any(file.match(p) for p in DEFAULT_INCLUDES))


class Watching:
    """watchfiles' stop_event, which it asks every 50 ms once its watches are
    set: the first ask tells start() that they are."""

    def __init__(self) -> None:
        self.began = threading.Event()
        self.stopped = threading.Event()

    def is_set(self) -> bool:
        self.began.set()
        return self.stopped.is_set()


class Reloader:
    """The watching thread, from start() to close(), and the reload each
    burst of changes starts on the loop. watchfiles groups the changes that
    follow each other within 50 ms (up to 1.6 s of them) into one burst: a
    save, a checkout; a burst during a reload joins it (rolling.py), so
    that every worker ends on the newest code."""

    def __init__(self, dirs: Iterable[str], includes: Sequence[str] = (),
                 excludes: Sequence[str] = ()) -> None:
        self.dirs = watched(dirs)
        self.changes = PathFilter(self.dirs, includes, excludes)
        self.patterns = [*(p for p in DEFAULT_INCLUDES if p not in excludes), *includes]
        self.watching = Watching()
        self.thread: threading.Thread | None = None
        self.error: Exception | None = None

    def start(self) -> None:
        """Returns once every directory is watched, before any worker is
        forked: setting the watches holds the GIL (watchfiles' Rust code,
        a moment for a project, seconds for a tree of tens of thousands of
        directories). OSError if they cannot be set."""
        import logging

        # its line for each burst ("1 change detected") would come before ours
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self.thread = threading.Thread(target=self.watch, name="cluster-ext --reload",
                                       daemon=True)
        self.thread.start()
        self.watching.began.wait()
        if self.error is not None:
            raise OSError(f"--reload cannot watch {', '.join(self.dirs)}: "
                          f"{type(self.error).__name__}: {self.error}")
        _runtime.log("info", f"reloading on changes to {', '.join(self.patterns)} in "
                     f"{', '.join(self.dirs)}")

    def close(self) -> None:
        """The thread ends within watchfiles' step (50 ms)."""
        self.watching.stopped.set()
        if self.thread is not None:
            self.thread.join(STOP_TIMEOUT)
            self.thread = None

    def watch(self) -> None:
        """The thread: each burst to the loop, until close()."""
        import watchfiles
        try:
            for changes in watchfiles.watch(*self.dirs, watch_filter=self.changes,
                                            stop_event=self.watching, raise_interrupt=False,
                                            ignore_permission_denied=True):
                _runtime.call_soon_threadsafe(self.changed, sorted({p for _, p in changes}))
        except Exception as exc:         # out of inotify watches, say
            if not self.watching.began.is_set():
                self.error = exc         # start() raises it
            else:
                _runtime.call_soon_threadsafe(
                    _runtime.log, "error", "--reload stopped watching, no change reloads "
                                           f"any more: {type(exc).__name__}: {exc}")
        finally:
            self.watching.began.set()

    def changed(self, paths: list[str]) -> None:
        """On the loop: a reload, logged after the files that asked for it."""
        fleet = _runtime.fleet
        if fleet is None or self.watching.stopped.is_set():
            return                       # the fleet has ended
        cause = f"{shown(paths)} changed"
        if fleet.stopping:
            _runtime.log("info", f"{cause}: ignored, the fleet is stopping")
            return
        rolling_restart(None, lambda *_: None, cause=cause)


def shown(paths: list[str]) -> str:
    """The changed files as the log names them: relative to the current
    directory when they are below it, the first few of many."""
    here = os.getcwd().rstrip("/") + "/"
    names = [p[len(here):] if p.startswith(here) else p for p in paths]
    if len(names) <= SHOWN:
        return ", ".join(names)
    return f"{', '.join(names[:SHOWN])} and {len(names) - SHOWN} more"
