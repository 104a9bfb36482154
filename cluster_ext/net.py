"""net: TCP and Unix servers and their connections, over native streams.

    server = net.create_server(lambda sock: sock.end(b"hello\\n"))
    server.listen(8000, "127.0.0.1")

Outside a cluster a server simply listens. In a worker, listen() asks the
primary for the address, keyed by host, port (or path) and the order of
listen() calls: under SCHED_RR the primary accepts and hands connections over,
under SCHED_NONE each worker accepts on the shared listening descriptor. Every
listening server counts among the worker's servers, which disconnect() closes.
"""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    from collections import deque
    from collections.abc import Callable
    from typing import Any, TypeAlias
else:
    from _collections import deque

from . import _core, _protocol, _runtime, _shared, _worker
from .events import EventEmitter

if TYPE_CHECKING:
    # (host, port, path) of a worker's listen(); its listen() calls number the indexes
    ListenSpec: TypeAlias = tuple[str | None, int, str | None]
    # ask_primary()'s on_reply(err, key, address, fd)
    OnReply: TypeAlias = Callable[[int, int, _protocol.Address | None, int | None], object]

__all__ = ["Server", "Socket", "create_server", "listen_socket"]

HWM = 64 * 1024                 # write() returns False past this many queued bytes
# SCHED_NONE: every worker waits on the socket, and each takes one connection
# per wakeup. EPOLLEXCLUSIVE (one waiter woken) and 4 accepts per wakeup cost
# the same CPU per connection but let one worker take 58% more than the other
# (fairness 0.68-0.73 against 0.96, two workers, loadgen -c 64).
NONE_ACCEPTS = 1
# Peer failures that end a connection, and need no 'error' listener to survive:
# a client that resets must not kill a worker.
_PEER_ERRORS = {errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ECONNABORTED}


_EVENT_END, _EVENT_DRAIN = _core.EVENT_END, _core.EVENT_DRAIN
_EVENT_WRITTEN, _EVENT_CLOSE = _core.EVENT_WRITTEN, _core.EVENT_CLOSE


def create_server(on_connection: Callable[[Socket], Any] | None = None) -> Server:
    """A server; on_connection listens on 'connection'."""
    return Server(on_connection)


