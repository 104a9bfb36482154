"""Worker: the primary's handle on one worker, and in a worker, cluster.worker.

Both sides speak the internal protocol over one native Channel: frames of a
type (see _core.FRAME_*) and a small payload. User messages are FRAME_USER,
serialized here (json or pickle: the channel's setting, the same at both
ends). A frame's flags name its serialization, but only the receiver's own
setting decodes it: a frame flagged otherwise is an 'error', never decoded,
so that a compromised worker cannot make a json primary unpickle. Servers
(net) and the fleet join through primary_frame_handlers / worker_frame_handlers
and the handle codecs, without this file knowing them.
"""
from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    import signal as _signal
    from collections.abc import Callable
    from typing import Any

from . import _core, _fast, _forensics, _runtime
from .events import EventEmitter

ChannelClosedError = _core.ChannelClosedError

SER_JSON, SER_PICKLE = 0, 1
SERIALIZATIONS = {"json": SER_JSON, "pickle": SER_PICKLE}
SER_NAMES = {SER_JSON: "json", SER_PICKLE: "pickle"}
HANDLE_SHIFT = 2                 # flags: bits 0-1 serialization, 2-4 handle kind
HANDLE_SOCKET, HANDLE_NET_SOCKET, HANDLE_NET_SERVER = 1, 2, 3   # net adds the last two
HWM = 128 * 1024                 # send() returns False past this many queued bytes

# frame type -> fn(worker, flags, payload, fds): the servers' messages, in the
# primary (_shared) and in a worker (net).
primary_frame_handlers: dict[int, Callable[..., None]] = {}
worker_frame_handlers: dict[int, Callable[..., None]] = {}
# handle kind -> (class, fn(obj) -> fd, fn(obj) after sending, fn(fd) -> obj); the
# last owns fd from the call on, even when it raises, as the native constructors do
handle_codecs: dict[int, tuple[type[Any], Callable[[Any], int], Callable[[Any], Any],
                               Callable[[int], Any]]] = {}
# fn(worker) when connections stop going to a worker (disconnect, kill or
# exit): the primary's routing (_shared), which imports this module.
routing_stops: list[Callable[[Worker], None]] = []


def _socket_codec() -> None:
    import socket

    def from_fd(fd: int) -> socket.socket:
        try:
            return socket.socket(fileno=fd)
        except OSError:                  # not a socket: the decoder owns fd all the same
            os.close(fd)
            raise

    handle_codecs[HANDLE_SOCKET] = (socket.socket, lambda s: s.fileno(), lambda s: None,
                                    from_fd)

_FRAME_USER = _core.FRAME_USER
# Added to a frame's type when the kernel dropped its descriptors (the
# receiver was out of them): the frame comes with no fds, and a handler
# registered for type | FRAME_LOST hears of it; else it is a warning.
FRAME_LOST = _core.FRAME_LOST


def parse_signal(sig: Any) -> _signal.Signals:
    """A signal name ('SIGTERM' or 'TERM'), number or Signals -> Signals."""
    import signal as _signal
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return _signal.Signals[name]
        except KeyError:
            raise ValueError(f"unknown signal name: {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"signal must be a name or a number, not {type(sig).__name__}")
    try:
        return _signal.Signals(sig)
    except ValueError:
        raise ValueError(f"unknown signal number: {sig}") from None


class OtherSignal(int):
    """A signal that signal.Signals has no member for (the real-time ones
    between SIGRTMIN and SIGRTMAX), as a worker's exit gives it: an int
    with a name, as a member has."""

    @property
    def name(self) -> str:
        low, high = _fast.signal.SIGRTMIN, _fast.signal.SIGRTMAX
        return f"SIGRTMIN+{self - low}" if low < self < high else f"SIG{int(self)}"

    def __repr__(self) -> str:
        return f"<{self.name}: {int(self)}>"


def exit_signal(signo: int) -> _signal.Signals | OtherSignal:
    """The signal a process ended by, a real-time one included."""
    import signal as _signal
    try:
        return _signal.Signals(signo)
    except ValueError:
        return OtherSignal(signo)


def encode(message: Any, serialization: int) -> bytes:
    """Serializes a message; what the serializer cannot encode is a TypeError."""
    if serialization == SER_JSON:
        try:
            return _fast.json_encode(message)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"message cannot be encoded as JSON: {exc}") from exc
    import pickle
    try:
        return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"message cannot be pickled: {exc}") from exc


