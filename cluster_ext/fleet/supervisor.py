"""supervise(): keeping a fleet up, beyond Node: respawn with back-off, a
crash-loop stop, graceful stop on SIGTERM/SIGINT, SIGHUP reload, SIGTTIN and
SIGTTOU, log files reopened at SIGUSR1, readiness (sd_notify, the ready
file) and the heartbeat (a worker whose loop does not answer in time is
SIGKILLed and replaced)."""
from __future__ import annotations

import os
import time

from .. import _core, _fast, _primary, _runtime, _shared, _worker
from . import forensics, notify, reap
from .recycle import REASONS, Limits, Recycler
from .rolling import DEFAULT_GRACEFUL_TIMEOUT, rolling_restart

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .._worker import Worker
    from .files import RunFile

CRASH_WINDOW = 1.0               # a worker dead this soon after its start crashed
CRASH_LOOP = 10                  # this many crashes in a row: stop
HEALTHY_AFTER = 30.0             # this long alive resets the back-off

STOP_SIGNALS = (_fast.signal.SIGTERM, _fast.signal.SIGINT)
FLEET_SIGNALS = (*STOP_SIGNALS, _fast.signal.SIGQUIT, _fast.signal.SIGHUP, _fast.signal.SIGTTIN,
                 _fast.signal.SIGTTOU, _fast.signal.SIGUSR1)


class CrashLoopError(RuntimeError):
    """Every new worker died within a second of starting, again and again."""


class BootError(RuntimeError):
    """A worker could not start (its application does not import, its port is
    taken, its startup failed) before any worker of that code had served: the
    fleet stops at once rather than retry code that cannot run. load_error:
    the application itself could not be loaded (no such module or attribute,
    its import raised, not an application)."""

    def __init__(self, worker_id: int, reason: str, load_error: bool = False) -> None:
        super().__init__(f"worker {worker_id} failed to boot: {reason.rstrip()}")
        self.worker_id, self.reason, self.load_error = worker_id, reason, load_error