class Socket(EventEmitter):
    """One connection (or a pipe). Events: 'data'(bytes), 'end', 'drain',
    'close'(had_error), 'error'(exc). When the peer ends, this side ends too,
    once the 'end' listeners have run: what they write leaves first."""

    def __init__(self, fd: int, server: Server | None = None) -> None:
        EventEmitter.__init__(self)
        # A server's connection is a socket: the engine need not ask (fstat).
        self._stream = _core.Stream(fd, self._on_data, self._on_event, HWM,
                                    1 if server is not None else -1)
        self._server = server
        self._written: deque[Callable[[BaseException | None], Any]] = deque()
        self._closed = False
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<net.Socket fd={self._stream.fd}{' closed' if self._closed else ''}>"

    def fileno(self) -> int:
        return self._stream.fd

    @property
    def remote_address(self) -> _protocol.Address | None:
        if self._closed:
            return None
        import socket
        try:
            with socket.socket(fileno=os.dup(self._stream.fd)) as view:
                peer = view.getpeername()
        except OSError:
            return None
        return peer if isinstance(peer, str) else (peer[0], peer[1])

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: bytes | str,
              callback: Callable[[BaseException | None], Any] | None = None) -> bool:
        """Queues data; False once the queue is over its high-water mark
        ('drain' follows). callback(error) once it is written."""
        if isinstance(data, str):
            data = data.encode()
        try:
            ok = self._stream.write(data, callback is not None)
        except OSError as exc:
            err = BrokenPipeError(exc.errno, "write after end or close")
            if callback is not None:
                _runtime.call_later(0, callback, err)
            else:
                _runtime.call_later(0, self.emit, "error", err)
            return False
        if callback is not None:
            self._written.append(callback)
        return ok

    def end(self, data: bytes | str | None = None) -> Socket:
        """Writes data, then ends this side once everything is written."""
        if data is not None and not self._stream.ended:
            self.write(data)
        self._stream.end()
        return self

    def destroy(self, error: BaseException | None = None) -> Socket:
        """Closes at once; with error, 'error' then 'close'(True)."""
        if not self._closed:
            self._error = error
            self._stream.destroy()
        return self

    def pause(self) -> Socket:
        self._stream.pause(True)
        return self

    def resume(self) -> Socket:
        self._stream.pause(False)
        return self

    def ref(self) -> Socket:
        """The connection keeps run() going while it is open (the default)."""
        self._stream.ref(True)
        return self

    def unref(self) -> Socket:
        """run() may return while this connection is open, as Node's unref()."""
        self._stream.ref(False)
        return self

    def set_no_delay(self, no_delay: bool = True) -> Socket:
        """TCP_NODELAY on a TCP connection; nothing on others."""
        self._stream.set_no_delay(no_delay)
        return self

    def _on_data(self, data: bytes) -> None:
        self.emit("data", data)

    def _on_event(self, kind: int, err: int) -> None:
        if kind == _EVENT_END:
            self.emit("end")
        elif kind == _EVENT_DRAIN:
            self.emit("drain")
        elif kind == _EVENT_WRITTEN:
            self._written.popleft()(None if err == 0 else OSError(err, os.strerror(err)))
        elif kind == _EVENT_CLOSE:
            self._closed = True
            error = self._error
            if error is None and err:
                error = OSError(err, os.strerror(err))
            if self._server is not None:
                self._server._sockets.discard(self)    # not counted in its 'close'
            try:
                if error is not None and (err not in _PEER_ERRORS
                                          or self.listener_count("error")):
                    self.emit("error", error)
                self.emit("close", error is not None)
            finally:
                # Nothing more is emitted: the listeners go, and with them the
                # cycles through closures that hold this socket, which
                # reference counting frees now instead of the cycle collector.
                self.remove_all_listeners()
                if self._server is not None:
                    self._server._maybe_closed()


class _SharedServer:
    """What a worker's shared server (net.Server, aio's) does to stop: the
    primary's ack of SERVER_CLOSE means no SCHED_RR hand-off is on its way."""

    _key: int | None

    if TYPE_CHECKING:
        def _maybe_closed(self) -> None: ...

    def _stop_sharing(self) -> None:
        if self._key is not None:
            worker = _runtime.worker
            assert worker is not None    # only a worker's servers have a key
            if worker._send_frame(_core.FRAME_SERVER_CLOSE, flags=self._key):
                return
        self._stopped_accepting()

    def _stopped_accepting(self) -> None:
        if self._key is not None:
            _shared_servers.pop(self._key, None)
            self._key = None
        self._maybe_closed()


