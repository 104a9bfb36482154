"""cluster_ext.web: ASGI and WSGI applications served by the cluster.

    cluster-ext run -w 4 --bind 127.0.0.1:8000 myproject.asgi:application

    from cluster_ext import web
    web.serve("myapp:app", "127.0.0.1", 8000, workers=4)

The HTTP/1.1 and WebSocket protocols are uvicorn's (httptools and uvloop when
installed); WSGI applications run in a thread pool behind a2wsgi. Each worker
drives uvicorn's protocols itself, inside one asyncio loop that also runs the
cluster's native loop (aio.attach()): its servers are aio.create_server()
servers, shared through the primary under either scheduling policy, and the
worker's disconnect() drains them (see _Draining). uvicorn's Server class is
not used: its signal handling and its shutdown belong to a process that
decides alone when it stops, and here the primary decides.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import importlib
import inspect
import os
import sys

from . import _fleet, _runtime, _shared, _worker, aio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    # ("tcp", host, port), ("unix", path, 0) or ("fd", "", fd)
    Bind: TypeAlias = tuple[str, str, int]

__all__ = ["serve", "load_app", "detect_interface", "parse_bind", "AppLoadError"]

DEFAULT_BIND = "127.0.0.1:8000"
INTERFACES = ("auto", "asgi", "asgi3", "asgi2", "wsgi")
FIRST_REQUEST_GRACE = 1.0     # a connection accepted before the drain: its request's time to come
KEEP_ALIVE_LINGER = 0.5       # a keep-alive connection answered this recently may be sending again
LIMIT_REQUEST_HEAD = 65536    # bytes of a request line and headers (0: no limit): 431 beyond
TIMEOUT_REQUEST_HEAD = 20.0   # seconds for a head to come whole (0: none): 408, or a silent close
REFUSAL_LINGER = 2.0          # after a 431 or 408, the client's bytes are read and dropped so long
EXTRA_HINT = "pip install '.[web]' in cluster_ext's repository root"


class AppLoadError(Exception):
    """An application spec that does not name an application."""


# ---- the application ----------------------------------------------------------------

def _split_spec(spec: str) -> tuple[str, str]:
    """"module.path:attribute" -> (module, attribute), each made of dotted
    names, or the AppLoadError that says how a spec is written."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not all(module_name.split(".")) or not all(attr.split(".")):
        raise AppLoadError(f"{spec!r}: an application is named as 'module:attribute', "
                           "for example 'myproject.asgi:application'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # as gunicorn and uvicorn do
    return module_name, attr


def _no_module(spec: str, name: str) -> AppLoadError:
    return AppLoadError(f"{spec!r}: no module named {name!r} "
                        f"(looked in {os.getcwd()} and sys.path)")


def check_spec(spec: str) -> None:
    """What the primary can tell of a spec without running any of the
    application's code: its form, and that its top-level module is there.
    importlib.util.find_spec() of a top-level name asks the finders of
    sys.meta_path and imports nothing; of a dotted name it would import the
    parent packages, whose __init__ is the application's code, and a parent
    may extend its own __path__, so nothing below the top level can be
    judged without the import. That, the attribute and its interface are
    left to the workers, which report what is wrong as the same
    AppLoadError (BootError.load_error)."""
    module_name, _ = _split_spec(spec)
    top = module_name.partition(".")[0]
    import importlib.util
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):   # a finder's own error, or a module without __spec__
        return                          # the workers' import tells
    if found is None:
        raise _no_module(spec, top)


