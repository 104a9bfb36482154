"""python -m cluster_ext: run a script as a supervised cluster, or the demo.

The primary supervises; every worker runs the same command line again and,
seeing itself a worker, runs the application."""
from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys

import cluster_ext as cluster

from . import _core, _runtime, _worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from ._files import RunFile
    from ._protocol import Address

log = logging.getLogger("cluster_ext")

DESCRIPTION = """\
Run a Python server as a cluster: one primary that supervises N worker
processes sharing the server's port (Node's cluster, with what PM2 and
gunicorn add: respawn, zero-downtime reload, hung-worker kills).

Signals to the primary: SIGTERM or Ctrl-C stop gracefully (a second one,
or SIGQUIT, stops at once), SIGHUP reloads every worker one by one, SIGTTIN adds a
worker, SIGTTOU retires the oldest. SIGTERM or SIGINT to a worker (or to
the whole process group) drains it: a group's signal stops as one to the
primary does, and a worker signalled alone is replaced."""

RUN_HELP = """\
Runs APP as the workers of a supervised cluster.

APP is either an ASGI or WSGI application, named as gunicorn and uvicorn name
it (module:attribute, e.g. myproject.asgi:application), which every worker
imports and serves over HTTP on each --bind address (uvicorn's protocols;
needs the web extra: pip install '.[web]' in the repository's root), or a
Python script that serves with cluster_ext.net, cluster_ext.aio or
cluster.listen_socket(): each worker runs it as __main__ with sys.argv =
[APP, *ARGS], and runs the event loop itself if APP returns without calling
cluster.run().

examples:
  cluster-ext run -w 4 --bind 0.0.0.0:8000 myproject.asgi:application
  cluster-ext run -w 4 --interface wsgi --threads 8 flaskapp:app
  cluster-ext run -w 4 server.py --port 8000"""


# gunicorn's --timeout: a worker whose loop has not answered a ping for this
# long is killed and replaced. Long enough for a WSGI request that runs on
# the loop (--threads 1) to take its time; 0 turns it off.
DEFAULT_HEARTBEAT = 30.0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (`cluster-ext run: error: argument
    -w/--workers: must be at least 1, not 0`) and exit 2: `run`'s usage
    takes a screen, and the line that says what is wrong would scroll
    under it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _seconds(text: str, *, positive: bool = False) -> float:
    """An option's seconds: finite, 0 or more (more than 0 if positive), and
    within what a timer takes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 if positive else value >= 0) or not value <= _core.MAX_SECONDS:
        raise argparse.ArgumentTypeError(    # NaN fails too
            f"must be {'more than 0' if positive else '0 or more'} and at most "
            f"{_core.MAX_SECONDS} seconds, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    """Seconds where 0 would mean nothing useful (a grace of none)."""
    return _seconds(text, positive=True)


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, minimum or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def _port(text: str) -> int:
    port = _at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, not {port}")
    return port


def _host_port(text: str) -> tuple[str, int]:
    """[HOST:]PORT, HOST may be [IPv6]."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"takes [HOST:]PORT (a port from 0 to 65535), "
                                         f"not {text!r}")
    return host, int(port)


