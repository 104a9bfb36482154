"""The control socket (cluster.control(), `cluster-ext status|reload|scale|stop`):
a Unix socket of the primary's, mode 0600, one request a line and one JSON
reply a line; request() is its client."""
from __future__ import annotations

import errno
import os
import socket
import time

from .. import _runtime, _shared, net
from . import figures, rolling
from .service import IDLE_TIMEOUT, MAX_CONNECTIONS, Service, limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_REQUEST = 64 * 1024        # a control request is one line, well under this
MAX_WORKERS = 1024             # what `scale` accepts


class ControlError(Exception):
    """A request the primary cannot carry out; its text is the reply's error."""


class Control(Service):
    """cluster.control(path): a Unix socket, mode 0600, on which each request
    is one line (JSON, {"command": "status"}, or words: `scale 4`) and each
    reply one line of JSON ({"ok": true, ...} or {"ok": false, "error": ...})."""

    name = "control socket"
    refusal = b'{"ok":false,"error":"refused: too many connections, or the primary\'s ' \
              b'descriptors run short; try again later"}\n'

    def __init__(self, path: str, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.path = os.path.abspath(path)
        super().__init__(_bind_control(self.path), max_connections, idle_timeout)
        self._ino = os.stat(self.path).st_ino

    def close(self) -> None:
        super().close()
        try:                             # ours only: a successor may have bound it since
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

    def serve(self, conn: net.Socket) -> None:
        buffer = bytearray()
        busy = [False]                   # a request is being answered: later ones wait
        pumping = [False]                # next_request() is on the stack
        stalled = [False]                # its answers wait to be read: so does the rest

        def next_request() -> None:
            # A loop, not recursion: answers that come at once (errors,
            # scale, stop) must not nest one call per pipelined request.
            pumping[0] = True
            try:
                while not busy[0] and not stalled[0] and b"\n" in buffer \
                        and not conn.closed:
                    line, _, rest = bytes(buffer).partition(b"\n")
                    buffer[:] = rest
                    busy[0] = True
                    conn.pause()
                    self.answering(conn)
                    self.request(line, lambda reply: self.guarded(conn, answer, reply))
            finally:
                pumping[0] = False
            # Whole lines wait while it is paused (busy, stalled): only a
            # line that does not end is too long.
            if len(buffer) > MAX_REQUEST and b"\n" not in buffer:
                conn.end(_encode({"ok": False, "error": "request too long"}))
                buffer.clear()

        def answer(reply: dict[str, Any]) -> None:
            if conn.closed:
                return
            stalled[0] = not conn.write(_encode(reply))
            busy[0] = False
            self.deadline(conn)
            if not stalled[0]:
                go_on()

        def go_on() -> None:
            stalled[0] = False
            conn.resume()
            if not pumping[0]:           # a later answer (status): go on from here
                next_request()

        def on_data(data: bytes) -> None:
            buffer.extend(data)
            next_request()

        def on_drain() -> None:
            if stalled[0]:
                go_on()

        conn.on("data", lambda data: self.guarded(conn, on_data, data))
        conn.on("drain", lambda: self.guarded(conn, on_drain))

    def request(self, line: bytes, answer: Callable[[dict[str, Any]], Any]) -> None:
        try:
            command, argument = _parse_request(line)
            self.run(command, argument, answer)
        except ControlError as exc:
            answer({"ok": False, "error": str(exc)})
        except Exception as exc:         # a defect here must not take the primary down
            _runtime.log("error", f"control request {line[:200]!r} failed: {exc!r}")
            answer({"ok": False, "error": f"internal error: {exc!r}"})

    def run(self, command: str, argument: int | None,
            answer: Callable[[dict[str, Any]], Any]) -> None:
        fleet = _runtime.fleet
        if command == "status":
            figures.gather(lambda figures: answer({"ok": True, **figures}))
        elif command == "reload":
            started = time.monotonic()

            def ended(complete: bool, seen: rolling._Reload) -> None:
                took = round(time.monotonic() - started, 3)
                lost = {"seconds": took, "connections_reset": seen.reset,
                        "requests_failed": seen.failed}
                answer({"ok": True, **lost} if complete else
                       {"ok": False, **lost, "error": "the reload stopped: the "
                        "new workers could not start, the old ones serve on"})

            rolling.rolling_restart(None, ended, cause="reload asked on the control socket")
        elif fleet is None:
            raise ControlError(f"{command!r} needs a supervised fleet (supervise(), "
                               "cluster-ext run)")
        elif command == "scale":
            if argument is None or not 1 <= argument <= MAX_WORKERS:
                raise ControlError(f"scale takes a number of workers from 1 to {MAX_WORKERS}")
            if fleet.stopping:
                raise ControlError("the fleet is stopping")
            _runtime.log("info", f"scale to {argument} workers asked on the control socket")
            fleet.scale(argument)
            answer({"ok": True, "workers_wanted": fleet.size})
        else:                            # stop: answered before the stop begins
            answer({"ok": True})
            _runtime.call_later(0, lambda: fleet.stop(cause="stop asked on the control socket"))


COMMANDS = ("status", "reload", "scale", "stop")


def _parse_request(line: bytes) -> tuple[str, int | None]:
    """A request line -> (command, its number or None)."""
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        import json
        try:
            request = json.loads(text)
        except (ValueError, RecursionError) as exc:     # "[" * 1000 recurses too deep
            raise ControlError(f"malformed JSON request: {exc}") from None
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise ControlError('a JSON request is an object with a "command" string')
        command, argument = request["command"], request.get("workers")
    else:
        words = text.split()
        if not words:
            raise ControlError(f"empty request; commands: {', '.join(COMMANDS)}")
        command, argument = words[0], (words[1] if len(words) == 2 else None)
        if len(words) > 2:
            raise ControlError(f"too many words in {text[:80]!r}")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command[:80]!r}; commands: {', '.join(COMMANDS)}")
    if command != "scale":
        if argument is not None:
            raise ControlError(f"{command} takes no argument")
        return command, None
    # past 4300 digits int() raises ValueError; past 9, no fleet is that big
    if isinstance(argument, str) and argument.isascii() and argument.isdigit() \
            and len(argument) <= 9:
        argument = int(argument)
    if not isinstance(argument, int) or isinstance(argument, bool):
        raise ControlError("scale takes a number of workers (scale 4, or "
                           '{"command": "scale", "workers": 4})')
    return command, argument


