"""A web worker: its application served by uvicorn's protocols on the
worker's shared servers, inside one asyncio loop that also runs the
cluster's native loop (aio.attach()), until the worker's disconnect()
drains them. uvicorn's Server class is not used: its signal handling and its
shutdown belong to a process that decides alone when it stops, and here the
primary decides."""
from __future__ import annotations

import asyncio
import errno
import gc
import sys

from .. import _forensics, _runtime, _saturation, _worker, aio
from ..fleet import preload
from .app import AppLoadError, detect_interface, load_app, traceback_of
from .binds import resolve_fds
from .logs import Logs
from .protocol import (
    LIMIT_REQUEST_HEAD,
    TIMEOUT_REQUEST_HEAD,
    Draining,
    close_websocket,
    draining,
    log_error,
)
from .wsgi import InlineWSGI

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .binds import Bind

FIRST_REQUEST_GRACE = 1.0     # a connection accepted before the drain: its request's time to come
EXTRA_HINT = "pip install '.[web]' in cluster_ext's repository root"


def check_limits(limit_request_head: int, timeout_request_head: float,
                 websocket_grace: float = 0.0) -> None:
    """ValueError for a negative limit, timeout or grace (0 turns one off)."""
    if limit_request_head < 0:
        raise ValueError(f"limit_request_head must be >= 0 (0: no limit), "
                         f"not {limit_request_head}")
    if timeout_request_head < 0:
        raise ValueError(f"timeout_request_head must be >= 0 (0: none), "
                         f"not {timeout_request_head}")
    if websocket_grace < 0:
        raise ValueError(f"websocket_grace must be >= 0 (0: none), not {websocket_grace}")


def check_extra() -> None:
    """The web extra is there, or an ImportError that says how to get it."""
    import importlib.util
    for name in ("uvicorn", "a2wsgi"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"cluster_ext.web needs {name}: {EXTRA_HINT}", name=name)


def serve_worker(app: Any, addresses: list[Bind], *, interface: str, graceful_timeout: float,
                 factory: bool, threads: int, access_log: bool,
                 server_options: dict[str, Any], limit_request_head: int = LIMIT_REQUEST_HEAD,
                 timeout_request_head: float = TIMEOUT_REQUEST_HEAD,
                 websocket_grace: float = 0.0, logs: Logs | None = None) -> None:
    """In a worker: load app and serve it until the worker disconnects. A
    failure before it listens (import, lifespan startup, port) is a boot
    failure, told to the primary: the process exits 3. logs: how it logs
    (the command line's options), else uvicorn's access log if access_log."""
    logs = logs or Logs(access=access_log)
    try:
        check_extra()
        addresses = resolve_fds(addresses)
        if isinstance(app, str):
            app = load_app(app, factory=factory)
        options = dict(server_options)
        # h11 bounds a head itself (16 KiB by default): at the same limit
        options.setdefault("h11_max_incomplete_event_size", limit_request_head or sys.maxsize)
        config = _config(app, interface, threads, logs, options)
        config.load()
        config.loaded_app = logs.wrap(config.loaded_app)
        table = _forensics.table()
        if table is not None:             # a heartbeat, whose timeout names them
            config.loaded_app = in_flight(config.loaded_app, table)
    except AppLoadError as exc:                   # the spec names nothing to serve
        _worker.fail_boot(str(exc), load=True)
    except (ValueError, ImportError) as exc:
        _worker.fail_boot(str(exc))
    except (Exception, SystemExit) as exc:        # uvicorn exits on some bad options
        _worker.fail_boot(traceback_of(exc))
    server = WorkerServer(config, addresses, graceful_timeout,
                           limit_request_head, timeout_request_head, websocket_grace,
                           uvicorn_logs_access=logs.uvicorn_logs_access)
    _run(server.serve(), config.get_loop_factory())


def serve_template(app: Any, serve: Callable[[], Any]) -> None:
    """In a preload template (fleet.preload): a spec's application imported
    once (a factory is still called by each worker), then a worker forked
    for each request of the primary, which serve()s. An import that fails
    is told to the primary, as a worker's boot failure would be."""
    if isinstance(app, str):
        try:
            load_app(app)
        except AppLoadError as exc:
            preload.failed(str(exc), load=True)
    _import_serving_stack()
    if preload.serve_forks():
        serve()


# What a worker imports to serve, whichever protocols uvicorn picks ('auto'):
# imported by the template too, the workers share it rather than each
# importing its own copy (measured with bench/preload_memory.py).
SERVING_STACK = ("uvicorn.config", "uvicorn.protocols.http.auto",
                 "uvicorn.protocols.websockets.auto", "uvicorn.lifespan.on",
                 "uvicorn.loops.auto", "a2wsgi")


