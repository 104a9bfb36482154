"""The fleet, beyond Node: supervise() keeps a number of workers up and
stops them gracefully, reload() replaces them without a lost connection, and
the primary's operations (the control socket, /metrics) read and steer it.

    supervisor   supervise(): respawn, crash loop, signals, readiness, heartbeat
    rolling      reload(): the rolling restart
    recycle      a worker past max_requests, max_lifetime or max_rss, replaced
    notify       sd_notify(3) to systemd
    reap         PID 1's duty: the orphans' zombies
    files        the pid and ready files
    figures      the figures of every worker, gathered for status and /metrics
    service      a bounded listener on the primary's loop
    control      the control socket and its client
    metrics      /metrics
    reloader     --reload: a change on disk reloads the workers
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .rolling import reload
    from .supervisor import BootError, CrashLoopError, supervise

__all__ = ["BootError", "CrashLoopError", "reload", "supervise"]


def __getattr__(name: str) -> Any:
    """supervise(), reload() and their errors, imported on first use: a
    worker imports fleet.preload, and would pay for the supervisor's
    modules (the rolling restart, recycling, figures...) in time and memory."""
    if name == "reload":
        from .rolling import reload as value
    elif name in ("BootError", "CrashLoopError", "supervise"):
        from . import supervisor
        value = getattr(supervisor, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
