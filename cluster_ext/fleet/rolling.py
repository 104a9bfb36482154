"""reload(): a rolling restart, each replacement serving before its
predecessor disconnects, one reload at a time (one asked while it runs joins
it). It tells a running supervise() (_runtime.fleet) when it begins and ends
and yields to the fleet's stop. A recycle (recycle.py) is the same restart
for one worker, and takes the same turn: at most one worker more than the
fleet's size exists at a time."""
from __future__ import annotations

import time

from .. import _forensics, _primary, _runtime
from . import figures, notify, preload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .._worker import Worker

RELOAD_TRIES = 3                 # replacements for one worker before a reload gives up
DEFAULT_GRACEFUL_TIMEOUT = 30.0


def reload(callback: Callable[[], Any] | None = None, *,
           timeout: float | None = None) -> None:
    """Rolling restart, one worker at a time: fork a replacement, wait for its
    'listening' ('online' if the old one served nothing), then disconnect
    the old one, SIGKILLed if its 'disconnect' has not come within timeout
    seconds (by default the running supervise()'s graceful_timeout, else
    30 s); callback() once every old worker is replaced. A replacement that dies before it is
    ready is tried again; after RELOAD_TRIES deaths in a row the reload ends
    there and the old workers go on serving (code that cannot start is not
    rolled out), without callback(). A fleet that begins to stop ends the
    reload: nothing more is forked."""
    rolling_restart(timeout,
                    lambda complete, _: callback() if complete and callback else None,
                    cause="reload() called")


def rolling_restart(timeout: float | None, on_end: Callable[[bool, _Reload], Any],
                    cause: str) -> None:
    """reload(), which ends in on_end(complete, the reload): complete is True
    once every old worker is replaced, False when the replacements could not
    start; the reload has what the fleet saw fail during it (reset,
    failed). Its start is logged after cause (what asked for it), its end
    with its duration and what failed."""
    if not _runtime.is_primary:
        raise RuntimeError("reload() is the primary's")
    if timeout is not None:              # its timers start later, in callbacks
        timeout = _runtime.check_seconds("timeout", timeout)
    fleet = _runtime.fleet
    if fleet is not None:
        fleet.reload_asked()
    running = _Reload.running
    if running is not None and running.only is None:
        running.join(on_end)
        _runtime.log("info", f"{cause}: reloading {len(running.old())} workers "
                     "(joining the reload running)")
        running.renew_template()
        return
    notify.reloading()                 # nothing without a supervise() under systemd
    if fleet is not None:
        fleet.reload_began()
    if running is not None:            # a recycle: it becomes the reload
        what = running.what()
        running.join(on_end)
        _runtime.log("info", f"{cause}: reloading {len(running.old())} workers "
                     f"(the {what} running becomes the reload)")
        running.renew_template()
        return
    if timeout is None:
        timeout = fleet.graceful_timeout if fleet is not None else DEFAULT_GRACEFUL_TIMEOUT
    reload = _Reload(timeout, on_end)
    _runtime.log("info", f"{cause}: reloading {len(reload.old())} workers")
    reload.renew_template()
    reload.step()


def replace_one(w: Worker, timeout: float, on_end: Callable[[bool, _Reload], Any]) -> bool:
    """w replaced as a reload replaces each worker, ending in on_end(complete);
    False, and nothing done, while a reload or another replacement runs."""
    if _Reload.running is not None:
        return False
    _Reload(timeout, on_end, only=w).step()
    return True