def decode(serialization: int, payload: bytes) -> Any:
    """A user message, decoded with the receiver's own serialization: never
    one a frame's flags name, which the peer chose."""
    if serialization == SER_JSON:
        return _fast.json_decode(payload)
    import pickle
    return pickle.loads(payload)


def close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


class Process:
    """worker.process: the pid and, once known, how the process ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self.signal_code: _signal.Signals | OtherSignal | None = None
        self.stdout: Any = None
        self.stderr: Any = None

    def __repr__(self) -> str:
        return f"<Process pid={self.pid}>"


class Worker(EventEmitter):
    """One worker. In the primary: a handle on a child process. In a worker:
    cluster.worker, the process itself."""

    def __init__(self, worker_id: int, pid: int, *, primary_side: bool,
                 serialization: int = SER_JSON, max_message_size: int = 64 << 20) -> None:
        super().__init__()
        self.id = worker_id
        self.process = Process(pid)
        self.state = "none" if primary_side else "online"
        self.exited_after_disconnect: bool | None = None
        self._primary_side = primary_side
        self._frame_handlers = primary_frame_handlers if primary_side else worker_frame_handlers
        self._serialization = serialization
        # The flags of a frame the hot path takes in _on_frame: a plain JSON
        # message on a json channel; none (-1) on a pickle one.
        self._plain_json_flags = SER_JSON if serialization == SER_JSON else -1
        self._max_message_size = max_message_size
        self._chan: _core.Channel | None = None   # set at once by _open_channel()
        self._connected = False          # until the channel's close is delivered
        self._disconnecting = False
        self._written: _fast.deque[Callable[[BaseException | None], Any]] = _fast.deque()
        self._exit_status: tuple[int | None, _signal.Signals | OtherSignal | None] | None = None
        self._dead = False
        self._timers: list[Any] = []     # disconnect(timeout) deadlines
        self._exit_watch: Any = None     # the engine's watch on the process
        self._fork_emitted = not primary_side
        self.boot_failure: str | None = None   # primary: why it could not start
        self.boot_failure_load = False   # primary: ... its application could not be loaded
        self._said_ready = False         # ready() was called: it serves without listening
        # primary: the memfd the worker dumps its stacks into (_forensics),
        # or -1; owned from the fork until the 'exit' listeners have run
        self._stacks = -1

    def __repr__(self) -> str:
        return f"<Worker id={self.id} pid={self.process.pid} state={self.state}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    # ---- the channel -------------------------------------------------------

    def _open_channel(self, fd: int) -> None:
        self._chan = _core.Channel(fd, self._on_frame, self._on_event,
                                   self._max_message_size + 4096, HWM)
        if self._primary_side:
            # Its workers are its own, and read the marks; a worker marks its
            # own batches once the primary has (an older one would not read them).
            self._chan.mark_batches()
        self._connected = True

    def _send_frame(self, frame_type: int, payload: bytes = b"", fds: tuple[int, ...] = (),
                    flags: int = 0, notify: bool = False) -> bool:
        """An internal frame; False if the channel is already closed."""
        if not self._connected:
            return False
        assert self._chan is not None    # _connected: the channel is open
        if self._chan.closed:
            return False
        try:
            self._chan.send(frame_type, flags, payload, fds, notify)
        except ChannelClosedError:
            return False
        return True

    def _on_frame(self, frame_type: int, flags: int, payload: bytes,
                  fds: tuple[int, ...]) -> None:
        if frame_type == _FRAME_USER:
            if flags == self._plain_json_flags and not fds:   # the hot path: plain JSON
                try:
                    message = _fast.json_decode(payload)
                except ValueError as exc:
                    self._undecodable(exc)
                    return
                self.emit("message", message, None)
                if self._primary_side:
                    _runtime.emitter.emit("message", self, message, None)
                return
            self._on_user_frame(flags, payload, fds)
            return
        handler = self._frame_handlers.get(frame_type)
        if handler is not None:
            handler(self, flags, payload, fds)
        elif frame_type & FRAME_LOST:
            self._on_lost(frame_type & ~FRAME_LOST)
        elif fds:
            close_fds(fds)

    def _on_lost(self, frame_type: int) -> None:
        """A frame whose descriptors the kernel dropped, that no handler
        takes: it alone is lost, the channel goes on."""
        what = "a message" if frame_type == _FRAME_USER else f"a frame of type {frame_type}"
        peer = f"worker {self.id}" if self._primary_side else "the primary"
        _runtime.log("warning", f"{what} from {peer} lost: its descriptors could not be "
                                "received (out of descriptors?)")

    def _on_user_frame(self, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
        handle = None
        try:
            if flags & 3 != self._serialization:     # the channel's, not the peer's, choice
                name = SER_NAMES.get(flags & 3, f"serialization {flags & 3}")
                raise ValueError(f"flagged {name} on a channel set to "
                                 f"{SER_NAMES[self._serialization]}")
            message = decode(self._serialization, payload)
            kind = flags >> HANDLE_SHIFT
            if kind == HANDLE_SOCKET and kind not in handle_codecs:
                _socket_codec()
            if kind:
                if len(fds) != 1 or kind not in handle_codecs:
                    raise ValueError(f"bad handle (kind {kind}, {len(fds)} fds)")
                fd, fds = fds[0], ()     # the codec's now, even if it fails
                handle = handle_codecs[kind][3](fd)
            elif fds:
                raise ValueError("descriptors without a handle kind")
        except Exception as exc:
            close_fds(fds)
            self._undecodable(exc)
            return
        self.emit("message", message, handle)
        if self._primary_side:
            _runtime.emitter.emit("message", self, message, handle)

    def _undecodable(self, exc: Exception) -> None:
        peer = f"worker {self.id}" if self._primary_side else "the primary"
        self.emit("error", ValueError(f"undecodable message from {peer}: {exc!r}"))

    def _on_event(self, kind: int, err: int) -> None:
        if kind == _core.EVENT_WRITTEN:
            callback = self._written.popleft()
            callback(None if err == 0 else ChannelClosedError(
                errno.EPIPE, "the IPC channel closed before the message was written"))
        elif kind == _core.EVENT_DRAIN:
            self.emit("drain")
        elif kind == _core.EVENT_ERROR:
            self.emit("error", OSError(
                err, f"corrupt frame on the IPC channel of worker {self.id}: "
                     f"{os.strerror(err)}"))
        elif kind == _core.EVENT_CLOSE:
            self._on_channel_closed()

    def _on_channel_closed(self) -> None:
        self._connected = False
        if not self._primary_side:
            self.state = "disconnected"
            self.emit("disconnect")
            if not self._disconnecting:
                # The primary is gone and nobody asked: leave, as Node's workers do.
                raise SystemExit(0)
            return
        self.state = "disconnected"      # even if the exit is known: it is emitted next
        try:
            self.emit("disconnect")
            _runtime.emitter.emit("disconnect", self)
        finally:
            if self._exit_status is not None:
                self._finish_exit()

    # ---- lifecycle (primary side) --------------------------------------------

    def _emit_fork(self) -> None:
        if not self._fork_emitted:
            self._fork_emitted = True
            _runtime.emitter.emit("fork", self)

    def _on_online(self) -> None:
        self._emit_fork()
        if self.state == "none":
            self.state = "online"
        self.emit("online")
        _runtime.emitter.emit("online", self)

    def _stop_routing(self) -> None:
        """Connections stop going to this worker (disconnect, kill or exit)."""
        for stop in routing_stops:
            stop(self)

    def _on_exit(self, code: int | None, signo: int | None) -> None:
        sig = exit_signal(signo) if signo is not None else None
        if code is not None and code < 0:
            code = None if sig is not None else 1
        self.process.exit_code, self.process.signal_code = code, sig
        self._dead = True
        self._exit_status = (code, sig)
        self._stop_routing()
        if self._connected:
            assert self._chan is not None
            self._chan.drain_close()     # 'disconnect' first, then 'exit'
        else:
            self._finish_exit()

    def _finish_exit(self) -> None:
        for timer in self._timers:       # disconnect(timeout) deadlines end at the exit
            timer.cancel()
        self._timers.clear()
        assert self._exit_status is not None    # set by _on_exit(), which leads here
        code, sig = self._exit_status
        self._exit_status = None
        self._emit_fork()
        self.state = "dead"
        if self.exited_after_disconnect is None:
            self.exited_after_disconnect = False
        if _runtime.workers is not None and _runtime.workers.get(self.id) is self:
            del _runtime.workers[self.id]
        try:
            self.emit("exit", code, sig)
            _runtime.emitter.emit("exit", self, code, sig)
        finally:
            if self._stacks >= 0:
                os.close(self._stacks)
                self._stacks = -1

    # ---- the public face -------------------------------------------------------

    def is_connected(self) -> bool:
        """The IPC channel is open."""
        if not self._connected:
            return False
        assert self._chan is not None
        return not self._chan.closed

    def is_dead(self) -> bool:
        """The process has exited."""
        return self._dead

    def send(self, message: Any, handle: Any = None,
             callback: Callable[[BaseException | None], Any] | None = None) -> bool:
        """Sends one message; callback(error) once it is written. Returns False
        when the queue is over its high-water mark ('drain' follows) or the
        channel is closed (ChannelClosedError to callback, or to 'error')."""
        payload = encode(message, self._serialization)
        if len(payload) > self._max_message_size:
            raise ValueError(f"message of {len(payload)} bytes is over max_message_size "
                             f"({self._max_message_size})")
        if handle is None and callback is None and self._connected:
            assert self._chan is not None
            try:                         # the common case, kept short
                return self._chan.send(_FRAME_USER, self._serialization, payload)
            except ChannelClosedError:
                self._report_closed(None)
                return False
        kind = 0
        fds: tuple[int, ...] = ()
        after: Callable[[Any], Any] | None = None
        if handle is not None:
            kind, fds, after = self._encode_handle(handle)
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        if not self.is_connected():
            self._report_closed(callback)
            return False
        assert self._chan is not None
        try:
            ok = self._chan.send(_core.FRAME_USER, self._serialization | kind << HANDLE_SHIFT,
                                 payload, fds, callback is not None)
        except ChannelClosedError:
            self._report_closed(callback)
            return False
        if callback is not None:
            self._written.append(callback)
        if after is not None:
            after(handle)
        return ok

    @staticmethod
    def _encode_handle(handle: Any) -> tuple[int, tuple[int], Callable[[Any], Any]]:
        if HANDLE_SOCKET not in handle_codecs and "socket" in sys.modules:
            _socket_codec()     # a socket.socket exists only once socket is imported
        for kind, (cls, to_fd, after, _) in handle_codecs.items():
            if isinstance(handle, cls):
                return kind, (to_fd(handle),), after
        raise TypeError("handle must be a net.Server, a net.Socket or a socket.socket, "
                        f"not {type(handle).__name__}")

    def _report_closed(self, callback: Callable[[BaseException | None], Any] | None) -> None:
        err = ChannelClosedError(errno.EPIPE, "the IPC channel is closed")
        if callback is not None:
            _runtime.call_later(0, callback, err)
        else:
            _runtime.call_later(0, self.emit, "error", err)

    def ready(self) -> None:
        """In a worker that serves without listening through the primary (a
        queue consumer, a scheduler): tells the primary that it serves, which
        counts for the fleet's readiness as a 'listening' would. Once; again
        is harmless. A worker that listens need not call it."""
        if self._primary_side:
            raise RuntimeError("ready() is a worker's: call cluster.worker.ready() in the "
                               "worker that serves")
        if not self._said_ready:
            self._said_ready = True
            self._send_frame(_core.FRAME_READY)

    def disconnect(self, *, timeout: float | None = None) -> Worker:
        """Graceful shutdown: in a worker, close every server, wait for their
        connections, then close the channel. In the primary, ask the worker to;
        with timeout, SIGKILL it if it has not exited in time."""
        if timeout is not None:          # refused on both sides, before anything starts
            timeout = _runtime.check_seconds("timeout", timeout)
        if self._primary_side:
            return self._disconnect_primary(timeout)
        if not self._disconnecting:
            self._disconnecting = True
            self.exited_after_disconnect = True
            self.emit("disconnecting")
            close_servers(self._servers_closed)
        return self

    def _servers_closed(self) -> None:
        self._send_frame(_core.FRAME_EXITED_AFTER_DISCONNECT)
        assert self._chan is not None    # a worker's channel opens at its boot
        self._chan.close()

    def _disconnect_primary(self, timeout: float | None) -> Worker:
        if self._dead or not self._connected:
            return self
        self.exited_after_disconnect = True
        if timeout is not None:
            self._timers.append(_runtime.call_later(
                timeout, lambda: self._disconnect_overdue(timeout)))
        if not self._disconnecting:
            self._disconnecting = True
            self._send_frame(_core.FRAME_DISCONNECT)
            self._stop_routing()
        return self

    def _disconnect_overdue(self, timeout: float) -> None:
        # Not only a worker that never said 'disconnect': one that did and
        # then never exits (a thread stuck at the interpreter's exit) holds a
        # reload or a stop just the same.
        if not self._dead:
            _runtime.log("warning", f"worker {self.id} still running {timeout:g} s after "
                         "its disconnect: killing it")
            self.kill("SIGKILL")

    def kill(self, signal: Any = "SIGTERM") -> None:
        """Primary: signal the process now. Worker: tell the primary the exit is
        asked for, then signal itself."""
        sig = parse_signal(signal)
        if self._primary_side:
            if self._dead:
                return
            self.exited_after_disconnect = True
            self._stop_routing()
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass
            return
        self.exited_after_disconnect = True
        fired: list[_signal.Signals] = []

        def suicide(_err: BaseException | None = None) -> None:
            if not fired:                # once: the written-callback may follow
                fired.append(sig)
                signal = _fast.signal
                if signal.getsignal(sig) is _on_stop_signal:
                    signal.signal(sig, signal.SIG_DFL)    # a kill, not a drain
                os.kill(os.getpid(), sig)

        if self._send_frame(_core.FRAME_EXITED_AFTER_DISCONNECT, notify=True):
            assert self._chan is not None    # the frame went out on it
            self._written.append(suicide)
            if self._chan.queued == 0:
                suicide()
        else:
            suicide()


def close_servers(done: Callable[[], None]) -> None:
    """Closes every server of this worker; done() once all have closed."""
    pending = list(_runtime.servers)
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


def boot(worker_id: int, fd: int, serialization: str, max_message_size: int,
         drain_delay: float | None = None) -> None:
    """This process becomes worker worker_id, on channel fd, and says 'online'.
    drain_delay: it is supervised, and drains on its own SIGTERM or SIGINT
    after that many seconds."""
    os.set_inheritable(fd, False)
    w = Worker(worker_id, os.getpid(), primary_side=False,
               serialization=SERIALIZATIONS[serialization], max_message_size=max_message_size)
    _runtime.become_worker(w)
    # Before 'online', so that nobody can see a worker that SIGINT still kills.
    # Only where the application has not chosen a disposition of its own.
    signal = _fast.signal
    if drain_delay is not None:
        _take_fleet_signals(w, drain_delay)
    elif signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Ctrl-C reaches the whole process group: the primary decides how we stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    w._open_channel(fd)
    w._send_frame(_core.FRAME_ONLINE)


def _take_fleet_signals(w: Worker, drain_delay: float) -> None:
    """A supervised worker takes its own SIGTERM or SIGINT as the start of
    the drain its primary is about to ask for: timeout, dumb-init,
    supervisord and systemd's KillMode=control-group signal every process
    of the group, and a worker killed at once would cut its requests short.
    Alone (someone signalled this worker only), it drains and exits as
    gunicorn's workers do, and the fleet replaces it. SIGUSR1 reopens its
    log files, as the primary's does."""
    global _drain_delay
    _drain_delay = drain_delay
    signal = _fast.signal
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            signal.signal(sig, _on_stop_signal)
    # The primary passes SIGUSR1 on (logrotate's postrotate signals it): each
    # worker writes its own log files, and must let go of a renamed one too.
    if signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
        signal.signal(signal.SIGUSR1, _on_reopen_signal)


