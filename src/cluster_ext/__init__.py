"""cluster_ext: Node.js's cluster module for Python on Linux.

    import cluster_ext as cluster

One script runs in both roles. The primary forks workers (cluster.fork()),
which run the same program again; they share ports, exchange messages with
the primary and stop gracefully with worker.disconnect(). The module itself is
an EventEmitter: 'fork', 'online', 'listening', 'message', 'disconnect',
'exit', 'setup'. See API.md for the contract.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    import signal as _signal
    from collections import deque
    from types import ModuleType as _ModuleType
    from typing import Any, Callable, Mapping

    from . import net
else:                       # the C modules behind signal and collections: cheaper to import
    import _signal
    from _collections import deque
    _ModuleType = type(sys)


def _unbuilt_source_tree() -> None:
    """Explains an import from the source tree, where the C extension was never
    built (python -m puts the current directory first on sys.path)."""
    here = os.path.dirname(__file__)
    if any(name.startswith("_core.") and not name.endswith(".pyi") for name in os.listdir(here)):
        return                  # built, but it failed to load: the real error says why
    message = (f"cluster_ext: {here} is the source tree, whose C extension is not built; "
               "install the package (pip install . in the repository's root) and run it "
               "from outside src/")
    if sys.argv[:1] == ["-m"]:  # python -m cluster_ext: one line, not a traceback
        raise SystemExit(message)
    raise ImportError(message) from None


__version__ = "0.1.0"        # the one source: pyproject.toml reads it from here

try:
    from . import _core
except ImportError:
    _unbuilt_source_tree()
    raise
from . import _fleet, _primary, _shared, _worker
from ._fleet import CrashLoopError, reload, supervise
from ._primary import SCHED_NONE, SCHED_RR
from ._worker import ChannelClosedError, Worker
from .events import EventEmitter

__all__ = [
    "ChannelClosedError", "CrashLoopError", "EventEmitter", "SCHED_NONE", "SCHED_RR",
    "Worker", "call_later", "call_soon_threadsafe", "disconnect", "fork", "is_master",
    "is_primary", "is_worker", "listen_socket", "reload", "run", "settings", "setup_master",
    "setup_primary", "stop", "supervise", "worker", "workers",
]

is_primary: bool = "CLUSTER_EXT_WORKER_ID" not in os.environ
is_master: bool = is_primary
is_worker: bool = not is_primary
workers: dict[int, Worker] | None = {} if is_primary else None
worker: Worker | None = None

_settings: dict[str, Any] = _primary.default_settings()
settings: Mapping[str, Any] = type(type.__dict__)(_settings)    # a MappingProxyType
_state: dict[str, Any] = {"next_id": 1, "ran": False, "wakeup_fd": -1}
_servers: set[Any] = set()          # the worker's servers: disconnect() closes them
_threadsafe: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()


class _ClusterModule(_ModuleType, EventEmitter):
    """The module object: an EventEmitter whose scheduling_policy is checked."""

    @property
    def scheduling_policy(self) -> int:
        policy: int = _settings["scheduling_policy"]
        return policy

    @scheduling_policy.setter
    def scheduling_policy(self, policy: int) -> None:
        if not is_primary:
            raise RuntimeError("scheduling_policy is the primary's")
        if _state["next_id"] > 1:
            raise RuntimeError("scheduling_policy cannot change after the first fork()")
        _primary.check_policy(policy)
        _settings["scheduling_policy"] = policy


# ---- the loop ------------------------------------------------------------------

def run() -> None:
    """Runs the event loop until nothing is left to wait for (no worker, server,
    connection, timer or connected channel) or stop(); re-raises the first
    exception a callback raised."""
    _state["ran"] = True
    _core.run()


def stop() -> None:
    """Makes run() return after the current callback."""
    _core.stop()


def call_later(seconds: float, fn: Callable[..., Any], *args: Any) -> _core.Handle:
    """A timer on the loop; returns a handle with .cancel()."""
    return _core.call_later(seconds, (lambda: fn(*args)) if args else fn)


def call_soon_threadsafe(fn: Callable[..., Any], *args: Any) -> None:
    """The one entry another thread may call: runs fn(*args) on the loop's thread."""
    _threadsafe.append((fn, args))
    _core.wakeup()


def _wake_on_signals() -> None:
    """A signal that lands just before the loop sleeps must still wake it:
    Python's handlers only run once the wait ends. Unless the application
    (or asyncio) has a wakeup fd of its own; only the main thread can."""
    fd = _core.signal_fd()
    try:
        previous = _signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:
        return
    if previous not in (-1, _state["wakeup_fd"]):
        _signal.set_wakeup_fd(previous)
        return
    _state["wakeup_fd"] = fd


