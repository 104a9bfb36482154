"""Graceful recycling (--max-requests, --max-lifetime, --max-rss): a worker
past one of its limits is replaced as a reload replaces it (the replacement
serves before the worker disconnects and drains), one at a time across the
fleet, reloads included: at most one worker more than the fleet's size
exists at once, so that a recycle storm cannot run the box out of memory.

Each worker's limits are drawn at its fork, jitter added, so that workers
started together are not recycled together. The primary looks four times
a second: the requests from each worker's answer to a STATS frame (HTTP
requests under the web layer, connections otherwise), its age from its
fork, its resident memory from /proc."""
from __future__ import annotations

import random
import time

from .. import _core, _runtime
from . import figures, rolling

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._worker import Worker

CHECK_EVERY = 0.25       # seconds between two looks: a limit passed waits no longer
RETRY_AFTER = 30.0       # a worker whose recycle stopped (its replacement failed) waits so long
REASONS = ("requests", "lifetime", "rss")


class Limits:
    """What recycles a worker; None: no such limit. max_rss in MiB."""

    def __init__(self, max_requests: int | None = None, max_requests_jitter: int = 0,
                 max_lifetime: float | None = None, max_lifetime_jitter: float = 0.0,
                 max_rss: float | None = None) -> None:
        for name, value in (("max_requests", max_requests),
                            ("max_requests_jitter", max_requests_jitter)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < (0 if name.endswith("jitter") else 1)):
                least = 0 if name.endswith("jitter") else 1
                raise ValueError(f"{name} must be an int of {least} or more, not {value!r}")
        if max_lifetime is not None:
            max_lifetime = _runtime.check_seconds("max_lifetime", max_lifetime)
            if max_lifetime <= 0:
                raise ValueError("max_lifetime must be positive")
        max_lifetime_jitter = _runtime.check_seconds("max_lifetime_jitter", max_lifetime_jitter)
        if max_rss is not None and not (isinstance(max_rss, (int, float))
                                        and not isinstance(max_rss, bool) and max_rss > 0):
            raise ValueError(f"max_rss must be a positive number of MiB, not {max_rss!r}")
        self.max_requests, self.requests_jitter = max_requests, max_requests_jitter
        self.max_lifetime, self.lifetime_jitter = max_lifetime, max_lifetime_jitter
        self.max_rss = max_rss

    def any(self) -> bool:
        return (self.max_requests is not None or self.max_lifetime is not None
                or self.max_rss is not None)


class Recycler:
    """The fleet's recycling: its limits drawn for each worker, a look once a
    second, and the workers past a limit replaced in turn."""

    def __init__(self, limits: Limits, graceful_timeout: float) -> None:
        self.limits = limits
        self.graceful_timeout = graceful_timeout
        self.due: dict[int, tuple[int | None, float | None]] = {}   # id -> (requests, deadline)
        self.waiting: dict[int, str] = {}    # worker id -> why, in the order found
        self.held: dict[int, float] = {}     # worker id -> when it may be tried again
        self.counts = dict.fromkeys(REASONS, 0)   # workers recycled, by the limit passed
        self.timer: _core.Handle | None = None
        self.stopped = False

    def start(self) -> None:
        _runtime.emitter.on("fork", self.on_fork)
        _runtime.emitter.on("exit", self.on_exit)
        self.schedule()

    def schedule(self) -> None:
        # unref'd: a look to come never holds up the fleet's end
        self.timer = _runtime.call_later(CHECK_EVERY, self.look)
        self.timer.ref(False)

    def stop(self) -> None:
        self.stopped = True
        _runtime.emitter.off("fork", self.on_fork)
        _runtime.emitter.off("exit", self.on_exit)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_fork(self, w: Worker) -> None:
        limits = self.limits
        requests = deadline = None
        if limits.max_requests is not None:
            requests = limits.max_requests + random.randint(0, limits.requests_jitter)
        if limits.max_lifetime is not None:
            deadline = (time.monotonic() + limits.max_lifetime
                        + random.uniform(0, limits.lifetime_jitter))
        self.due[w.id] = (requests, deadline)

    def on_exit(self, w: Worker, *_: object) -> None:
        self.due.pop(w.id, None)
        self.waiting.pop(w.id, None)
        self.held.pop(w.id, None)

    def look(self) -> None:
        self.timer = None
        if self.limits.max_requests is not None:
            figures.ask(self.check)      # the requests come in the workers' answers
        else:
            self.check()

    def check(self) -> None:
        if self.stopped:
            return
        fleet = _runtime.fleet
        workers = _runtime.workers
        assert workers is not None       # the primary's
        now = time.monotonic()
        for w in sorted(workers.values(), key=lambda w: w.id):
            serving = w.state == "listening" or w._said_ready
            if w.id in self.waiting or w.id not in self.due or now < self.held.get(w.id, 0) \
                    or not serving or w.is_dead() or not w.is_connected() or w._disconnecting:
                continue
            why = self.past_limit(w, now)
            if why is not None:
                self.waiting[w.id] = why
        if fleet is None or not fleet.stopping:
            self.next()
            self.schedule()

    def past_limit(self, w: Worker, now: float) -> str | None:
        """Which limit w is past, as the log says it, or None."""
        limits = self.limits
        requests, deadline = self.due[w.id]
        if requests is not None:
            answered = figures.requests_of(w.id)
            if answered is not None and answered >= requests:
                return f"requests: {answered} answered (its limit {requests})"
        if deadline is not None and now >= deadline:
            assert limits.max_lifetime is not None
            return f"lifetime: {limits.max_lifetime:g} s passed"
        if limits.max_rss is not None:
            rss = figures.resident(w.pid)
            if rss is not None and rss > limits.max_rss * 2**20:
                return f"rss: {rss / 2**20:.0f} MiB resident (its limit {limits.max_rss:g})"
        return None

    def next(self) -> None:
        """The first worker waiting is replaced, unless a reload or a
        recycle holds the turn (the next look tries again)."""
        workers = _runtime.workers
        assert workers is not None
        while self.waiting:
            worker_id, why = next(iter(self.waiting.items()))
            w = workers.get(worker_id)
            if w is None or w.is_dead() or w._disconnecting:
                del self.waiting[worker_id]
                continue
            reason = why.partition(":")[0]

            def ended(complete: bool, _: Any, w: Worker = w, reason: str = reason) -> None:
                if complete:
                    self.counts[reason] += 1
                else:
                    self.held[w.id] = time.monotonic() + RETRY_AFTER
                self.next()

            if not rolling.replace_one(w, self.graceful_timeout, ended):
                return
            del self.waiting[worker_id]
            _runtime.log("info", f"recycling worker {worker_id}: {why}")
            return
