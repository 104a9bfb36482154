"""sd_notify(3) without libsystemd: the primary's readiness, reloads, stops,
status and watchdog, as datagrams to $NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). Read once, by supervise(), which removes
the variables so that workers and the application's children do not
notify in the primary's name."""
from __future__ import annotations

import os
import time

from .. import _core, _runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

_address: str | None = None
_sock: socket.socket | None = None
_warned = False
watchdog_interval: float | None = None    # seconds between WATCHDOG=1, or None


def start() -> None:
    """Takes NOTIFY_SOCKET and WATCHDOG_USEC (when WATCHDOG_PID, if set, is us)."""
    global _address, watchdog_interval
    env = os.environ
    _address = env.pop("NOTIFY_SOCKET", None) or None
    usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
    watchdog_interval = None
    if _address is not None and usec is not None and pid in (None, str(os.getpid())):
        try:
            half = int(usec) / 2e6                     # half the timeout, as systemd asks
        except (ValueError, OverflowError):
            _warn(f"WATCHDOG_USEC={usec!r} is not a number: no watchdog")
        else:
            if half > 0:                 # beyond the loop's longest timer: beat sooner
                watchdog_interval = min(half, _core.MAX_SECONDS)
            else:
                _warn(f"WATCHDOG_USEC={usec!r} is not positive: no watchdog")


def enabled() -> bool:
    return _address is not None


def notify(*lines: str) -> None:
    """One datagram of newline-separated assignments; a socket that cannot be
    reached is a warning, once, never an error."""
    global _sock
    if _address is None:
        return
    import socket
    target = "\0" + _address[1:] if _address.startswith("@") else _address
    try:
        if _sock is None:
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _sock.sendto("\n".join(lines).encode(), target)
    except OSError as exc:
        _warn(f"NOTIFY_SOCKET {_address}: {exc.strerror or exc}")


def reloading() -> None:
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
           "STATUS=reloading")


def stop() -> None:
    """supervise() returned: a later supervise() reads nothing again."""
    global _address, _sock, watchdog_interval
    if _sock is not None:
        _sock.close()
    _address = _sock = watchdog_interval = None


def _warn(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        _runtime.log("warning", message)
