"""The primary: its settings, fork() and the two ways it starts a worker (fork +
exec through the engine, or os.fork() without exec for fork(target=...)) from
one plan (command line, environment, stdio, identity), and
cluster.disconnect()."""
from __future__ import annotations

import atexit
import fcntl
import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn

from . import _core, _fast, _forensics, _runtime, _shared, _worker, net
from ._runtime import SCHED_NONE, SCHED_RR
from ._worker import Worker

SETTING_KEYS = ("exec", "args", "exec_args", "cwd", "silent", "stdio", "uid", "gid",
                "serialization", "max_message_size", "scheduling_policy")
STDIO_WORDS = ("inherit", "pipe", "ignore")


def policy_from_env() -> int:
    return SCHED_NONE if os.environ.get("CLUSTER_EXT_SCHED_POLICY") == "none" else SCHED_RR


def default_settings() -> dict[str, Any]:
    return {"exec": None, "args": tuple(sys.argv[1:]), "exec_args": (), "cwd": None,
            "silent": False, "stdio": None, "uid": None, "gid": None,
            "serialization": "json", "max_message_size": 64 << 20,
            "scheduling_policy": policy_from_env()}


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not all(
            isinstance(v, (str, bytes, os.PathLike)) for v in value):
        raise TypeError(f"setting {key!r} must be a list of strings")
    return tuple(os.fsdecode(v) for v in value)


