"""The command line (cluster-ext, python -m cluster_ext): run a script or a
web application as a supervised cluster, the demo, and the control socket's
client.

The primary supervises; every worker runs the same command line again and,
seeing itself a worker, runs the application.

    options   the parser and its value checks
    config    the options from the environment and a TOML file
    hooks     the operator's hooks (--on-starting, --post-fork...)
    primary   the primary's side of run and demo
    worker    a worker's side: the script, the web application, the demo
    status    status, reload, scale and stop: the control socket's client
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import cluster_ext as cluster

from .. import _runtime
from . import config, logs, worker
from .options import CONTROL_COMMANDS, is_web_app, parse_args

log = logging.getLogger("cluster_ext")


def main(argv: list[str] | None = None, *, prog: str = "cluster-ext") -> int:
    """The console script cluster-ext; __main__ names itself python -m cluster_ext."""
    args = parse_args(argv, prog)
    if args.command in CONTROL_COMMANDS:
        from . import status
        return status.control_client(args)
    problem = config.settle(args, argv, prog)
    if problem is not None:
        return _refuse(prog, args, problem)
    if args.command == "run" and args.app_dir is not None and is_web_app(args.app):
        # in every role: the primary checks the spec's module, the template
        # and the workers import it
        from ..web.app import look_in
        look_in(args.app_dir)
    if args.command == "run" and args.reload:
        # No .pyc of the application: one written by the code before a save
        # passes for the new code when the save kept the file's size within
        # the same second (a .pyc records the source's mtime in seconds).
        sys.dont_write_bytecode = True
    if _runtime.is_template:                 # --preload's (fleet.preload)
        worker.run_template(args)
        return 0
    if cluster.is_worker:
        if args.command == "run" and is_web_app(args.app):
            worker.run_web(args)
        elif args.command == "run":
            worker.run_app(args)
        else:
            worker.demo_worker(args)
        return 0
    from . import primary  # the primary's side: not a worker's import
    problem = primary.prepare(args) or logs.configure_primary(args)
    if problem is not None:
        return _refuse(prog, args, problem)
    if args.command == "run" and is_web_app(args.app):
        problem = primary.check_web(args)
        if problem is not None:
            log.error("cannot serve %s: %s", args.app, problem)
            return 2
    elif args.command == "run" and not os.path.exists(args.app):
        log.error("no such file: %s (an application is named as module:attribute)", args.app)
        return 2
    pid_file, problem = primary.claim_files(args)
    if problem is not None:
        return _refuse(prog, args, problem)
    try:
        return primary.supervise(args)
    finally:
        if pid_file is not None:
            pid_file.remove("pid file")


def _refuse(prog: str, args: argparse.Namespace, problem: str) -> int:
    """A usage error found after parsing, told as argparse tells its own,
    of the file or variable the value came from if it did."""
    print(f"{prog} {args.command}: error: {config.locate(args, problem)}", file=sys.stderr)
    return 2