_drain_delay: float | None = None   # a supervised worker's: the fleet's drain delay


def supervised() -> bool:
    """Whether supervise() (or `cluster-ext run`) forked this worker."""
    return _drain_delay is not None


def _on_stop_signal(signum: int, frame: Any) -> None:
    # On the loop, as the primary's disconnect would come: a handler may run
    # anywhere, in the middle of the application's import.
    _runtime.call_soon_threadsafe(_drain)


def _on_reopen_signal(signum: int, frame: Any) -> None:
    # On the loop: a handler runs between any two bytecodes, a logging
    # handler's own write among them.
    _runtime.call_soon_threadsafe(_runtime.reopen_log_files)


def _drain() -> None:
    """Waits the fleet's drain delay, as the primary does before it asks."""
    w = _runtime.worker
    assert w is not None             # installed at the worker's boot
    if _drain_delay:
        _runtime.call_later(_drain_delay, w.disconnect)
    else:
        w.disconnect()


def boot_from_env() -> None:
    """An exec'd worker: its id and channel come in the environment, which its own
    children must not inherit; and under a heartbeat, the memfd its stacks go
    to (registered first: a worker stuck in its import is stuck too)."""
    env = os.environ
    try:
        worker_id = int(env.pop("CLUSTER_EXT_WORKER_ID"))
        fd = int(env.pop("CLUSTER_EXT_CHANNEL_FD"))
        serialization = env.pop("CLUSTER_EXT_SERIALIZATION", "json")
        max_size = int(env.pop("CLUSTER_EXT_MAX_MESSAGE_SIZE", str(64 << 20)))
        supervised = env.pop("CLUSTER_EXT_SUPERVISED", None)
        drain_delay = float(supervised) if supervised is not None else None
        stacks = env.pop("CLUSTER_EXT_STACKS_FD", None)
        os.fstat(fd)
        if stacks is not None:
            _forensics.register(int(stacks))
    except (KeyError, ValueError, OSError) as exc:
        raise RuntimeError("CLUSTER_EXT_WORKER_ID is set but this process has no valid "
                           f"cluster_ext channel: {exc}") from None
    boot(worker_id, fd, serialization, max_size, drain_delay)