def _import_serving_stack() -> None:
    import importlib
    for name in SERVING_STACK:
        try:
            importlib.import_module(name)
        except ImportError:
            pass                    # an older uvicorn's layout, or a part not installed


def in_flight(app: Any, table: _forensics.Table) -> Any:
    """app (ASGI 3, as uvicorn has loaded it, whatever it was), with each
    HTTP request in table from its start to the application's return."""
    begin, end = table.begin, table.end

    async def tracked(scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        at = begin(scope["method"], scope["raw_path"])   # the path, without its query
        try:
            return await app(scope, receive, send)
        finally:
            end(at)

    return tracked


def _config(app: Any, interface: str, threads: int, logs: Logs,
            options: dict[str, Any]) -> Any:
    import uvicorn
    if interface in ("auto", "asgi"):
        detected = detect_interface(app)
        interface = detected if interface == "auto" or detected != "wsgi" else "asgi3"
    lifespan = options.pop("lifespan", "auto")
    if interface == "wsgi":
        if threads > 1:
            from a2wsgi import WSGIMiddleware
            app = WSGIMiddleware(app, workers=threads)
        else:
            app = InlineWSGI(app)
        interface, lifespan = "asgi3", "off"
    # Errors to stderr with the worker's id, the access log where asked, and
    # no access handler at all otherwise, which uvicorn's protocols check
    # once per connection (uvicorn.Config clears them without access_log).
    logs.configure()
    return uvicorn.Config(app, interface=interface, lifespan=lifespan,  # type: ignore[arg-type]
                          log_config=None,
                          access_log=logs.access, **options)


def _run(main: Any, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main)
        return
    loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class WorkerServer:
    """uvicorn's protocols on the worker's shared servers: lifespan startup,
    listen, serve, drain on 'disconnecting', lifespan shutdown after
    'disconnect'."""

    def __init__(self, config: Any, addresses: list[Bind], graceful_timeout: float,
                 limit_request_head: int = LIMIT_REQUEST_HEAD,
                 timeout_request_head: float = TIMEOUT_REQUEST_HEAD,
                 websocket_grace: float = 0.0, *, uvicorn_logs_access: bool = True) -> None:
        self.config = config
        self.addresses = addresses
        self.graceful_timeout = graceful_timeout
        self.limit_request_head = limit_request_head
        self.timeout_request_head = timeout_request_head
        self.websocket_grace = websocket_grace
        self.state: Any = None
        self.protocol_class: type = Draining
        self.ticker: asyncio.TimerHandle | None = None
        self.uvicorn_logs_access = uvicorn_logs_access   # False: Logs.wrap() logs them

    async def serve(self) -> None:
        from uvicorn.server import ServerState
        loop = asyncio.get_running_loop()
        aio.attach(loop)
        me = _runtime.worker
        assert me is not None                # serve_worker() runs in workers only
        _runtime.counts_requests = True      # HTTP requests, for status and --max-requests
        gone: asyncio.Future[None] = loop.create_future()
        me.on("disconnect", lambda: None if gone.done() else gone.set_result(None))
        config = self.config
        lifespan = config.lifespan_class(config)
        await lifespan.startup()
        if lifespan.should_exit:
            _worker.fail_boot("the application's lifespan startup failed (its error is above)")
        self.state = ServerState()
        self.tick()
        protocol_class = draining(config.http_protocol_class)
        protocol_class.cx_head_limit = self.limit_request_head or sys.maxsize  # type: ignore[attr-defined]
        protocol_class.cx_uvicorn_access_log = self.uvicorn_logs_access  # type: ignore[attr-defined]

        def protocol() -> asyncio.Protocol:
            return protocol_class(config=config, server_state=self.state,  # type: ignore[no-any-return]
                                  app_state=lifespan.state, _loop=loop)

        me.on("disconnecting", self.drain)
        self.protocol_class = protocol_class
        first: Any = None
        options: dict[str, Any] = {"backlog": config.backlog, "announce": False}
        if config.ssl is not None:
            options["ssl"] = config.ssl
        for kind, where, port in self.addresses:
            try:
                if kind == "unix":
                    server = await aio.create_server(protocol, path=where, **options)
                else:
                    server = await aio.create_server(protocol, where, port, **options)
            except OSError as exc:
                if exc.errno in (errno.ESHUTDOWN, errno.EPIPE):
                    break                    # the primary refused: this worker is going
                _worker.fail_boot(exc.strerror or str(exc))
            first = first or server
        else:
            if first is not None:            # 'listening' once every bind listens
                aio.announce(first)
        _saturation.probe_loop()
        # What the worker holds after its start (modules, the application)
        # lives as long as it does: out of the collector's full passes, which
        # otherwise walk it again and again under load.
        gc.freeze()
        await gone
        if self.ticker is not None:
            self.ticker.cancel()
        if self.state.tasks and _pooled(config.app):
            # Every connection has closed, but a request's task may still
            # wait for its pool thread, which returns after the response is
            # out. Nothing cancels a thread, and the exit waits for the pool's
            # threads anyway: the loop's end would only cancel the task, and
            # uvicorn log that as the application's error.
            await asyncio.wait(tuple(self.state.tasks), timeout=self.graceful_timeout)
        await _bounded(lifespan.shutdown(), self.graceful_timeout)

    def tick(self) -> None:
        """uvicorn's Date header (and the server's default headers), once a
        second; and the connections whose head is late, closed."""
        from email.utils import formatdate
        config = self.config
        date = [(b"date", formatdate(usegmt=True).encode())] if config.date_header else []
        self.state.default_headers = date + config.encoded_headers
        loop = asyncio.get_running_loop()
        self.ticker = loop.call_later(1.0, self.tick)
        timeout = self.timeout_request_head
        if timeout:
            # One pass a second over the connections, rather than a timer per
            # request: a head is late by up to a second more, and the hot
            # path pays nothing but the time its head began.
            now = loop.time()
            for connection in tuple(self.state.connections):
                began = getattr(connection, "cx_head_began", None)
                if began is not None and now - began > timeout:
                    connection.cx_head_late()

    def drain(self) -> None:
        """'disconnecting': the servers stop accepting (disconnect() closes
        them right after this); every connection finishes what it has
        received; every WebSocket is closed with 1012 (service restart), as
        uvicorn and gunicorn close them at a shutdown's start, or after
        websocket_grace: it has no end of its own to wait for, and would
        hold the reload of its worker for the whole graceful_timeout. What
        is still open shortly before graceful_timeout (a streaming response)
        is closed, so that the worker says 'disconnect' before the primary's
        SIGKILL comes."""
        grace = min(FIRST_REQUEST_GRACE, self.graceful_timeout / 4)
        self.protocol_class.cx_worker_drain = grace  # type: ignore[attr-defined]  # and those to come
        for connection in list(self.state.connections):
            drain = getattr(connection, "cx_drain", None)
            if drain is not None:
                try:
                    drain(grace)
                except Exception:            # one connection must not stop the drain
                    log_error("draining a connection")
        loop = asyncio.get_running_loop()
        loop.call_later(self.websocket_grace, self.close_websockets)
        overdue = self.graceful_timeout - min(1.0, self.graceful_timeout / 10)
        loop.call_later(overdue, self.overdue)

    def close_websockets(self) -> None:
        """1012 to every WebSocket, and to those upgraded from now on
        (Draining.handle_websocket_upgrade)."""
        self.protocol_class.cx_close_websockets = True  # type: ignore[attr-defined]
        for connection in list(self.state.connections):
            if not isinstance(connection, Draining):    # uvicorn's WebSocket protocols
                close_websocket(connection)

    def overdue(self) -> None:
        """Streaming responses end, and WebSockets still open (a grace that
        outlasts the timeout, a handshake never answered) get 1012 (service
        restart): their applications see the client gone. What is cut is
        counted and told to the primary first, for its reload's report."""
        connections = list(self.state.connections)
        _saturation.cut[0] += sum(
            1 for connection in connections
            if getattr(connection, "cx_began", None) is not None)   # a response in progress
        _saturation.cut[1] += len(connections)
        me = _runtime.worker
        if me is not None and me.is_connected():
            _worker.send_stats(me)
        for connection in connections:
            try:
                connection.shutdown()
            except Exception:
                log_error("closing a connection at the graceful timeout")
            transport = getattr(connection, "transport", None)
            if transport is not None:
                # abort(): close() would wait for a peer that does not read
                asyncio.get_running_loop().call_later(0.2, transport.abort)


def _pooled(app: Any) -> bool:
    """Whether app is a WSGI application in a2wsgi's thread pool (--threads N)."""
    from a2wsgi import WSGIMiddleware
    return isinstance(app, WSGIMiddleware)


async def _bounded(awaitable: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pass