def load_app(spec: str, *, factory: bool = False) -> Any:
    """The object that "module.path:attribute" names (attribute may be dotted),
    imported as gunicorn and uvicorn do, with the current directory on
    sys.path; with factory, the result of calling it."""
    module_name, attr = _split_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit too: an app that exits on import
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and module_name.startswith(missing) and \
                module_name[len(missing):][:1] in ("", "."):   # the spec's own module
            raise _no_module(spec, missing) from None
        raise AppLoadError(f"{spec!r}: importing {module_name!r} failed:\n"
                           f"{_traceback(exc, application=True)}") from None
    app: Any = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(f"{spec!r}: module {module_name!r} has no attribute "
                               f"{attr!r}") from None
    if factory:
        if not callable(app):
            raise AppLoadError(f"{spec!r}: --factory, but {attr!r} is not callable")
        try:
            app = app()
        except Exception as exc:
            raise AppLoadError(f"{spec!r}: the factory failed:\n{_traceback(exc)}") from None
    if not callable(app):
        raise AppLoadError(f"{spec!r} is not an application: a {type(app).__name__} "
                           "object is not callable")
    return app


def _traceback(exc: BaseException, *, application: bool = False) -> str:
    """exc and its traceback; with application, an import's, from the
    application's first frame: load_app()'s and importlib's own are not the
    user's to read (with none of the application's, as for a SyntaxError
    raised by the compiler, the exception alone, which says where it is)."""
    import traceback
    tb = exc.__traceback__
    while application and tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (name == __file__ or name.startswith("<frozen importlib")
                or os.path.basename(os.path.dirname(name)) == "importlib"):
            break
        tb = tb.tb_next
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def detect_interface(app: Any) -> str:
    """'asgi3', 'asgi2' or 'wsgi' for an application object, as uvicorn tells
    ASGI 3 from ASGI 2, and WSGI by its two arguments: a coroutine function
    (or an object whose __call__ is one) is ASGI 3, and so is a class whose
    instances are awaitable; any other callable of (environ, start_response)
    is WSGI, and of (scope) alone (a class, typically) ASGI 2."""
    if inspect.isclass(app) and hasattr(app, "__await__"):
        return "asgi3"
    call = app if inspect.isroutine(app) or inspect.isclass(app) else type(app).__call__
    if inspect.iscoroutinefunction(call):
        return "asgi3"
    try:
        params = [p for p in inspect.signature(app).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        raise AppLoadError(f"cannot tell the interface of {app!r}: name it with "
                           "--interface asgi3, asgi2 or wsgi") from None
    if len(params) == 2:
        return "wsgi"
    if len(params) == 1:
        return "asgi2"
    return "asgi3"                      # (scope, receive, send) behind a plain function


def parse_bind(text: str) -> Bind:
    """gunicorn's --bind: HOST:PORT, [IPv6]:PORT, :PORT, PORT, unix:PATH, and
    fd://N, a listening socket inherited as descriptor N (from systemd or a
    supervisor), which the primary adopts and shares."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"--bind {text!r}: unix: needs a path")
        return ("unix", os.path.abspath(path), 0)
    if text.startswith("fd://"):
        try:
            fd = int(text[5:])
        except ValueError:
            raise ValueError(f"--bind {text!r}: fd:// takes a descriptor number") from None
        return ("fd", "", fd)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--bind {text!r}: expected HOST:PORT or unix:PATH") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--bind {text!r}: port {port} is out of range")
    return ("tcp", host or "0.0.0.0", port)


# ---- the public entry point -----------------------------------------------------------

def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, *, workers: int | None = None,
          interface: str = "auto", graceful_timeout: float = 30.0,
          binds: list[str] | None = None, factory: bool = False, threads: int = 1,
          access_log: bool = False, heartbeat_timeout: float | None = None,
          preload: bool = False, limit_request_head: int = LIMIT_REQUEST_HEAD,
          timeout_request_head: float = TIMEOUT_REQUEST_HEAD, websocket_grace: float = 0.0,
          **server_options: Any) -> None:
    """Serves app (an object, or a "module:attribute" spec) with `workers`
    workers: in the primary, supervise() them until a stop; in each worker,
    serve app on host:port (or on every address of binds, gunicorn's --bind
    forms) until disconnect(). A spec is imported by the workers only,
    unless preload (then by the primary too, before any fork). A spec that
    cannot be served raises AppLoadError, from the primary or from the first
    worker. A request's head (its request line and headers) over
    limit_request_head bytes is answered 431, and one that has not come
    whole timeout_request_head seconds after the connection was accepted (or
    after its first byte, on a kept-alive connection) 408; 0 turns either
    off. At a drain's start, every open WebSocket is closed with 1012
    (service restart), or websocket_grace seconds later. server_options go
    to uvicorn.Config (timeout_keep_alive, limit_concurrency, root_path,
    proxy_headers, ...)."""
    if interface not in INTERFACES:
        raise ValueError(f"interface must be one of {', '.join(INTERFACES)}, not {interface!r}")
    check_limits(limit_request_head, timeout_request_head, websocket_grace)
    addresses = [parse_bind(b) for b in binds] if binds else [("tcp", host, port)]
    if _runtime.is_worker:
        serve_worker(app, addresses, interface=interface, graceful_timeout=graceful_timeout,
                     factory=factory, threads=threads, access_log=access_log,
                     limit_request_head=limit_request_head,
                     timeout_request_head=timeout_request_head, websocket_grace=websocket_grace,
                     server_options=server_options)
        return
    prepare_primary(app, addresses, factory=factory, interface=interface, preload=preload)
    try:
        _fleet.supervise(workers, graceful_timeout=graceful_timeout,
                         heartbeat_timeout=heartbeat_timeout)
    except _fleet.BootError as exc:
        if exc.load_error:               # a bad spec, found by the first worker
            raise AppLoadError(exc.reason) from None
        raise


def prepare_primary(app: Any, addresses: list[Bind], *, factory: bool, interface: str,
                    preload: bool = False) -> None:
    """In the primary, before any fork, so that what can be found wrong here
    fails once, here: the extra is there, every fd:// bind is adopted, and a
    spec is well formed and its top-level module exists (check_spec(): none
    of the application's code runs). With preload, the module is imported
    to check the spec whole, as gunicorn's --preload does; its factory is
    never called (building the application is the workers' job). Raises
    ImportError, ValueError or AppLoadError, with a message to show as is."""
    adopt_fds(addresses)
    check_extra()
    if isinstance(app, str):
        if not preload:
            check_spec(app)
            return
        app = load_app(app)
    if interface == "auto" and not factory:
        detect_interface(app)


def adopt_fds(addresses: list[Bind]) -> None:
    """In the primary: every fd:// bind's socket becomes the shared one for its
    address, and the workers learn that address from the environment."""
    for kind, _, fd in addresses:
        if kind == "fd":
            _shared.adopt_bind(fd)


def default_binds() -> list[str]:
    """Every socket systemd (or a supervisor) handed over, else 127.0.0.1:8000."""
    return [f"fd://{fd}" for fd in _shared.fd_binds()] or [DEFAULT_BIND]


def _resolve_fds(addresses: list[Bind]) -> list[Bind]:
    """In a worker: an fd:// bind is the address its socket listens at."""
    mapping = _shared.fd_binds()
    resolved = []
    for bind in addresses:
        if bind[0] == "fd":
            if str(bind[2]) not in mapping:
                raise ValueError(f"--bind fd://{bind[2]}: the primary did not adopt it")
            bind = parse_bind(mapping[str(bind[2])])
        resolved.append(bind)
    return resolved


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


# ---- a worker -------------------------------------------------------------------------

def serve_worker(app: Any, addresses: list[Bind], *, interface: str, graceful_timeout: float,
                 factory: bool, threads: int, access_log: bool,
                 server_options: dict[str, Any], limit_request_head: int = LIMIT_REQUEST_HEAD,
                 timeout_request_head: float = TIMEOUT_REQUEST_HEAD,
                 websocket_grace: float = 0.0) -> None:
    """In a worker: load app and serve it until the worker disconnects. A
    failure before it listens (import, lifespan startup, port) is a boot
    failure, told to the primary: the process exits 3."""
    try:
        check_extra()
        addresses = _resolve_fds(addresses)
        if isinstance(app, str):
            app = load_app(app, factory=factory)
        options = dict(server_options)
        # h11 bounds a head itself (16 KiB by default): at the same limit
        options.setdefault("h11_max_incomplete_event_size", limit_request_head or sys.maxsize)
        config = _config(app, interface, threads, access_log, options)
        config.load()
    except AppLoadError as exc:                   # the spec names nothing to serve
        _worker.fail_boot(str(exc), load=True)
    except (ValueError, ImportError) as exc:
        _worker.fail_boot(str(exc))
    except (Exception, SystemExit) as exc:        # uvicorn exits on some bad options
        _worker.fail_boot(_traceback(exc))
    server = _WorkerServer(config, addresses, graceful_timeout,
                           limit_request_head, timeout_request_head, websocket_grace)
    _run(server.serve(), config.get_loop_factory())


def _config(app: Any, interface: str, threads: int, access_log: bool,
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
            app = _InlineWSGI(app)
        interface, lifespan = "asgi3", "off"
    _configure_logging(access_log)
    return uvicorn.Config(app, interface=interface, lifespan=lifespan,  # type: ignore[arg-type]
                          log_config=None,
                          access_log=access_log, **options)


def _configure_logging(access_log: bool) -> None:
    """Workers' errors to stderr with their worker id; the access log to
    stdout when asked (uvicorn's format), else no handler at all, which
    uvicorn's protocols check once per connection."""
    import logging
    w = _runtime.worker
    tag = f"worker {w.id}" if w is not None else "web"
    error = logging.getLogger("uvicorn.error")
    if not error.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s [{tag}] %(levelname)s %(message)s"))
        error.addHandler(handler)
        error.setLevel(logging.WARNING)
        error.propagate = False
    access = logging.getLogger("uvicorn.access")
    if access_log and not access.handlers:
        from uvicorn.logging import AccessFormatter
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(AccessFormatter(
            f'%(asctime)s [{tag}] %(client_addr)s - "%(request_line)s" %(status_code)s',
            use_colors=False))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


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


class _WorkerServer:
    """uvicorn's protocols on the worker's shared servers: lifespan startup,
    listen, serve, drain on 'disconnecting', lifespan shutdown after
    'disconnect'."""

    def __init__(self, config: Any, addresses: list[Bind], graceful_timeout: float,
                 limit_request_head: int = LIMIT_REQUEST_HEAD,
                 timeout_request_head: float = TIMEOUT_REQUEST_HEAD,
                 websocket_grace: float = 0.0) -> None:
        self.config = config
        self.addresses = addresses
        self.graceful_timeout = graceful_timeout
        self.limit_request_head = limit_request_head
        self.timeout_request_head = timeout_request_head
        self.websocket_grace = websocket_grace
        self.state: Any = None
        self.protocol_class: type = _Draining
        self.ticker: asyncio.TimerHandle | None = None

    async def serve(self) -> None:
        from uvicorn.server import ServerState
        loop = asyncio.get_running_loop()
        aio.attach(loop)
        me = _runtime.worker
        assert me is not None                # serve_worker() runs in workers only
        gone: asyncio.Future[None] = loop.create_future()
        me.on("disconnect", lambda: None if gone.done() else gone.set_result(None))
        config = self.config
        lifespan = config.lifespan_class(config)
        await lifespan.startup()
        if lifespan.should_exit:
            _worker.fail_boot("the application's lifespan startup failed (its error is above)")
        self.state = ServerState()
        self.tick()
        protocol_class = _draining(config.http_protocol_class)
        protocol_class.cx_head_limit = self.limit_request_head or sys.maxsize  # type: ignore[attr-defined]

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
                    _log_error("draining a connection")
        loop = asyncio.get_running_loop()
        loop.call_later(self.websocket_grace, self.close_websockets)
        overdue = self.graceful_timeout - min(1.0, self.graceful_timeout / 10)
        loop.call_later(overdue, self.overdue)

    def close_websockets(self) -> None:
        """1012 to every WebSocket, and to those upgraded from now on
        (_Draining.handle_websocket_upgrade)."""
        self.protocol_class.cx_close_websockets = True  # type: ignore[attr-defined]
        for connection in list(self.state.connections):
            if not isinstance(connection, _Draining):    # uvicorn's WebSocket protocols
                _close_websocket(connection)

    def overdue(self) -> None:
        """Streaming responses end, and WebSockets still open (a grace that
        outlasts the timeout, a handshake never answered) get 1012 (service
        restart): their applications see the client gone."""
        for connection in list(self.state.connections):
            try:
                connection.shutdown()
            except Exception:
                _log_error("closing a connection at the graceful timeout")
            transport = getattr(connection, "transport", None)
            if transport is not None:
                # abort(): close() would wait for a peer that does not read
                asyncio.get_running_loop().call_later(0.2, transport.abort)


def _close_websocket(websocket: Any) -> None:
    """uvicorn's shutdown() of a WebSocket: 1012 once its handshake is done
    (before, it would answer the handshake 500: the application is asked
    first, and the close follows its accept or its refusal)."""
    if websocket.transport.is_closing():
        return
    completed = getattr(websocket, "handshake_completed_event", None)   # websockets' legacy
    done = completed.is_set() if completed is not None else websocket.handshake_complete
    if not done:
        asyncio.get_running_loop().call_later(0.05, _close_websocket, websocket)
        return
    try:
        websocket.shutdown()
    except Exception:
        _log_error("closing a WebSocket at the drain")


def _log_error(what: str) -> None:
    import logging
    logging.getLogger("uvicorn.error").exception("%s", what)


def _pooled(app: Any) -> bool:
    """Whether app is a WSGI application in a2wsgi's thread pool (--threads N)."""
    from a2wsgi import WSGIMiddleware
    return isinstance(app, WSGIMiddleware)


async def _bounded(awaitable: Any, timeout: float) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pass


# ---- WSGI on the worker's loop -----------------------------------------------------------

class _InlineWSGI:
    """A WSGI application called on the worker's own loop, one request at a
    time: gunicorn's sync worker (--threads 1, its default too), with
    keep-alive and without a thread hop per request. The request's body is
    read before the call; the response goes out as the application yields
    it. With --threads N > 1, a2wsgi's pool runs the application instead."""

    def __init__(self, app: Callable[..., Any]) -> None:
        from a2wsgi.wsgi import build_environ
        self.app = app
        self.build_environ = build_environ

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        import io
        body = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        environ = self.build_environ(scope, io.BytesIO(b"".join(body)))  # type: ignore[arg-type]
        environ["wsgi.multithread"] = False
        environ["wsgi.errors"] = sys.stderr
        head: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None and head and head[0] is None:
                raise exc_info[1].with_traceback(exc_info[2])   # the head is out
            head[:] = [status, headers]
            return written.append            # PEP 3333's write(), kept for the response

        result = self.app(environ, start_response)
        try:
            if isinstance(result, (list, tuple)):   # the common case: one send()
                await self.respond(send, head, written + list(result), False)
            else:
                left = asyncio.ensure_future(receive())   # http.disconnect, if it comes
                try:
                    started = False
                    for chunk in result:
                        if chunk:
                            await self.respond(send, head, [*written, chunk], True)
                            written.clear()
                            started = True
                            if left.done():          # the client is gone: stop iterating
                                return
                    if not started:
                        await self.respond(send, head, written, False)
                    else:
                        await send({"type": "http.response.body", "body": b"".join(written)})
                finally:
                    left.cancel()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    @staticmethod
    async def respond(send: Any, head: list[Any], chunks: list[bytes], more: bool) -> None:
        if not head:
            raise RuntimeError("the WSGI application did not call start_response()")
        if head[0] is not None:                  # the head has not left yet
            status, headers = head
            head[0] = None
            await send({"type": "http.response.start", "status": int(status[:3]),
                        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                    for name, value in headers]})
        await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": more})


# ---- the draining HTTP protocol ----------------------------------------------------------

class _Draining:
    """Mixed into uvicorn's HTTP protocol class (httptools or h11). At the
    drain: a request in progress is answered with Connection: close, then the
    connection closes; a keep-alive connection idle for KEEP_ALIVE_LINGER
    closes at once; one answered more recently than that, or whose next
    request is already in the socket, may be sending its next request and gets
    the rest of KEEP_ALIVE_LINGER for it; a connection that has not sent its
    (whole) first request gets FIRST_REQUEST_GRACE. A request that comes in
    that time is answered with Connection: close. Closing those at once is
    the race in which the peers lose a request per retired worker: the
    client's request crosses the server's close."""

    cx_worker_drain: float | None = None     # set on the class when the worker drains
    cx_close_websockets = False              # set on the class once WebSockets get 1012
    cx_draining = False
    cx_upgraded = False       # handed to the WebSocket protocol
    cx_idle = False           # everything received so far has been answered
    cx_refusal = 0            # see _HeadBounds: answered here, after the responses before it
    cx_answered_at = 0.0      # loop time of the last response

    if TYPE_CHECKING:
        cycle: Any
        transport: asyncio.Transport
        loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvicorn reads the addresses and builds its flow control on the real
        # transport; the requests' cycles write through the coalescing one.
        super().connection_made(transport)  # type: ignore[misc]
        self.transport = _Coalescing(transport)  # type: ignore[assignment]
        if self.cx_worker_drain is not None:     # made after the drain began
            self.cx_drain(self.cx_worker_drain)

    def data_received(self, data: bytes) -> None:
        self.cx_idle = False
        super().data_received(data)  # type: ignore[misc]
        if self.cx_draining:
            self.cx_last_request()

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        idle = self.cx_idle = not getattr(self, "pipeline", None)
        self.cx_answered_at = self.loop.time()
        if self.cx_refusal and idle:         # a head refused (_HeadBounds) once this was out
            self.cx_answer_refusal()  # type: ignore[attr-defined]
            return
        super().on_response_complete()  # type: ignore[misc]
        if self.cx_draining and not self.transport.is_closing():
            # a response whose head left before the drain, so without
            # Connection: close: its client may send again (cx_last_request)
            self.cx_drain(self.cx_worker_drain or 0.0)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self.cx_upgraded = True
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]
        websocket: Any = self.transport.get_protocol()
        aio.protocol_replaced(self, websocket)  # type: ignore[arg-type]
        if self.cx_close_websockets and websocket is not self:   # after the drain's 1012s
            _close_websocket(websocket)

    def cx_drain(self, grace: float) -> None:
        self.cx_draining = True
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.cx_last_request()
            return
        if self.cx_idle:
            grace = KEEP_ALIVE_LINGER - (self.loop.time() - self.cx_answered_at)
            if grace <= 0 and not _bytes_waiting(self.transport):
                self.transport.close()
                return
        self.loop.call_later(max(grace, 0.05), self.cx_close_if_idle)

    def cx_last_request(self) -> None:
        """The request received last closes the connection: the ones before
        it (pipelined) are answered as they would have been. One whose head
        has left, without Connection: close, is not the last: its client
        takes the connection as kept alive and may have sent the next
        request already (a2wsgi's pool completes a response after its body
        is out), so closing after it would drop that one; the connection
        drains again when it completes (on_response_complete)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False
            if _CLOSE not in cycle.default_headers:
                # h11's cycle says Connection: close only when the request
                # did; httptools' sees this one and writes no second
                cycle.default_headers = [*cycle.default_headers, _CLOSE]

    def cx_close_if_idle(self) -> None:
        if self.cx_upgraded:                 # a WebSocket now: closed at the timeout
            return
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and not self.transport.is_closing() \
                and not _bytes_waiting(self.transport):
            self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        # A timer may run between a request's arrival and its read (in the
        # same loop turn, or a busy one): closing then, with the request
        # unread in the socket, resets the connection under its client. The
        # read that follows answers it (Connection: close once draining).
        if not _bytes_waiting(self.transport):
            super().timeout_keep_alive_handler()  # type: ignore[misc]


_CLOSE = (b"connection", b"close")
_draining_classes: dict[type, type] = {}


def _draining(base: type) -> type:
    """base (uvicorn's HTTP protocol class) with the drain and the bounds on
    a request's head (for the two protocol classes uvicorn has)."""
    cls = _draining_classes.get(base)
    if cls is None:
        heads: tuple[type, ...] = ()
        if hasattr(base, "on_headers_complete"):          # httptools: parser callbacks
            heads = (_HttptoolsHeads,)
        elif hasattr(base, "handle_events"):              # h11
            import h11
            _H11Heads.cx_h11_idle = h11.IDLE
            heads = (_H11Heads,)
        cls = _draining_classes[base] = type("Draining" + base.__name__,
                                             (_Draining, *heads, base), {})
    return cls


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadBounds:
    """What bounds a request's head (its request line and headers) in both of
    uvicorn's protocols: the time it may take, counted from the accept for a
    connection's first request, and from the head's first byte on a
    kept-alive connection (its idle time is uvicorn's timeout_keep_alive);
    and the refusal, 431 or 408 with Connection: close. The size is counted
    by the mixin of each protocol class. A refused connection reads and
    drops what the client still sends for REFUSAL_LINGER: closing with
    unread bytes would reset the connection, and the reset can destroy the
    answer in the client's socket before it reads it."""

    cx_head_limit = LIMIT_REQUEST_HEAD   # set on the class by _WorkerServer.serve()
    cx_head = 0               # bytes of the head received so far; -1 in a message, -2 refused
    cx_head_began: float | None = None   # loop time the head's wait began; None: no head due
    cx_refusal = 0            # 431 or 408, answered when the responses before it are out

    if TYPE_CHECKING:
        cycle: Any
        pipeline: Any
        server_state: Any
        transport: Any
        loop: asyncio.AbstractEventLoop

        def cx_head_over(self, data: bytes) -> None: ...   # each protocol's mixin

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.cx_head_began = self.loop.time()

    def cx_count_head(self, data: bytes) -> bool:
        """Counts data into the head being received (its clock starts at a
        kept-alive request's first byte); False when it went over the limit,
        which cx_head_over() has then answered."""
        if self.cx_head_began is None:
            self.cx_head_began = self.loop.time()
        head = self.cx_head + len(data)
        if head > self.cx_head_limit:
            self.cx_head_over(data)
            return False
        self.cx_head = head
        return True

    def cx_head_late(self) -> None:
        """The head has not come whole within timeout_request_head: 408, or
        a silent close when not a byte of it came (a connection opened ahead
        of its use, as browsers do: an answer on it could be read as the
        answer to the request it will carry)."""
        if self.cx_head > 0:
            self.cx_refuse(408)
        else:
            self.cx_head_began = None
            self.transport.close()

    def cx_refuse(self, status: int) -> None:
        """status, with Connection: close, for the head being received: at
        once, or after the response in progress and those pipelined before
        it (on_response_complete). From now on, what comes is dropped."""
        self.cx_head, self.cx_head_began, self.cx_refusal = -2, None, status
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.cx_answer_refusal()
        else:                                # _Draining.on_response_complete answers
            self.transport.pause_reading()

    def cx_answer_refusal(self) -> None:
        status = self.cx_refusal
        self.cx_refusal = 0
        transport = self.transport
        if transport.is_closing():
            return
        body = _REASONS[status] + b"\n"
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in
                 self.server_state.default_headers]
        head.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        transport.write(b"".join(head) + body)
        if not transport.can_write_eof():    # TLS: no half close
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        # Either the client closes (eof_received closes this side) or this does.
        self.loop.call_later(REFUSAL_LINGER, transport.abort)


class _HttptoolsHeads(_HeadBounds):
    """The size of a head under uvicorn's httptools protocol, which has no
    limit of its own (httptools keeps a header whole until its end: 256 MB
    of one header took 224 MB in a worker). Counted from data_received, a
    chunk at a time, while a head is due: from the end of a message (or the
    accept) to the end of the next head (httptools' on_headers_complete).
    Only a chunk that takes the count over the limit is looked into: the
    parser is fed what the limit leaves room for, and says whether the head
    ended in it. Exact for every head but one pipelined behind another
    request in the same read: the bytes of it fed along with the end of
    that request go uncounted, so it may take up to twice the limit."""

    def data_received(self, data: bytes) -> None:
        head = self.cx_head
        if head < -1 or (head >= 0 and not self.cx_count_head(data)):   # refused: dropped
            return
        super().data_received(data)  # type: ignore[misc]

    def cx_head_over(self, data: bytes) -> None:
        limit = self.cx_head_limit
        room = limit - self.cx_head
        self.cx_head = limit
        if room:
            super().data_received(data[:room])  # type: ignore[misc]
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return                           # a 400, or a WebSocket now (uvicorn drops the rest)
        if self.cx_head == limit:            # the head did not end within the limit
            self.cx_refuse(431)
        else:
            _HttptoolsHeads.data_received(self, data[room:])

    def on_headers_complete(self) -> None:
        self.cx_head, self.cx_head_began = -1, None
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self.cx_head = 0
        super().on_message_complete()  # type: ignore[misc]


class _H11Heads(_HeadBounds):
    """The size of a head under uvicorn's h11 protocol, counted as under
    httptools while h11 waits for a head (their_state IDLE): h11's own bound
    (h11_max_incomplete_event_size, set to the same limit) counts only what
    it buffers of a head that has not ended, so a head that comes whole in
    one read passes it, and uvicorn answers its error with a 400. It stays
    for the heads this does not count: those pipelined behind a request,
    which h11 holds until that request is answered; its 400 becomes a 431."""

    cx_h11_idle: Any = None   # h11.IDLE, set by _draining(): h11 is imported only for h11

    if TYPE_CHECKING:
        conn: Any
        config: Any

    def data_received(self, data: bytes) -> None:
        if self.cx_head < -1:                # refused: dropped
            return
        conn, idle = self.conn, self.cx_h11_idle
        if conn.their_state is not idle:     # in a request: its body, or pipelined heads
            super().data_received(data)  # type: ignore[misc]
            return
        if not self.cx_count_head(data):
            return
        super().data_received(data)  # type: ignore[misc]
        if conn.their_state is not idle and self.cx_head >= 0:   # the head came whole
            self.cx_head, self.cx_head_began = 0, None

    def cx_head_over(self, data: bytes) -> None:
        limit = self.cx_head_limit
        room = limit - self.cx_head
        self.cx_head = limit
        if room:                             # h11 takes b"" for the end of the stream
            super().data_received(data[:room])  # type: ignore[misc]
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.conn.their_state is self.cx_h11_idle:    # the head did not end within it
            self.cx_refuse(431)
        else:
            self.cx_head, self.cx_head_began = 0, None
            _H11Heads.data_received(self, data[room:])

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.config.h11_max_incomplete_event_size:
            self.cx_refuse(431)              # h11's "Receive buffer too long"
            return
        super().send_400_response(msg)  # type: ignore[misc]


class _Coalescing:
    """The connection's transport, as uvicorn's cycles write to it: the head
    of a response of known length is held until its body's first write, and
    both leave in one send(). uvicorn writes them apart, which costs a second
    system call, a second segment and a second wake-up of the client for every
    response (+35% requests/s on keep-alive, measured with wrk). A body that
    never comes (HEAD) releases the head when the response completes
    (_Draining.on_response_complete); a streamed response (no length) is not
    held at all."""

    __slots__ = ("transport", "held")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= 65536:           # a copy is cheaper than a second send()
                self.transport.write(held + data)
            else:
                self.transport.write(held)
                self.transport.write(data)
        elif data[:9] == b"HTTP/1.1 " and b"\r\ncontent-length:" in data \
                and data[-4:] == b"\r\n\r\n":
            self.held = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        """The rest (get_extra_info, set_protocol, ...) as the transport has it."""
        return getattr(self.transport, name)


def _bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Whether the socket holds bytes not read yet (the next request)."""
    import array
    import fcntl
    import termios
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except OSError:
        return False
    return count[0] > 0
