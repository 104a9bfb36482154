"""This process's part in the cluster, in one place: its role, the workers, the
settings, the cluster's emitter, and the loop's entry points. Every other module
of the package imports it, and it imports none of them (only the engine and
events): state flows down, never written into a module from above. The public
module cluster_ext reads it through properties.
"""
from __future__ import annotations

import os
import sys

from . import _core, _fast
from .events import EventEmitter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import FrameType
    from typing import Any

    from ._worker import Worker


SCHED_NONE, SCHED_RR = 1, 2      # scheduling policies: the primary's settings hold one

is_primary: bool = "CLUSTER_EXT_WORKER_ID" not in os.environ
is_worker: bool = not is_primary
workers: dict[int, Worker] | None = {} if is_primary else None    # the primary's, by id
worker: Worker | None = None                                      # a worker's own
emitter = EventEmitter()        # the cluster's events: 'fork', 'online', 'exit'...
settings: dict[str, Any] = {}   # filled by _primary.default_settings() at import
settings_view: Mapping[str, Any] = _fast.MappingProxyType(settings)
next_id = 1                     # the id of the next fork(); > 1 once one forked
ran = False                     # run() was called (cli: the app ran its own loop)
servers: set[Any] = set()       # a worker's servers: its disconnect() closes them
served = [0]                    # connections its servers took (a list: bumped in place)
_threadsafe: _fast.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = _fast.deque()
_wakeup_fd = -1


def become_worker(w: Worker) -> None:
    """This process is worker w from now on."""
    global is_primary, is_worker, workers, worker
    is_primary, is_worker, workers, worker = False, True, None, w


def forked() -> bool:
    return next_id > 1


def run() -> None:
    """Runs the event loop until nothing is left to wait for (no worker, server,
    connection, timer or connected channel) or stop(); re-raises the first
    exception a callback raised. In a worker whose disconnect has completed,
    that is when it returns: the script goes on and ends as Python ends it."""
    global ran
    ran = True
    _core.run()


def stop() -> None:
    """Makes run() return after the current callback."""
    _core.stop()


def exit_faster() -> None:
    """In an exec'd worker, from its boot: lets the worker end without the
    interpreter's teardown of every module once everything the application
    can see of its exit is done (the handler below). Only when no atexit
    handler is registered yet: ours then runs after every other one."""
    import atexit
    threading = sys.modules.get("threading")
    if atexit._ncallbacks() == 0 and (
            threading is None or threading.current_thread() is threading.main_thread()):
        frame = sys._getframe()
        while frame.f_back is not None:
            frame = frame.f_back
        atexit.register(_end_after_return, frame)


def _end_after_return(main_frame: FrameType) -> None:
    """The worker's last atexit handler. When the script returned (rather
    than raised: its exit status is then the interpreter's to make, and
    made with the teardown), what is left of the exit is the teardown of
    every module and the flush of the files it frees; the files are flushed
    here and the rest is skipped: most of a worker's exit time."""
    import opcode
    returns = [opcode.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST")
               if name in opcode.opmap]
    code = main_frame.f_code.co_code
    if not 0 <= main_frame.f_lasti < len(code) or code[main_frame.f_lasti] not in returns \
            or sys.flags.inspect or os.environ.get("PYTHONINSPECT"):
        return
    _flush_files()
    status = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            status = 120        # as the interpreter's exit when stdio cannot be flushed
    os._exit(status)


def exit_process(code: int) -> None:
    """Ends a fork(target=) worker as Python's own exit would for what the
    application can see: non-daemon threads joined, atexit handlers run,
    every open buffered file and stdio flushed; then os._exit(): a normal
    exit would unwind into the primary's stack above its fork(). gc.freeze()
    at the fork set apart the objects that are not this worker's to flush."""
    import atexit
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass                    # _run_exitfuncs reports what its handlers raised
    _flush_files()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _flush_files() -> None:
    """Every open file object's buffer, as their finalizers would at exit."""
    import _io  # the C base classes: a type check, not io's ABCs' __instancecheck__
    import gc
    files = _core.instances(gc.get_objects(), _io._IOBase)
    # text layers first: they write into the binary buffers under them
    for obj in sorted(files, key=lambda f: not isinstance(f, _io._TextIOBase)):
        try:
            if not obj.closed:
                obj.flush()
        except Exception:
            pass


def check_seconds(name: str, value: float) -> float:
    """value as seconds the loop can wait, else ValueError naming it: finite,
    0 or more and at most _core.MAX_SECONDS (2**31-1 ms), the bound
    call_later() keeps. For a timeout given now whose timer starts later,
    in a callback that must not be the one to raise."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:        # an int past a double
        seconds = float("inf")
    if not 0 <= seconds <= _core.MAX_SECONDS:      # NaN fails too
        raise ValueError(f"{name} must be finite, 0 or more and at most "
                         f"{_core.MAX_SECONDS} seconds (2**31-1 ms), not {value!r}")
    return seconds


def call_later(seconds: float, fn: Callable[..., Any], *args: Any) -> _core.Handle:
    """A timer on the loop; returns a handle with .cancel()."""
    return _core.call_later(seconds, (lambda: fn(*args)) if args else fn)


def call_soon_threadsafe(fn: Callable[..., Any], *args: Any) -> None:
    """The one entry another thread may call: runs fn(*args) on the loop's thread."""
    _threadsafe.append((fn, args))
    _core.wakeup()


def _run_threadsafe() -> None:
    while _threadsafe:
        fn, args = _threadsafe.popleft()
        fn(*args)


def wake_on_signals() -> None:
    """A signal that lands just before the loop sleeps must still wake it:
    Python's handlers only run once the wait ends. Unless the application
    (or asyncio) has a wakeup fd of its own; only the main thread can."""
    global _wakeup_fd
    fd = _core.signal_fd()
    try:
        previous = _fast.signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:
        return
    if previous not in (-1, _wakeup_fd):
        _fast.signal.set_wakeup_fd(previous)
        return
    _wakeup_fd = fd


def log(level: str, message: str) -> None:
    """The package's own lines ('info', 'warning', 'error') on the
    "cluster_ext" logger. logging is imported here, on these rare paths,
    not at the top: every worker imports this module at its start."""
    import logging
    getattr(logging.getLogger("cluster_ext"), level)("%s", message.rstrip())


_core.set_wake_callback(_run_threadsafe)
wake_on_signals()
