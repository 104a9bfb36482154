"""Preloading that still reloads code: a template process imports the
application once and every worker forks from it, sharing its memory
copy-on-write; a reload starts a new template first, so that new code (and a
new cluster_ext) is what the replacements run.

The template is exec'd as a worker is (the same command line, environment,
cwd and identity), so the application's import sees what an exec'd worker's
sees. Each worker is forked twice from it, by libc's fork() (os.fork, its
handlers and all): the middle process exits at once, and the worker, an
orphan, is reparented to the primary, a child subreaper, which waits for it
as for any worker. The worker then takes on the primary's plan for it
(_primary.take_plan), as a fork(target=) worker does.

    primary side     Preload: the templates, a fork request per worker
    template side    serve_forks(): ready, then one worker per request
"""
from __future__ import annotations

import errno
import json
import os
import posix
import select
import signal
import socket
import sys

from .. import _core, _primary, _runtime, _worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

TEMPLATE_FD = "CLUSTER_EXT_TEMPLATE_FD"
REPLY_TIMEOUT = 10.0             # seconds a fork request waits for the template
READY_POLL = 0.02                # seconds between looks at a loading template
STOP_TIMEOUT = 5.0               # seconds a template has to exit once let go
MAX_MESSAGE = 1 << 20            # a request's bytes: the environment, mostly
REPARENT_TIMEOUT = 5.0           # seconds a new worker waits to become the primary's


