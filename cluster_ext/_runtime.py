"""This process's part in the cluster, in one place: its role, the workers, the
settings, the cluster's emitter, and the loop's entry points. Every other module
of the package imports it, and it imports none of them (only the engine and
events): the modules above write their state here, and this module never
writes into theirs. The public
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
    from .fleet.supervisor import Fleet


SCHED_NONE, SCHED_RR = 1, 2      # scheduling policies: the primary's settings hold one

# A preload template (fleet/preload.py) runs the application's import on
# behalf of the workers it forks: it sees itself a worker, with none yet.
is_template: bool = "CLUSTER_EXT_TEMPLATE_FD" in os.environ
is_primary: bool = "CLUSTER_EXT_WORKER_ID" not in os.environ and not is_template
is_worker: bool = not is_primary
workers: dict[int, Worker] | None = {} if is_primary else None    # the primary's, by id
worker: Worker | None = None                                      # a worker's own
fleet: Fleet | None = None      # the primary's: the fleet supervise() is running, if any
emitter = EventEmitter()        # the cluster's events: 'fork', 'online', 'exit'...
settings: dict[str, Any] = {}   # filled by _primary.default_settings() at import
settings_view: Mapping[str, Any] = _fast.MappingProxyType(settings)
next_id = 1                     # the id of the next fork(); > 1 once one forked
ran = False                     # run() was called (cli: the app ran its own loop)
servers: set[Any] = set()       # a worker's servers: its disconnect() closes them
served = [0]                    # connections its servers took (a list: bumped in place)
requests = [0]                  # HTTP requests its web layer answered, if it counts them
counts_requests = False         # else its requests are its connections
# Under supervise(): the drain delay its workers wait out, from their own
# SIGTERM or SIGINT, before they drain; None when no fleet is supervised.
supervised_drain_delay: float | None = None
# Under supervise() with a heartbeat: each fork gets a memfd that the worker
# dumps its stacks into when it times out (_forensics).
keeps_stacks = False
_threadsafe: _fast.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = _fast.deque()
_wakeup_fd = -1


def become_worker(w: Worker) -> None:
    """This process is worker w from now on."""
    global is_primary, is_worker, is_template, workers, worker
    is_primary, is_worker, is_template, workers, worker = False, True, False, None, w


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
    interpreter's teardown when that teardown has nothing left to run that
    the program could see (_end_if_nothing_left). Only when no atexit
    handler is registered yet, so that ours runs after every other one, and
    when this is the import of the script (the outermost frame is its
    module's or runpy's), whose frame tells at the exit how it ended."""
    import atexit
    threading = sys.modules.get("threading")
    if atexit._ncallbacks() or (threading is not None and
                                threading.current_thread() is not threading.main_thread()):
        return
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
    main = sys.modules.get("__main__")
    if frame.f_globals is getattr(main, "__dict__", None) or (
            frame.f_code.co_name == "_run_module_as_main"
            and frame.f_globals.get("__name__") == "runpy"):
        import gc  # 3.12 starts with objects of its own frozen
        atexit.register(_end_if_nothing_left, frame, gc.get_freeze_count())


# Weak reference callbacks that only tidy the containers they belong to.
TIDYING_CALLBACKS = frozenset({
    "ReferenceType._destroy",                         # abc's caches (_abc)
    "WeakSet.__init__.<locals>._remove", "WeakValueDictionary.__init__.<locals>.remove",
    "WeakKeyDictionary.__init__.<locals>.remove", "_localdummy_destroyed",
    "_removeHandlerRef"})