def _run_threadsafe() -> None:
    while _threadsafe:
        fn, args = _threadsafe.popleft()
        fn(*args)


_core.set_wake_callback(_run_threadsafe)
_wake_on_signals()


# ---- the primary -------------------------------------------------------------------

def setup_primary(**changes: Any) -> None:
    """Changes settings for later forks; emits 'setup'(settings)."""
    if not is_primary:
        raise RuntimeError("setup_primary() is the primary's")
    checked = _primary.check_settings(changes)
    if "scheduling_policy" in checked and _state["next_id"] > 1 and \
            checked["scheduling_policy"] != _settings["scheduling_policy"]:
        raise RuntimeError("scheduling_policy cannot change after the first fork()")
    _settings.update(checked)
    _module.emit("setup", settings)


setup_master = setup_primary


def fork(env: Mapping[str, Any] | None = None, *,
         target: Callable[[], Any] | None = None) -> Worker:
    """Starts a worker. By default it runs this program again (fork + exec);
    with target, the child is forked without exec and calls target()."""
    if not is_primary:
        raise RuntimeError("fork() is the primary's: this process is a worker")
    if env is not None and not callable(getattr(env, "items", None)):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    if target is not None and not callable(target):
        raise TypeError("target must be callable")
    if _signal.getsignal(_signal.SIGCHLD) == _signal.SIG_IGN:
        raise RuntimeError("SIGCHLD is ignored: worker exits could not be seen")
    assert workers is not None          # the primary's
    worker_id = _state["next_id"]
    if target is None:
        pid, fd, stdio = _primary.start_exec(worker_id, _settings, env)
    else:
        pid, fd, stdio = _primary.start_target(worker_id, _settings, env, target,
                                               _become_worker)
    _state["next_id"] += 1
    w = Worker(worker_id, pid, primary_side=True,
               serialization=_worker.SERIALIZATIONS[_settings["serialization"]],
               max_message_size=_settings["max_message_size"])
    w._open_channel(fd)
    w._exit_watch = _core.watch_child(pid, w._on_exit)
    _attach_stdio(w, stdio)
    workers[worker_id] = w
    call_later(0, w._emit_fork)
    return w


def _attach_stdio(w: Worker, stdio: _primary.Stdio) -> None:
    for i, name in ((1, "stdout"), (2, "stderr")):
        fd = stdio.parent[i]
        if fd is not None:
            from .net import Socket
            stdio.parent[i] = None
            setattr(w.process, name, Socket(fd))
    if stdio.parent[0] is not None:
        os.close(stdio.parent[0])       # a piped stdin is not offered (yet)
        stdio.parent[0] = None


def disconnect(callback: Callable[[], Any] | None = None, *,
               timeout: float | None = None) -> None:
    """disconnect() on every worker; callback() once every one of them has
    disconnected. With timeout, workers still connected after it are killed."""
    if not is_primary:
        raise RuntimeError("cluster.disconnect() is the primary's")
    assert workers is not None
    pending = {w.id for w in workers.values() if w.is_connected()}
    if callback is not None and not pending:
        call_later(0, callback)
    elif callback is not None:
        # On the cluster's event, so that the callback comes after the
        # cluster's 'disconnect' of the last worker, not inside its own.
        def one_done(w: Worker) -> None:
            pending.discard(w.id)
            if not pending:
                _module.off("disconnect", one_done)
                callback()

        _module.on("disconnect", one_done)
    for w in list(workers.values()):
        if w.id in pending:
            w.disconnect(timeout=timeout)


def _on_worker_gone(w: Worker) -> None:
    """w stops taking connections."""
    _shared.worker_gone(w)


def _remove_worker(w: Worker) -> None:
    assert workers is not None          # only the primary's workers exit
    if workers.get(w.id) is w:
        del workers[w.id]


def listen_socket(port: int = 0, host: str | None = None, *, backlog: int = 511,
                  path: str | None = None) -> Any:
    """A non-blocking listening socket.socket shared through the primary (the
    listening descriptor itself, whatever the policy), for socketserver,
    http.server, wsgiref or uvicorn(fd=...). The worker's disconnect() closes
    it; end the application's connections on 'disconnecting'. In a worker it
    waits for the primary's answer: call it before run()."""
    import socket
    if path is not None:
        path = os.fspath(path)
    if not is_worker:
        return _shared.listen_socket(host, port, path, backlog)[0]
    from . import net
    if _core.running():
        raise RuntimeError("listen_socket() waits for the primary's answer: call it before "
                           "run(), or use net.create_server() / aio.start_server() in a "
                           "callback")
    answer: list[tuple[Any, ...]] = []
    spec = net.ask_primary(port, host, backlog, path, True, lambda *reply: answer.append(reply))
    while not answer:
        _core.turn(-1)
    err, key, address, fd = answer[0]
    if err:
        net.release_index(spec)
        raise net.listen_error(err, address)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    _servers.add(_SharedSocket(sock, key, spec))
    net.announce_listening(address)
    return sock


