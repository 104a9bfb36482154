"""cluster_ext.aio: the native loop inside asyncio, and cluster-shared
asyncio servers.

    async def main():
        server = await aio.start_server(handle, "127.0.0.1", 8000)
        ...
    asyncio.run(main())

attach() puts one reader on the engine's descriptor into the running asyncio
loop, so that IPC, 'message', 'disconnecting' and disconnects work inside
asyncio.run(). create_server() and start_server() listen through the primary
like a net server, honouring the scheduling policy (under SCHED_RR the
connections arrive from the primary); each server counts among the worker's
servers: disconnect() closes it and waits for its connections.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import weakref

from . import _core, _runtime, net

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["attach", "create_server", "protocol_replaced", "start_server"]

_attached: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
ACCEPT_QUEUED_MAX = 16384   # as the engine's bound on a close's accepts (stream.c)


def attach(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Drives the native loop from loop (default: the running one); calling
    it again is harmless."""
    loop = loop or asyncio.get_running_loop()
    if loop not in _attached:
        loop.add_reader(_core.fileno(), _core.turn, 0)
        _attached.add(loop)


class _Shared(net._SharedServer):
    """A worker's asyncio server among its servers (what disconnect() closes).
    It counts its connections from the hand-over (or accept) to
    connection_lost, so that a close waits for every one of them."""

    def __init__(self, key: int, spec: net.ListenSpec | None,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._key: int | None = key
        self.spec = spec
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.closing = False
        self.callbacks: list[Callable[[], Any]] = []
        self.protocol_factory = protocol_factory
        self.family = socket.AF_INET         # of the connections the primary hands over
        self.accept_kw: dict[str, Any] = {}
        self.listening: socket.socket | None = None   # SCHED_NONE: the shared socket

    @property
    def _state(self) -> str:
        serving = self.server is not None and self.server.is_serving()
        return "listening" if serving and not self.closing else "closing"

    def counted_protocol(self) -> asyncio.BaseProtocol:
        """The application's protocol, its connection_lost counted."""
        protocol = self.protocol_factory()
        _count(protocol, self)
        return protocol

    def accepted_protocol(self) -> asyncio.BaseProtocol:
        """SCHED_NONE: asyncio accepted the connection on the shared socket."""
        self.connections += 1
        _runtime.served[0] += 1
        return self.counted_protocol()

    def _accepted(self, fd: int) -> None:
        """SCHED_RR: a connection from the primary, counted from here: a close
        that begins before the transport exists still waits for it."""
        self.connections += 1
        _runtime.served[0] += 1
        # family given: socket() would learn it with three getsockopt() calls
        sock = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        loop = asyncio.get_running_loop()    # we run inside its reader callback
        loop.create_task(self._adopt(loop, sock))

    async def _adopt(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        made = []

        def factory() -> asyncio.BaseProtocol:
            made.append(True)
            return self.counted_protocol()

        try:
            await loop.connect_accepted_socket(factory, sock, **self.accept_kw)
        except (OSError, asyncio.CancelledError):
            # The peer is gone already, or the loop is closing. A protocol that
            # was made counts itself down when its transport closes.
            sock.close()
            if not made:
                self._lost()

    def _lost(self) -> None:
        self.connections -= 1
        self._maybe_closed()

    def close(self, callback: Callable[[], Any] | None = None) -> None:
        if callback is not None:
            self.callbacks.append(callback)
        if self.closing:
            return
        self.closing = True
        if self.listening is not None and net.in_drain():
            self.take_queued(self.listening)
        if self.server is not None:
            self.server.close()
        self._stop_sharing()

    def take_queued(self, listening: socket.socket) -> None:
        """SCHED_NONE: what the shared socket's accept queue holds is served
        here, as a connection handed over is; the last holder's close would
        reset it (at a stop, the primary has closed its copy first)."""
        for _ in range(ACCEPT_QUEUED_MAX):
            try:
                connection, _ = listening.accept()
            except ConnectionAbortedError:
                continue
            except OSError:                  # BlockingIOError: the queue is empty
                return
            self._accepted(connection.detach())

    def _maybe_closed(self) -> None:
        if self.closing and self._key is None and self.connections == 0:
            _runtime.servers.discard(self)
            net.release_index(self.spec)
            self.spec = None
            callbacks, self.callbacks = self.callbacks, []
            for callback in callbacks:
                callback()


def _count(protocol: asyncio.BaseProtocol, shared: _Shared) -> None:
    """Counts protocol's connection until its connection_lost: an instance
    attribute, so the class (uvicorn's, asyncio's) stays as it is."""
    lost = protocol.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        try:
            lost(exc)
        finally:
            shared._lost()

    protocol.connection_lost = connection_lost  # type: ignore[method-assign]
    protocol._cx_shared = shared  # type: ignore[attr-defined]


def protocol_replaced(old: asyncio.BaseProtocol, new: asyncio.BaseProtocol) -> None:
    """For a protocol that hands its transport to another (transport.
    set_protocol(), as an HTTP upgrade to WebSocket does): the connection
    stays counted until the new protocol's connection_lost."""
    shared = old.__dict__.pop("_cx_shared", None)
    if shared is not None and new is not old:
        del old.connection_lost          # the class's again: it will not be called
        _count(new, shared)


_unannounced: dict[Any, Any] = {}     # server -> its shared address, for announce()


def announce(server: asyncio.base_events.Server) -> None:
    """'listening' for a server made with announce=False (a caller that
    listens on several addresses says so once, when all of them listen)."""
    address = _unannounced.pop(server, None)
    if address is not None:
        net.announce_listening(address)


async def create_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                        host: str | None = None, port: int = 0, *,
                        path: str | None = None, backlog: int = 511, announce: bool = True,
                        **kw: Any) -> asyncio.base_events.Server:
    """loop.create_server() on a cluster-shared port (or Unix path), with the
    scheduling policy honoured: under SCHED_RR each connection the primary
    hands over goes to a new protocol_factory() protocol, under SCHED_NONE
    asyncio accepts on the shared socket. Among the worker's servers:
    disconnect() closes it and waits for its connections to end. Outside a
    cluster, a plain loop.create_server() (create_unix_server() for path)."""
    attach()
    loop = asyncio.get_running_loop()
    if not _runtime.is_worker:
        if path is not None:
            return await loop.create_unix_server(protocol_factory, path, backlog=backlog, **kw)
        return await loop.create_server(protocol_factory, host, port, backlog=backlog, **kw)
    answer: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def on_reply(*reply: Any) -> None:
        if not answer.done():
            answer.set_result(reply)

    spec = net.ask_primary(port, host, backlog, path, False, on_reply)
    err, key, address, fd = await answer
    if err:
        net.release_index(spec)
        raise net.listen_error(err, host, port, path)
    shared = _Shared(key, spec, protocol_factory)
    if isinstance(address, str):
        shared.family = socket.AF_UNIX
    elif ":" in address[0]:
        shared.family = socket.AF_INET6
    # a handed-over connection is served as one accepted here would be (TLS)
    shared.accept_kw = {k: kw[k] for k in ("ssl", "ssl_handshake_timeout") if k in kw}
    if fd is not None:                    # SCHED_NONE: accept on the shared socket
        sock = shared.listening = socket.socket(fileno=fd)
    else:
        # SCHED_RR: connections come from the primary; the server object
        # listens on a private abstract Unix name that nobody connects to.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"\0cluster_ext-{os.getpid()}-{key}")
        sock.listen(1)
    shared.server = await loop.create_server(shared.accepted_protocol, sock=sock, **kw)
    net._shared_servers[key] = shared
    _runtime.servers.add(shared)
    worker = _runtime.worker
    assert worker is not None                # a worker's
    if worker._disconnecting:                # told to go while it listened
        shared.close()
        raise OSError(errno.ESHUTDOWN, "the worker is disconnecting")
    if announce:
        net.announce_listening(address)
    else:
        _unannounced[shared.server] = address
    return shared.server


async def start_server(client_connected_cb: Callable[..., Any], host: str | None = None,
                       port: int = 0, *, path: str | None = None, backlog: int = 511,
                       limit: int = 2 ** 16, **kw: Any) -> asyncio.base_events.Server:
    """asyncio.start_server() on a cluster-shared port (or Unix path)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, path=path, backlog=backlog, **kw)
