"""The operator's hooks, gunicorn's server hooks by name (--on-starting,
--when-ready, --post-fork, --worker-exit, --on-reload), each named
MODULE:FUNCTION: imported by the primary before anything serves (one that
cannot be is a usage error), --post-fork's again by each worker. A hook's
exception is logged once, in one line that names the hook, and the fleet
goes on: a hook watches the fleet, it does not steer it."""
from __future__ import annotations

import importlib
import os
import sys

from .. import _runtime, _worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

NAMES = ("on_starting", "when_ready", "post_fork", "worker_exit", "on_reload")


class HookError(Exception):
    """A hook that cannot be imported: the usage error that says why."""


def load(args: argparse.Namespace, names: tuple[str, ...] = NAMES
         ) -> dict[str, Callable[..., None]]:
    """Each hook of names given, imported and guarded (its exception is
    logged, never raised), by name; HookError for one that cannot be
    imported."""
    loaded = {}
    for name in names:
        spec = getattr(args, name, None)         # `demo` has none
        if spec is not None:
            loaded[name] = _guarded(name, spec, _import(name, spec))
    return loaded


def check(args: argparse.Namespace) -> str | None:
    """In the primary, before anything serves: every hook imported, or the
    usage error of the first that cannot be."""
    try:
        load(args)
    except HookError as exc:
        return str(exc)
    return None


def post_fork(args: argparse.Namespace) -> None:
    """In a worker, before the application: --post-fork's hook called with
    the worker's cluster.worker. One that the worker cannot import (changed
    since the primary did) is the worker's boot failure."""
    try:
        loaded = load(args, ("post_fork",))
    except HookError as exc:
        _worker.fail_boot(str(exc))          # exits
        return
    if loaded:
        loaded["post_fork"](_runtime.worker)


def _import(name: str, spec: str) -> Callable[..., Any]:
    """MODULE:FUNCTION's function, looked for as APP's module is: the current
    directory first on sys.path (--app-dir before it, see main())."""
    module_name, _, attribute = spec.partition(":")
    flag = "argument --" + name.replace("_", "-")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise HookError(f"{flag}: {spec}: importing it raised {_described(exc)}") from None
        raise HookError(f"{flag}: {spec}: no module named {exc.name!r} (looked in "
                        f"{os.getcwd()} and sys.path)") from None
    except (Exception, SystemExit) as exc:
        raise HookError(f"{flag}: {spec}: importing it raised {_described(exc)}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise HookError(f"{flag}: {spec}: {module_name} has no {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise HookError(f"{flag}: {spec}: not a function but {type(found).__name__}")
    return found      # type: ignore[no-any-return]


def _guarded(name: str, spec: str, hook: Callable[..., Any]) -> Callable[..., None]:
    home = getattr(getattr(hook, "__code__", None), "co_filename", None)

    def call(*args: Any) -> None:
        try:
            hook(*args)
        except Exception as exc:
            me = _runtime.worker
            _runtime.log("error", f"{f'worker {me.id}: ' if me is not None else ''}hook "
                         f"{name} ({spec}) raised {_described(exc, home)}; going on")
    return call


def _described(exc: BaseException, home: str | None = None) -> str:
    """"ValueError: why (at path:line)": the last line of home (the hook's
    file) the exception passed through, else the last one outside the
    interpreter's frozen modules (importlib's, os)."""
    lines = []
    where = exc.__traceback__
    while where is not None:
        lines.append((where.tb_frame.f_code.co_filename, where.tb_lineno))
        where = where.tb_next
    ours = [line for line in lines if line[0] == home] or \
        [line for line in lines if not line[0].startswith("<")]
    at = f" (at {ours[-1][0]}:{ours[-1][1]})" if ours else ""
    return f"{type(exc).__name__}{f': {exc}' if str(exc) else ''}{at}"