class _SharedSocket:
    """A listen_socket() among the worker's servers: disconnect() closes it."""

    def __init__(self, sock: Any, key: int, spec: net.ListenSpec | None) -> None:
        self.sock, self.key, self.spec = sock, key, spec

    def close(self, callback: Callable[[], Any] | None = None) -> None:
        from . import net
        if self in _servers:
            assert worker is not None   # a worker's, made by listen_socket()
            _servers.discard(self)
            worker._send_frame(_core.FRAME_SERVER_CLOSE, flags=self.key)
            self.sock.close()
            net.release_index(self.spec)
        if callback is not None:
            callback()


# ---- the worker ----------------------------------------------------------------------

def _close_servers(done: Callable[[], None]) -> None:
    """Closes every server of this worker; done() once all have closed."""
    pending = list(_servers)
    if not pending:
        done()
        return
    left = [len(pending)]

    def closed(*_: Any) -> None:
        left[0] -= 1
        if left[0] == 0:
            done()

    for server in pending:
        server.close(closed)


def _boot_worker(worker_id: int, fd: int, serialization: str, max_message_size: int) -> None:
    global is_primary, is_master, is_worker, workers, worker
    is_primary = is_master = False
    is_worker = True
    workers = None
    os.set_inheritable(fd, False)
    worker = Worker(worker_id, os.getpid(), primary_side=False,
                    serialization=_worker.SERIALIZATIONS[serialization],
                    max_message_size=max_message_size)
    # Ctrl-C reaches the whole process group: the primary decides how we stop.
    # Before 'online', so that nobody can see a worker that SIGINT still kills.
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    worker._open_channel(fd)
    worker._send_frame(_core.FRAME_ONLINE)


def _become_worker(worker_id: int, fd: int, settings_now: Mapping[str, Any],
                   target: Callable[[], Any]) -> int:
    """In the child of fork(target=...): drop the primary's state, boot as a
    worker, run target() and the loop. Returns the exit code."""
    _primary.reset_signal_handlers()
    _wake_on_signals()                  # the engine was rebuilt: a new pipe
    _module.remove_all_listeners()
    _shared.forget()
    _boot_worker(worker_id, fd, settings_now["serialization"],
                 settings_now["max_message_size"])
    target()
    run()
    return 0


def _boot_from_env() -> None:
    env = os.environ
    try:
        worker_id = int(env.pop("CLUSTER_EXT_WORKER_ID"))
        fd = int(env.pop("CLUSTER_EXT_CHANNEL_FD"))
        serialization = env.pop("CLUSTER_EXT_SERIALIZATION", "json")
        max_size = int(env.pop("CLUSTER_EXT_MAX_MESSAGE_SIZE", str(64 << 20)))
        os.fstat(fd)
    except (KeyError, ValueError, OSError) as exc:
        raise RuntimeError("CLUSTER_EXT_WORKER_ID is set but this process has no valid "
                           f"cluster_ext channel: {exc}") from None
    _boot_worker(worker_id, fd, serialization, max_size)


def _swap_module_class() -> _ClusterModule:
    module = sys.modules[__name__]
    module.__class__ = _ClusterModule
    assert isinstance(module, _ClusterModule)
    EventEmitter.__init__(module)
    return module


_module = _swap_module_class()
if TYPE_CHECKING:
    # What type checkers see of the module object, a _ClusterModule:
    # cluster.on("exit", fn), @cluster.once("online"), cluster.scheduling_policy.
    scheduling_policy: int = _module.scheduling_policy
    on, add_listener, once = _module.on, _module.add_listener, _module.once
    prepend_listener, prepend_once_listener = (_module.prepend_listener,
                                               _module.prepend_once_listener)
    off, remove_listener = _module.off, _module.remove_listener
    remove_all_listeners, emit = _module.remove_all_listeners, _module.emit
    listeners, listener_count = _module.listeners, _module.listener_count
    event_names = _module.event_names
_worker.cluster = _fleet.cluster = _module
_shared.install(_module)
if is_worker:
    _boot_from_env()
