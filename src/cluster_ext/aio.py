"""cluster_ext.aio: the native loop inside asyncio, and cluster-shared
asyncio servers.

    async def main():
        server = await aio.start_server(handle, "127.0.0.1", 8000)
        ...
    asyncio.run(main())

attach() puts one reader on the engine's descriptor into the running asyncio
loop, so that IPC, 'message', 'disconnecting' and disconnects work inside
asyncio.run(). start_server() listens through the primary like a net server,
honouring the scheduling policy (under SCHED_RR the connections arrive from
the primary), and counts among the worker's servers: disconnect() closes it and
waits for its connections.
"""
from __future__ import annotations

import asyncio
import os
import socket
import weakref

from . import _core, _runtime, net

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["attach", "start_server"]

_attached: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def attach(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Drives the native loop from loop (default: the running one); calling
    it again is harmless."""
    loop = loop or asyncio.get_running_loop()
    if loop not in _attached:
        loop.add_reader(_core.fileno(), _core.turn, 0)
        _attached.add(loop)


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, counted by the shared server it serves."""

    def __init__(self, shared: _Shared, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared = shared

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._shared.connections += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._shared.connections -= 1
        self._shared._maybe_closed()


class _Shared(net._SharedServer):
    """A worker's asyncio server among its servers (what disconnect() closes)."""

    def __init__(self, key: int, spec: net.ListenSpec | None) -> None:
        self._key: int | None = key
        self.spec = spec
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.closing = False
        self.callbacks: list[Callable[[], Any]] = []
        self.factory: Callable[[], asyncio.Protocol] | None = None

    @property
    def _state(self) -> str:
        serving = self.server is not None and self.server.is_serving()
        return "listening" if serving and not self.closing else "closing"

    def _accepted(self, fd: int) -> None:
        """SCHED_RR: a connection from the primary."""
        assert self.factory is not None      # set before the server is shared
        sock = socket.socket(fileno=fd)
        loop = asyncio.get_running_loop()    # we run inside its reader callback
        loop.create_task(loop.connect_accepted_socket(self.factory, sock))

    def close(self, callback: Callable[[], Any] | None = None) -> None:
        if callback is not None:
            self.callbacks.append(callback)
        if self.closing:
            return
        self.closing = True
        if self.server is not None:
            self.server.close()
        self._stop_sharing()

    def _maybe_closed(self) -> None:
        if self.closing and self._key is None and self.connections == 0:
            _runtime.servers.discard(self)
            net.release_index(self.spec)
            self.spec = None
            callbacks, self.callbacks = self.callbacks, []
            for callback in callbacks:
                callback()


async def start_server(client_connected_cb: Callable[..., Any], host: str | None = None,
                       port: int = 0, *, path: str | None = None, backlog: int = 511,
                       limit: int = 2 ** 16, **kw: Any) -> asyncio.base_events.Server:
    """asyncio.start_server() on a cluster-shared port (or Unix path)."""
    attach()
    loop = asyncio.get_running_loop()
    if not _runtime.is_worker:
        if path is not None:
            return await asyncio.start_unix_server(client_connected_cb, path,
                                                   backlog=backlog, limit=limit, **kw)
        return await asyncio.start_server(client_connected_cb, host, port, backlog=backlog,
                                          limit=limit, **kw)
    answer: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def on_reply(*reply: Any) -> None:
        if not answer.done():
            answer.set_result(reply)

    spec = net.ask_primary(port, host, backlog, path, False, on_reply)
    err, key, address, fd = await answer
    if err:
        net.release_index(spec)
        raise net.listen_error(err, address)
    shared = _Shared(key, spec)

    def factory() -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return _Protocol(shared, reader, client_connected_cb, loop=loop)

    shared.factory = factory
    if fd is not None:                    # SCHED_NONE: accept on the shared socket
        sock = socket.socket(fileno=fd)
    else:
        # SCHED_RR: connections come from the primary; the server object
        # listens on a private abstract Unix name that nobody connects to.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"\0cluster_ext-{os.getpid()}-{key}")
        sock.listen(1)
    shared.server = await loop.create_server(factory, sock=sock, **kw)
    net._shared_servers[key] = shared
    _runtime.servers.add(shared)
    net.announce_listening(address)
    return shared.server
