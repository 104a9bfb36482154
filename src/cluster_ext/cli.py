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

from . import _runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._protocol import Address

log = logging.getLogger("cluster_ext")

DESCRIPTION = """\
Run a Python server as a cluster: one primary that supervises N worker
processes sharing the server's port (Node's cluster, with what PM2 and
gunicorn add: respawn, zero-downtime reload, hung-worker kills).

Signals to the primary: SIGTERM or Ctrl-C stop gracefully (a second one
stops at once), SIGHUP reloads every worker one by one, SIGTTIN adds a
worker, SIGTTOU retires the oldest."""

RUN_HELP = """\
Runs APP as the workers of a supervised cluster. APP serves with
cluster_ext.net, cluster_ext.aio or cluster.listen_socket(); each worker runs
it as __main__ with sys.argv = [APP, *ARGS], and runs the event loop itself if
APP returns without calling cluster.run(). The primary never runs APP.

example:  python -m cluster_ext run -w 4 server.py --port 8000"""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-w", "--workers", type=int, default=None, metavar="N",
                        help="worker processes (default: one per core)")
    common.add_argument("--sched", choices=("rr", "none"), default=None,
                        help="rr: the primary accepts and hands connections out in turn "
                             "(default); none: workers accept on the shared socket")
    common.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                        help="seconds a worker may take to finish its connections when "
                             "stopping or reloading before it is killed (default 30)")
    common.add_argument("--heartbeat-timeout", type=float, default=None, metavar="S",
                        help="kill and replace a worker whose event loop has not answered "
                             "for S seconds (default: off)")
    run = commands.add_parser("run", parents=[common], help="run APP as a supervised cluster",
                              description=RUN_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("app", metavar="APP", help="the Python script each worker runs")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="arguments for APP")
    demo = commands.add_parser(
        "demo", parents=[common],
        help="an echo service on 127.0.0.1:8000, one worker per core",
        description="An echo service: connect with `nc 127.0.0.1 8000` and type; each "
                    "line comes back with the pid of the worker that served it. Try "
                    "`kill -HUP <primary pid>` to reload, Ctrl-C to stop.")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--host", default="127.0.0.1")
    return parser


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


def _run_app(app: str, args: list[str]) -> None:
    """In a worker: APP as __main__, then the loop if APP did not run it."""
    sys.argv = [app, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(app)))
    runpy.run_path(app, run_name="__main__")
    if not _runtime.ran:
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
    if cluster.is_worker:
        if args.command == "run":
            _run_app(args.app, args.args)
        else:
            _demo_worker(args.host, args.port)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cluster_ext[%(process)d] "
                                                   "%(message)s", stream=sys.stderr)
    if args.command == "run" and not os.path.exists(args.app):
        log.error("no such file: %s", args.app)
        return 2
    if args.sched is not None:
        cluster.scheduling_policy = cluster.SCHED_NONE if args.sched == "none" \
            else cluster.SCHED_RR
    _log_lifecycle()
    what = args.app if args.command == "run" else f"the demo on {args.host}:{args.port}"
    log.info("primary %d: supervising %s workers running %s", os.getpid(),
             args.workers or os.cpu_count(), what)
    try:
        cluster.supervise(args.workers, graceful_timeout=args.graceful_timeout,
                          heartbeat_timeout=args.heartbeat_timeout)
    except cluster.CrashLoopError as exc:
        log.error("stopped: %s", exc)
        return 1
    log.info("primary %d: all workers stopped", os.getpid())
    return 0
