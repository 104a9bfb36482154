"""The figures of every worker and of the fleet, gathered by the primary for
status and /metrics: gather() sends each worker a STATS frame and waits for
the answers; snapshot() is what they show.

The figures come from three places. The primary's end of each worker's
channel counts the user messages it carried and, under SCHED_RR, the
connections handed to the worker that it may not have taken yet (in the
engine); each worker counts the connections its servers took and holds, and
its saturation (_saturation: requests in flight, loop lag, latencies), and
answers a STATS frame with them; /proc gives memory, CPU time and age. No
file is shared, so no multiprocess directory is needed.
"""
from __future__ import annotations

import os
import time

from .. import _core, _protocol, _runtime, _worker
from .._appmetrics import STATS_APP
from .._protocol import BUCKETS, LATENCY_BOUNDS, STATUS_CLASSES, Saturation
from . import appmetrics

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .._worker import Worker

    Snapshot = dict[str, Any]

GATHER_TIMEOUT = 1.0           # a worker that has not answered by then shows its last figures
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

# worker id -> (served, open, requests, saturation or None): its last answer
_answers: dict[int, tuple[int, int, int, Saturation | None]] = {}
# the latencies of the workers that exited, at their last answers: a
# histogram summed over the fleet never goes back
_exited_counts = [[0] * BUCKETS for _ in range(STATUS_CLASSES)]
_exited_sums = [0.0] * STATUS_CLASSES
_gatherings: list[_Gathering] = []
_cpu_samples: dict[int, tuple[float, float, float]] = {}   # pid -> (when, cpu s, cpu %)


def _proc(pid: int) -> tuple[float, int, float] | None:
    """(CPU seconds, resident bytes, age in seconds) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after it
    fields = stat[stat.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK        # utime + stime
    started = int(fields[19]) / _TICK                        # since boot
    return cpu, int(fields[21]) * _PAGE, max(0.0, uptime - started)


def _cpu_percent(pid: int, cpu: float, age: float) -> float:
    """Over the time since the last look, if it is long enough to mean
    something; at the first look, over the process's life."""
    now = time.monotonic()
    last = _cpu_samples.get(pid)
    if last is None:
        percent = 100.0 * cpu / age if age > 0 else 0.0
    elif now - last[0] < 0.5:
        return last[2]
    else:
        percent = 100.0 * (cpu - last[1]) / (now - last[0])
    _cpu_samples[pid] = (now, cpu, percent)
    return percent


def _row(w: Worker, restarts: int) -> dict[str, Any]:
    received, sent = w._chan.messages if w._chan is not None else (0, 0)
    served, open_connections, requests, saturation = _answers.get(
        w.id, (None, None, None, None))
    rr = _runtime.settings.get("scheduling_policy") == _runtime.SCHED_RR
    row: dict[str, Any] = {
        "id": w.id, "pid": w.pid, "state": w.state, "age": None, "restarts": restarts,
        "rss": None, "cpu_percent": None, "cpu_seconds": None,
        "connections": open_connections, "served": served, "requests": requests,
        "in_flight": None if saturation is None else saturation.in_flight,
        "loop_lag": None if saturation is None or saturation.loop_lag is None
        else round(saturation.loop_lag, 4),
        "rr_backlog": w._chan.rr_backlog if rr and w._chan is not None else None,
        "messages_received": received, "messages_sent": sent}
    proc = _proc(w.pid)
    if proc is not None:
        cpu, rss, age = proc
        row.update(age=round(age, 3), rss=rss, cpu_seconds=cpu,
                   cpu_percent=round(_cpu_percent(w.pid, cpu, age), 1))
    return row


def snapshot() -> Snapshot:
    """What status and /metrics show, from the figures at hand."""
    fleet = _runtime.fleet
    workers = _runtime.workers
    assert workers is not None           # the primary's
    alive = {w.pid for w in workers.values()}
    for pid in [pid for pid in _cpu_samples if pid not in alive]:
        del _cpu_samples[pid]
    restarts_of = fleet.restarts_of if fleet is not None else {}
    rows = [_row(w, restarts_of.get(w.id, 0)) for w in sorted(workers.values(),
                                                                key=lambda w: w.id)]
    primary: dict[str, Any] = {"pid": os.getpid(), "supervised": fleet is not None}
    if fleet is not None:
        primary.update(
            state=("stopping" if fleet.stopping else "reloading" if fleet.reload_starts
                   else "ready" if fleet.ready else "starting"),
            workers_wanted=fleet.size, restarts=fleet.restarts,
            crashes=fleet.crashes_total, crash_loops=fleet.crash_loops,
            reloads=fleet.reloads[True], reloads_stopped=fleet.reloads[False],
            reload_seconds=round(fleet.reload_seconds, 3),
            last_reload_seconds=(None if fleet.last_reload is None
                                 else round(fleet.last_reload, 3)),
            recycles=dict(fleet.recycles), since=fleet.since,
            timeouts=list(fleet.timeouts))
    return {"primary": primary, "workers": rows, "request_duration": _request_duration()}


