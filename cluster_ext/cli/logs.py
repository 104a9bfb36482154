"""The logging options of `cluster-ext run` and `demo`, in each role: the
primary's log (stderr or --error-logfile, its level), --log-config laid
over it in the primary and in every worker before the application is
imported, and a web worker's logs (web.logs.Logs) from the options. What
is wrong with one is told in the words of a usage error."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .options import LEVELS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..web.logs import Logs

PRIMARY_FORMAT = "%(asctime)s cluster_ext[%(process)d] %(message)s"


def configure_primary(args: argparse.Namespace) -> str | None:
    """The primary's lines on stderr, or appended to --error-logfile, at
    INFO or --log-level, then --log-config over them; --access-logfile
    checked, which only the workers write. Both files are given to the
    workers' --user and --group, as gunicorn gives them: the workers append
    to them too. What is wrong, or None."""
    access_file = getattr(args, "access_logfile", None) or "-"
    error_file = args.error_logfile or "-"
    for flag, path in (("--access-logfile", access_file), ("--error-logfile", error_file)):
        try:
            if path != "-":
                open(path, "a").close()
                _give_to_workers(path)
        except OSError as exc:
            return f"argument {flag}: {path}: {exc.strerror or exc}"
    handler = (logging.StreamHandler(sys.stderr) if error_file == "-" else
               logging.FileHandler(error_file, encoding="utf-8"))
    logging.addLevelName(LEVELS["trace"], "TRACE")
    logging.basicConfig(level=logging.INFO, format=PRIMARY_FORMAT, handlers=[handler])
    problem = apply_config(args.log_config)
    _set_level(args, None)
    return problem


def _give_to_workers(path: str) -> None:
    """The file at path owned by the workers' identity, when they have one
    of their own (--user, --group: the primary, root, has just made it)."""
    from .. import _runtime
    uid, gid = _runtime.settings["uid"], _runtime.settings["gid"]
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def configure_worker(args: argparse.Namespace, logs: Logs | None) -> str | None:
    """In a worker, or --preload's template, before the application is
    imported (so that its loggers, made by its import, are not disabled as
    loggers that existed before the configuration): with --log-config, a
    web worker's handlers, then the configuration over them, then
    --log-level over both, as uvicorn orders them. Without, a web worker
    sets its handlers as it always has, after the import (serve_worker()).
    logs: a web worker's. What is wrong, or None."""
    if args.log_config is None:
        if logs is None:
            _set_level(args, None)
        return None
    if logs is not None:
        try:
            logs.configure()
        except ValueError as exc:            # its log file, which it may not open
            return str(exc)
    problem = apply_config(args.log_config)
    if logs is not None and logging.getLogger("uvicorn.access").handlers:
        logs.access = True                   # the configuration's own access log
    _set_level(args, logs)
    return problem


def _set_level(args: argparse.Namespace, logs: Logs | None) -> None:
    """--log-level on the package's logger, or a web worker's loggers."""
    if logs is not None:
        logs.apply_level()
    elif args.log_level is not None:
        logging.getLogger("cluster_ext").setLevel(LEVELS[args.log_level])


def web_logs(args: argparse.Namespace) -> Logs:
    from ..web.logs import Logs
    return Logs(access=args.access_log, access_format=args.access_log_format,
                access_file=args.access_logfile or "-", error_file=args.error_logfile or "-",
                level=LEVELS[args.log_level] if args.log_level is not None else None)


def apply_config(path: str | None) -> str | None:
    """--log-config: a logging.config dictionary in JSON or YAML (.yaml,
    .yml), or a fileConfig INI file (any other name), as uvicorn reads it;
    existing loggers are kept unless the dictionary says otherwise
    (gunicorn's and uvicorn's INI rule: the package's loggers, and the
    application's under --preload, exist before it). What is wrong, or
    None."""
    if path is None:
        return None
    import logging.config
    try:
        if path.endswith((".json", ".yaml", ".yml")):
            with open(path, encoding="utf-8") as file:
                text = file.read()
            config = _parse(path, text)
            if not isinstance(config, dict):
                raise ValueError("not a logging.config dictionary (an object at the top)")
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            open(path, "rb").close()         # fileConfig takes a missing file for an empty one
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except OSError as exc:
        return f"argument --log-config: {path}: {exc.strerror or exc}"
    except Exception as exc:                 # dictConfig's and fileConfig's, whatever they are
        return f"argument --log-config: {path}: {_why(exc)}"
    return None


def _parse(path: str, text: str) -> object:
    if path.endswith(".json"):
        import json
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ValueError("reading YAML needs PyYAML: pip install PyYAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None


def _why(exc: BaseException) -> str:
    """One line of what logging.config found wrong, with its cause (dictConfig
    says 'Unable to configure handler 'file'' and raises the why from it)."""
    why = f"no section {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else \
        str(exc) or type(exc).__name__
    if exc.__cause__ is not None:
        why += f": {_why(exc.__cause__)}"
    return " ".join(why.split())