def control_handler(fn: Callable[[Worker], Any]) -> Callable[..., None]:
    """A frame that carries no descriptors: close any, then fn(worker)."""
    def handler(w: Worker, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
        close_fds(fds)
        fn(w)
    return handler


def _exited_after_disconnect(w: Worker) -> None:
    w.exited_after_disconnect = True


def said_ready(w: Worker) -> None:
    """The worker called ready(): it serves without listening."""
    w._said_ready = True


BOOT_FAILURE_EXIT = 3        # gunicorn's status for a worker that failed to boot
BOOT_FAILURE_LOAD = 1        # BOOT_FAILURE's flag: the application could not be loaded


def _on_boot_failure(w: Worker, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    close_fds(fds)
    w.boot_failure = payload.decode("utf-8", "replace")
    w.boot_failure_load = bool(flags & BOOT_FAILURE_LOAD)
    if _runtime.fleet is None:           # supervise() reports it; a plain fork() would not
        _runtime.log("error", f"worker {w.id} failed to boot: {w.boot_failure.rstrip()}")


def fail_boot(reason: str, *, load: bool = False) -> None:
    """In a worker that cannot start (its application does not import, its
    port is taken, its lifespan startup failed): tell the primary why, which
    decides what to print and whether to try again, and exit 3 at once
    (from inside the loop, by SystemExit(3) out of run()). load: the
    application itself could not be loaded (its spec names nothing to
    serve), which the primary reports as a bad spec."""
    w = _runtime.worker
    if w is not None:
        w._send_frame(_core.FRAME_BOOT_FAILURE, reason.encode("utf-8", "replace")[:60000],
                      flags=BOOT_FAILURE_LOAD if load else 0)
        if _core.running():
            # A callback's frames are written when the callbacks of the turn
            # end, which an exception does at once: then run() raises it.
            raise SystemExit(BOOT_FAILURE_EXIT)
        _core.turn(0)                 # let a queued frame out before the exit
    else:
        sys.stderr.write(reason if reason.endswith("\n") else reason + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(BOOT_FAILURE_EXIT)


def _report_stats(w: Worker, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    """The primary asks for this worker's figures (status, metrics); its
    user messages it counts on its own end of the channel."""
    close_fds(fds)
    if flags:           # beyond the figures: the application's metrics first
        from . import _appmetrics
        _appmetrics.report(w, flags)
    send_stats(w)


def send_stats(w: Worker) -> None:
    """This worker's figures to the primary: asked, or before it cuts what
    its graceful deadline leaves (web.worker)."""
    from . import _saturation
    from ._protocol import pack_stats
    _saturation.probe_loop()
    open_connections = sum(getattr(s, "connections", 0) for s in _runtime.servers)
    served = _runtime.served[0]
    requests = _runtime.requests[0] if _runtime.counts_requests else served
    w._send_frame(_core.FRAME_STATS, pack_stats(served, open_connections, requests,
                                                _saturation.figures()))


primary_frame_handlers.update({
    _core.FRAME_ONLINE: control_handler(Worker._on_online),
    _core.FRAME_EXITED_AFTER_DISCONNECT: control_handler(_exited_after_disconnect),
    _core.FRAME_BOOT_FAILURE: _on_boot_failure,
    _core.FRAME_READY: control_handler(said_ready),
})
worker_frame_handlers.update({
    _core.FRAME_DISCONNECT: control_handler(Worker.disconnect),
    # the heartbeat: our loop is alive
    _core.FRAME_PING: control_handler(lambda w: w._send_frame(_core.FRAME_PONG)),
    _core.FRAME_STATS: _report_stats,
})