def check_settings(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, normalized copies of the settings in changes."""
    unknown = sorted(set(changes) - set(SETTING_KEYS))
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(unknown)}; "
                        f"known: {', '.join(SETTING_KEYS)}")
    out = dict(changes)
    if "exec" in out and out["exec"] is not None:
        ex = out["exec"]
        out["exec"] = os.fspath(ex) if isinstance(ex, (str, os.PathLike)) else _str_list("exec", ex)
        if isinstance(out["exec"], tuple) and not out["exec"]:
            raise ValueError("setting 'exec' must not be an empty list")
    for key in ("args", "exec_args"):
        if key in out:
            out[key] = _str_list(key, out[key])
    if out.get("cwd") is not None:
        out["cwd"] = os.fspath(out["cwd"])
    if "silent" in out:
        out["silent"] = bool(out["silent"])
    if out.get("stdio") is not None:
        stdio = tuple(out["stdio"])
        if len(stdio) != 3 or not all(s in STDIO_WORDS or (isinstance(s, int) and s >= 0)
                                      for s in stdio):
            raise ValueError("setting 'stdio' takes 3 items, each 'inherit', 'pipe', "
                             "'ignore' or a descriptor number")
        out["stdio"] = stdio
    for key in ("uid", "gid"):
        if out.get(key) is not None and (not isinstance(out[key], int) or out[key] < 0):
            raise TypeError(f"setting {key!r} must be a non-negative int or None")
        if out.get(key) is not None and out[key] > 0x7FFFFFFF:
            raise ValueError(f"setting {key!r} must be at most 2**31 - 1, not {out[key]}")
    if "serialization" in out and out["serialization"] not in ("json", "pickle"):
        raise ValueError(f"setting 'serialization' must be 'json' or 'pickle', "
                         f"not {out['serialization']!r}")
    if "max_message_size" in out:
        size = out["max_message_size"]
        if not isinstance(size, int) or not 0 < size <= 0xFFFF0000:
            raise ValueError("setting 'max_message_size' must be an int in (0, 4 GiB)")
    if "scheduling_policy" in out:
        check_policy(out["scheduling_policy"])
    return out


def check_policy(policy: Any) -> None:
    if policy not in (SCHED_NONE, SCHED_RR) or isinstance(policy, bool):
        raise ValueError(f"scheduling policy must be SCHED_RR ({SCHED_RR}) or "
                         f"SCHED_NONE ({SCHED_NONE}), not {policy!r}")


def _default_command() -> tuple[list[str], list[str]]:
    """Splits sys.orig_argv into (interpreter and its options, the script
    spec: a path, '-m module' or '-c code')."""
    orig = list(sys.orig_argv)
    head = orig[:len(orig) - (len(sys.argv) - 1)]
    if len(head) >= 3 and _takes_spec(head[-2]):
        interp, spec = head[:-2], head[-2:]
    else:
        interp, spec = head[:-1], head[-1:]
        if spec and not spec[0].startswith("-"):
            spec = [os.path.abspath(spec[0])]       # cwd may change in the worker
    return [sys.executable, *interp[1:]], spec


def _takes_spec(option: str) -> bool:
    """Whether an interpreter option ends in -m or -c whose argument is the
    next one: "-m", and clusters such as "-Bm" or "-Ic" (not "-Wm", whose
    m is -W's argument, nor "-mjson", whose module is in it)."""
    if not option.startswith("-") or option.startswith("--"):
        return False
    for i, letter in enumerate(option[1:], 1):
        if letter in "mc":
            return i == len(option) - 1
        if letter in "WX":
            return False
    return False


def worker_argv(settings: Mapping[str, Any]) -> list[str]:
    """The worker's command line."""
    ex, args, exec_args = settings["exec"], list(settings["args"]), list(settings["exec_args"])
    if ex is None:
        interp, spec = _default_command()
        return [*interp, *exec_args, *spec, *args]
    if isinstance(ex, str):
        return [sys.executable, *exec_args, os.path.abspath(ex), *args]
    return [*ex, *args]


def resolve_executable(name: str) -> str:
    if os.sep in name:
        return name
    import shutil
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(2, f"executable not found on PATH: {name}", name)
    return found


def _above_stdio(fd: int) -> int:
    """The engine hands the child fds numbered 3 and up (0-2 are its stdio)."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


class Stdio:
    """The child's stdio descriptors and the parent's ends of its pipes."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        spec = settings["stdio"]
        if spec is None:
            spec = ("inherit", "pipe", "pipe") if settings["silent"] else ("inherit",) * 3
        self.child = [-1, -1, -1]        # owned until close_child()
        self.parent: list[int | None] = [None, None, None]
        self._owned: list[int] = []
        try:
            for i, how in enumerate(spec):
                if how == "pipe":
                    r, w = os.pipe2(os.O_CLOEXEC)
                    mine, theirs = (w, r) if i == 0 else (r, w)
                    self.parent[i] = mine
                    self.child[i] = self._own(theirs)
                elif how == "ignore":
                    self.child[i] = self._own(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                elif isinstance(how, int):
                    self.child[i] = self._own(os.dup(how))
        except BaseException:
            self.close_child()
            self.close_parent()
            raise

    def _own(self, fd: int) -> int:
        fd = _above_stdio(fd)
        self._owned.append(fd)
        return fd

    def close_child(self) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned.clear()

    def close_parent(self) -> None:
        for i, fd in enumerate(self.parent):
            if fd is not None:
                os.close(fd)
                self.parent[i] = None


def worker_env(worker_id: int, fd: int, stacks: int, settings: Mapping[str, Any],
               env: Mapping[str, str] | None) -> dict[str, str]:
    """The worker's whole environment, in the order an exec lays it out:
    this process's, then env, then the variables its boot takes away. fd:
    its channel's end; stacks: its memfd (_forensics), or -1."""
    merged = dict(os.environ)
    if env:
        merged.update({str(k): str(v) for k, v in env.items()})
    merged.update(CLUSTER_EXT_WORKER_ID=str(worker_id), CLUSTER_EXT_CHANNEL_FD=str(fd),
                  CLUSTER_EXT_SERIALIZATION=settings["serialization"],
                  CLUSTER_EXT_MAX_MESSAGE_SIZE=str(settings["max_message_size"]))
    if _runtime.supervised_drain_delay is not None:
        merged["CLUSTER_EXT_SUPERVISED"] = repr(_runtime.supervised_drain_delay)
    if stacks >= 0:
        merged["CLUSTER_EXT_STACKS_FD"] = str(stacks)
    return merged


def worker_ids(uid: int | None, gid: int | None) -> tuple[list[int], int, int] | None:
    """(supplementary groups, gid, uid) for the worker, -1 for an id it
    keeps; None when it keeps all three. Privileges are dropped whole: a
    uid brings its user's groups (initgroups) and, without a gid, its
    primary group; a gid alone clears the supplementary groups."""
    if uid is None and gid is None:
        return None
    if uid is None:
        assert gid is not None
        return [], gid, -1
    import pwd
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        if gid is None:
            raise ValueError(f"setting 'uid' {uid} has no user in the password "
                             "database: give 'gid' too") from None
        return [], gid, uid
    gid = user.pw_gid if gid is None else gid
    return os.getgrouplist(user.pw_name, gid), gid, uid


def worker_identity(uid: int | None, gid: int | None) -> tuple[list[int] | None, int, int] | None:
    """worker_ids(), with the groups left as they are (None) in a process
    that may not set them: its groups are its user's own, and a uid or gid
    it may not take fails at setuid() or setgid()."""
    ids = worker_ids(uid, gid)
    if ids is None or os.geteuid() == 0:
        return ids
    return None, ids[1], ids[2]


def shortage(err: int | None) -> str | None:
    """Which limit an errno says was hit, when it is one that frees up again
    (processes, descriptors, memory); None for any other error."""
    import errno
    return {
        errno.EAGAIN: "the process limit is reached (RLIMIT_NPROC, or the system's "
                      "pid_max/threads-max)",
        errno.ENOMEM: "no memory for a new process",
        errno.EMFILE: "the primary's descriptors are used up (RLIMIT_NOFILE)",
        errno.ENFILE: "the system's descriptors are used up (fs.file-max)",
        errno.ENOBUFS: "no buffer space"}.get(err) if err is not None else None


def fork_refused(exc: OSError) -> OSError:
    """fork() failed: say which limit was hit, not only 'Resource temporarily
    unavailable'."""
    why = shortage(exc.errno)
    text = f"fork() failed: {exc.strerror}" + (f": {why}" if why else "")
    return OSError(exc.errno, text)


def refused(exc: BaseException) -> str | None:
    """Why the kernel refused a worker, when what it lacked frees up again:
    descriptors, memory or processes (a socketpair, a pipe or the fork
    itself). None for any other failure, which is not the load's doing."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError):
        why = shortage(exc.errno)
        if why is not None:
            return f"{os.strerror(exc.errno or 0)}: {why}"
    return None


class Plan:
    """Everything a worker starts with, built once here and taken on by one
    routine per way of starting: the engine's spawn (fork + exec, in C) or
    _become_target_worker (fork without exec). Both give the worker the
    environment below (its boot takes the CLUSTER_EXT_* variables out), its
    stdio, cwd, groups, gid and uid in that order, the default disposition
    of every signal it does not ignore (SIGINT ignored by the boot), an
    empty signal mask and death with the primary. Holds the channel's ends,
    the stdio descriptors and, under a heartbeat, the memfd of its stacks
    (one descriptor, which both processes keep) until it is closed."""

    def __init__(self, worker_id: int, settings: Mapping[str, Any],
                 env: Mapping[str, str] | None) -> None:
        self.ids = worker_identity(settings["uid"], settings["gid"])
        self.cwd: str | None = settings["cwd"]
        self.ours, self.theirs = _core.socketpair()
        self.stacks = -1
        try:
            if _runtime.keeps_stacks:
                self.stacks = _above_stdio(_forensics.create())
            self.stdio = Stdio(settings)
            self.env = worker_env(worker_id, self.theirs, self.stacks, settings, env)
        except BaseException:
            self.close()
            raise

    def new_channel(self) -> None:
        """A new channel for a worker started again: another process may
        hold the first (a preload template's worker it could not confirm),
        and sees its end close."""
        os.close(self.ours)
        os.close(self.theirs)
        self.ours = self.theirs = -1
        self.ours, self.theirs = _core.socketpair()
        self.env["CLUSTER_EXT_CHANNEL_FD"] = str(self.theirs)

    def close_child(self) -> None:
        """The child's descriptors, once it has them (or will never)."""
        if self.theirs >= 0:
            os.close(self.theirs)
            self.theirs = -1
        if hasattr(self, "stdio"):
            self.stdio.close_child()

    def close(self) -> None:
        """Everything: the start failed."""
        self.close_child()
        for fd in (self.ours, self.stacks):
            if fd >= 0:
                os.close(fd)
        self.ours = self.stacks = -1
        if hasattr(self, "stdio"):
            self.stdio.close_parent()


def start_exec(plan: Plan, settings: Mapping[str, Any]) -> int:
    """Fork + exec of a worker; returns its pid."""
    argv = worker_argv(settings)
    path = resolve_executable(argv[0])
    groups, gid, uid = plan.ids or (None, -1, -1)
    child = plan.stdio.child
    try:
        return _core.spawn(path, argv, [f"{k}={v}" for k, v in plan.env.items()], plan.cwd,
                           plan.theirs, (child[0], child[1], child[2]), groups, gid, uid,
                           plan.stacks)
    except OSError as exc:
        if exc.filename is None:     # fork() itself, not the program
            raise fork_refused(exc) from None
        raise


def start_target(plan: Plan, target: Callable[[], Any]) -> int:
    """os.fork() without exec: the child becomes the worker of plan and runs
    target(); it never returns from here. As the exec'd child does, it
    starts with every signal blocked (no handler of the primary's runs in
    it), and a cwd or identity it cannot take fails this call (OSError,
    the child reaped) rather than the worker."""
    signal = _fast.signal
    flush_stdio()                               # what the primary wrote, written once
    parent = os.getpid()
    report = os.pipe2(os.O_CLOEXEC) if plan.cwd is not None or plan.ids is not None else None
    mask = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in report or ():
            os.close(fd)
        raise fork_refused(exc) from None
    if pid == 0:
        code = 1
        try:
            code = _become_target_worker(plan, parent, target, report)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            _exit_target_worker(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if report is not None:
        os.close(report[1])
        try:
            err = os.read(report[0], 4)
        finally:
            os.close(report[0])
        if err:
            reap(pid)
            errno = int.from_bytes(err, sys.byteorder)
            raise OSError(errno, f"{os.strerror(errno)}: the worker cannot take its cwd "
                                 "or identity")
    return pid


def flush_stdio() -> None:
    """Before a fork without exec: what this process buffered is written
    once, not once more by each child."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue


def _become_target_worker(plan: Plan, parent: int, target: Callable[[], Any],
                          report: tuple[int, int] | None) -> int:
    """In the child of fork(target=...): drop the primary's state, take on
    plan as the exec'd child would (take_plan), run target() and the loop.
    Returns the exit code."""
    atexit._clear()                     # the primary's handlers are not the worker's
    gc.freeze()                         # what the worker creates from here is its own
    _reset_signal_handlers()            # before the mask opens: none of the primary's runs
    write_end = None
    if report is not None:
        os.close(report[0])
        write_end = report[1]
    try:
        os.close(plan.ours)
        # the other workers' memfds (the engine closes their channels)
        assert _runtime.workers is not None
        _worker.close_fds(tuple(w._stacks for w in _runtime.workers.values()
                                if w._stacks >= 0))
        plan.stdio.close_parent()
    except OSError as exc:
        _failed_to_start(exc, write_end)
    take_plan(parent, plan.stdio.child, plan.cwd, plan.ids, plan.env, write_end)
    target()
    _runtime.run()
    return 0


def take_plan(parent: int, stdio: list[int], cwd: str | None,
              ids: tuple[list[int] | None, int, int] | None, env: Mapping[str, str],
              report: int | None) -> None:
    """A child forked without exec takes on its plan, as spawn.c's
    spawn_child does for an exec'd one: stdio, cwd, groups, gid and uid in
    that order, death with parent (after the ids, whose change clears it),
    then an empty signal mask, the plan's environment, the engine rebuilt
    from it, and the boot as its worker. A cwd or identity
    it cannot take ends it (127) with its errno written to report, the
    pipe its starter waits on (closed here once the plan is taken), or
    raises without one."""
    try:
        for i, fd in enumerate(stdio):
            if fd >= 0:
                os.dup2(fd, i)
        for fd in stdio:
            if fd > 2:
                os.close(fd)
        if cwd is not None:
            os.chdir(cwd)
        if ids is not None:
            _core.set_ids(*ids)
        _core.die_with_parent(parent)
    except OSError as exc:
        _failed_to_start(exc, report)
    if report is not None:
        os.close(report)                # its starter's wait ends now
    signal = _fast.signal
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    environ = os.environ
    for name in [name for name in environ if name not in env]:
        del environ[name]
    for name, value in env.items():
        if environ.get(name) != value:
            environ[name] = value
    _core.after_fork()                  # reads the engine's settings from env
    _runtime.wake_on_signals()          # the engine was rebuilt: a new pipe
    _runtime.emitter.remove_all_listeners()
    _shared.forget()
    _worker.boot_from_env()


def _failed_to_start(exc: OSError, report: int | None) -> NoReturn:
    if report is None:
        raise exc
    os.write(report, (exc.errno or 5).to_bytes(4, sys.byteorder))
    os._exit(127)


def _exit_target_worker(code: int) -> None:
    """The end of a fork(target=) worker: os._exit(), as multiprocessing does,
    through exit_process() (a normal exit would unwind into the primary's
    stack above fork() and run what the primary registered)."""
    _runtime.exit_process(code)


def _reset_signal_handlers() -> None:
    """The primary's Python handlers are not the worker's: back to defaults,
    as the exec'd worker's interpreter starts (SIGINT: the boot ignores it)."""
    _signal = _fast.signal
    for sig in _signal.valid_signals():
        try:
            handler = _signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if callable(handler):
            _signal.signal(sig, _signal.SIG_IGN if sig == _signal.SIGINT else _signal.SIG_DFL)


# A third way to start a worker, the preload template's (fleet/preload.py):
# start(plan, settings) -> the worker's pid, or None to exec this one.
template_start: Callable[[Plan, Mapping[str, Any]], int | None] | None = None


# ---- the public face (cluster.fork, setup_primary, disconnect) ------------------------

def setup_primary(**changes: Any) -> None:
    """Changes settings for later forks; emits 'setup'(settings)."""
    if not _runtime.is_primary:
        raise RuntimeError("setup_primary() is the primary's")
    checked = check_settings(changes)
    if "scheduling_policy" in checked and _runtime.forked() and \
            checked["scheduling_policy"] != _runtime.settings["scheduling_policy"]:
        raise RuntimeError("scheduling_policy cannot change after the first fork()")
    _runtime.settings.update(checked)
    _runtime.emitter.emit("setup", _runtime.settings_view)


def set_scheduling_policy(policy: int) -> None:
    if not _runtime.is_primary:
        raise RuntimeError("scheduling_policy is the primary's")
    if _runtime.forked():
        raise RuntimeError("scheduling_policy cannot change after the first fork()")
    check_policy(policy)
    _runtime.settings["scheduling_policy"] = policy


def fork(env: Mapping[str, Any] | None = None, *,
         target: Callable[[], Any] | None = None) -> Worker:
    """Starts a worker. By default it runs this program again (fork + exec);
    with target, the child is forked without exec and calls target()."""
    if not _runtime.is_primary:
        raise RuntimeError("fork() is the primary's: this process is a worker")
    if env is not None and not callable(getattr(env, "items", None)):
        raise TypeError(f"env must be a mapping, not {type(env).__name__}")
    if target is not None and not callable(target):
        raise TypeError("target must be callable")
    signal = _fast.signal
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        raise RuntimeError("SIGCHLD is ignored: worker exits could not be seen")
    workers = _runtime.workers
    assert workers is not None          # the primary's
    worker_id, settings = _runtime.next_id, _runtime.settings
    plan = Plan(worker_id, settings, env)
    try:
        pid = None
        if target is None and template_start is not None:
            pid = template_start(plan, settings)        # None: it cannot, exec instead
        if pid is None:
            pid = start_exec(plan, settings) if target is None else start_target(plan, target)
    except BaseException:
        plan.close()
        raise
    plan.close_child()
    fd, stdio = plan.ours, plan.stdio
    _runtime.next_id += 1
    w = Worker(worker_id, pid, primary_side=True,
               serialization=_worker.SERIALIZATIONS[settings["serialization"]],
               max_message_size=settings["max_message_size"])
    w._stacks = plan.stacks
    w._open_channel(fd)
    w._exit_watch = _core.watch_child(pid, w._on_exit)
    _attach_stdio(w, stdio)
    workers[worker_id] = w
    _runtime.call_later(0, w._emit_fork)
    return w


def _attach_stdio(w: Worker, stdio: Stdio) -> None:
    for i, name in ((1, "stdout"), (2, "stderr")):
        fd = stdio.parent[i]
        if fd is not None:
            stdio.parent[i] = None
            setattr(w.process, name, net.Socket(fd))
    if stdio.parent[0] is not None:
        os.close(stdio.parent[0])       # a piped stdin is not offered (yet)
        stdio.parent[0] = None


def disconnect(callback: Callable[[], Any] | None = None, *,
               timeout: float | None = None) -> None:
    """disconnect() on every worker; callback() once every one of them has
    disconnected. With timeout, workers still connected after it are killed."""
    if not _runtime.is_primary:
        raise RuntimeError("cluster.disconnect() is the primary's")
    if timeout is not None:              # before any worker is asked
        timeout = _runtime.check_seconds("timeout", timeout)
    workers = _runtime.workers
    assert workers is not None
    pending = {w.id for w in workers.values() if w.is_connected()}
    if callback is not None and not pending:
        _runtime.call_later(0, callback)
    elif callback is not None:
        # On the cluster's event, so that the callback comes after the
        # cluster's 'disconnect' of the last worker, not inside its own.
        def one_done(w: Worker) -> None:
            pending.discard(w.id)
            if not pending:
                _runtime.emitter.off("disconnect", one_done)
                callback()

        _runtime.emitter.on("disconnect", one_done)
    _shared.stop_accepting()
    for w in list(workers.values()):
        if w.id in pending:
            w.disconnect(timeout=timeout)


_runtime.settings.update(default_settings())
