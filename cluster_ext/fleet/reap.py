"""PID 1 duty: a supervising primary that inherits orphans (it is PID 1 of
its pid namespace, a container's entry point, or a child subreaper) reaps
every zombie child that is nobody else's to wait for.

Never waitpid(-1): that would take a worker's status from the engine, which
reaps each worker by its pid, and the status of a subprocess that the
application in the primary started and waits for. So once a second it lists
this process's children (/proc/self/task/*/children, or every /proc/N/stat
where that file is missing), and a zombie among them is reaped by its pid
when it is none of these:

- a worker (the engine reaps it, through its pidfd);
- a child that a subprocess.Popen or multiprocessing object still waits
  for (asyncio's subprocesses are Popen objects too);
- a zombie first seen at this pass: one the application forked itself
  (os.fork(), os.system() in a thread) is waited for at once as a rule, and
  gets the next second to be.

A timer rather than SIGCHLD: the engine's pidfd fallback and asyncio's child
watchers own that signal's handler. A zombie lives two seconds at most.
"""
from __future__ import annotations

import os
import sys

from .. import _core, _runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INTERVAL = 1.0


def children() -> list[int]:
    """The pids of this process's children."""
    me = os.getpid()
    found: list[int] = []
    if os.path.exists(f"/proc/{me}/task/{me}/children"):
        for tid in os.listdir(f"/proc/{me}/task"):
            try:
                with open(f"/proc/{me}/task/{tid}/children") as f:
                    found.extend(int(pid) for pid in f.read().split())
            except FileNotFoundError:    # the thread ended meanwhile
                pass
        return found
    for name in os.listdir("/proc"):     # a kernel without CONFIG_PROC_CHILDREN
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and int(stat[1]) == me:
                found.append(int(name))
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name: state, ppid, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].decode().split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def zombie_children() -> set[int]:
    return {pid for pid in children() if (_stat(pid) or ["?"])[0] == "Z"}


def waited_for() -> set[int]:
    """Children that the application's process objects will wait for."""
    import gc
    objects = gc.get_objects()
    pids: set[int] = set()
    for module, name in (("subprocess", "Popen"), ("multiprocessing.popen_fork", "Popen")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):    # only once the application imported it
            waiting: list[Any] = _core.instances(objects, cls)
            pids.update(obj.pid for obj in waiting if obj.returncode is None)
    return pids


class Reaper:
    def __init__(self) -> None:
        self.seen: set[int] = set()      # zombies of the last pass, unclaimed
        self.timer: _core.Handle | None = None

    def start(self) -> None:
        self.timer = _runtime.call_later(INTERVAL, self.tick)
        self.timer.ref(False)            # it never keeps the loop turning

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def tick(self) -> None:
        zombies = zombie_children()
        if zombies:
            workers = _runtime.workers or {}
            zombies -= {w.process.pid for w in workers.values()}
        if zombies:
            zombies -= waited_for()
        for pid in zombies & self.seen:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:    # someone else waited for it meanwhile
                pass
        self.seen = zombies - self.seen
        self.start()