class Fleet:
    def __init__(self, size: int, respawn: bool, graceful_timeout: float,
                 heartbeat_timeout: float | None, backoff: tuple[float, float],
                 limits: Limits | None = None) -> None:
        self.size, self.respawn = size, respawn
        self.recycler = (Recycler(limits, graceful_timeout)
                         if limits is not None and limits.any() else None)
        self.graceful_timeout, self.heartbeat_timeout = graceful_timeout, heartbeat_timeout
        self.backoff_min, self.backoff_max = backoff
        self.stopping = 0                # signals received
        self.crashes = 0                 # in a row, each within CRASH_WINDOW
        self.delay = 0.0
        self.started: dict[int, float] = {}
        self.pongs: dict[int, float] = {}
        self.error: BaseException | None = None
        self.pending: list[_core.Handle] = []    # respawn timers waiting out their back-off
        # Forks the kernel refused (descriptors, memory, processes), each
        # True for a respawn, tried again by one timer with a back-off of
        # its own: a refusal is the primary's load, not a worker's crash.
        self.owed: list[bool] = []
        self.retry: _core.Handle | None = None
        self.retry_delay = 0.0
        self.heartbeat: _core.Handle | None = None
        self.stuck: dict[int, forensics.Timeout] = {}   # timed out, until their report
        self.timeouts: _fast.deque[dict[str, Any]] = _fast.deque(maxlen=forensics.KEEP)
        self.reopened: float | None = None     # the last SIGUSR1 (time.monotonic())
        self.proven = False              # a worker of this fleet has listened
        self.ready = False               # every worker serves (READY=1, the ready file)
        self.restarts = 0
        self.ready_file: str | None = None
        self.ready_written: RunFile | None = None   # the ready file, while it is ours
        self.drain_delay = 0.0
        self.timers: list[_core.Handle] = []      # one-shot: the drain delay's
        self.watchdog_timer: _core.Handle | None = None
        # An operator's figures (status, metrics).
        self.since = time.time()
        self.crashes_total = 0           # workers dead within CRASH_WINDOW, unasked
        self.crash_loops = 0             # crash-loop stops
        self.reloads = {True: 0, False: 0}    # ended: complete, stopped
        self.reload_seconds = 0.0        # their durations, summed
        self.last_reload: float | None = None  # the last one's duration
        self.reload_starts: list[float] = []  # of the reloads running
        self.restarts_of: dict[int, int] = {}  # worker id -> workers before it in its place
        self.places: _fast.deque[int] = _fast.deque()  # restarts_of for respawns to come
        self.when_ready: Callable[[], Any] | None = None   # supervise()'s callbacks
        self.on_reload: Callable[[], Any] | None = None
        # Replacements whose boot failure the reload or recycle has logged,
        # with what it meant: logged once, not again at the exit.
        self.boot_failures_told: set[int] = set()

    def spawn(self, respawn: bool = False) -> None:
        if self.stopping or self.error is not None:
            return
        if self.retry is not None:       # a refused fork waits: this one waits with it
            self.owed.append(respawn)
            return
        self.fork(respawn)

    def fork(self, respawn: bool) -> bool:
        """One worker; False when the kernel refused it for want of
        descriptors, memory or processes: it is owed, and tried again once
        the back-off has passed (logged once a try)."""
        try:
            _primary.fork()
        except (OSError, MemoryError) as exc:
            why = _primary.refused(exc)
            if why is None:
                raise
            self.owed.insert(0, respawn)
            self.retry_delay = min(self.backoff_max,
                                   max(self.backoff_min, self.retry_delay * 2))
            _runtime.log("warning", f"cannot fork worker {_runtime.next_id}: {why}; "
                         f"trying again in {self.retry_delay:g} s")
            self.retry = _runtime.call_later(self.retry_delay, self.fork_owed)
            return False
        self.retry_delay = 0.0
        if respawn:
            self.restarts += 1
            notify.notify(f"STATUS={self.status()}")
        return True

    def fork_owed(self) -> None:
        self.retry = None
        while self.owed:
            respawn = self.owed.pop(0)
            if self.live() < self.size and not self.fork(respawn):
                return                   # refused again: the next try is set

    def on_fork(self, w: Worker) -> None:
        """Every worker is timed from its fork, reload()'s replacements too."""
        self.started[w.id] = self.pongs[w.id] = time.monotonic()
        if w.id not in self.restarts_of:
            self.restarts_of[w.id] = self.places.popleft() if self.places else 0

    def live(self) -> int:
        assert _runtime.workers is not None
        return sum(1 for w in _runtime.workers.values()
                   if not w.exited_after_disconnect) + len(self.pending) + len(self.owed)

    def on_exit(self, w: Worker, code: int | None, sig: Any) -> None:
        stuck = self.stuck.get(w.id)
        if stuck is not None:            # it died while it dumped: reported now
            stuck.end()
        started = self.started.pop(w.id, time.monotonic())
        self.pongs.pop(w.id, None)
        restarts = self.restarts_of.pop(w.id, 0)
        told = w.id in self.boot_failures_told
        self.boot_failures_told.discard(w.id)
        if w.boot_failure is not None and not self.proven and not self.stopping:
            # the code has never served
            self.error = BootError(w.id, w.boot_failure, w.boot_failure_load)
            self.stop(now=True)
            return
        if self.stopping or not self.respawn:
            if not self.workers():       # the last one: nothing keeps the loop turning
                self.cancel_timers()
            return
        if w.boot_failure is not None and not told:
            _runtime.log("error", f"worker {w.id} failed to boot: {w.boot_failure}")
        if not w.exited_after_disconnect:
            lived = time.monotonic() - started
            if lived < CRASH_WINDOW:
                self.crashes += 1
                self.crashes_total += 1
                if self.crashes >= CRASH_LOOP:
                    self.crash_loops += 1
                    self.error = CrashLoopError(
                        f"{self.crashes} workers in a row died within {CRASH_WINDOW:g} s "
                        f"of starting (the last: code={code}, signal={sig})")
                    self.stop(now=True)
                    return
            else:
                self.crashes = 0
            if lived >= HEALTHY_AFTER:
                self.delay = 0.0
            self.delay = min(self.backoff_max, max(self.backoff_min, self.delay * 2))
        # Also after a retirement: a worker that died while a reload had one
        # extra in flight was not replaced then, and the count is short now.
        if self.live() < self.size:
            timer: _core.Handle = _runtime.call_later(self.delay,
                                                      lambda: self.respawn_one(timer))
            self.pending.append(timer)
            self.places.append(restarts + 1)

    def respawn_one(self, timer: _core.Handle) -> None:
        self.pending.remove(timer)
        if self.live() < self.size:
            self.spawn(respawn=True)

    def on_signal_received(self, signum: int, frame: Any) -> None:
        """The handler: Python runs it between any two bytecodes, inside a
        callback that is changing the fleet (an exit's respawn half counted),
        so what the signal starts runs on the loop, after that callback."""
        _runtime.call_soon_threadsafe(self.on_signal, signum)

    def on_signal(self, signum: int) -> None:
        """A signal to the primary: what it starts, logged first, as an
        operator looks for it."""
        # supervise() has imported it: a dict lookup
        import signal

        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS or signum == _fast.signal.SIGQUIT:
            self.stop(now=signum == _fast.signal.SIGQUIT, cause=f"{name} received")
        elif signum == _fast.signal.SIGUSR1:     # a stopping fleet logs on: reopened too
            self.reopen_logs(name)
        elif self.stopping:
            _runtime.log("info", f"{name} received: ignored, the fleet is stopping")
        elif signum == _fast.signal.SIGHUP:
            rolling_restart(None, lambda *_: None, cause=f"{name} received")
        elif signum == _fast.signal.SIGTTIN:
            self.grow()
            _runtime.log("info", f"{name} received: scaling to {self.size} workers")
        elif self.size == 1:
            _runtime.log("info", f"{name} received: ignored, 1 worker is the least")
        else:
            self.shrink()
            _runtime.log("info", f"{name} received: scaling to {self.size} workers")

    def reopen_logs(self, name: str) -> None:
        """SIGUSR1, as gunicorn's arbiter takes it (logrotate's way without
        copytruncate): the primary's log files reopened, then the signal
        passed on to every worker, which reopens its own. A worker that has
        not booted yet has no handler for it (SIGUSR1 would kill it): it is
        told when it comes online (on_online), having opened nothing before."""
        reopened = _runtime.reopen_log_files()
        self.reopened = time.monotonic()
        told = sum(1 for w in self.workers() if w.state != "none" and _tell_reopen(w))
        _runtime.log("info", f"{name} received: log files reopened ({reopened} here), "
                     f"the signal passed on to {told} workers")

    def on_online(self, w: Worker) -> None:
        if self.reopened is not None and self.started.get(w.id, self.reopened) < self.reopened:
            _tell_reopen(w)

    def stop(self, now: bool = False, cause: str | None = None) -> None:
        """A graceful stop, or at once: now, or a second stop. cause: what
        asked, for the log line."""
        # Counted before the line is logged: a second stop (the control
        # socket's) must see the first whatever the log does.
        self.stopping += 1
        first = self.stopping == 1
        at_once = now or not first
        if cause is not None:
            _runtime.log("info", f"{cause}: " + (
                f"stopping at once (SIGKILL to {len(self.workers())} workers)" if at_once
                else f"stopping gracefully (timeout {self.graceful_timeout:g} s)"))
        if first:
            _shared.hold(False)
            notify.notify("STOPPING=1", "STATUS=stopping")
            self.unready()
        self.cancel_timers()
        if self.recycler is not None:
            self.recycler.stop()
        if at_once:
            for w in self.workers():
                w.kill("SIGKILL")
        elif self.drain_delay > 0:
            # Serve on while the load balancer (Kubernetes' endpoints) lets
            # go of this instance: no request meets a closed port.
            _runtime.log("info", f"stopping in {self.drain_delay:g} s (drain delay); "
                         "the workers serve until then")
            self.timers.append(_runtime.call_later(
                self.drain_delay, lambda: _primary.disconnect(timeout=self.graceful_timeout)))
        else:
            _primary.disconnect(timeout=self.graceful_timeout)

    def cancel_timers(self) -> None:
        """Respawns, refused forks, the drain delay, the heartbeat and the
        watchdog: none of them may keep the loop turning once the fleet ends."""
        for timer in (*self.pending, *self.timers, self.heartbeat, self.watchdog_timer,
                      self.retry):
            if timer is not None:
                timer.cancel()
        self.pending.clear()
        self.timers.clear()
        self.owed.clear()
        self.heartbeat = self.watchdog_timer = self.retry = None

    @property
    def recycles(self) -> dict[str, int]:
        """Workers recycled, by the limit they passed."""
        return self.recycler.counts if self.recycler is not None else dict.fromkeys(REASONS, 0)

    def unready(self) -> None:
        if self.ready_written is not None:
            self.ready_written.remove("ready file")
            self.ready_written = None

    def workers(self) -> list[Worker]:
        assert _runtime.workers is not None
        return list(_runtime.workers.values())

    def grow(self) -> None:
        self.size += 1
        self.spawn()

    def scale(self, size: int) -> None:
        """size workers from now on: more are forked, the oldest retire."""
        while self.size < size:
            self.grow()
        while self.size > max(size, 1):
            self.shrink()

    def trim(self) -> None:
        """The oldest workers retire while the fleet is over its size: a
        shrink during a reload retired an old worker that a replacement was
        forked for."""
        staying = sorted((w for w in self.workers() if not w.exited_after_disconnect),
                         key=lambda w: w.id)
        for w in staying[:max(self.live() - self.size, 0)]:
            w.disconnect(timeout=self.graceful_timeout)

    def shrink(self) -> None:
        if self.size <= 1:
            return
        self.size -= 1
        if self.owed:                    # one the kernel refused goes first
            self.owed.pop()
            return
        if self.pending:                 # then a respawn waiting out its back-off
            self.pending.pop().cancel()
            if self.places:              # a fork may have taken its place already
                self.places.pop()
            return
        oldest = min((w for w in self.workers() if not w.exited_after_disconnect),
                     key=lambda w: w.id, default=None)
        if oldest is not None:
            oldest.disconnect(timeout=self.graceful_timeout)

    def on_listening(self, w: Worker, address: Any) -> None:
        self.proven = True
        self.check_ready()

    def on_said_ready(self, w: Worker) -> None:
        """cluster.worker.ready(): a worker that serves without listening."""
        _worker.said_ready(w)
        self.proven = True
        self.check_ready()

    def serving(self) -> int:
        """Workers that serve: they have listened, or said ready()."""
        return sum(1 for w in self.workers() if not w.exited_after_disconnect and (
            w.state == "listening" or (w.state == "online" and w._said_ready)))

    def count(self, *states: str) -> int:
        return sum(1 for w in self.workers()
                   if w.state in states and not w.exited_after_disconnect)

    def check_ready(self) -> None:
        """Ready once every worker serves: it has listened (a web worker,
        after its lifespan startup), or said so with cluster.worker.ready().
        Never on a timer: a worker that takes long to import or start would
        be counted before it serves."""
        if self.ready or self.stopping:
            return
        if self.serving() >= self.size:
            self.ready = True
            if self.ready_file is not None:
                self.write_ready_file(self.ready_file)
                if self.stopping:            # a stop signal's handler ran meanwhile
                    self.unready()
                    return
            status = self.status()
            notify.notify("READY=1", f"STATUS={status}")
            _runtime.log("info", f"ready: {status}")
            if self.when_ready is not None:
                self.when_ready()

    def write_ready_file(self, path: str) -> None:
        """The workers serve whatever becomes of the file: an error (a full
        disk, something put at the path since the start) is logged."""
        from . import files
        try:
            self.ready_written = files.create(path, f"{os.getpid()}\n")
        except OSError as exc:
            _runtime.log("error", f"ready file not written: {path}: {exc.strerror}")

    def status(self) -> str:
        return (f"{self.count('listening', 'online')} workers, "
                f"{self.count('listening')} listening, {self.restarts} restarts")

    def reload_asked(self) -> None:
        """A reload was asked for (each ask, one that joins the reload
        running too), before it forks anything."""
        if self.on_reload is not None:
            self.on_reload()

    def reload_began(self) -> None:
        self.reload_starts.append(time.monotonic())

    def reload_ended(self, complete: bool) -> None:
        self.reloads[complete] += 1
        if self.reload_starts:
            self.last_reload = time.monotonic() - self.reload_starts.pop(0)
            self.reload_seconds += self.last_reload
        if not self.stopping:
            notify.notify("READY=1", "STATUS=" + ("reloaded: " if complete else
                                                   "reload stopped: ") + self.status())

    def watchdog(self) -> None:
        notify.notify("WATCHDOG=1")
        interval = notify.watchdog_interval
        assert interval is not None      # watchdog() runs only with an interval
        self.watchdog_timer = _runtime.call_later(interval, self.watchdog)

    def on_pong(self, w: Worker) -> None:
        self.pongs[w.id] = time.monotonic()

    def on_timed_out(self, record: dict[str, Any]) -> None:
        """A stuck worker was killed (or died) and reported: status keeps it."""
        del self.stuck[record["worker"]]
        self.timeouts.append(record)

    def beat(self) -> None:
        timeout = self.heartbeat_timeout
        assert timeout is not None       # beat() runs only with a heartbeat
        now = time.monotonic()
        for w in self.workers():
            if w.is_dead() or not w.is_connected() or w.id in self.stuck:
                continue
            # A worker forked before supervise() is timed from its first beat.
            silent = now - self.pongs.setdefault(w.id, now)
            if silent > timeout:
                # its Python code is stuck: replace it (gunicorn's WORKER TIMEOUT),
                # once it has told what it was doing
                _runtime.log("error", f"worker {w.id} timed out after {silent:.1f} s "
                             "(no heartbeat): killing it")
                self.pongs[w.id] = now
                stuck = self.stuck[w.id] = forensics.Timeout(w, self.on_timed_out)
                stuck.start()
            else:
                w._send_frame(_core.FRAME_PING)
        self.heartbeat = _runtime.call_later(timeout / 3, self.beat)


