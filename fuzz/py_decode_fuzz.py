"""Coverage-guided fuzzing (atheris) of the Python that decodes what a peer
sent, in three targets:

- ``frames``: a Worker's ``_on_frame``, in the primary and in a worker, set
  to json or to pickle, with any frame type, flags, payload and descriptors
  (``/dev/null``, a connected or a listening socket), as the channel delivers
  them. A user message must end in one ``'message'`` or in one ``'error'``
  carrying ``ValueError("undecodable message from ...")``, and in the
  ``'error'`` when its flags name a serialization other than the Worker's
  (the channel's setting decodes, never the peer's flags); a Worker set to
  json must never unpickle; no exception may leave
  ``_on_frame`` (it would stop the loop: ``run()`` re-raises it, and a
  primary that dies takes its workers with it); and, once the handles that
  were emitted are closed, no descriptor may be left open.
- ``protocol``: ``_protocol``'s record decoders on any bytes: a record
  decodes (and packs back to itself) or raises ``ValueError``.
- ``control``: ``fleet.control._parse_request`` on any line: a command or
  ``ControlError``, nothing else.

    python fuzz/py_decode_fuzz.py TARGET [libFuzzer options] [CORPUS_DIR...]
    python fuzz/py_decode_fuzz.py TARGET --replay FILE_OR_DIR...

``--replay`` runs inputs once each without atheris (the pytest suite replays
``fuzz/py_corpus`` so). ``scripts/fuzz_python.sh`` runs every target for a
bounded time. The process chdirs into a scratch directory, and the frames
target never reaches the network or the filesystem outside it:
``getaddrinfo`` resolves numeric hosts only, a TCP bind takes an ephemeral
port on the loopback (after the port checks ``bind()`` makes), and Unix
paths outside the scratch directory are refused (``EACCES``). Only a Worker
set to pickle unpickles, and its peer is trusted by that setting (a pickle
runs code); even there a pickle may name only a few harmless globals, so that
the fuzzer never makes it import or call anything. What is tested is how
each malformed input fails, not what a trusted pickle may do.
"""
from __future__ import annotations

import atexit
import errno
import io
import os
import pickle
import resource
import shutil
import socket
import struct
import sys
import tempfile
from pathlib import Path

try:
    import atheris
except ImportError:                      # --replay needs none
    atheris = None

if atheris is not None and "--replay" not in sys.argv:
    with atheris.instrument_imports(include=["cluster_ext"]):
        from cluster_ext import _core, _protocol, _runtime, _shared, _worker, net
        from cluster_ext.fleet import control, figures
else:
    from cluster_ext import _core, _protocol, _runtime, _shared, _worker, net
    from cluster_ext.fleet import control, figures

MAX_FRAMES = 4          # frames per input, on one Worker
MAX_PAYLOAD = 16384

SCRATCH = Path(tempfile.gettempdir())   # the frames target's own directory, from sandbox()


# ---- the sandbox: no network, no filesystem outside SCRATCH, no code from pickles ----

def _inside(path: object) -> bool:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or "\0" in path:
        return True                      # let the real call refuse it, as it would
    return os.path.abspath(path).startswith(str(SCRATCH) + os.sep)


_real_getaddrinfo = socket.getaddrinfo
_real_bind = socket.socket.bind
_real_connect = socket.socket.connect


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
    # The same argument checks (idna, NUL, port), then numeric hosts only.
    return _real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def _bind(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
            and len(address) >= 2 and isinstance(address[1], int):
        # socketmodule.c's checks, then an ephemeral port on the loopback
        if not 0 <= address[1] <= 0xFFFF:
            raise OverflowError("bind(): port must be 0-65535.")
        if len(address) > 2 and isinstance(address[2], int) and not 0 <= address[2] <= 0xFFFFF:
            raise OverflowError("bind(): flowinfo must be 0-1048575.")
        address = ("127.0.0.1", 0) if self.family == socket.AF_INET else ("::1", 0)
    elif self.family == socket.AF_UNIX and not _inside(address):
        raise PermissionError(errno.EACCES, "outside the fuzzer's scratch directory")
    return _real_bind(self, address)


def _connect(self, address):
    if self.family == socket.AF_UNIX and not _inside(address):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "outside the scratch directory")
    return _real_connect(self, address)


