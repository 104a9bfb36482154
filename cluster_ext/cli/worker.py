"""A worker's side of `cluster-ext run` and `demo`: the web application
served, the script run as __main__ (then the loop, if it did not run it),
or the demo's echo server. What fails before it serves is a boot failure,
told to the primary."""
from __future__ import annotations

import argparse
import os
import runpy
import sys

import cluster_ext as cluster

from .. import _runtime, _worker
from . import hooks
from .logs import configure_worker, web_logs
from .options import TLS_OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..web.logs import Logs


def _web_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "lifespan": args.lifespan, "http": args.http,
        "timeout_keep_alive": args.timeout_keep_alive,
        "limit_concurrency": args.limit_concurrency, "backlog": args.backlog,
        "root_path": args.root_path, "proxy_headers": args.proxy_headers}
    for name in ("forwarded_allow_ips", *TLS_OPTIONS):
        if getattr(args, name) is not None:     # else uvicorn.Config's default
            options[name] = getattr(args, name)
    return options


def run_web(args: argparse.Namespace) -> None:
    logs = web_logs(args)
    _configure_logging(args, logs)
    _serve_web(args, logs)


def _serve_web(args: argparse.Namespace, logs: Logs) -> None:
    """An exec'd worker's, and one forked from --preload's template."""
    hooks.post_fork(args)
    from ..web.binds import default_binds, parse_bind
    from ..web.worker import serve_worker
    serve_worker(args.app, [parse_bind(b) for b in args.bind or default_binds()],
                 interface=args.interface, graceful_timeout=args.graceful_timeout,
                 factory=args.factory, threads=args.threads, access_log=args.access_log,
                 server_options=_web_options(args),
                 limit_request_head=args.limit_request_head,
                 timeout_request_head=args.timeout_request_head,
                 websocket_grace=args.websocket_grace, logs=logs)


def run_template(args: argparse.Namespace) -> None:
    """--preload's template: APP imported once, then each worker forked from
    here serves it (logging as the template configured it)."""
    from ..fleet import preload
    from ..web.worker import serve_template
    logs = web_logs(args)
    problem = configure_worker(args, logs)
    if problem is not None:
        preload.failed(problem, load=False)
    serve_template(args.app, lambda: _serve_web(args, logs))


def _configure_logging(args: argparse.Namespace, logs: Logs | None = None) -> None:
    """A worker's logging (cli.logs), before its application runs: what
    cannot be configured is a boot failure (the primary, which configured
    the same first, found nothing wrong, but a worker may run as another
    user)."""
    problem = configure_worker(args, logs)
    if problem is not None:
        _worker.fail_boot(problem)


def run_app(args: argparse.Namespace) -> None:
    """In a worker: APP as __main__, then the loop if APP did not run it. An
    exception before the loop runs is a boot failure, told to the primary."""
    _configure_logging(args)
    hooks.post_fork(args)
    app = args.app
    sys.argv = [app, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(app)))
    me = cluster.worker
    assert me is not None                # run_app runs in workers only

    def served() -> bool:                # its own loop, or a server that listened
        return _runtime.ran or me.state == "listening"

    try:
        namespace = runpy.run_path(app, run_name="__main__")
    except SystemExit as exc:
        if exc.code in (0, None) or served():
            raise
        _worker.fail_boot(f"{app} exited with {exc.code!r} before it served")
    except Exception:
        if served():
            raise                        # it served: a crash, not a boot failure
        import traceback
        _worker.fail_boot(traceback.format_exc())
    if not served():
        if not _runtime.servers and callable(namespace.get("app")):
            name = os.path.splitext(os.path.basename(app))[0]
            _worker.fail_boot(f"{app} returned without serving anything; to serve its "
                              f"application 'app' over HTTP, run: cluster-ext run {name}:app")
        cluster.run()


def demo_worker(args: argparse.Namespace) -> None:
    from .. import net
    _configure_logging(args)
    host, port = args.host, args.port
    pid = os.getpid()

    def echo(sock: net.Socket) -> None:
        assert cluster.worker is not None    # main() runs the demo in workers only
        sock.write(f"hello from worker {cluster.worker.id} (pid {pid})\n")
        sock.on("data", lambda data: sock.write(f"[{pid}] ".encode() + data))

    net.create_server(echo).listen(port, host)
    cluster.run()