def _common_parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("-w", "--workers", type=_at_least(1), default=None, metavar="N",
                        help="worker processes (default: one per core)")
    common.add_argument("--sched", choices=("rr", "none"), default=None,
                        help="rr: the primary accepts and hands connections out in turn "
                             "(default); none: workers accept on the shared socket")
    common.add_argument("--graceful-timeout", type=_positive_seconds, default=30.0, metavar="S",
                        help="seconds a worker may take to finish its connections when "
                             "stopping or reloading before it is killed (default 30)")
    common.add_argument("--heartbeat-timeout", type=_seconds, default=DEFAULT_HEARTBEAT,
                        metavar="S",
                        help="kill and replace a worker whose event loop has not answered "
                             f"for S seconds (default {DEFAULT_HEARTBEAT:g}, as gunicorn's "
                             "--timeout; 0: off)")
    common.add_argument("--drain-delay", type=_seconds, default=0.0, metavar="S",
                        help="on SIGTERM, serve S seconds more (not ready, STOPPING=1) "
                             "before the graceful stop, while a load balancer lets go")
    common.add_argument("--pid-file", default=None, metavar="PATH",
                        help="write the primary's pid to PATH while it runs")
    common.add_argument("--ready-file", default=None, metavar="PATH",
                        help="a file that exists exactly while every worker serves "
                             "(for exec readiness probes)")
    common.add_argument("--control", default=None, metavar="PATH",
                        help="answer `cluster-ext status PATH`, reload, scale and stop on "
                             "a Unix socket at PATH (mode 0600)")
    common.add_argument("--metrics", type=_host_port, default=None, metavar="[HOST:]PORT",
                        help="serve /metrics (Prometheus) from the primary on HOST:PORT "
                             "(HOST default 127.0.0.1); needs the metrics extra")
    return common


