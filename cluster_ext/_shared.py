"""The primary's shared listening sockets: one per (host, port or path, index)
that workers ask for. SCHED_RR keeps the socket in a native Balancer that
accepts and hands connections out without Python; SCHED_NONE sends the
listening descriptor itself to each worker. Loaded with the package, since a
primary serves its workers' listen() even if it never imports net itself."""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    import socket
    from typing import Any, TypeAlias

    # (host, port, path, index, policy): one shared listening socket
    Spec: TypeAlias = tuple[str | None, int, str | None, int, int]

from . import _core, _protocol, _runtime, _worker
from ._runtime import SCHED_NONE, SCHED_RR

_adopted: dict[Any, socket.socket] = {}   # inherited listening sockets, by address


def adopt(fd: int) -> _protocol.Address:
    """Takes the inherited listening socket fd (systemd's, a supervisor's) as
    the one to share for its address: a listen() on that address gets it
    instead of binding anew, and fd itself stays open in this process, so
    the socket outlives this primary and refuses nothing between two."""
    import socket
    dup = -1
    try:
        dup = os.dup(fd)
        sock = socket.socket(fileno=dup)
    except OSError as exc:
        if dup >= 0:            # socket() leaves it open when it refuses it
            os.close(dup)
        raise ValueError(f"fd {fd} is not an open socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM or \
            not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.close()
        raise ValueError(f"fd {fd} is not a listening stream socket")
    sock.setblocking(False)
    address = address_of(sock)
    _adopted[address] = sock
    return address


FD_BINDS = "CLUSTER_EXT_FD_BINDS"   # the primary tells its workers: fd N listens at ADDRESS


def fd_binds() -> dict[str, str]:
    """fd number -> the --bind form of the address its adopted socket has."""
    return dict(item.split("=", 1) for item in os.environ.get(FD_BINDS, "").split(";")
                if "=" in item)


def adopt_bind(fd: int) -> None:
    """adopt(fd), and tell the workers (through their environment) where it
    listens, for their --bind fd://N."""
    mapping = fd_binds()
    if str(fd) in mapping:
        return
    address = adopt(fd)
    os.set_inheritable(fd, False)        # the application's children must not get it
    if isinstance(address, str) and address.startswith("\0"):
        raise ValueError(f"fd {fd} listens on an abstract Unix name, which --bind cannot name")
    mapping[str(fd)] = (f"unix:{address}" if isinstance(address, str)
                        else f"[{address[0]}]:{address[1]}")
    os.environ[FD_BINDS] = ";".join(f"{n}={where}" for n, where in mapping.items())


def adopt_listen_fds(taken: tuple[list[int], list[str]]) -> None:
    """systemd's socket activation: the descriptors _listen_fds.take() found
    passed to this process are adopted, and what is wrong with them is a
    warning (one line per problem, and per descriptor that is not a
    listening stream socket)."""
    fds, warnings = taken
    for warning in warnings:
        _runtime.log("warning", warning)
    for fd in fds:
        try:
            adopt_bind(fd)
        except ValueError as exc:
            _runtime.log("warning", f"LISTEN_FDS: {exc}: not adopted")


def listen_socket(host: str | None, port: int, path: str | None,
                  backlog: int) -> tuple[socket.socket, _protocol.Address]:
    """A bound, listening, non-blocking socket and its address (a duplicate
    of an adopted one, if one listens there)."""
    import socket
    adopted = _find_adopted(host, port, path)
    if adopted is not None:
        sock = socket.socket(fileno=os.dup(adopted.fileno()))
        sock.setblocking(False)
        return sock, address_of(sock)
    if path is not None:
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = path
    elif host is None:
        # No host: every address, IPv6 and IPv4 on one socket, as Node does.
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            target = ("::", port)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("0.0.0.0", port)
    else:
        try:
            family, _, _, _, target = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as exc:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc}") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if path is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = path if path is not None else f"{target[0]}:{target[1]}"
        # 'AF_UNIX path too long' has no errno: EINVAL, as a worker is told
        code, why = ((exc.errno, exc.strerror) if exc.errno is not None
                     else (errno.EINVAL, str(exc)))
        raise OSError(code, f"listen {errno.errorcode.get(code, code)}: {why} {where}") from None
    return sock, address_of(sock)


def _find_adopted(host: str | None, port: int, path: str | None) -> socket.socket | None:
    if path is not None:
        return _adopted.get(path)
    if host is None:                     # every address: systemd's ListenStream=8000
        return _adopted.get(("::", port)) or _adopted.get(("0.0.0.0", port))
    return _adopted.get((host, port))