def _end_if_nothing_left(main_frame: FrameType, frozen_at_boot: int) -> None:
    """The worker's last atexit handler. The interpreter's exit from here
    is a teardown of every module: it runs finalizers (__del__, a file's
    close, a generator's finally, a weak reference's callback) and frees
    memory. When the script returned (its status is 0), the interpreter
    prints nothing more, and no object left, garbage included, has a
    finalizer but the standard streams, that teardown would only free
    memory: stdio is flushed here and the process ends, without the
    teardown that was most of a worker's exit. Otherwise the interpreter
    exits as it always does."""
    import gc
    if sys.flags.inspect or sys.flags.verbose or os.environ.get("PYTHONINSPECT") \
            or os.environ.get("PYTHONMALLOCSTATS") or gc.get_freeze_count() != frozen_at_boot \
            or getattr(sys, "last_value", None) is not None \
            or getattr(sys, "last_exc", None) is not None:
        return
    code = main_frame.f_code.co_code
    # the opcodes that end a module's code and an expression's (RETURN_CONST
    # and RETURN_VALUE on 3.12; opcode's import would cost more than this)
    returns = {compile("", "", "exec").co_code[-2], compile("x", "", "eval").co_code[-2]}
    if not 0 <= main_frame.f_lasti < len(code) or code[main_frame.f_lasti] not in returns:
        return
    stdio = [s for s in (sys.__stdin__, sys.__stdout__, sys.__stderr__) if s is not None]
    inert = {id(s) for s in stdio} | {id(getattr(s, "buffer", None)) for s in stdio} | \
        {id(getattr(getattr(s, "buffer", None), "raw", None)) for s in stdio}
    import _weakref
    # held to the end: the process ends sooner than a list of every object
    # can be freed
    everything = gc.get_objects()
    for obj in _core.finalizable(everything, _weakref.ref):
        if id(obj) in inert or getattr(obj, "closed", False) is True:
            continue
        if any(getattr(obj, frame, 0) is None for frame in ("gi_frame", "cr_frame", "ag_frame")):
            continue                    # a generator or coroutine that has finished
        callback = getattr(obj, "__callback__", None)
        if callback is not None and (obj() is None or getattr(
                callback, "__qualname__", None) in TIDYING_CALLBACKS):
            continue
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except Exception:
            return                      # the interpreter says so, and exits 120
    _core.exit_now(0)


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
    not at the top: every worker imports this module at its start. One of
    them is a process out of descriptors, which cannot open logging's
    source: that line goes to stderr as it is."""
    try:
        import logging
    except OSError:
        sys.stderr.write(f"cluster_ext {level}: {message.rstrip()}\n")
        return
    getattr(logging.getLogger("cluster_ext"), level)("%s", message.rstrip())


def reopen_log_files() -> int:
    """SIGUSR1's work (gunicorn's): every logging.FileHandler of this
    process's loggers opens its path again, so that a file logrotate renamed
    is let go and a new one is written at the path. Returns how many were
    reopened; what went wrong is logged (a handler whose path could not be
    opened tries again at its next record). Without logging imported,
    nothing writes a log file here."""
    logging = sys.modules.get("logging")
    if logging is None:
        return 0
    found: dict[int, Any] = {}
    for logger in [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]:
        for handler in getattr(logger, "handlers", ()):      # a PlaceHolder has none
            if isinstance(handler, logging.FileHandler):
                found[id(handler)] = handler
    reopened, problems = 0, []
    for handler in found.values():
        with handler.lock:                   # another thread may be writing a record
            old, handler.stream = handler.stream, None
            try:
                if old is not None:
                    old.close()
            except OSError as exc:           # its last records not flushed: a full disk
                problems.append(f"{handler.baseFilename}: {exc.strerror or exc}")
            # 'w' truncated the file once, at the start: a reopen must not
            # truncate what was written since (no rename came before it)
            handler.mode = "a"
            try:
                handler.stream = handler._open()
                reopened += 1
            except OSError as exc:
                problems.append(f"{handler.baseFilename}: {exc.strerror or exc}")
    for problem in problems:
        log("warning", f"log file not reopened: {problem}")
    return reopened


_core.set_wake_callback(_run_threadsafe)
wake_on_signals()