class Server(EventEmitter, _SharedServer):
    """A TCP or Unix server. Events: 'listening', 'connection'(socket),
    'close', 'error'(exc)."""

    def __init__(self, on_connection: Callable[[Socket], Any] | None = None) -> None:
        super().__init__()
        if on_connection is not None:
            self.on("connection", on_connection)
        self._listener: Any = None       # a native Listener (plain, SCHED_NONE)
        self._closed_listener: Any = None  # closed, its last accepts still on their way
        self._key: int | None = None     # the primary's key for a shared server
        self._address: _protocol.Address | None = None
        self._sockets: set[Socket] = set()
        self._spec: ListenSpec | None = None   # (host, port, path) of a cluster listen
        self._state = "new"              # new, asking, listening, closing, closed
        self._referenced = True          # its listener keeps run() going

    def __repr__(self) -> str:
        return f"<net.Server {self._state} {self._address}>"

    @property
    def connections(self) -> int:
        """The number of open connections."""
        return len(self._sockets)

    @property
    def listening(self) -> bool:
        return self._state == "listening"

    def address(self) -> _protocol.Address | None:
        """(host, port), or the path of a Unix socket."""
        return self._address

    def listen(self, port: int = 0, host: str | None = None, backlog: int = 511,
               callback: Callable[[], Any] | None = None, *,
               path: str | os.PathLike[str] | None = None) -> Server:
        """Listens on port (0: any free one) and host, or on a Unix path;
        'listening' once bound, 'error' (an OSError) if it cannot."""
        if self._state != "new":
            raise RuntimeError(f"server is already {self._state}")
        if path is not None:
            path = os.fspath(path)
        elif not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        if callback is not None:
            self.once("listening", callback)
        self._state = "asking"
        if _runtime.is_worker:
            _ask_for(self, port, host, backlog, path)
        else:
            try:
                sock, address = _shared.listen_socket(host, port, path, backlog)
            except OSError as exc:
                self._state = "closed"
                _runtime.call_later(0, self.emit, "error", exc)
                return self
            self._listen_on(sock.detach(), address, raced=False, accepts=64)
            _runtime.call_later(0, self._emit_listening)
        return self

    def ref(self) -> Server:
        """Listening keeps run() going (the default)."""
        return self._set_ref(True)

    def unref(self) -> Server:
        """run() may return while this server listens, as Node's unref(): for
        a side service (a control or metrics port) that must not hold a stop."""
        return self._set_ref(False)

    def _set_ref(self, on: bool) -> Server:
        self._referenced = on
        if self._listener is not None:
            self._listener.ref(on)
        return self

    def close(self, callback: Callable[..., Any] | None = None) -> Server:
        """Stops accepting; 'close' and callback() once every connection has ended."""
        if callback is not None:
            self.once("close", callback)
        if self._state in ("closing", "closed"):
            return self
        self._state = "closing"
        if self._listener is not None:
            if in_drain():
                # Served, not reset: what the accept queue holds (a shared
                # SCHED_NONE socket's last holder closes it at a stop).
                self._listener.accept_queued()
            self._listener.close()
            self._closed_listener, self._listener = self._listener, None
        # A shared server tells the primary, which closes the port with its
        # last server.
        self._stop_sharing()
        return self

    # ---- internals ------------------------------------------------------------

    def _listen_on(self, fd: int, address: _protocol.Address, *, raced: bool,
                   accepts: int) -> None:
        self._listener = _core.Listener(fd, self._accepted, raced, accepts)
        if not self._referenced:
            self._listener.ref(False)
        self._address = address

    def _became_listening(self, address: _protocol.Address) -> None:
        self._address = address
        self._state = "listening"
        _runtime.servers.add(self)

    def _emit_listening(self) -> None:
        if self._state == "asking":
            assert self._address is not None     # _listen_on() came first
            self._became_listening(self._address)
            self.emit("listening")

    def _accepted(self, fd: int) -> None:
        # Accepted before close() (its note was on its way): served all the
        # same, and close() waits for it like for any connection.
        sock = Socket(fd, self)
        self._sockets.add(sock)
        _runtime.served[0] += 1
        self.emit("connection", sock)

    def _maybe_closed(self) -> None:
        if self._state == "closing" and self._key is None and not self._sockets and (
                self._closed_listener is None or not self._closed_listener.pending):
            self._closed_listener = None
            self._finish_close()

    def _finish_close(self) -> None:
        self._state = "closed"
        _runtime.servers.discard(self)
        release_index(self._spec)
        self._spec = None
        if isinstance(self._address, str) and not _runtime.is_worker:   # our Unix path
            try:
                os.unlink(self._address)
            except OSError:
                pass
        self.emit("close")

    def _adopt(self, fd: int) -> None:
        """A listening socket that came in a message: serve it here. Like a
        constructor, it owns fd from the call on, even when it fails."""
        import socket
        try:
            view = socket.socket(fileno=fd)      # not a socket: OSError, fd still open
        except OSError:
            os.close(fd)
            raise
        try:
            address = _shared.address_of(view)
        except BaseException:
            view.close()
            raise
        self._state = "asking"
        # Sent to several processes, it is raced as a SCHED_NONE socket is.
        self._listen_on(view.detach(), address, raced=True, accepts=64)
        self._became_listening(address)