def remove_stale_socket(path: str) -> None:
    """A Unix socket file at path that nobody answers on (left by a process
    that was killed) is removed, so that a restart can bind again; one that
    answers is EADDRINUSE, anything else at path EEXIST."""
    import socket
    import stat
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)                # a full backlog: live, and busy
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except TimeoutError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is live: another process serves on it")


def address_of(sock: socket.socket) -> _protocol.Address:
    import socket
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return name if isinstance(name, str) else os.fsdecode(name)
    return (name[0], name[1])


class SharedHandle:
    """One address shared by the workers that listen on it."""

    def __init__(self, spec: Spec, key: int, sock: socket.socket,
                 address: _protocol.Address, policy: int) -> None:
        self.spec, self.key, self.address, self.policy = spec, key, address, policy
        self.workers: dict[int, Any] = {}
        self.balancer = None
        self.sock: socket.socket | None = None
        if policy == SCHED_RR:
            self.balancer = _core.Balancer(sock.detach(), key)
        else:
            self.sock = sock

    def add(self, w: Any) -> None:
        if w.id not in self.workers:
            self.workers[w.id] = w
            if self.balancer is not None:
                self.balancer.add(w._chan)

    def remove(self, w: Any) -> None:
        if self.workers.pop(w.id, None) is not None and self.balancer is not None:
            self.balancer.remove(w._chan)

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        if self.sock is not None:
            self.sock.close()
        if isinstance(self.address, str) and self.address not in _adopted:
            try:
                os.unlink(self.address)
            except OSError:
                pass


_handles: dict[Spec, SharedHandle] = {}
_by_key: dict[int, SharedHandle] = {}
_next_key = [1]


def _new_key() -> int:
    while True:
        key = _next_key[0]
        _next_key[0] = key % 0xFFFF + 1
        if key not in _by_key:
            return key


_held = [False]


def hold(on: bool) -> None:
    """While a fleet runs, an address outlives the moments it has no worker
    (all of them killed, respawning): new connections wait in the backlog
    instead of being refused. Once released, an unused address closes, as
    in Node."""
    _held[0] = on
    if not on:
        for handle in list(_handles.values()):
            _drop_if_unused(handle)


def _drop_if_unused(handle: SharedHandle) -> None:
    """The last worker left: close the socket, new connections are refused."""
    if not handle.workers and not _held[0] and _handles.get(handle.spec) is handle:
        del _handles[handle.spec]
        del _by_key[handle.key]
        handle.close()


def stop_accepting() -> None:
    """At cluster.disconnect() (a graceful stop): every address refuses new
    connections, and none already queued is reset. First no handshake may
    complete into the queue any more (a client that comes now is refused
    once the socket closes; had it come between the last accept and the
    close, it would have been reset). Under SCHED_RR the primary then
    accepts what the queue holds and hands it out before the workers are
    told to disconnect: frames keep their order, so each worker takes its
    share while it still listens. Then the socket closes, at once rather
    than when the last worker has gone, by which time a queue that kept
    filling during the drain would be reset. Under SCHED_NONE the primary's
    copy goes; each worker takes what is queued as it closes its own
    (net.Server.close(), aio's), the last one last."""
    for handle in list(_handles.values()):
        del _handles[handle.spec]
        del _by_key[handle.key]
        # An inherited socket (LISTEN_FDS, fd://) outlives this primary with
        # whoever passed it (systemd), for the next one: nothing is reset at
        # our close, and the filter would stay on it.
        refuse = not isinstance(handle.address, str) and handle.address not in _adopted
        if handle.balancer is not None:
            handle.balancer.stop_accepting(refuse)
        elif handle.sock is not None and refuse:
            _core.refuse_new(handle.sock.fileno())
        handle.close()


def _malformed(w: Any, what: str, exc: ValueError) -> None:
    """A server frame that no worker of ours would write: dropped, since an
    exception here would stop the primary's loop, and with it every worker."""
    _runtime.log("warning", f"a malformed {what} frame from worker {w.id} dropped: {exc}")