class _GuardedOs:
    """os for _shared and net: unlink() only inside SCRATCH."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def unlink(path, *args, **kwargs):
        if not _inside(path):
            raise PermissionError(errno.EACCES, "outside the fuzzer's scratch directory")
        return os.unlink(path, *args, **kwargs)


_SAFE_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
                 ("builtins", "slice"), ("builtins", "range"), ("collections", "OrderedDict")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the fuzzer refuses the global {module}.{name}")


UNPICKLED = [0]          # pickle.loads calls: a Worker set to json makes none


def _loads(data, /, *, fix_imports=True, encoding="ASCII", errors="strict", buffers=()):
    UNPICKLED[0] += 1
    return _Unpickler(io.BytesIO(data), fix_imports=fix_imports, encoding=encoding,
                      errors=errors, buffers=buffers).load()


def sandbox() -> None:
    global SCRATCH
    SCRATCH = Path(tempfile.mkdtemp(prefix="cx-pyfuzz-"))
    atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
    os.chdir(SCRATCH)                    # relative Unix paths land there
    socket.getaddrinfo = _getaddrinfo
    socket.socket.bind = _bind
    socket.socket.connect = _connect
    _shared.os = net.os = _GuardedOs()
    pickle.loads = _loads
    # A pickle's memo index sizes an array (PUT 2**30: 8 GiB, zeroed); a
    # peer's pickle is trusted, and here such an allocation fails instead.
    # (Not under ASan, whose shadow memory needs terabytes of address space.)
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        limit = 3 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import logging
    logging.getLogger("cluster_ext").disabled = True     # warnings of dropped frames


# ---- frames ------------------------------------------------------------------------

class Reader:
    """The input as a sequence of fields, read from the front; short reads pad."""

    def __init__(self, data: bytes) -> None:
        self.data, self.off = data, 0

    def left(self) -> int:
        return len(self.data) - self.off

    def take(self, n: int) -> bytes:
        chunk = self.data[self.off:self.off + n]
        self.off += len(chunk)
        return chunk

    def int(self, size: int) -> int:
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "little")


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return fds


class Unexpected(AssertionError):
    pass


def make_fd(kind: int, keep: list) -> int:
    """A descriptor for a frame: /dev/null, a connected socket (its peer
    kept until the end of the input) or a listening socket."""
    if kind == 1:
        a, b = socket.socketpair()
        keep.append(b)
        return a.detach()
    if kind == 2:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(SCRATCH / f"l{len(keep)}"))
        s.listen(4)
        keep.append(str(SCRATCH / f"l{len(keep)}"))
        return s.detach()
    return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


def close_handle(handle: object) -> None:
    if isinstance(handle, net.Socket):
        handle.destroy()
    elif isinstance(handle, net.Server):
        handle.close()
    elif isinstance(handle, socket.socket):
        handle.close()
    elif handle is not None:
        raise Unexpected(f"a handle of type {type(handle).__name__}")


def drain_peer(peer: socket.socket) -> None:
    """Reads what the Worker sent (replies, acks), closing its descriptors."""
    peer.setblocking(False)
    while True:
        try:
            data, ancdata, _, _ = peer.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
        except (BlockingIOError, ConnectionResetError):
            return
        for level, kind, blob in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for (fd,) in struct.iter_unpack("i", blob[:len(blob) - len(blob) % 4]):
                    os.close(fd)
        if not data:
            return


def settle() -> None:
    for _ in range(8):
        _core.turn(0)


def reset_shared_state() -> None:
    for handle in list(_shared._handles.values()):
        handle.close()
    _shared._handles.clear()
    _shared._by_key.clear()
    for server in list(_runtime.servers):
        server.close()
    _runtime.servers.clear()
    net._pending.clear()
    net._shared_servers.clear()
    net._indexes.clear()
    figures._answers.clear()


def fuzz_frames(data: bytes) -> None:
    r = Reader(data)
    mode = r.int(1)
    primary_side = bool(mode & 1)
    serialization = _worker.SER_PICKLE if mode & 4 else _worker.SER_JSON
    _runtime.settings["scheduling_policy"] = _runtime.SCHED_NONE if mode & 2 else _runtime.SCHED_RR
    before = count_fds()
    fds_before = open_fds() if os.environ.get("CX_FUZZ_DEBUG") else None
    ours, peer = socket.socketpair()
    w = _worker.Worker(7, os.getpid(), primary_side=primary_side,
                       serialization=serialization)
    w._open_channel(ours.detach())
    events: list[tuple[str, tuple]] = []
    for name in ("message", "error", "online", "listening", "disconnect", "disconnecting"):
        w.on(name, lambda *args, name=name: events.append((name, args)))
    if not primary_side:
        # replies to queries of ours, as net's listen() would leave them
        for seq, unix in ((1, False), (2, True)):
            net._pending[seq] = (lambda *reply, unix=unix: events.append(("reply", reply)),
                                 unix)
    keep: list = []
    handles: list = []
    try:
        for _ in range(MAX_FRAMES):
            if r.left() == 0:
                break
            frame_type = 1 + r.int(1) % (_core.FRAME_STATS)
            flags = r.int(2)
            fd_spec = r.int(1)
            payload = r.take(min(r.int(2), MAX_PAYLOAD))
            fds = tuple(make_fd(fd_spec >> 2 & 3, keep) for _ in range(fd_spec & 3))
            seen = len(events)
            unpickled = UNPICKLED[0]
            try:
                w._on_frame(frame_type, flags, payload, fds)
            except Exception as exc:
                raise Unexpected(f"_on_frame(type {frame_type}, flags {flags:#x}, "
                                 f"{len(payload)} bytes, {len(fds)} fds) raised "
                                 f"{exc!r}") from exc
            new = events[seen:]
            for name, args in new:
                if name == "message":
                    handles.append(args[1])
                if name == "reply" and args[3] is not None:
                    os.close(args[3])
            if frame_type == _core.FRAME_USER:
                outcome = [e for e in new if e[0] in ("message", "error")]
                if len(outcome) != 1:
                    raise Unexpected(f"a user frame gave {outcome!r}")
                name, args = outcome[0]
                if name == "error" and not (
                        type(args[0]) is ValueError
                        and str(args[0]).startswith("undecodable message from ")):
                    raise Unexpected(f"a user frame gave the error {args[0]!r}")
                if name == "message" and flags & 3 != serialization:
                    raise Unexpected(f"a user frame flagged {flags & 3} was decoded "
                                     f"on a Worker set to {serialization}")
            elif any(name == "error" for name, _ in new):
                raise Unexpected(f"frame type {frame_type} gave {new!r}")
            if serialization == _worker.SER_JSON and UNPICKLED[0] != unpickled:
                raise Unexpected(f"a Worker set to json unpickled (type {frame_type}, "
                                 f"flags {flags:#x})")
    finally:
        for handle in handles:
            close_handle(handle)
        reset_shared_state()
        w._disconnecting = True          # a worker's close is not a primary's death
        if w._chan is not None and not w._chan.closed:
            w._chan.close()
        settle()
        drain_peer(peer)
        peer.close()
        for item in keep:
            if isinstance(item, str):        # a server that adopted it may have
                Path(item).unlink(missing_ok=True)   # removed it on close
            else:
                item.close()
        settle()
    after = count_fds()
    if after != before:
        detail = ""
        if fds_before is not None:
            now = open_fds()
            detail = f": gained {sorted(set(now.items()) - set(fds_before.items()))}, " \
                     f"lost {sorted(set(fds_before.items()) - set(now.items()))}"
        raise Unexpected(f"{before} descriptors open before the input, {after} after{detail}")


# ---- protocol ------------------------------------------------------------------------

def fuzz_protocol(data: bytes) -> None:
    which, payload = (data[0] % 6, data[1:]) if data else (0, b"")
    try:
        if which == 0:
            seq, port, backlog, index, host, path, want_fd = _protocol.unpack_query(payload)
            again = _protocol.unpack_query(_protocol.pack_query(
                seq, port, backlog, index, host, path, want_fd))
            if again != (seq, port, backlog, index, host, path, want_fd):
                raise Unexpected(f"query {payload!r} packs back as {again!r}")
        elif which in (1, 2):
            seq, err, key, policy, address = _protocol.unpack_reply(payload, which == 2)
            again = _protocol.unpack_reply(
                _protocol.pack_reply(seq, err, key, policy, address), which == 2)
            if again != (seq, err, key, policy, address):
                raise Unexpected(f"reply {payload!r} packs back as {again!r}")
        elif which == 3:
            address = _protocol.unpack_listening(payload)
            if _protocol.unpack_listening(_protocol.pack_listening(address)) != address:
                raise Unexpected(f"listening {payload!r} does not pack back")
        elif which == 4:
            stats = _protocol.unpack_stats(payload)
            if stats[3] is None:             # a reply without its saturation part
                again = _protocol.unpack_stats(payload[:20])
            else:
                again = _protocol.unpack_stats(_protocol.pack_stats(*stats))
            if _stats_fields(again) != _stats_fields(stats):
                raise Unexpected(f"stats {payload!r} does not pack back")
        else:
            _protocol.reply_seq(payload)
    except ValueError:
        pass                                 # the documented outcome of a bad record
    except Exception as exc:
        raise Unexpected(f"decoder {which} on {payload[:64]!r} raised {exc!r}") from exc


def _stats_fields(stats: tuple[object, ...]) -> tuple[object, ...]:
    served, open_connections, requests, s = stats
    return (served, open_connections, requests) + (() if s is None else (
        s.in_flight, s.loop_lag, s.cut, s.closed, s.counts, s.sums))


# ---- control ---------------------------------------------------------------------------

def fuzz_control(data: bytes) -> None:
    try:
        command, argument = control._parse_request(data)
    except control.ControlError:
        return
    except Exception as exc:
        raise Unexpected(f"_parse_request({data[:80]!r}) raised {exc!r}") from exc
    if command not in control.COMMANDS:
        raise Unexpected(f"{data[:80]!r} parsed as the command {command!r}")
    if (command == "scale") != isinstance(argument, int) or isinstance(argument, bool):
        raise Unexpected(f"{data[:80]!r} parsed as {command!r} {argument!r}")


TARGETS = {"frames": fuzz_frames, "protocol": fuzz_protocol, "control": fuzz_control}


def replay(target, paths: list[str]) -> int:
    files = []
    for path in paths:
        p = Path(path)
        files += sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        target(f.read_bytes())
    print(f"replayed {len(files)} inputs: 0 failures", flush=True)
    return 0


def absolute(arg: str) -> str:
    """A corpus directory, a file or a path option, made absolute."""
    if not arg.startswith("-"):
        return os.path.abspath(arg)
    for option in ("-artifact_prefix=", "-exact_artifact_path=", "-dict="):
        if arg.startswith(option):
            value = arg[len(option):]
            return option + os.path.abspath(value) + ("/" if value.endswith("/") else "")
    return arg


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [--replay PATH... | "
              "libFuzzer options and corpus dirs]", file=sys.stderr)
        return 2
    target = TARGETS[sys.argv[1]]
    args = [absolute(arg) for arg in sys.argv[2:]]     # before the sandbox's chdir
    if not any(arg.startswith("-artifact_prefix=") for arg in args):
        args.append(f"-artifact_prefix={os.getcwd()}/")
    if target is fuzz_frames:
        sandbox()
    if "--replay" in args:
        return replay(target, [a for a in args if a != "--replay" and not a.startswith("-")])
    if atheris is None:
        print("atheris is not installed: only --replay works", file=sys.stderr)
        return 2
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
