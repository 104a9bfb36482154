"""cluster_ext.web: ASGI and WSGI applications served by the cluster.

    cluster-ext run -w 4 --bind 127.0.0.1:8000 myproject.asgi:application

    from cluster_ext import web
    web.serve("myapp:app", "127.0.0.1", 8000, workers=4)

The HTTP/1.1 and WebSocket protocols are uvicorn's (httptools and uvloop when
installed); WSGI applications run in a thread pool behind a2wsgi. Each worker
drives uvicorn's protocols itself, inside one asyncio loop that also runs the
cluster's native loop (aio.attach()): its servers are aio.create_server()
servers, shared through the primary under either scheduling policy, and the
worker's disconnect() drains them (see Draining). uvicorn's Server class is
not used: its signal handling and its shutdown belong to a process that
decides alone when it stops, and here the primary decides.
"""
from __future__ import annotations

from .. import _runtime
from .app import INTERFACES, AppLoadError, check_spec, detect_interface, load_app
from .binds import adopt_fds, parse_bind
from .protocol import LIMIT_REQUEST_HEAD, TIMEOUT_REQUEST_HEAD
from .worker import check_extra, check_limits, serve_template, serve_worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..fleet.preload import Preload
    from .binds import Bind

__all__ = ["serve", "load_app", "detect_interface", "parse_bind", "AppLoadError"]


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, *, workers: int | None = None,
          interface: str = "auto", graceful_timeout: float = 30.0,
          binds: list[str] | None = None, factory: bool = False, threads: int = 1,
          access_log: bool = False, heartbeat_timeout: float | None = None,
          preload: bool = False, limit_request_head: int = LIMIT_REQUEST_HEAD,
          timeout_request_head: float = TIMEOUT_REQUEST_HEAD, websocket_grace: float = 0.0,
          max_requests: int | None = None, max_requests_jitter: int = 0,
          max_lifetime: float | None = None, max_lifetime_jitter: float = 0.0,
          max_rss: float | None = None, **server_options: Any) -> None:
    """Serves app (an object, or a "module:attribute" spec) with `workers`
    workers: in the primary, supervise() them until a stop; in each worker,
    serve app on host:port (or on every address of binds, gunicorn's --bind
    forms) until disconnect(). A spec is imported by the workers; with
    preload, once, by a template process that every worker forks from
    (fleet.preload), and anew at each reload. A spec that cannot be served
    raises AppLoadError, from the primary, the template or the first worker.
    A request's head (its request line and headers) over limit_request_head
    bytes is answered 431, and one that has not come whole
    timeout_request_head seconds after the connection was accepted (or after
    its first byte, on a kept-alive connection) 408; 0 turns either off. At
    a drain's start, every open WebSocket is closed with 1012 (service
    restart), or websocket_grace seconds later. The max_* limits
    recycle a worker as supervise() says. server_options go to uvicorn.Config
    (timeout_keep_alive, limit_concurrency, root_path, proxy_headers, ...)."""
    if interface not in INTERFACES:
        raise ValueError(f"interface must be one of {', '.join(INTERFACES)}, not {interface!r}")
    check_limits(limit_request_head, timeout_request_head, websocket_grace)
    addresses = [parse_bind(b) for b in binds] if binds else [("tcp", host, port)]

    def serve_here() -> None:
        serve_worker(app, addresses, interface=interface, graceful_timeout=graceful_timeout,
                     factory=factory, threads=threads, access_log=access_log,
                     limit_request_head=limit_request_head,
                     timeout_request_head=timeout_request_head, websocket_grace=websocket_grace,
                     server_options=server_options)

    if _runtime.is_template:
        serve_template(app, serve_here)
        return
    if _runtime.is_worker:
        serve_here()
        return
    from ..fleet import supervisor  # the primary's: a worker never imports it
    prepare_primary(app, addresses, factory=factory, interface=interface)
    preloading = start_preload() if preload else None
    try:
        supervisor.supervise(workers, graceful_timeout=graceful_timeout,
                              heartbeat_timeout=heartbeat_timeout, max_requests=max_requests,
                              max_requests_jitter=max_requests_jitter,
                              max_lifetime=max_lifetime,
                              max_lifetime_jitter=max_lifetime_jitter, max_rss=max_rss)
    except supervisor.BootError as exc:
        if exc.load_error:               # a bad spec, found by the first worker
            raise AppLoadError(exc.reason) from None
        raise
    finally:
        if preloading is not None:
            preloading.close()


def start_preload() -> Preload:
    """preload: the template that imports the application once for every
    worker (fleet.preload), when it has; AppLoadError if it cannot."""
    from ..fleet.preload import Preload, TemplateError
    try:
        return Preload()
    except TemplateError as exc:
        raise AppLoadError(exc.reason) from None


def prepare_primary(app: Any, addresses: list[Bind], *, factory: bool, interface: str) -> None:
    """In the primary, before any fork, so that what can be found wrong here
    fails once, here: the extra is there, every fd:// bind is adopted, and a
    spec is well formed and its top-level module exists (check_spec(): none
    of the application's code runs; with preload, the template's import
    finds the rest before any worker starts). Raises ImportError,
    ValueError or AppLoadError, with a message to show as is."""
    adopt_fds(addresses)
    check_extra()
    if isinstance(app, str):
        check_spec(app)
    elif interface == "auto" and not factory:
        detect_interface(app)