def _encode(reply: dict[str, Any]) -> bytes:
    import json
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def _bind_control(path: str) -> socket.socket:
    """A listening Unix socket at path, mode 0600. A socket left there by a
    primary that died is replaced; one a live primary answers on is an error."""
    try:
        _shared.remove_stale_socket(path)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = f"{path} is live: another primary serves on it"
        elif exc.errno == errno.EEXIST:
            why = f"{path} exists and is not a socket"
        else:
            why = f"{path}: {exc.strerror or exc}"
        raise OSError(exc.errno, f"control socket: {why}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)              # never a moment with wider permissions
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"control socket: cannot listen on {path}: "
                      f"{exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    return sock


def control(path: str | os.PathLike[str], *, max_connections: int = MAX_CONNECTIONS,
            idle_timeout: float = IDLE_TIMEOUT) -> Control:
    """Serves the control socket at path (see Control); returns it, to close()."""
    if not _runtime.is_primary:
        raise RuntimeError("control() is the primary's")
    return Control(os.fspath(path), *limits(max_connections, idle_timeout))


def request(path: str | os.PathLike[str], line: str, timeout: float | None = None) -> Any:
    """A client's side: sends one request line to the control socket at path
    and returns the reply (a dict)."""
    import json
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the primary closed the control connection "
                                      "before it answered (it stopped?)")
            reply += chunk
    return json.loads(reply)