def _web_parser() -> _Parser:
    parser = _Parser(add_help=False)
    web = parser.add_argument_group("web applications (APP is module:attribute)")
    web.add_argument("-b", "--bind", action="append", default=None, metavar="ADDR",
                     help="HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N (an inherited "
                          "listening socket); repeatable (default 127.0.0.1:8000)")
    web.add_argument("--interface", choices=("auto", "asgi", "asgi3", "asgi2", "wsgi"),
                     default="auto", help="the application's interface (default: detected)")
    web.add_argument("--factory", action="store_true",
                     help="APP names a function that returns the application")
    web.add_argument("--preload", action="store_true",
                     help="import the application in the primary too, before any worker "
                          "starts (by default only the workers import it)")
    web.add_argument("--access-log", action="store_true",
                     help="one line per request on stdout")
    web.add_argument("--threads", type=_at_least(1), default=1, metavar="N",
                     help="threads per worker that run a WSGI application (default 1: "
                          "on the worker's loop, one request at a time, as gunicorn's "
                          "sync worker)")
    web.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                     help="uvicorn's HTTP implementation (default: httptools if installed)")
    web.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                     help="the ASGI lifespan protocol, run once in every worker")
    web.add_argument("--timeout-keep-alive", type=_seconds, default=5.0, metavar="S",
                     help="close a keep-alive connection idle for S seconds (default 5)")
    web.add_argument("--limit-concurrency", type=_at_least(1), default=None, metavar="N",
                     help="answer 503 beyond N connections or tasks per worker")
    web.add_argument("--limit-request-head", type=_at_least(0), default=65536,
                     metavar="BYTES",
                     help="answer 431 and close when a request's line and headers pass "
                          "BYTES (default 65536; 0: no limit)")
    web.add_argument("--timeout-request-head", type=_seconds, default=20.0,
                     metavar="S",
                     help="close a connection whose request line and headers have not come "
                          "whole S seconds after the accept, or after their first byte on a "
                          "kept-alive connection; 408 if part of them came (default 20; "
                          "0: none)")
    web.add_argument("--websocket-grace", type=_seconds, default=0.0, metavar="S",
                     help="at a reload or a stop, close open WebSockets with 1012 (service "
                          "restart) S seconds after the drain begins (default 0: at once)")
    web.add_argument("--backlog", type=_at_least(1), default=2048, metavar="N",
                     help="the listening sockets' backlog (default 2048)")
    web.add_argument("--root-path", default="", metavar="PATH",
                     help="the ASGI root_path, for an application mounted below /")
    web.add_argument("--proxy-headers", action="store_true",
                     help="trust X-Forwarded-For and X-Forwarded-Proto from "
                          "--forwarded-allow-ips")
    web.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                     help="comma-separated addresses trusted for proxy headers "
                          "(default 127.0.0.1)")
    return parser


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_parser()
    run = commands.add_parser("run", parents=[common, _web_parser()],
                              help="run APP as a supervised cluster",
                              description=RUN_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("app", metavar="APP",
                     help="module:attribute of an ASGI/WSGI application, or a Python script")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="arguments for APP")
    demo = commands.add_parser(
        "demo", parents=[common],
        help="an echo service on 127.0.0.1:8000, one worker per core",
        description="An echo service: connect with `nc 127.0.0.1 8000` and type; each "
                    "line comes back with the pid of the worker that served it. Try "
                    "`kill -HUP <primary pid>` to reload, Ctrl-C to stop.")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--host", default="127.0.0.1")
    status = commands.add_parser(
        "status", help="the workers of a running cluster, from its --control socket",
        description="One row per worker of the cluster whose primary serves the control "
                    "socket PATH (--control PATH): id, pid, state, age, restarts, resident "
                    "memory, CPU %%, open connections, connections served, messages "
                    "received/sent by the primary.")
    status.add_argument("path", metavar="PATH", help="the control socket")
    status.add_argument("--json", action="store_true", help="the figures as one JSON object")
    for name, text in (("reload", "a rolling restart of a running cluster; waits for its end"),
                       ("stop", "a graceful stop of a running cluster")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("path", metavar="PATH", help="the control socket")
    scale = commands.add_parser("scale", help="a running cluster keeps N workers from now on")
    scale.add_argument("path", metavar="PATH", help="the control socket")
    scale.add_argument("n", type=_at_least(1), metavar="N", help="workers")
    return parser


CONTROL_COMMANDS = ("status", "reload", "stop", "scale")


def _control_client(args: argparse.Namespace) -> int:
    """status, reload, scale and stop: one request to a primary's control
    socket. Exit 0 when it did it, 1 when it answered with an error, 2 when
    no primary answered."""
    import json

    from . import _ops
    line = f"scale {args.n}" if args.command == "scale" else args.command
    try:
        reply = _ops.request(args.path, line)
    except (OSError, ValueError) as exc:
        print(f"cluster-ext {args.command}: no primary answered on {args.path}: {exc}",
              file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"cluster-ext {args.command}: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(reply, indent=2) if args.json else _status_table(reply))
    elif args.command == "reload":
        print(f"reloaded in {reply['seconds']:.1f} s")
    elif args.command == "scale":
        print(f"{reply['workers_wanted']} workers wanted")
    return 0


def _status_table(figures: dict[str, Any]) -> str:
    """The figures as a person reads them at a glance."""
    primary = figures["primary"]
    head = f"primary {primary['pid']}"
    if primary["supervised"]:
        last = primary["last_reload_seconds"]
        head += (f": {primary['state']}, {len(figures['workers'])} of "
                 f"{primary['workers_wanted']} workers, {primary['restarts']} restarts, "
                 f"{primary['reloads']} reloads" + (f" (last {last:.1f} s)" if last else ""))
    rows = [("ID", "PID", "STATE", "AGE", "RESTARTS", "RSS", "CPU%", "CONNS", "SERVED",
             "MSGS IN/OUT")]
    for w in figures["workers"]:
        rows.append((str(w["id"]), str(w["pid"]), w["state"], _age(w["age"]),
                     str(w["restarts"]), _size(w["rss"]),
                     "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
                     _count(w["connections"]), _count(w["served"]),
                     f"{w['messages_received']}/{w['messages_sent']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "\n".join([head, *lines])


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s // 60 % 60:02d}m"
    return f"{s // 86400}d{s // 3600 % 24:02d}h"


def _size(rss: int | None) -> str:
    if rss is None:
        return "-"
    if rss < 1024:
        return f"{rss} B"
    size, unit = rss / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _open_services(args: argparse.Namespace) -> list[Any]:
    """--control and --metrics, before any fork: a taken path or port is a
    clear error now, not a surprise later."""
    services: list[Any] = []
    try:
        if args.control is not None:
            services.append(cluster.control(args.control))
        if args.metrics is not None:
            host, port = args.metrics
            services.append(cluster.serve_metrics(port, host))
            log.info("metrics on http://%s:%d/metrics", host, services[-1].address[1])
    except BaseException:
        for service in services:
            service.close()
        raise
    return services


def _log_lifecycle() -> None:
    cluster.on("fork", lambda w: log.info("worker %d forked (pid %d)", w.id, w.pid))
    cluster.on("online", lambda w: log.info("worker %d online", w.id))
    cluster.on("listening", lambda w, address: log.info("worker %d listening on %s",
                                                          w.id, _where(address)))
    cluster.on("disconnect", lambda w: log.info("worker %d disconnected", w.id))
    cluster.on("exit", lambda w, code, sig: log.info(
        "worker %d exited (%s%s)", w.id,
        f"code {code}" if sig is None else f"signal {sig.name}",
        ", as asked" if w.exited_after_disconnect else ""))


def _where(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def _is_web_app(app: str) -> bool:
    """module:attribute, as gunicorn and uvicorn take it (a file of that name
    wins: it is a script)."""
    return ":" in app and not os.path.exists(app)


def _web_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "lifespan": args.lifespan, "http": args.http,
        "timeout_keep_alive": args.timeout_keep_alive,
        "limit_concurrency": args.limit_concurrency, "backlog": args.backlog,
        "root_path": args.root_path, "proxy_headers": args.proxy_headers}
    if args.forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    return options


def _run_web(args: argparse.Namespace) -> None:
    from . import web
    web.serve_worker(args.app, [web.parse_bind(b) for b in args.bind or web.default_binds()],
                     interface=args.interface, graceful_timeout=args.graceful_timeout,
                     factory=args.factory, threads=args.threads, access_log=args.access_log,
                     server_options=_web_options(args),
                     limit_request_head=args.limit_request_head,
                     timeout_request_head=args.timeout_request_head,
                     websocket_grace=args.websocket_grace)


def _check_web(args: argparse.Namespace) -> str | None:
    """In the primary, before any fork: what stops APP from being served and
    can be told without the application's code (all of it with --preload)."""
    from . import web
    try:
        web.prepare_primary(args.app, [web.parse_bind(bind) for bind in args.bind or []],
                            factory=args.factory, interface=args.interface,
                            preload=args.preload)
    except (ValueError, ImportError, web.AppLoadError) as exc:
        return str(exc)
    return None


def _run_app(app: str, args: list[str]) -> None:
    """In a worker: APP as __main__, then the loop if APP did not run it. An
    exception before the loop runs is a boot failure, told to the primary."""
    sys.argv = [app, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(app)))
    me = cluster.worker
    assert me is not None                # _run_app runs in workers only

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


def _demo_worker(host: str, port: int) -> None:
    from . import net
    pid = os.getpid()

    def echo(sock: net.Socket) -> None:
        assert cluster.worker is not None    # main() runs the demo in workers only
        sock.write(f"hello from worker {cluster.worker.id} (pid {pid})\n")
        sock.on("data", lambda data: sock.write(f"[{pid}] ".encode() + data))

    net.create_server(echo).listen(port, host)
    cluster.run()


def main(argv: list[str] | None = None, *, prog: str = "cluster-ext") -> int:
    """The console script cluster-ext; __main__ names itself python -m cluster_ext."""
    args = _parser(prog).parse_args(argv)
    if args.command in CONTROL_COMMANDS:
        return _control_client(args)
    if args.command == "run" and _is_web_app(args.app) and args.args:
        # uvicorn's order (APP, then options): what follows APP is ours
        _Parser(prog=f"{prog} run", parents=[_common_parser(), _web_parser()]
                                ).parse_args(args.args, namespace=args)
    if cluster.is_worker:
        if args.command == "run" and _is_web_app(args.app):
            _run_web(args)
        elif args.command == "run":
            _run_app(args.app, args.args)
        else:
            _demo_worker(args.host, args.port)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cluster_ext[%(process)d] "
                                                   "%(message)s", stream=sys.stderr)
    if args.command == "run" and _is_web_app(args.app):
        problem = _check_web(args)
        if problem is not None:
            log.error("cannot serve %s: %s", args.app, problem)
            return 2
    elif args.command == "run" and not os.path.exists(args.app):
        log.error("no such file: %s (an application is named as module:attribute)", args.app)
        return 2
    pid_file, problem = _claim_files(args)
    if problem is not None:
        print(f"{prog} {args.command}: error: {problem}", file=sys.stderr)
        return 2
    try:
        return _supervise(args)
    finally:
        if pid_file is not None:
            pid_file.remove("pid file")


PATH_OPTIONS = (("--pid-file", "pid_file"), ("--ready-file", "ready_file"),
                ("--control", "control"))


def _unwritable_directory(path: str) -> str | None:
    """Why no file can be made at path because of its directory, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        return f"{path}: its directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{path}: its directory {directory} is not writable"
    return None


def _claim_files(args: argparse.Namespace) -> tuple[RunFile | None, str | None]:
    """Every path option's directory checked (--bind unix:PATH's too),
    --pid-file written and --ready-file's path made way for (as supervise()
    does), before anything is logged or forked, so that a path in use or
    that cannot be written is one line and exit 2, as a bad argument is.
    Returns (the pid file, None) or (None, what is wrong)."""
    from . import _files
    paths = [(flag, getattr(args, name)) for flag, name in PATH_OPTIONS]
    paths += [("-b/--bind", bind[len("unix:"):]) for bind in getattr(args, "bind", None) or ()
              if bind.startswith("unix:")]
    for flag, path in paths:
        why = _unwritable_directory(path) if path else None
        if why is not None:
            return None, f"argument {flag}: {why}"
    pid_file = None
    flag = "--pid-file"
    try:
        if args.pid_file:
            pid_file = _files.claim(os.path.abspath(args.pid_file), f"{os.getpid()}\n")
        flag = "--ready-file"
        if args.ready_file:
            _files.make_way(os.path.abspath(args.ready_file))
            _files.probe(os.path.abspath(args.ready_file))
    except OSError as exc:
        if pid_file is not None:
            pid_file.remove("pid file")
        return None, f"argument {flag}: {exc.filename}: {exc.strerror or exc}"
    return pid_file, None


def _supervise(args: argparse.Namespace) -> int:
    """The primary of `run` and `demo`, its files claimed."""
    if args.sched is not None:
        cluster.scheduling_policy = cluster.SCHED_NONE if args.sched == "none" \
            else cluster.SCHED_RR
    try:
        services = _open_services(args)
    except (OSError, ImportError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    _log_lifecycle()
    what = args.app if args.command == "run" else f"the demo on {args.host}:{args.port}"
    heartbeat = args.heartbeat_timeout or None          # 0: off
    log.info("primary %d: supervising %s workers running %s (heartbeat %s)", os.getpid(),
             args.workers or os.cpu_count(), what,
             f"{heartbeat:g} s" if heartbeat else "off")
    try:
        cluster.supervise(args.workers, graceful_timeout=args.graceful_timeout,
                          heartbeat_timeout=heartbeat,
                          ready_file=args.ready_file, drain_delay=args.drain_delay)
    except cluster.CrashLoopError as exc:
        log.error("stopped: %s", exc)
        return 1
    except cluster.BootError as exc:
        if exc.load_error and args.command == "run" and _is_web_app(args.app):
            # a worker found the spec wrong: as the primary reports it
            log.error("cannot serve %s: %s", args.app, exc.reason.rstrip())
            return 2
        log.error("stopped: %s", exc)
        return 3
    finally:
        for service in services:
            service.close()
    log.info("primary %d: all workers stopped", os.getpid())
    return 0