# ---- the worker's side of shared servers -----------------------------------------

_pending: dict[int, tuple[OnReply, bool]] = {}    # query seq -> (on_reply, unix)
_shared_servers: dict[int, Any] = {}              # the primary's key -> server
_indexes: dict[ListenSpec, list[int]] = {}        # listen spec -> [next index, open]
_seq = [0]


def ask_primary(port: int, host: str | None, backlog: int, path: str | None,
                want_fd: bool, on_reply: OnReply) -> ListenSpec | None:
    """Asks the primary to share an address; on_reply(err, key, address, fd)
    follows (fd: the listening socket, under SCHED_NONE or with want_fd).
    Returns the listen spec, to release with release_index() once closed, or
    None if the channel is closed (on_reply then reports it, later)."""
    if path is not None:
        path = os.path.abspath(path)
    spec: ListenSpec = (host, port, path)
    slot = _indexes.setdefault(spec, [0, 0])
    index = slot[0]
    slot[0] += 1
    slot[1] += 1
    _seq[0] += 1
    _pending[_seq[0]] = (on_reply, path is not None)
    worker = _runtime.worker
    assert worker is not None            # the primary is asked by its workers
    if not worker._send_frame(_core.FRAME_QUERY_SERVER, _protocol.pack_query(
            _seq[0], port, backlog, index, host, path, want_fd)):
        del _pending[_seq[0]]
        release_index(spec)
        _runtime.call_later(0, on_reply, errno.EPIPE, 0, None, None)
        return None
    return spec


def in_drain() -> bool:
    """Whether this process is a worker whose disconnect is closing its
    servers: only then does a close take what the accept queue holds.
    Elsewhere close() is Node's: it stops accepting, and what was queued
    is not the server's."""
    w = _runtime.worker
    return w is not None and w._disconnecting


def release_index(spec: ListenSpec | None) -> None:
    if spec is None:
        return
    slot = _indexes.get(spec)
    if slot is not None:
        slot[1] -= 1
        if slot[1] <= 0:             # the last server of that spec: indexes restart
            del _indexes[spec]


def listen_error(err: int, host: str | None, port: int, path: str | None) -> OSError:
    """The error of a listen the primary refused, naming the address asked
    for (host:port, or the path): the primary's reply carries none."""
    if err == errno.EPIPE:
        return _worker.ChannelClosedError(errno.EPIPE, "the IPC channel to the primary is closed")
    where = path if path is not None else f"{host or '*'}:{port}"
    return OSError(err, f"listen {errno.errorcode.get(err, err)}: {os.strerror(err)} {where}")


def fail_boot_unless_heard(exc: OSError, heard: bool) -> None:
    """A listen that failed in a supervised worker that has not listened
    yet, with no 'error' listener to hear it: the worker cannot start. It
    tells the primary why, in one line, and exits 3 (_worker.fail_boot()),
    so that supervise() stops the fleet at once (BootError) instead of
    respawning a worker that raises the same error forever. Returns
    otherwise: heard, a plain fork()'s worker (Node's unheard 'error' is
    raised), a worker that serves already, or one that is going (the
    primary refused it a server, or its channel is closed)."""
    w = _runtime.worker
    if heard or w is None or not _worker.supervised() or w.state == "listening" or \
            exc.errno in (errno.ESHUTDOWN, errno.EPIPE):
        return
    _worker.fail_boot(exc.strerror or str(exc))


def announce_listening(address: Any) -> None:
    """Tells the primary: 'listening' on this worker and the cluster."""
    worker = _runtime.worker
    assert worker is not None
    worker.state = "listening"
    worker._send_frame(_core.FRAME_LISTENING, _protocol.pack_listening(address))