def _on_query(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    try:
        seq, port, backlog, index, host, path, want_fd = _protocol.unpack_query(payload)
    except ValueError as exc:
        _malformed(w, "QUERY_SERVER", exc)
        return

    def reply(err: int, handle: SharedHandle | None = None) -> None:
        body = _protocol.pack_reply(seq, err, handle.key if handle else 0,
                                    handle.policy if handle else 0,
                                    handle.address if handle else None)
        send_fds = (handle.sock.fileno(),) if handle and handle.sock is not None else ()
        try:
            w._send_frame(_core.FRAME_SERVER_REPLY, body, send_fds)
        except OSError as exc:
            # The listening socket leaves as a copy (SCHED_NONE), and with the
            # primary's descriptors used up there is none to make: that
            # worker's listen fails with the errno, and the primary's loop,
            # which an exception here would stop, goes on with the others.
            if handle is None or not send_fds:
                raise
            handle.remove(w)
            _drop_if_unused(handle)
            where = handle.address if isinstance(handle.address, str) else \
                f"{handle.address[0]}:{handle.address[1]}"
            _runtime.log("warning", f"worker {w.id} cannot listen on {where}: "
                         f"{exc.strerror or exc}")
            reply(exc.errno or errno.EMFILE)

    if w._disconnecting or not w.is_connected():
        reply(errno.ESHUTDOWN)          # a disconnecting worker gets no new server
        return
    if path is not None:
        path = os.path.abspath(path)
    # A worker that wants the listening socket itself (listen_socket(), an
    # asyncio server under SCHED_NONE) shares it whatever the policy.
    policy = SCHED_NONE if want_fd else _runtime.settings["scheduling_policy"]
    spec: Spec = (host, port, path, index, policy)
    handle = _handles.get(spec)
    if handle is None:
        try:
            sock, address = listen_socket(host, port, path, backlog)
        except OSError as exc:
            reply(exc.errno or errno.EINVAL)
            return
        except (ValueError, OverflowError):
            # a host idna cannot encode, a path with a NUL, a port past 65535
            reply(errno.EINVAL)
            return
        handle = SharedHandle(spec, _new_key(), sock, address, policy)
        _handles[spec] = handle
        _by_key[handle.key] = handle
    handle.add(w)
    reply(0, handle)


def _on_listening(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    try:
        address = _protocol.unpack_listening(payload)
    except ValueError as exc:
        _malformed(w, "LISTENING", exc)
        return
    if w.state in ("none", "online"):
        w.state = "listening"
    w.emit("listening", address)
    _runtime.emitter.emit("listening", w, address)


def _on_server_close(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    handle = _by_key.get(flags)
    if handle is not None:
        handle.remove(w)
        _drop_if_unused(handle)
    # Frames are ordered: any NEWCONN sent before this ack reaches the worker
    # first, so once it has the ack, nothing more can come for that key.
    w._send_frame(_core.FRAME_SERVER_CLOSE, flags=flags)


def _on_newconn_ack(w: Any, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    """A worker could not take a connection (its server is closing)."""
    handle = _by_key.get(flags)
    for fd in fds:
        if handle is not None and handle.balancer is not None:
            handle.balancer.route(fd)     # to another worker
        else:
            os.close(fd)


def _on_full(w: Any) -> None:
    """A worker had no descriptor for a connection handed to it (the kernel
    dropped it): the balancers route around it until it says FRAME_ROOM,
    and, while no worker has room, stop accepting (connections wait in the
    backlog)."""
    chan = w._chan
    if chan is None or chan.full:
        return
    chan.full = True
    rest = [x for x in _runtime.workers.values()
            if x is not w and x._chan is not None and not x._chan.full] \
        if _runtime.workers is not None else []
    _runtime.log("warning", f"worker {w.id} is out of descriptors: new connections go to "
                 + ("the others" if rest else "none (no worker has room: they wait in the "
                    "backlog)"))


def _on_room(w: Any) -> None:
    chan = w._chan
    if chan is not None and chan.full:
        chan.full = False
        _runtime.log("info", f"worker {w.id} has descriptors again: it takes connections")


def worker_gone(w: Any) -> None:
    """Routing to w stops at once (disconnect, kill or exit)."""
    for handle in list(_handles.values()):
        handle.remove(w)
        _drop_if_unused(handle)


def forget() -> None:
    """In a child of fork(): the primary's sockets are not this worker's."""
    for handle in _handles.values():
        if handle.sock is not None:
            handle.sock.close()
    _handles.clear()
    _by_key.clear()


_worker.routing_stops.append(worker_gone)
_worker.primary_frame_handlers.update({
    _core.FRAME_QUERY_SERVER: _on_query,
    _core.FRAME_LISTENING: _on_listening,
    _core.FRAME_SERVER_CLOSE: _on_server_close,
    _core.FRAME_NEWCONN_ACK: _on_newconn_ack,
    _core.FRAME_FULL: _worker.control_handler(_on_full),
    _core.FRAME_ROOM: _worker.control_handler(_on_room),
})
