"""The worker template: a process that has started the interpreter and
imported cluster_ext once, and forks each worker that would re-run the
primary's script (fork() without target) instead of exec'ing it. The child
is made the primary's own (CLONE_PARENT), so the primary waits for it,
signals it and outlives it as if it had forked it; it then takes on
everything an exec would have given it (argv, __main__, sys.path[0], env,
cwd, uid and gid, stdio, default signals, death with the primary) and runs
the script. What it saves is the interpreter's start and our import, most of
a worker's start (multiprocessing's forkserver does the same).

A fork the template cannot make as an exec would (another program, an
interpreter option or a variable read at start that differs from the
template's) is exec'd; so is every fork once a template has failed to start.
CLUSTER_EXT_TEMPLATE=0 turns it off."""
from __future__ import annotations

import os
import sys

from . import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

ENV_FD = "CLUSTER_EXT_TEMPLATE_FD"
REPLY_TIMEOUT = 10.0            # seconds for one fork's answer; then exec
MAX_REQUEST = 1 << 16           # bytes: a larger request (its environment) is exec'd
TITLE = "cluster_ext: worker template of primary"    # its command line, for ps
CMDLINE_ROOM = 4096             # bytes at least for a worker's /proc/PID/cmdline
# Read as the interpreter starts, or as a module the template imported does:
# a worker whose value differs cannot come from this template.
START_VARIABLES = ("LANG", "LANGUAGE", "TZ", "HOME", "GLIBC_TUNABLES")
START_PREFIXES = ("PYTHON", "LC_", "LD_", "MALLOC_")
# Interpreter options that act after the script (-i), or that it cannot
# take from a template: these forks are exec'd.
EXEC_ONLY_OPTIONS = ("-i",)


# Standard modules that the template does not import ahead of its workers:
# those that hold state a fork must not share (OpenSSL's, which its fork
# handlers reseed, and CLONE_PARENT runs no fork handler of C libraries), that
# touch the terminal, or that act when imported.
NOT_PRELOADED = frozenset({
    "ssl", "_ssl", "hashlib", "_hashlib", "hmac", "secrets", "readline", "curses",
    "_curses", "tkinter", "_tkinter", "turtle", "antigravity", "this", "idlelib", "test",
    "__main__", "multiprocessing", "concurrent"})


def preloads() -> list[str]:
    """What the template imports before it forks: the modules of the
    standard library and of cluster_ext that this primary has imported so
    far, since its workers run the same script, and each import in each of
    them is start time (argparse and its re, asyncio, our net)."""
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    # In the primary's order (sys.modules keeps it): a package before what
    # it imports. A private module alone first (_asyncio before asyncio)
    # can meet its package half made and leave it on its fallbacks.
    return [name for name in list(sys.modules)
            if (name.partition(".")[0] in stdlib or name.startswith("cluster_ext."))
            and name.partition(".")[0] not in NOT_PRELOADED and not name.startswith("_")
            and not name.startswith("cluster_ext._template")]


def start_variables(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in env.items()
                        if k in START_VARIABLES or k.startswith(START_PREFIXES)))


# ---- in the primary ---------------------------------------------------------------------