class TemplateError(Exception):
    """The template did not become ready: why, and whether the application
    could not be loaded (load: its spec names nothing to serve, or its
    import failed)."""

    def __init__(self, reason: str, load: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.load = reason, load


class Template:
    """One template process, from the primary's side."""

    def __init__(self, settings: Mapping[str, Any], on_exit: Callable[[Template], Any]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.ids = _primary.worker_identity(settings["uid"], settings["gid"])
        self.cwd: str | None = settings["cwd"]
        try:
            argv = _primary.worker_argv(settings)
            env = {**os.environ, TEMPLATE_FD: str(theirs.fileno())}
            self.env = env
            groups, gid, uid = self.ids or (None, -1, -1)
            self.pid = _core.spawn(_primary.resolve_executable(argv[0]), argv,
                                   [f"{k}={v}" for k, v in env.items()], self.cwd,
                                   theirs.fileno(), (-1, -1, -1), groups, gid, uid, -1)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _channels.add(ours)
        self.ready = False
        self.exited = False
        self.let_go = False
        self._stop_timer: _core.Handle | None = None
        self._on_exit = on_exit
        self._watch = _core.watch_child(self.pid, self._exited)
        self._watch.ref(False)          # the fleet's run() ends with its workers

    def _exited(self, code: int | None, sig: int | None) -> None:
        self.exited = True
        self.exit_status = (code, sig)
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._on_exit(self)

    def _take_ready(self, message: bytes) -> None:
        if not message:
            raise TemplateError("the preload template ended before it had imported the "
                                "application")
        said = json.loads(message)
        if "failed" in said:
            raise TemplateError(str(said["failed"]), bool(said.get("load")))
        self.ready = True

    def wait_ready(self) -> None:
        """Blocks until the application is imported (before the fleet
        serves: nothing waits on the loop); raises TemplateError."""
        self._take_ready(self.sock.recv(MAX_MESSAGE))

    def when_ready(self, done: Callable[[TemplateError | None], Any]) -> None:
        """done(None) once the application is imported, done(error) if it
        cannot be; looks from the loop, which serves meanwhile."""
        try:
            message = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            _runtime.call_later(READY_POLL, lambda: self.when_ready(done)).ref(False)
            return
        except OSError as exc:
            done(TemplateError(f"the preload template's channel failed: {exc}"))
            return
        try:
            self._take_ready(message)
        except TemplateError as exc:
            done(exc)
            return
        done(None)

    def fork(self, plan: _primary.Plan) -> int | None:
        """A worker of plan, forked from the template: its pid; None when
        the template cannot (it is gone, broken, or has another identity
        than plan's), for the primary to exec that worker instead."""
        if not self.ready or self.exited or self.let_go or plan.ids != self.ids:
            return None
        stdio = plan.stdio.child
        fds = [plan.theirs, *(fd for fd in stdio if fd >= 0)]
        if plan.stacks >= 0:
            fds.append(plan.stacks)
        request = {**env_change(self.env, plan.env), "cwd": plan.cwd,
                   "stdio": [fd >= 0 for fd in stdio], "stacks": plan.stacks >= 0}
        try:
            socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:     # nothing was sent: this one is exec'd
                _runtime.log("warning", f"preload template {self.pid}: a worker's "
                             "environment has changed too much since the template started "
                             "to be sent to it: that worker is exec'd")
                return None
            self.broken(f"its channel failed: {exc}")
            return None
        try:
            waiting = select.poll()
            waiting.register(self.sock, select.POLLIN)
            reply = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT) \
                if waiting.poll(REPLY_TIMEOUT * 1000) else None
        except OSError:
            reply = b""
        try:
            if not reply:
                raise ValueError("it did not answer a fork" if reply is None else "it ended")
            return self._forked(reply)
        except (ValueError, TypeError, KeyError) as exc:
            # A worker it may have forked holds this plan's channel: the
            # plan gets a new one, whose worker is exec'd.
            self.broken(str(exc))
            plan.new_channel()
            return None

    def _forked(self, reply: bytes) -> int:
        """The pid the template answered, checked: the template runs the
        application's code, as the workers' user, and the primary trusts
        nothing it says but a child of its own (ValueError)."""
        said = json.loads(reply)
        pid = said.get("pid")
        if pid is None and "errno" in said:          # its own fork() failed
            err = int(said["errno"])
            raise OSError(err, f"fork() failed in the preload template: {os.strerror(err)}")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise ValueError(f"it answered a fork with {reply[:100]!r}")
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            raise ValueError(f"it answered a fork with pid {pid}, not the primary's "
                             "child") from None
        if "errno" in said:
            _primary.reap(pid)
            err = int(said["errno"])
            raise OSError(err, f"{os.strerror(err)}: the worker cannot take its cwd or "
                               "identity")
        return pid

    def broken(self, why: str) -> None:
        """It cannot serve forks any more: killed, and replaced (Preload)."""
        self.ready = False
        if not self.exited:
            _runtime.log("error", f"preload template {self.pid}: {why}: killing it")
            self.kill()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Lets it go: its channel closes, and it ends as a script does
        (the application's atexit handlers run there); killed if it has
        not within STOP_TIMEOUT."""
        if self.let_go:
            return
        self.let_go = True
        _channels.discard(self.sock)
        self.sock.close()
        if not self.exited:
            self._stop_timer = _runtime.call_later(STOP_TIMEOUT, self._stop_late)

    def _stop_late(self) -> None:
        if not self.exited:
            _runtime.log("warning", f"preload template {self.pid} did not end "
                         f"{STOP_TIMEOUT:g} s after it was let go: killing it")
            self.kill()


class Preload:
    """The fleet's templates: the one its workers fork from, and the next
    while it imports the application for a reload."""

    def __init__(self) -> None:
        """Starts the first template and waits for it to import the
        application; raises TemplateError if it cannot."""
        self.renewing: Template | None = None
        self.closed = False
        self._waiting: list[Callable[[str | None], Any]] = []   # renew()'s callers
        _core.become_subreaper()        # the workers, forked twice, come back to us
        self.current: Template | None = self._first()
        global active
        active = self
        _primary.template_start = self._fork

    def _first(self) -> Template:
        """The first template, once it has imported the application. A
        SIGHUP meanwhile (a deploy during a slow import) starts another, as
        a reload would once the fleet serves: before supervise() is there
        to take it, its default action would end the primary."""
        asked: list[int] = []
        own = signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        if own:
            signal.signal(signal.SIGHUP, lambda signum, frame: asked.append(signum))
        try:
            while True:
                template = self._new()
                try:
                    template.wait_ready()
                except BaseException:
                    self.closed = True
                    template.stop()
                    raise
                if not asked:
                    return template
                asked.clear()
                _runtime.log("info", "SIGHUP received while the preload template imported "
                             "the application: a new template imports it again")
                template.stop()
        finally:
            if own:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)

    def _new(self) -> Template:
        return Template(_runtime.settings, self._template_exited)

    def _fork(self, plan: _primary.Plan, settings: Mapping[str, Any]) -> int | None:
        return self.current.fork(plan) if self.current is not None else None

    def _template_exited(self, template: Template) -> None:
        if template is not self.current or self.closed or template.let_go:
            return
        self.current = None
        if _runtime.fleet is not None and _runtime.fleet.stopping > 0:
            return
        code, sig = template.exit_status
        how = f"code {code}" if sig is None else f"signal {_worker.exit_signal(sig).name}"
        _runtime.log("warning", f"preload template {template.pid} exited ({how}): workers "
                     "are exec'd until a new template has imported the application")
        if self.renewing is None:        # else the one a reload starts takes its place
            self.renew(lambda problem: None if problem is None else _runtime.log(
                "error", f"preload: a new template cannot serve: {problem}"))

    def renew(self, done: Callable[[str | None], Any]) -> None:
        """A new template, then the old one let go: done(None) once the
        workers fork from the new one, done(why) if it cannot start or
        import the application (the old one goes on). A renew asked while
        one runs starts another (the code may have changed since), and
        answers both callers."""
        self._waiting.append(done)
        if self.renewing is not None:
            self.renewing.stop()
            self.renewing = None
        try:
            new = self.renewing = self._new()
        except OSError as exc:
            self._answer(f"a template cannot start: {exc}")
            return

        def ready(problem: TemplateError | None) -> None:
            if new is not self.renewing:
                return                          # a later renew took its place
            self.renewing = None
            if self.closed:
                new.stop()
                return
            if problem is not None:
                new.stop()
                self._answer(problem.reason)
                return
            old, self.current = self.current, new
            if old is not None:
                old.stop()
            self._answer(None)

        new.when_ready(ready)

    def _answer(self, problem: str | None) -> None:
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            done(problem)

    def close(self) -> None:
        """The fleet has stopped: every template let go."""
        global active
        self.closed = True
        active = None
        _primary.template_start = None
        for template in (self.current, self.renewing):
            if template is not None:
                template.stop()


active: Preload | None = None       # the running fleet's, if it preloads
# The primary's ends of its templates' channels: close-on-exec, so no exec'd
# child holds one, and closed in a child forked without exec (fork(target=)),
# which is not the templates' primary.
_channels: set[socket.socket] = set()


def _close_channels_in_child() -> None:
    for sock in _channels:
        sock.close()
    _channels.clear()


os.register_at_fork(after_in_child=_close_channels_in_child)


def env_change(started: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Any]:
    """A worker's environment as a fork request carries it: what changed
    since the template started with `started` (a whole environment may not
    fit in one message), or all of env when applying the change to
    `started` would not give env's order (started's, then the new ones)."""
    kept = [name for name in started if name in env]
    if list(env) != kept + [name for name in env if name not in started]:
        return {"env": list(env.items())}
    return {"env_set": [(k, v) for k, v in env.items() if started.get(k) != v],
            "env_unset": [name for name in started if name not in env]}


def apply_env_change(started: Mapping[str, str], request: Mapping[str, Any]) -> dict[str, str]:
    if "env" in request:
        return dict(request["env"])
    env = dict(started)
    for name in request["env_unset"]:
        del env[name]
    env.update(request["env_set"])
    return env


# ---- the template's side ------------------------------------------------------------

def failed(reason: str, *, load: bool) -> None:
    """In the template: the application cannot be served; says so to the
    primary (which reports it as a worker's boot failure) and exits 3."""
    sock = socket.socket(fileno=int(os.environ.pop(TEMPLATE_FD)))
    try:
        sock.send(json.dumps({"failed": reason, "load": load}).encode())
    except OSError:
        pass
    sys.exit(_worker.BOOT_FAILURE_EXIT)


def serve_forks() -> bool:
    """In the template, once the application is imported: says so to the
    primary, then forks a worker for each of its requests until it lets
    go. True in each worker, once it has booted (the caller serves); False
    in the template at the end."""
    import gc
    started = _environment_at_exec()
    sock = socket.socket(fileno=int(os.environ.pop(TEMPLATE_FD)))
    primary = os.getppid()
    # Ctrl-C, or systemd's KillMode=control-group, signals the whole group:
    # the template ends when the primary's stop lets it go (or dies with
    # the primary), and writes no log to reopen. A worker's mask is
    # emptied by its plan.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                              signal.SIGQUIT, signal.SIGUSR1})
    gc.freeze()             # the imported objects stay shared: no collection touches them
    sock.send(b'{"ready": true}')
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
        except OSError:
            message, fds = b"", []
        if not message:
            _close_all(fds)
            sock.close()
            return False
        reply = _fork_worker(sock, json.loads(message), fds, primary, started)
        if reply is None:           # the worker, booted
            # The log files the template opened may have been renamed since
            # (a SIGUSR1 reopens the workers', not the template's).
            _runtime.reopen_log_files()
            return True
        sock.send(json.dumps(reply).encode())


def _environment_at_exec() -> dict[str, str]:
    """The template's environment as the primary gave it, which fork
    requests change: os.environ may have been changed since, by the
    application's import; posix.environ is the process's at its start."""
    return {os.fsdecode(k): os.fsdecode(v) for k, v in posix.environ.items()}


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _fork_worker(sock: socket.socket, request: dict[str, Any], fds: list[int],
                 primary: int, started: Mapping[str, str]) -> dict[str, int] | None:
    """Forks the worker request asks for, twice: its reply for the primary
    (the worker's pid, or the errno it could not start with), or None in the
    worker itself."""
    given = iter(fds)
    channel = next(given)
    stdio = [next(given) if present else -1 for present in request["stdio"]]
    stacks = next(given) if request["stacks"] else -1
    env = apply_env_change(started, request)
    env["CLUSTER_EXT_CHANNEL_FD"] = str(channel)     # its number here, not the primary's
    if stacks >= 0:
        env["CLUSTER_EXT_STACKS_FD"] = str(stacks)
    _primary.flush_stdio()                      # what the import wrote, written once
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    try:
        middle = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _close_all([report_r, report_w, *fds])
        return {"errno": exc.errno or 5}
    if middle == 0:
        worker = -1
        try:
            worker = os.fork()
        except OSError:
            pass
        if worker == 0:
            sock.close()
            os.close(report_r)
            _become_worker(primary, stdio, request["cwd"], env, report_w)
            return None
        if worker > 0:
            os.write(report_w, worker.to_bytes(4, sys.byteorder))
        os._exit(0)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(report_w)
    _close_all(fds)
    try:
        os.waitpid(middle, 0)
        said = _read_report(report_r)
    finally:
        os.close(report_r)
    if len(said) < 4:
        return {"errno": errno.EAGAIN}       # the middle process could not fork
    pid = int.from_bytes(said[:4], sys.byteorder)
    if len(said) == 8:                       # the worker's errno: it exits, ours to reap
        return {"errno": int.from_bytes(said[4:], sys.byteorder), "pid": pid}
    return {"pid": pid}


def _read_report(fd: int) -> bytes:
    """Until every writer has closed the pipe: the middle process's 4 bytes
    (the worker's pid), then the worker's 4 (an errno) or nothing."""
    said = b""
    while len(said) < 8:
        chunk = os.read(fd, 8 - len(said))
        if not chunk:
            break
        said += chunk
    return said


def _become_worker(primary: int, stdio: list[int], cwd: str | None,
                   env: Mapping[str, str], report: int) -> None:
    """In the forked worker: once reparented to the primary, take on the
    plan (death with the primary included) and boot."""
    import time
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() != primary:           # the middle process is exiting
        if time.monotonic() > deadline:
            os._exit(0)                      # orphaned, as spawn.c's children end
        os.sched_yield()
    _primary.take_plan(primary, stdio, cwd, None, env, report)
