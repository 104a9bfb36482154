"""How loaded a worker is, for status and /metrics (its STATS reply): the
requests its web layer is answering and their latency by status class
(web/protocol.py counts them), what it cut at its graceful deadline
(web/worker.py), and how late its loop runs (the probe below). Only the
worker's side is here; the primary reads the record (_protocol.Saturation).

The hot path is web/protocol.py's: an increment at a request's start, and at
its end a decrement, a bisect into fixed buckets and two additions."""
from __future__ import annotations

import time
from bisect import bisect_left

from . import _core
from ._protocol import BUCKETS, LATENCY_BOUNDS, STATUS_CLASSES, Saturation

LAG_PROBE = 0.1        # seconds between two runs of the probe timer
LAG_WINDOW = 5.0       # the lag shown is the worst of the last one to two windows

in_flight = [0]        # requests whose response is in progress (lists: bumped in place)
cut = [0, 0]           # at the graceful deadline: responses cut, connections closed
counts = [[0] * BUCKETS for _ in range(STATUS_CLASSES)]   # [class - 1][bucket]
sums = [0.0] * STATUS_CLASSES


def observe(status_class: int, seconds: float) -> None:
    """A response of status_class (1-5; others are not HTTP's) took seconds."""
    if 0 < status_class <= STATUS_CLASSES:
        counts[status_class - 1][bisect_left(LATENCY_BOUNDS, seconds)] += 1
        sums[status_class - 1] += seconds


class _LagProbe:
    """A timer the loop is asked to run every LAG_PROBE seconds: how much
    later than planned it runs is the time the loop spent on something else
    (a callback that blocks, a burst of work) before it could. A stall of S
    seconds shows as S minus up to LAG_PROBE. Unref'd: it keeps no loop
    alive."""

    __slots__ = ("window_began", "worst", "worst_before", "planned")

    def __init__(self) -> None:
        self.window_began = self.planned = 0.0
        self.worst = self.worst_before = -1.0     # not run yet

    def start(self) -> None:
        now = time.monotonic()
        self.window_began = now
        self.arm(now)

    def arm(self, now: float) -> None:
        self.planned = now + LAG_PROBE
        _core.call_later(LAG_PROBE, self.ran).ref(False)

    def ran(self) -> None:
        now = time.monotonic()
        if now - self.window_began >= LAG_WINDOW:
            self.window_began, self.worst_before, self.worst = now, self.worst, 0.0
        self.worst = max(self.worst, now - self.planned)
        self.arm(now)

    def lag(self) -> float | None:
        worst = max(self.worst, self.worst_before)
        return None if worst < 0 else worst


_probe: _LagProbe | None = None


def probe_loop() -> None:
    """Starts the loop's probe, once: from the first STATS frame, or when a
    web worker serves (its application's import is no lag)."""
    global _probe
    if _probe is None:
        _probe = _LagProbe()
        _probe.start()


def figures() -> Saturation:
    return Saturation(in_flight[0], None if _probe is None else _probe.lag(), cut[0], cut[1],
                      counts, sums)