class Template:
    """A running template and our end of its socket."""

    def __init__(self, key: tuple[Any, ...], interpreter: Sequence[str],
                 env: Mapping[str, str], cmdline_room: int) -> None:
        import _socket
        import json
        self.key = key
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self.sock = ours
        try:
            from ._primary import _above_stdio
            theirs_fd = _above_stdio(theirs.detach())
            try:
                envp = [f"{k}={v}" for k, v in env.items()] + [f"{ENV_FD}={theirs_fd}"]
                code = "from cluster_ext import _template; _template.serve()"
                # The last argument is room for each worker's command line
                room = " " * cmdline_room
                self.pid: int | None = _core.spawn(
                    interpreter[0], [*interpreter, "-c", code, room], envp,
                    None, theirs_fd, (-1, -1, -1), -1, -1)
            finally:
                os.close(theirs_fd)
            self.sock.settimeout(REPLY_TIMEOUT)
            names = json.dumps(preloads()).encode()
            self.sock.send(names if len(names) <= MAX_REQUEST else b"[]")
            ready = self.sock.recv(16)   # the template has imported them
            if ready != b"ready":
                raise OSError("the worker template did not start")
        except BaseException:
            self.close()
            raise

    def fork(self, request: dict[str, Any], fds: Sequence[int], path: str) -> int:
        """A worker's pid. _Gone: the template had ended before it took the
        request (exec instead); OSError: the child could not become the
        worker (the errno its setup met, as the exec's), or the template
        took the request and did not answer."""
        import json
        import struct
        body = json.dumps(request).encode()
        if len(body) > MAX_REQUEST:
            raise _Unfit("the request is too large")
        try:
            _send_fds(self.sock, body, fds)
        except OSError as exc:
            raise _Gone from exc
        try:
            reply = self.sock.recv(8)
        except OSError:
            reply = b""
        if len(reply) != 8:
            raise OSError(f"the worker template (pid {self.pid}) took a fork and did not "
                          "answer") from None
        pid, err = struct.unpack("=ii", reply)
        if err:
            _reap(pid)
            raise OSError(err, os.strerror(err), path)
        return int(pid)

    def close(self) -> None:
        """Ends the template (it holds nothing to flush, and SIGKILL ends
        even a stopped one) and reaps it: it is our child."""
        self.sock.close()
        pid = getattr(self, "pid", None)
        if pid is not None:
            self.pid = None
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            _reap(pid)


class _Unfit(Exception):
    """This fork is for exec."""


class _Gone(_Unfit):
    """The template has ended: this fork and the next ones are for exec."""


_running: list[Template] = []
_failed: set[tuple[Any, ...]] = set()       # keys whose template would not start


def fork(argv: Sequence[str], spec_at: int, env: Mapping[str, str], cwd: str | None,
         uid: int | None, gid: int | None, stdio: Sequence[int], chan_fd: int) -> int | None:
    """Forks a worker from the template: its pid, or None when this fork is
    for exec (as it would have been). argv is the exec's: the interpreter and
    its options up to spec_at, then the script, -m module or -c code, then
    the script's arguments. stdio: the child's 0, 1, 2, or -1 for ours."""
    if os.environ.get("CLUSTER_EXT_TEMPLATE", "1") == "0":
        return None
    interpreter = list(argv[:spec_at])
    if interpreter[0] != sys.executable or any(o in EXEC_ONLY_OPTIONS for o in interpreter):
        return None
    key = (tuple(interpreter), start_variables(env))
    if key in _failed:
        return None
    try:
        import _socket  # noqa: F401  what the template's protocol needs, imported
        import json  # noqa: F401  once here, so that a primary that can no
        import struct  # noqa: F401  longer read its library still execs
    except ImportError:
        return None
    template = _running[0] if _running and _running[0].key == key else None
    if template is None:
        stop()
        base = {k: v for k, v in env.items() if not k.startswith("CLUSTER_EXT_")}
        try:
            template = Template(key, interpreter, base,
                                max(CMDLINE_ROOM, 2 * sum(len(a) + 1 for a in argv)))
        except OSError:
            _give_up(key)
            return None
        _running.append(template)
    fds = [chan_fd] + [fd if fd >= 0 else i for i, fd in enumerate(stdio)]
    request = {"primary": os.getpid(), "argv": list(argv), "spec_at": spec_at,
               "env": dict(env), "cwd": cwd, "uid": uid, "gid": gid}
    try:
        return template.fork(request, fds, argv[0])
    except _Gone:
        _give_up(key)
        return None
    except _Unfit:
        return None
    except OSError as exc:
        if exc.filename is None:         # the template is in doubt: not again
            _give_up(key)
        raise