def _request_duration() -> dict[str, Any]:
    """The fleet's latency histogram, by status class ("2xx": {"buckets":
    [[upper bound, cumulative count], ..., ["+Inf", count]], "sum", "count"}):
    the workers' last answers and the exited ones' (only the classes seen)."""
    counts = [list(by_class) for by_class in _exited_counts]
    sums = list(_exited_sums)
    for answer in _answers.values():
        _add(counts, sums, answer[3])
    histogram: dict[str, Any] = {}
    for index, (by_class, seconds) in enumerate(zip(counts, sums, strict=True)):
        total, buckets = 0, []
        for bound, count in zip([*LATENCY_BOUNDS, "+Inf"], by_class, strict=True):
            total += count
            buckets.append([bound, total])
        if total:
            histogram[f"{index + 1}xx"] = {"buckets": buckets, "sum": round(seconds, 6),
                                           "count": total}
    return histogram


def _add(counts: list[list[int]], sums: list[float], saturation: Saturation | None) -> None:
    if saturation is None:
        return
    for index in range(STATUS_CLASSES):
        counts[index] = [a + b for a, b in zip(counts[index], saturation.counts[index],
                                               strict=True)]
        sums[index] += saturation.sums[index]


class _Gathering:
    """One round of STATS frames: done() once every worker asked has answered,
    or at GATHER_TIMEOUT with what came."""

    def __init__(self, done: Callable[[], Any], flags: int = 0) -> None:
        self.done = done
        workers = _runtime.workers
        assert workers is not None
        self.waiting = {w.id for w in workers.values()
                        if w.is_connected() and w._send_frame(_core.FRAME_STATS, flags=flags)}
        self.timer: _core.Handle | None = None
        if not self.waiting:
            _runtime.call_later(0, self.finish)
        else:
            self.timer = _runtime.call_later(GATHER_TIMEOUT, self.finish)
            _gatherings.append(self)

    def answered(self, worker_id: int) -> None:
        self.waiting.discard(worker_id)
        if not self.waiting:
            self.finish()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self in _gatherings:
            _gatherings.remove(self)
        done, self.done = self.done, lambda: None
        done()


def gather(done: Callable[[Snapshot], Any], *, application: bool = False) -> None:
    """Asks every worker for its figures (and, if application, its
    application's metrics: appmetrics.families()); done(snapshot()) once
    they answered."""
    if not _runtime.is_primary:
        raise RuntimeError("the cluster's figures are the primary's")
    _Gathering(lambda: done(snapshot()), STATS_APP if application else 0)


def ask(done: Callable[[], Any]) -> None:
    """Asks every worker for its figures; done() once they answered (or at
    GATHER_TIMEOUT), when requests_of() has them."""
    _Gathering(done)


def requests_of(worker_id: int) -> int | None:
    """The requests a worker said it answered (its connections, unless its
    web layer counts HTTP requests), at its last answer."""
    answer = _answers.get(worker_id)
    return None if answer is None else answer[2]


def last_answer(worker_id: int) -> tuple[int, int, int, Saturation | None] | None:
    """A worker's last answer: (served, open connections, requests, its
    saturation or None); None when it never answered. An exited worker's
    is there until its 'exit' listeners have run."""
    return _answers.get(worker_id)


def resident(pid: int) -> int | None:
    """A process's resident memory in bytes, or None once it is gone."""
    proc = _proc(pid)
    return None if proc is None else proc[1]


def _on_stats(w: Worker, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    if flags & STATS_APP:     # the application's, before the figures
        appmetrics.received(w, payload)
        return
    try:
        _answers[w.id] = _protocol.unpack_stats(payload)
    except ValueError:                   # struct.error: not a reply of ours
        return
    for gathering in list(_gatherings):
        gathering.answered(w.id)


def _forget(w: Worker, *_: Any) -> None:
    answer = _answers.pop(w.id, None)
    if answer is not None:
        _add(_exited_counts, _exited_sums, answer[3])
    for gathering in list(_gatherings):
        gathering.answered(w.id)


_worker.primary_frame_handlers[_core.FRAME_STATS] = _on_stats
_runtime.emitter.on("exit", _forget)