def _on_reply(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    # A malformed reply is from no primary of ours; it fails that listen (or
    # is dropped), never this worker's loop.
    _worker.close_fds(fds[1:])           # one listening socket at most
    try:
        seq = _protocol.reply_seq(payload)
    except ValueError as exc:
        _worker.close_fds(fds[:1])
        _runtime.log("warning", f"a malformed SERVER_REPLY frame dropped: {exc}")
        return
    on_reply, unix = _pending.pop(seq, (None, False))
    if on_reply is None:
        _worker.close_fds(fds[:1])
        return
    address: _protocol.Address | None
    try:
        _, err, key, _policy, address = _protocol.unpack_reply(payload, unix)
    except ValueError as exc:
        _runtime.log("warning", f"a malformed SERVER_REPLY frame: {exc}")
        err, key, address = errno.EPROTO, 0, None
    if err and fds:
        _worker.close_fds(fds[:1])
        fds = ()
    on_reply(err, key, address, fds[0] if fds else None)


def _on_reply_lost(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    """A SCHED_NONE reply whose listening socket this worker could not
    receive (out of descriptors): that listen fails with EMFILE, and the
    primary is told the server is gone."""
    try:
        seq = _protocol.reply_seq(payload)
    except ValueError:
        return
    on_reply, unix = _pending.pop(seq, (None, False))
    try:
        key = _protocol.unpack_reply(payload, unix)[2]
    except ValueError:
        key = 0
    if key:
        w._send_frame(_core.FRAME_SERVER_CLOSE, flags=key)
    if on_reply is not None:
        on_reply(errno.EMFILE, 0, None, None)


def _ask_for(server: Server, port: int, host: str | None, backlog: int,
             path: str | None) -> None:
    def on_reply(err: int, key: int, address: Any, fd: int | None) -> None:
        if err:
            server._state = "closed"
            release_index(server._spec)
            server._spec = None
            if err == errno.ESHUTDOWN:
                # the primary is disconnecting this worker: as Node's leaves
                # that query unanswered, the listen never completes
                return
            exc = listen_error(err, host, port, path)
            fail_boot_unless_heard(exc, server.listener_count("error") > 0)
            server.emit("error", exc)
            return
        if server._state != "asking":    # closed while the primary was asked
            if fd is not None:
                os.close(fd)
            assert _runtime.worker is not None    # a worker asked
            _runtime.worker._send_frame(_core.FRAME_SERVER_CLOSE, flags=key)
            return
        if fd is not None:               # SCHED_NONE: accept on the shared socket
            server._listen_on(fd, address, raced=True, accepts=NONE_ACCEPTS)
        server._key = key
        _shared_servers[key] = server
        server._became_listening(address)
        server.emit("listening")
        announce_listening(address)

    server._spec = ask_primary(port, host, backlog, path, False, on_reply)


def _on_newconn(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    server = _shared_servers.get(flags)
    for fd in fds:
        if server is not None and server._state == "listening":
            server._accepted(fd)
        else:
            # Closing: give it back, the primary routes it to another worker.
            w._send_frame(_core.FRAME_NEWCONN_ACK, fds=(fd,), flags=flags)
            os.close(fd)


ROOM_CHECK = 0.1        # seconds between a full worker's looks at its descriptors
ROOM_SPARE = 8          # free descriptors that make room again
_full: list[Any] = [None]   # the timer of those looks, while out of descriptors


def _on_newconn_lost(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    """A connection handed over that this worker had no descriptor for: the
    kernel dropped it (its client sees a reset). The primary hears it once
    (FRAME_FULL) and routes to the others until this worker has ROOM_SPARE
    descriptors free again (FRAME_ROOM). Nothing here may open a file: not
    even an import."""
    if _full[0] is None:
        _runtime.log("warning", f"worker {w.id} is out of descriptors: a connection handed "
                                "to it is lost; the primary routes around it")
        w._send_frame(_core.FRAME_FULL)
        _full[0] = _runtime.call_later(ROOM_CHECK, _check_room)


def _check_room() -> None:
    w = _runtime.worker
    assert w is not None and w._chan is not None     # a worker's, with a channel
    _full[0] = None
    if not w.is_connected():
        return
    spare: list[int] = []
    try:
        while len(spare) < ROOM_SPARE:
            spare.append(os.dup(w._chan.fd))
    except OSError:
        _full[0] = _runtime.call_later(ROOM_CHECK, _check_room)
        return
    finally:
        for fd in spare:
            os.close(fd)
    _runtime.log("info", f"worker {w.id} has descriptors again")
    w._send_frame(_core.FRAME_ROOM)


def _on_close_ack(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    server = _shared_servers.get(flags)
    if server is not None:
        server._stopped_accepting()


_worker.worker_frame_handlers.update({
    _core.FRAME_SERVER_REPLY: _on_reply,
    _core.FRAME_SERVER_REPLY | _worker.FRAME_LOST: _on_reply_lost,
    _core.FRAME_NEWCONN: _on_newconn,
    _core.FRAME_NEWCONN | _worker.FRAME_LOST: _on_newconn_lost,
    _core.FRAME_SERVER_CLOSE: _on_close_ack,
})


def _server_from_fd(fd: int) -> Server:
    server = Server()
    server._adopt(fd)
    return server


def _sendable_fd(obj: Any) -> int:
    fd = obj.fileno() if isinstance(obj, Socket) else (
        obj._listener.fd if obj._listener is not None else -1)
    if fd < 0:
        raise TypeError(f"{obj!r} has no descriptor of its own to send "
                        "(a SCHED_RR server lives in the primary)")
    return fd


# Sent to another process: ours closes, the connection or the port stays.
_worker.handle_codecs.update({
    _worker.HANDLE_NET_SOCKET: (Socket, _sendable_fd, Socket.destroy, Socket),
    _worker.HANDLE_NET_SERVER: (Server, _sendable_fd, Server.close, _server_from_fd),
})


# ---- listen_socket(): a shared port for servers of other libraries --------------------

def listen_socket(port: int = 0, host: str | None = None, *, backlog: int = 511,
                  path: str | None = None) -> Any:
    """A non-blocking listening socket.socket shared through the primary (the
    listening descriptor itself, whatever the policy), for socketserver,
    http.server or wsgiref. The worker's disconnect() closes it; end the
    application's connections on 'disconnecting'. In a worker it waits for the
    primary's answer: call it before run()."""
    import socket
    if path is not None:
        path = os.fspath(path)
    if not _runtime.is_worker:
        return _shared.listen_socket(host, port, path, backlog)[0]
    if _core.running():
        raise RuntimeError("listen_socket() waits for the primary's answer: call it before "
                           "run(), or use net.create_server() / aio.start_server() in a "
                           "callback")
    answer: list[tuple[Any, ...]] = []
    spec = ask_primary(port, host, backlog, path, True, lambda *reply: answer.append(reply))
    while not answer:
        _core.turn(None)
    err, key, address, fd = answer[0]
    if err:
        release_index(spec)
        raise listen_error(err, host, port, path)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    _runtime.servers.add(_SharedSocket(sock, key, spec))
    announce_listening(address)
    return sock


class _SharedSocket:
    """A listen_socket() among the worker's servers: disconnect() closes it."""

    def __init__(self, sock: Any, key: int, spec: ListenSpec | None) -> None:
        self.sock, self.key, self.spec = sock, key, spec

    def close(self, callback: Callable[[], Any] | None = None) -> None:
        if self in _runtime.servers:
            assert _runtime.worker is not None   # a worker's, made by listen_socket()
            _runtime.servers.discard(self)
            _runtime.worker._send_frame(_core.FRAME_SERVER_CLOSE, flags=self.key)
            self.sock.close()
            release_index(self.spec)
        if callback is not None:
            callback()