def _tell_reopen(w: Worker) -> bool:
    if w.is_dead():
        return False
    try:
        os.kill(w.pid, _fast.signal.SIGUSR1)
    except ProcessLookupError:               # its exit is on its way
        return False
    return True


def supervise(workers: int | None = None, *, respawn: bool = True,
              graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
              heartbeat_timeout: float | None = None,
              backoff: tuple[float, float] = (0.1, 15.0),
              pid_file: str | None = None, ready_file: str | None = None,
              drain_delay: float = 0.0, max_requests: int | None = None,
              max_requests_jitter: int = 0, max_lifetime: float | None = None,
              max_lifetime_jitter: float = 0.0, max_rss: float | None = None,
              when_ready: Callable[[], Any] | None = None,
              on_reload: Callable[[], Any] | None = None) -> None:
    """Keeps `workers` workers (default: one per core) alive and runs the loop
    until the fleet has stopped. SIGTERM/SIGINT stop gracefully (a second one,
    or SIGQUIT, at once), SIGHUP reloads, SIGTTIN adds a worker, SIGTTOU retires the
    oldest. Raises CrashLoopError instead of respawning forever, and
    BootError when a worker cannot start before any worker has listened.
    SIGUSR1 reopens the log files of the primary and of every worker.
    Under systemd it speaks sd_notify (READY, RELOADING, STOPPING, STATUS,
    WATCHDOG); pid_file holds the primary's pid while it runs, ready_file
    exists exactly while every worker serves; before any fork, either
    raises FileExistsError when its path holds anything but a dead
    primary's pid ('Already running on PID N' for a live one's), and
    OSError when it cannot be written. drain_delay: seconds a graceful stop
    keeps serving (not ready, STOPPING=1) before it disconnects. A worker
    that has answered max_requests requests (plus a random 0 to
    max_requests_jitter), lived max_lifetime seconds (plus 0 to
    max_lifetime_jitter) or grown past max_rss MiB resident is recycled:
    replaced as a reload replaces it, one at a time. when_ready() is
    called once, as the fleet first becomes ready (READY=1), and
    on_reload() as each reload is asked for, before it forks."""
    # The signal handlers log: logging is imported here, not by a handler
    # that runs inside its first import (a module half made).
    import logging  # noqa: F401
    import signal

    from . import files
    if not _runtime.is_primary:
        raise RuntimeError("supervise() is the primary's")
    if _runtime.fleet is not None:
        raise RuntimeError("supervise() is already running")
    # Each of these starts a timer later, in a callback (a stop, an exit, a
    # beat): checked here, before any fork.
    graceful_timeout = _runtime.check_seconds("graceful_timeout", graceful_timeout)
    drain_delay = _runtime.check_seconds("drain_delay", drain_delay)
    low, high = backoff
    backoff = (_runtime.check_seconds("backoff", low), _runtime.check_seconds("backoff", high))
    if heartbeat_timeout is not None:
        heartbeat_timeout = _runtime.check_seconds("heartbeat_timeout", heartbeat_timeout)
    size = workers if workers is not None else (os.cpu_count() or 1)
    if size < 1:
        raise ValueError("supervise() needs at least one worker")
    if heartbeat_timeout is not None and heartbeat_timeout <= 0:
        raise ValueError("heartbeat_timeout must be positive")
    limits = Limits(max_requests, max_requests_jitter, max_lifetime, max_lifetime_jitter,
                    max_rss)
    fleet = Fleet(size, respawn, graceful_timeout, heartbeat_timeout, backoff, limits)
    fleet.ready_file = os.path.abspath(ready_file) if ready_file else None
    fleet.drain_delay = drain_delay
    fleet.when_ready, fleet.on_reload = when_ready, on_reload
    written = files.claim(os.path.abspath(pid_file), f"{os.getpid()}\n") if pid_file else None
    if fleet.ready_file is not None:
        try:
            files.make_way(fleet.ready_file)   # a file left by a primary that died
            files.probe(fleet.ready_file)
        except BaseException:
            if written is not None:
                written.remove("pid file")
            raise
    notify.start()
    previous = {sig: signal.signal(sig, fleet.on_signal_received) for sig in FLEET_SIGNALS}
    _worker.primary_frame_handlers[_core.FRAME_PONG] = _worker.control_handler(fleet.on_pong)
    _worker.primary_frame_handlers[_core.FRAME_READY] = _worker.control_handler(
        fleet.on_said_ready)
    emitter = _runtime.emitter
    emitter.on("fork", fleet.on_fork)
    emitter.on("exit", fleet.on_exit)
    emitter.on("listening", fleet.on_listening)
    emitter.on("online", fleet.on_online)
    _runtime.fleet = fleet
    _runtime.supervised_drain_delay = drain_delay    # the workers drain on their own signal
    _runtime.keeps_stacks = heartbeat_timeout is not None
    _shared.hold(True)
    # A container's PID 1, or a child subreaper: the workers' orphans are ours.
    reaper = reap.Reaper() if _core.inherits_orphans() else None
    try:
        if reaper is not None:
            reaper.start()
        if notify.watchdog_interval is not None:
            fleet.watchdog()
        if fleet.recycler is not None:
            fleet.recycler.start()
        for _ in range(size):
            fleet.spawn()
        if heartbeat_timeout is not None:
            fleet.heartbeat = _runtime.call_later(heartbeat_timeout / 3, fleet.beat)
        _runtime.run()
    finally:
        if reaper is not None:
            reaper.stop()
        if fleet.recycler is not None:
            fleet.recycler.stop()
        _runtime.fleet = None
        _runtime.supervised_drain_delay = None
        _runtime.keeps_stacks = False
        _shared.hold(False)
        emitter.off("fork", fleet.on_fork)
        emitter.off("exit", fleet.on_exit)
        emitter.off("listening", fleet.on_listening)
        emitter.off("online", fleet.on_online)
        fleet.unready()
        if written is not None:
            written.remove("pid file")
        notify.stop()
        _worker.primary_frame_handlers.pop(_core.FRAME_PONG, None)
        _worker.primary_frame_handlers[_core.FRAME_READY] = _worker.control_handler(
            _worker.said_ready)
        for sig, fn in previous.items():
            signal.signal(sig, fn)
    if fleet.error is not None:
        raise fleet.error