class _Reload:
    """The reload running; there is one at a time. One asked while it runs
    joins it rather than run beside it (two would each fork replacements and
    both retire the same workers, and the fleet would swell): from then on it
    replaces every worker forked before the latest ask, its own replacements
    so far included, since they may run the code that was current before."""

    running: _Reload | None = None

    def __init__(self, timeout: float, on_end: Callable[[bool, _Reload], Any],
                 only: Worker | None = None) -> None:
        self.timeout = timeout
        self.on_ends = [on_end]
        self.upto = _runtime.next_id - 1      # the newest worker id to replace
        self.only = only                      # a recycle: this worker alone
        self.started = time.monotonic()
        self.replaced = 0
        self.died = 0                         # replacements dead before they served
        self.killed: list[str] = []           # the signals that ended old workers
        self.reset = 0                        # connections cut or lost: see saw_exit()
        self.failed = 0                       # requests that got no whole response
        # Under --preload, a reload's new code comes from a new template: its
        # replacements wait for it (step() then only marks itself owed).
        self.awaiting_template = False
        self.step_owed = False
        self.template_problem: str | None = None
        _Reload.running = self
        _runtime.emitter.prepend_listener("exit", self.saw_exit)   # before figures forgets

    def saw_exit(self, w: Worker, code: int | None, sig: Any) -> None:
        """What a worker's exit during the reload cost its clients. One that
        exits on its own cut, at its graceful deadline, the connections and
        responses it still had (it says so before: web.worker's overdue());
        one that dies (a signal: the SIGKILL at the timeout; or an error
        code) also loses the connections it held and the requests it was
        answering, from its last figures (refreshed at that deadline) or,
        for the requests, its table of them (_forensics: exact even for a
        worker that could say nothing more)."""
        answer = figures.last_answer(w.id)
        saturation = answer[3] if answer is not None else None
        closed, cut = (0, 0) if saturation is None else (saturation.closed, saturation.cut)
        if sig is None and code == 0:
            self.reset += closed
            self.failed += cut
            return
        held = answer[1] if answer is not None else 0
        in_flight = 0 if saturation is None else saturation.in_flight
        if w._stacks >= 0:
            _, requests, unlisted = _forensics.read(w._stacks)
            if requests is not None:
                in_flight = len(requests) + unlisted
        self.reset += max(closed, held)
        self.failed += max(cut, in_flight)

    def what(self) -> str:
        return "reload" if self.only is None else f"recycle of worker {self.only.id}"

    def join(self, on_end: Callable[[bool, _Reload], Any]) -> None:
        self.on_ends.append(on_end)
        self.upto = _runtime.next_id - 1
        self.only = None

    def abandoned(self) -> bool:
        """A fleet that begins to stop ends the reload: nothing more is forked."""
        if _runtime.fleet is not None and _runtime.fleet.stopping > 0:
            self.finish()
            _runtime.log("info", f"{self.what()} abandoned after {self.took()}: the fleet "
                         f"is stopping ({self.replaced} workers replaced)")
            return True
        return False

    def finish(self) -> None:
        _Reload.running = None
        _runtime.emitter.off("exit", self.saw_exit)

    def ended(self, complete: bool) -> None:
        self.finish()
        failures = self.failures()
        if self.only is not None:
            if complete:
                _runtime.log("warning" if failures else "info", f"worker {self.only.id} "
                             f"recycled in {self.took()}{failures}")
            else:
                _runtime.log("warning", f"{self.what()} stopped after {self.took()}, it "
                             f"serves on{failures}")
        else:
            if _runtime.fleet is not None:
                _runtime.fleet.reload_ended(complete)
            if complete:
                _runtime.log("warning" if failures or self.reset or self.failed else "info",
                             f"reload done in {self.took()}: {self.replaced} workers "
                             f"replaced, {self.lost()}{failures}")
            else:
                _runtime.log("warning", f"reload stopped after {self.took()}: "
                             f"{self.replaced} of {self.replaced + len(self.old())} workers "
                             f"replaced{failures}")
        for on_end in self.on_ends:
            on_end(complete, self)

    def renew_template(self) -> None:
        """Under --preload, a new template for the new code, which the next
        replacement waits for (a reload joined too: the code may have
        changed since the running one's template imported it)."""
        if preload.active is not None and self.only is None:
            self.awaiting_template = True
            preload.active.renew(self.template_ready)

    def template_ready(self, problem: str | None) -> None:
        """The new preload template imported the application, or could not:
        the replacements go on, from every worker forked until now (a
        respawn or a grow meanwhile forked from the old template), or the
        reload stops once no replacement is under way."""
        if _Reload.running is not self:
            return                          # it ended meanwhile (the fleet stopped)
        self.awaiting_template = False
        self.template_problem = problem
        self.upto = _runtime.next_id - 1
        if self.step_owed:
            self.step_owed = False
            self.step()

    def keep(self) -> str:
        return "the workers keep their code" if self.only is None else "it serves on"

    def took(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s"

    def lost(self) -> str:
        """What the reload cost clients, as the log and `cluster-ext reload` say it."""
        return f"{self.reset} connections reset, {self.failed} requests failed"

    def failures(self) -> str:
        """What went wrong on the way, for the end's line ('' for nothing)."""
        seen = []
        if self.died:
            seen.append(f"{self.died} replacements died before they served")
        if self.killed:
            seen.append(f"{len(self.killed)} old workers ended by "
                        f"{', '.join(sorted(set(self.killed)))}")
        return "; " + ", ".join(seen) if seen else ""

    def old(self) -> list[Worker]:
        """The workers still to replace, oldest first."""
        workers = _runtime.workers
        assert workers is not None          # the primary's
        return sorted((w for w in workers.values()
                       if (w.id <= self.upto if self.only is None else w is self.only)
                       and not w.is_dead() and w.is_connected()
                       and not w._disconnecting),     # retiring already: ours, or a shrink
                      key=lambda w: w.id)

    def next_old(self) -> Worker | None:
        return next(iter(self.old()), None)

    def step(self) -> None:
        if self.abandoned():
            return
        if self.awaiting_template:
            self.step_owed = True
            return
        if self.template_problem is not None:
            _runtime.log("error", f"{self.what()} stopped, {self.keep()}: the new preload "
                         f"template cannot serve: {self.template_problem.rstrip()}")
            self.ended(False)
            return
        if _runtime.fleet is not None:
            # A shrink during the reload retired an old worker that was being
            # replaced: its replacement takes the place of the oldest.
            _runtime.fleet.trim()
        w = self.next_old()
        if w is None:
            self.ended(True)
        else:
            self.replace(w, RELOAD_TRIES)

    def replace(self, w: Worker, tries: int) -> None:
        # w may still be starting (forked before a later ask): a fleet that
        # serves waits for its replacement to listen all the same.
        workers = _runtime.workers
        assert workers is not None
        serves = any(x.state == "listening" for x in workers.values())
        ready = "listening" if serves else "online"
        try:
            new = _primary.fork()
        except (OSError, MemoryError) as exc:
            why = _primary.refused(exc)
            if why is None:
                raise
            # Out of descriptors, memory or processes: the old workers serve
            # on rather than wait in a reload nobody can see the end of.
            _runtime.log("error", f"{self.what()} stopped, {self.keep()}: "
                         f"cannot fork a replacement: {why}")
            self.ended(False)
            return
        if _runtime.fleet is not None:           # the new one takes the old one's place
            _runtime.fleet.restarts_of[new.id] = _runtime.fleet.restarts_of.get(w.id, 0) + 1

        def replaced(*_: Any) -> None:
            new.off("exit", failed)
            self.replaced += 1
            if w.is_dead():               # killed meanwhile: nothing to retire
                self.step()
                return
            w.once("exit", retired)
            w.disconnect(timeout=self.timeout)

        def retired(code: int | None, sig: Any) -> None:
            if sig is not None:
                self.killed.append(sig.name)
            # Next turn: the exit's own listeners (its log line) come before
            # the next fork or the reload's end.
            _runtime.call_later(0, self.step)

        def failed(*_: Any) -> None:
            new.off(ready, replaced)
            self.died += 1
            if self.abandoned():
                return
            if new.boot_failure is not None:  # the new code cannot start: keep the old
                _runtime.log("error", f"{self.what()} stopped, {self.keep()}: "
                             f"worker {new.id} failed to boot: {new.boot_failure}")
                if _runtime.fleet is not None:
                    _runtime.fleet.boot_failures_told.add(new.id)
                self.ended(False)
                return
            if w.is_dead():               # both gone: its slot is the fleet's to refill
                self.step()
            elif tries > 1:
                self.replace(w, tries - 1)
            else:
                self.ended(False)

        new.once(ready, replaced)
        new.once("exit", failed)
