"""cluster_ext: Node.js's cluster module for Python on Linux.

    import cluster_ext as cluster

One script runs in both roles. The primary forks workers (cluster.fork()),
which run the same program again; they share ports, exchange messages with
the primary and stop gracefully with worker.disconnect(). The module itself is
an EventEmitter: 'fork', 'online', 'listening', 'message', 'disconnect',
'exit', 'setup'. docs/api.md is the reference.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    from collections.abc import Mapping
    from typing import Any


def _tree_is_built(here: str) -> bool:
    return any(name.startswith("_core.") and not name.endswith(".pyi")
               for name in os.listdir(here))


def _run_installed_instead() -> None:
    """python -m cluster_ext typed in the repository's root imports the
    source tree (-m puts the current directory first on sys.path). Where its
    extension was never built, the installed package is what was meant: this
    process becomes `python -m cluster_ext ARGS` with the tree's directory
    left off sys.path (same pid, same descriptors: nothing is taken yet).
    Returns when no other copy is installed."""
    import importlib.machinery
    tree_parent = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != tree_parent]
    if importlib.machinery.PathFinder.find_spec(__name__, elsewhere) is None:
        return
    boot = ("import os, runpy, sys; "
            f"sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != "
            f"{tree_parent!r}]; "
            f"runpy.run_module({__name__!r}, run_name='__main__', alter_sys=True)")
    os.execv(sys.executable, [sys.executable, "-c", boot, *sys.argv[1:]])


def _unbuilt_source_tree() -> None:
    """Explains an import from the source tree, where the C extension was never
    built and no other copy is installed (or the import is not python -m's)."""
    here = os.path.dirname(__file__)
    if _tree_is_built(here):
        return                  # built, but it failed to load: the real error says why
    import shlex

    by_m = sys.argv[:1] == ["-m"]   # python -m cluster_ext: one line, not a traceback
    command = shlex.join(["cluster-ext", *sys.argv[1:]]) if by_m else "cluster-ext"
    message = (f"cluster_ext: {here} is the source tree, whose C extension is not built; "
               f"run the installed `{command}` (or python -m cluster_ext from another "
               "directory), or build it here with pip install -e .")
    if by_m:
        raise SystemExit(message)
    raise ImportError(message) from None


if sys.argv[:1] == ["-m"] and not _tree_is_built(os.path.dirname(__file__)):
    _run_installed_instead()

__version__ = "0.1.0"        # the one source: pyproject.toml reads it from here

# Before _core opens its descriptors, which would take the numbers that a
# LISTEN_FDS larger than what was passed names (see _listen_fds).
from . import _listen_fds

_listen = ([], []) if "CLUSTER_EXT_WORKER_ID" in os.environ or \
    "CLUSTER_EXT_TEMPLATE_FD" in os.environ else _listen_fds.take()
try:
    from . import _core  # noqa: F401 (fails here, where the unbuilt tree is explained)
except ImportError:
    _unbuilt_source_tree()
    raise
# _shared registers its frame handlers when imported
from . import _fast, _primary, _runtime, _shared, _worker  # noqa: F401
from ._primary import disconnect, fork, setup_primary
from ._runtime import SCHED_NONE, SCHED_RR, call_later, call_soon_threadsafe, run, stop
from ._worker import ChannelClosedError, Worker
from .events import EventEmitter
from .net import listen_socket

__all__ = [
    "BootError", "ChannelClosedError", "CrashLoopError", "EventEmitter", "SCHED_NONE", "SCHED_RR",
    "Worker", "call_later", "call_soon_threadsafe", "control", "disconnect", "fork", "is_master",
    "is_primary", "is_worker", "listen_socket", "reload", "run", "serve_metrics", "settings",
    "setup_master", "setup_primary", "stop", "supervise", "worker", "workers",
]

if TYPE_CHECKING:
    import os as _os

    from .fleet import BootError, CrashLoopError, reload, supervise
    from .fleet.control import Control
    from .fleet.metrics import Metrics

_FLEET_NAMES = frozenset({"BootError", "CrashLoopError", "reload", "supervise"})


def __getattr__(name: str) -> Any:
    """supervise(), reload() and their errors, imported on first use: the
    fleet is the primary's, and a worker's start would pay for its import."""
    if name not in _FLEET_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import fleet
    value = getattr(fleet, name)
    globals()[name] = value
    return value


# Operating a cluster: imported on use, not at every worker's start.
def control(path: str | _os.PathLike[str], *, max_connections: int = 64,
            idle_timeout: float = 10.0) -> Control:
    """The primary answers `cluster-ext status PATH`, reload, scale N and stop
    on a Unix socket at path (mode 0600); returns it, to close(). More than
    max_connections at once are refused, and a connection is closed once it
    has sent no whole request for idle_timeout seconds."""
    from .fleet import control as _control
    return _control.control(path, max_connections=max_connections, idle_timeout=idle_timeout)


def serve_metrics(port: int, host: str = "127.0.0.1", *, max_connections: int = 64,
                  idle_timeout: float = 10.0) -> Metrics:
    """/metrics in the Prometheus text format on host:port, from the primary
    (needs the metrics extra, pip install '.[metrics]'); returns it, to close(). Bounded
    as control() is."""
    from .fleet import metrics as _metrics
    return _metrics.serve_metrics(port, host, max_connections=max_connections,
                              idle_timeout=idle_timeout)


setup_master = setup_primary

# The module is the cluster's EventEmitter (cluster.on("exit", fn)): its
# methods are those of the one emitter every part of the package emits on.
_emitter = _runtime.emitter
on, add_listener, once = _emitter.on, _emitter.add_listener, _emitter.once
prepend_listener, prepend_once_listener = (_emitter.prepend_listener,
                                           _emitter.prepend_once_listener)
off, remove_listener = _emitter.off, _emitter.remove_listener
remove_all_listeners, emit = _emitter.remove_all_listeners, _emitter.emit
listeners, listener_count = _emitter.listeners, _emitter.listener_count
event_names = _emitter.event_names


class _ClusterModule(_fast.ModuleType):
    """The module object: the role and state read live from _runtime (a
    worker learns its role at boot, after this module was imported)."""

    @property
    def is_primary(self) -> bool:
        return _runtime.is_primary

    is_master = is_primary

    @property
    def is_worker(self) -> bool:
        return _runtime.is_worker

    @property
    def workers(self) -> dict[int, Worker] | None:
        return _runtime.workers

    @property
    def worker(self) -> Worker | None:
        return _runtime.worker

    @property
    def settings(self) -> Mapping[str, Any]:
        return _runtime.settings_view

    @property
    def scheduling_policy(self) -> int:
        policy: int = _runtime.settings["scheduling_policy"]
        return policy

    @scheduling_policy.setter
    def scheduling_policy(self, policy: int) -> None:
        _primary.set_scheduling_policy(policy)


if TYPE_CHECKING:
    # What type checkers see of the properties above.
    is_primary: bool
    is_master: bool
    is_worker: bool
    workers: dict[int, Worker] | None
    worker: Worker | None
    settings: Mapping[str, Any]
    scheduling_policy: int
else:
    sys.modules[__name__].__class__ = _ClusterModule
if _runtime.is_primary:
    _shared.adopt_listen_fds(_listen)   # systemd's socket activation, if it is ours
elif not _runtime.is_template:   # an exec'd worker: it ends as its script does (a
    _worker.boot_from_env()      # preload template's boot once forked: fleet.preload)
    _runtime.exit_faster()