def _give_up(key: tuple[Any, ...]) -> None:
    """No template for key from here: its forks are exec'd."""
    stop()
    _failed.add(key)


def stop() -> None:
    """No template from here (the loop has ended, the last worker has
    exited, or another template is needed)."""
    while _running:
        _running.pop().close()


def forget() -> None:
    """In a child forked without exec: the template is the primary's."""
    while _running:
        t = _running.pop()
        t.sock.close()
        t.pid = None


# Requests with their descriptors, both ways through _socket: the socket
# module's import (selectors, enum classes) would be start time in the primary
# and the template.

def _send_fds(sock: Any, body: bytes, fds: Sequence[int]) -> None:
    import _socket
    import struct
    rights = struct.pack(f"={len(fds)}i", *fds)
    sock.sendmsg([body], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def _recv_fds(sock: Any, size: int, most: int) -> tuple[bytes, list[int]]:
    import _socket
    import struct
    body, ancillary, _, _ = sock.recvmsg(size, _socket.CMSG_SPACE(most * 4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"={len(data) // 4}i", data[:len(data) - len(data) % 4])
    return body, fds


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


# ---- in the template --------------------------------------------------------------------

def serve() -> None:
    """The template's life: one fork per request, until the primary closes
    its end (or dies: the template dies with it, as a worker does)."""
    import _socket
    import gc
    import json
    import signal
    import struct
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the primary's to act on
    sock = _socket.socket(fileno=int(os.environ.pop(ENV_FD)))
    os.set_inheritable(sock.fileno(), False)
    # What ps shows for this process, which serves no one itself.
    _core.set_cmdline(f"{TITLE} {os.getppid()}\0".encode())
    import importlib
    for name in json.loads(sock.recv(MAX_REQUEST)):
        try:
            importlib.import_module(name)
        except Exception:                # the worker's own import will say why
            pass
    gc.freeze()                          # what each worker makes is its own
    sock.send(b"ready")
    while True:
        try:
            body, fds = _recv_fds(sock, MAX_REQUEST, 4)
        except InterruptedError:
            continue
        if not body:
            os._exit(0)
        request = json.loads(body)
        # Only a cwd, uid or gid can fail as the exec would have: then the
        # answer waits for the child to have taken them (an errno, or EOF).
        # Else it goes at once, and a burst of forks does not wait on the
        # scheduling of each child.
        read_err, write_err = (os.pipe2(os.O_CLOEXEC) if any(
            request[k] is not None for k in ("cwd", "uid", "gid")) else (-1, -1))
        pid = _core.fork_sibling()
        if pid == 0:
            sock.close()
            if read_err >= 0:
                os.close(read_err)
            _become_worker(request, fds, write_err)
        for fd in fds:
            os.close(fd)
        err = b""
        if read_err >= 0:
            os.close(write_err)
            err = os.read(read_err, 4)
            os.close(read_err)
        sock.send(struct.pack("=ii", pid, struct.unpack("=i", err)[0] if len(err) == 4 else 0))


def _become_worker(request: dict[str, Any], fds: list[int], write_err: int) -> None:
    """In the template's child: what an exec of request["argv"] would have
    made, then the script. Never returns."""
    import signal
    import struct

    from . import _runtime
    code = 1
    try:
        try:
            _core.die_with_parent(request["primary"])
            chan_fd, stdio = fds[0], fds[1:]
            for i, fd in enumerate(stdio):
                os.dup2(fd, i)
                os.close(fd)
            if request["cwd"] is not None:
                os.chdir(request["cwd"])
            if request["gid"] is not None:
                try:
                    os.setgroups([])
                except PermissionError:
                    pass
                os.setgid(request["gid"])
            if request["uid"] is not None:
                os.setuid(request["uid"])
        except OSError as exc:
            if write_err < 0:
                raise
            os.write(write_err, struct.pack("=i", exc.errno or 5))
            os._exit(127)
        if write_err >= 0:
            os.close(write_err)          # the template answers the primary now
        _core.after_fork()               # an engine of its own, not the template's
        _runtime.wake_on_signals()       # on the new engine's pipe
        signal.signal(signal.SIGINT, signal.default_int_handler)
        argv = request["argv"]
        _core.set_cmdline(b"".join(os.fsencode(a) + b"\0" for a in argv))
        env = request["env"]
        env["CLUSTER_EXT_CHANNEL_FD"] = str(chan_fd)
        _take_environment(env)
        _fresh_stdio()
        code = _run_script(argv, request["spec_at"])
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        tb = exc.__traceback__           # from the script's frames on, as Python prints it
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    finally:
        _runtime.exit_process(code)


def _take_environment(env: dict[str, str]) -> None:
    """os.environ becomes env, in env's order as an exec lays it out. Most
    of it is the template's already: the longest run of names in the same
    places is kept, and only a value there that differs is set (each setenv
    copies pages this fork shares); what follows is set again in order."""
    environ = os.environ
    have = list(environ)
    same = 0
    for had, wanted in zip(have, env, strict=False):   # the shorter bounds the run
        if had != wanted:
            break
        same += 1
    for name in have[same:]:
        del environ[name]
    for name, value in env.items():
        if environ.get(name) != value:
            environ[name] = value


def _fresh_stdio() -> None:
    """sys.stdin/stdout/stderr as the interpreter would have made them on the
    descriptors the worker has (a pipe is not a terminal: no line buffering).
    The template's own say what the options asked (-u: unbuffered)."""
    import io
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        if old is None:
            continue
        try:
            raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        except OSError:
            setattr(sys, name, None)
            setattr(sys, f"__{name}__", None)
            continue
        unbuffered = old.write_through
        buffered: Any = (io.BufferedReader(raw) if fd == 0 else raw if unbuffered
                         else io.BufferedWriter(raw))
        stream = io.TextIOWrapper(buffered, encoding=old.encoding, errors=old.errors,
                                  line_buffering=(fd == 2 or raw.isatty()) and not unbuffered,
                                  write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_script(argv: list[str], spec_at: int) -> int:
    """The script, -m module or -c code of argv as __main__, after this
    process has become its worker. Returns 0 when it returns: the worker
    ends, as an exec'd one does at the end of its script."""
    import types
    spec, args = argv[spec_at:], []
    sys.orig_argv = list(argv)
    from . import _primary, _runtime, _worker
    if spec[0] in ("-m", "-c"):
        what, target, args = spec[0], spec[1], spec[2:]
    else:
        what, target, args = "path", spec[0], spec[1:]
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    if what == "-c":
        sys.argv, first = ["-c", *args], ""
    elif what == "-m":
        sys.argv, first = ["-m", *args], os.getcwd()    # runpy puts the module's path first
    else:
        sys.argv, first = [target, *args], os.path.dirname(os.path.realpath(target))
    # What the exec would have put first, where the template's "-c" put "";
    # under -P or -I neither puts anything.
    if not (getattr(sys.flags, "safe_path", False) or sys.flags.isolated):
        sys.path[0] = first
    _runtime.settings.update(_primary.default_settings())   # from this argv and env
    _worker.boot_from_env()
    if what == "-m":
        import runpy
        runpy._run_module_as_main(target, alter_argv=True)  # type: ignore[attr-defined]
    else:
        if what == "-c":
            source: bytes = target.encode()
            filename = "<string>"
        else:
            import io
            with io.open_code(target) as f:
                source = f.read()
            filename = target
            from importlib.machinery import SourceFileLoader
            main.__file__ = target
            main.__cached__ = None   # type: ignore[attr-defined]
            main.__loader__ = SourceFileLoader("__main__", target)
        main.__builtins__ = __builtins__  # type: ignore[attr-defined]
        exec(compile(source, filename, "exec"), main.__dict__)
    return 0


def _exit_code(exc: SystemExit) -> int:
    """As the interpreter turns SystemExit into a status."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1
