"""What a worker the heartbeat kills was doing: before the SIGKILL, the
worker is asked (_forensics.SIGNAL) to dump every thread's stack into its
memfd; the primary waits on loop timers until the dump stops growing (at
most WAIT), kills it, and logs the stacks and the requests it had in
flight (the web layer's table in the same memfd) as one record, each line
prefixed with the worker's id. supervise() keeps the last KEEP for status."""
from __future__ import annotations

import os
import time

from .. import _fast, _forensics, _runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .. import _core
    from .._worker import Worker

WAIT = 1.0                # the longest a dump holds up the kill
POLL = 0.05               # how often the dump's size is looked at meanwhile
KEEP = 5                  # timeouts status shows


class Timeout:
    """One worker from its heartbeat timeout to its SIGKILL and report.
    A worker that did not register for the dump (not Python, or another
    layout) is killed at once; one that does not dump (the signal blocked,
    the process stopped) at WAIT."""

    def __init__(self, w: Worker, reported: Callable[[dict[str, Any]], None]) -> None:
        self.w, self.reported = w, reported
        self.at = time.time()
        self.until = time.monotonic() + WAIT
        self.size = 0
        self.timer: _core.Handle | None = None
        self.asked = False        # the dump signal went out

    def start(self) -> None:
        w = self.w
        self.asked = _forensics.registered(w._stacks) and _signal(w, _forensics.SIGNAL)
        if self.asked:
            self.timer = _runtime.call_later(POLL, self.poll)
        else:
            self.end()

    def poll(self) -> None:
        size = _forensics.dumped(self.w._stacks)
        if (size and size == self.size) or time.monotonic() >= self.until:
            self.end()
        else:
            self.size = size
            self.timer = _runtime.call_later(POLL, self.poll)

    def end(self) -> None:
        """The SIGKILL, then the report. Also when the worker has exited
        meanwhile (no kill then: its pid may be another process's now)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        w = self.w
        if not w.is_dead():
            _signal(w, _fast.signal.SIGKILL)
        stacks, requests, unlisted = _forensics.read(w._stacks)
        _runtime.log("error", self.report(stacks, requests, unlisted))
        self.reported({"worker": w.id, "pid": w.pid, "at": round(self.at, 3),
                       "stacks": stacks, "requests": requests, "requests_unlisted": unlisted})

    def report(self, stacks: str | None, requests: list[dict[str, Any]] | None,
               unlisted: int) -> str:
        """The log record: a line, then the requests and the stacks, each
        of their lines prefixed with the worker's id, so that a search for
        it finds them."""
        w = self.w
        said, lines = [], []
        if requests is not None:
            count = len(requests) + unlisted
            said.append(f"{count} request{'' if count == 1 else 's'} in flight" +
                        (f" ({unlisted} not listed)" if unlisted else ""))
            lines += [f"{r['method']} {r['path']} (for {r['seconds']:.1f} s)" for r in requests]
        if stacks is None:
            said.append(f"no stacks (none dumped within {WAIT:g} s: its signals blocked, "
                        "or the process stopped)" if self.asked else
                        "no stacks (it did not register for them: not a Python worker)")
        else:
            said.append("the stacks of its threads")
            lines += ["", *stacks.split("\n")] if lines else stacks.split("\n")
        return "\n".join([f"worker {w.id} (pid {w.pid}) at its timeout: " + ", ".join(said)
                          + (":" if lines else ""),
                          *(f"worker {w.id} | {line}".rstrip() for line in lines)])


def _signal(w: Worker, sig: int) -> bool:
    try:
        os.kill(w.pid, sig)
    except OSError:
        return False
    return True
