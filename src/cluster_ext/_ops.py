"""Operating a running cluster, from the primary: the figures of every worker
and of the fleet (gather()), the control socket (control()) and the
Prometheus endpoint (serve_metrics()).

The figures come from three places. The primary's end of each worker's
channel counts the user messages it carried (in the engine); each worker
counts the connections its servers took and holds, and answers a STATS frame
with them; /proc gives memory, CPU time and age. No file is shared, so no
multiprocess directory is needed. Both services run on the primary's loop
(no thread: a thread in the primary would make every fork(target=) unsafe)
and are unref'd: they never hold a stop.
"""
from __future__ import annotations

import errno
import os
import socket
import time

from . import _core, _fleet, _protocol, _runtime, _shared, _worker, net

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._worker import Worker

    Snapshot = dict[str, Any]

GATHER_TIMEOUT = 1.0           # a worker that has not answered by then shows its last figures
MAX_REQUEST = 64 * 1024        # a control request is one line, well under this
MAX_WORKERS = 1024             # what `scale` accepts
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

_answers: dict[int, tuple[int, int]] = {}      # worker id -> (served, open): the last reply
_gatherings: list[_Gathering] = []
_cpu_samples: dict[int, tuple[float, float, float]] = {}   # pid -> (when, cpu s, cpu %)


# ---- the figures -----------------------------------------------------------------

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
    served, open_connections = _answers.get(w.id, (None, None))
    row: dict[str, Any] = {
        "id": w.id, "pid": w.pid, "state": w.state, "age": None, "restarts": restarts,
        "rss": None, "cpu_percent": None, "cpu_seconds": None,
        "connections": open_connections, "served": served,
        "messages_received": received, "messages_sent": sent}
    proc = _proc(w.pid)
    if proc is not None:
        cpu, rss, age = proc
        row.update(age=round(age, 3), rss=rss, cpu_seconds=cpu,
                   cpu_percent=round(_cpu_percent(w.pid, cpu, age), 1))
    return row


def snapshot() -> Snapshot:
    """What status and /metrics show, from the figures at hand."""
    fleet = _fleet._active
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
            since=fleet.since)
    return {"primary": primary, "workers": rows}


class _Gathering:
    """One round of STATS frames: done() once every worker asked has answered,
    or at GATHER_TIMEOUT with what came."""

    def __init__(self, done: Callable[[], Any]) -> None:
        self.done = done
        workers = _runtime.workers
        assert workers is not None
        self.waiting = {w.id for w in workers.values()
                        if w.is_connected() and w._send_frame(_core.FRAME_STATS)}
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


def gather(done: Callable[[Snapshot], Any]) -> None:
    """Asks every worker for its figures; done(snapshot()) once they answered."""
    if not _runtime.is_primary:
        raise RuntimeError("the cluster's figures are the primary's")
    _Gathering(lambda: done(snapshot()))


def _on_stats(w: Worker, flags: int, payload: bytes, fds: tuple[int, ...]) -> None:
    _worker.close_fds(fds)
    try:
        _answers[w.id] = _protocol.unpack_stats(payload)
    except ValueError:                   # struct.error: not a reply of ours
        return
    for gathering in list(_gatherings):
        gathering.answered(w.id)


def _forget(w: Worker, *_: Any) -> None:
    _answers.pop(w.id, None)
    for gathering in list(_gatherings):
        gathering.answered(w.id)


_worker.primary_frame_handlers[_core.FRAME_STATS] = _on_stats
_runtime.emitter.on("exit", _forget)


# ---- the services: a listener on the primary's loop and its connections -----------

class _Service:
    """A listening socket served on the primary's loop, never holding it up."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.connections: set[net.Socket] = set()
        self.listener: Any = _core.Listener(sock.detach(), self._accepted, False, 16)
        self.listener.ref(False)

    def _accepted(self, fd: int) -> None:
        conn = net.Socket(fd)
        conn.unref()
        self.connections.add(conn)
        conn.on("close", lambda *_: self.connections.discard(conn))
        conn.on("error", lambda exc: None)       # a client that went away
        self.serve(conn)

    def serve(self, conn: net.Socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stops listening and ends every connection at once."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for conn in list(self.connections):
            conn.destroy()


# ---- the control socket ------------------------------------------------------------

class ControlError(Exception):
    """A request the primary cannot carry out; its text is the reply's error."""


class Control(_Service):
    """cluster.control(path): a Unix socket, mode 0600, on which each request
    is one line (JSON, {"command": "status"}, or words: `scale 4`) and each
    reply one line of JSON ({"ok": true, ...} or {"ok": false, "error": ...})."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        super().__init__(_bind_control(self.path))
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

        def next_request() -> None:
            # A loop, not recursion: answers that come at once (errors,
            # scale, stop) must not nest one call per pipelined request.
            pumping[0] = True
            try:
                while not busy[0] and b"\n" in buffer and not conn.closed:
                    line, _, rest = bytes(buffer).partition(b"\n")
                    buffer[:] = rest
                    busy[0] = True
                    conn.pause()
                    self.request(line, answer)
            finally:
                pumping[0] = False
            if len(buffer) > MAX_REQUEST:
                conn.end(_encode({"ok": False, "error": "request too long"}))
                buffer.clear()

        def answer(reply: dict[str, Any]) -> None:
            if conn.closed:
                return
            conn.write(_encode(reply))
            busy[0] = False
            conn.resume()
            if not pumping[0]:           # a later answer (status): go on from here
                next_request()

        def on_data(data: bytes) -> None:
            buffer.extend(data)
            next_request()

        conn.on("data", on_data)

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
        fleet = _fleet._active
        if command == "status":
            gather(lambda figures: answer({"ok": True, **figures}))
        elif command == "reload":
            started = time.monotonic()
            _runtime.log("info", "reload asked on the control socket")

            def ended(complete: bool) -> None:
                took = round(time.monotonic() - started, 3)
                answer({"ok": True, "seconds": took} if complete else
                       {"ok": False, "seconds": took, "error": "the reload stopped: the "
                        "new workers could not start, the old ones serve on"})

            _fleet.rolling_restart(None, ended)
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
            _runtime.log("info", "stop asked on the control socket")
            answer({"ok": True})
            _runtime.call_later(0, fleet.stop)


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


def control(path: str | os.PathLike[str]) -> Control:
    """Serves the control socket at path (see Control); returns it, to close()."""
    if not _runtime.is_primary:
        raise RuntimeError("control() is the primary's")
    return Control(os.fspath(path))


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


# ---- /metrics --------------------------------------------------------------------

def _metric_families(figures: Snapshot) -> list[Any]:
    """The snapshot as Prometheus metric families (prometheus_client's)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        SummaryMetricFamily,
    )
    labels = ["worker", "pid"]
    per_worker = [
        ("restarts", GaugeMetricFamily, "cluster_ext_worker_restarts",
         "workers that held this worker's place before it (respawns and reloads)"),
        ("age", GaugeMetricFamily, "cluster_ext_worker_age_seconds",
         "seconds since the worker's process started"),
        ("rss", GaugeMetricFamily, "cluster_ext_worker_resident_memory_bytes",
         "resident memory of the worker's process"),
        ("cpu_seconds", CounterMetricFamily, "cluster_ext_worker_cpu_seconds",
         "user and system CPU time of the worker's process"),
        ("connections", GaugeMetricFamily, "cluster_ext_worker_open_connections",
         "connections the worker's servers hold open"),
        ("served", CounterMetricFamily, "cluster_ext_worker_connections",
         "connections the worker's servers have taken"),
        ("messages_received", CounterMetricFamily, "cluster_ext_worker_messages_received",
         "messages the primary received from the worker"),
        ("messages_sent", CounterMetricFamily, "cluster_ext_worker_messages_sent",
         "messages the primary sent to the worker"),
    ]
    families: list[Any] = []
    info = InfoMetricFamily("cluster_ext_worker", "one per worker: its state",
                            labels=[*labels, "state"])
    for row in figures["workers"]:
        info.add_metric([str(row["id"]), str(row["pid"]), row["state"]], {})
    families.append(info)
    for key, family_type, name, documentation in per_worker:
        family = family_type(name, documentation, labels=labels)
        for row in figures["workers"]:
            if row[key] is not None:
                family.add_metric([str(row["id"]), str(row["pid"])], row[key])
        families.append(family)
    primary = figures["primary"]
    families.append(GaugeMetricFamily("cluster_ext_workers", "workers alive",
                                      value=len(figures["workers"])))
    if primary["supervised"]:
        families += [
            GaugeMetricFamily("cluster_ext_workers_wanted", "the fleet's size",
                              value=primary["workers_wanted"]),
            GaugeMetricFamily("cluster_ext_ready", "1 while every worker serves",
                              value=1 if primary["state"] == "ready" else 0),
            CounterMetricFamily("cluster_ext_restarts", "workers respawned",
                                value=primary["restarts"]),
            CounterMetricFamily("cluster_ext_crashes", "workers that died unasked within "
                                "a second of starting", value=primary["crashes"]),
            CounterMetricFamily("cluster_ext_crash_loops", "fleet stops for a crash loop",
                                value=primary["crash_loops"]),
            SummaryMetricFamily("cluster_ext_reload_duration_seconds",
                                "rolling restarts that completed, and how long they took",
                                count_value=primary["reloads"],
                                sum_value=primary["reload_seconds"]),
            CounterMetricFamily("cluster_ext_reloads_stopped", "rolling restarts that "
                                "stopped (the new workers could not start)",
                                value=primary["reloads_stopped"]),
        ]
    return families


class Metrics(_Service):
    """serve_metrics(): GET /metrics in the Prometheus text format, over
    HTTP/1.1 parsed by h11, the exposition written by prometheus_client."""

    def __init__(self, host: str, port: int) -> None:
        try:
            import h11
            from prometheus_client import CollectorRegistry, ProcessCollector
        except ImportError as exc:
            raise ImportError(f"metrics need prometheus_client and h11 ({exc}): "
                              "pip install 'cluster_ext[metrics]'") from None
        self.h11 = h11
        self.figures: Snapshot = {"primary": {"supervised": False}, "workers": []}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)     # collect(): the last gathered figures
        ProcessCollector(registry=self.registry)   # the primary's own process_*
        try:
            sock = socket.create_server((host, port), backlog=64)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
        self.address = sock.getsockname()[:2]
        super().__init__(sock)

    def collect(self) -> list[Any]:
        return _metric_families(self.figures)

    def serve(self, conn: net.Socket) -> None:
        h11 = self.h11
        http = h11.Connection(h11.SERVER)

        def pump() -> None:
            while not conn.closed:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as exc:
                    if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        self.respond(conn, http, exc.error_status_hint, b"bad request\n",
                                     close=True)
                    else:
                        conn.destroy()
                    return
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    if http.our_state is h11.DONE and http.their_state is h11.DONE:
                        http.start_next_cycle()
                        continue
                    return
                if isinstance(event, h11.ConnectionClosed):
                    conn.end()
                    return
                if isinstance(event, h11.Request):
                    self.route(conn, http, event, pump)
                    return

        def on_data(data: bytes) -> None:
            http.receive_data(data)
            pump()

        conn.on("data", on_data)
        conn.on("end", lambda: on_data(b""))

    def route(self, conn: net.Socket, http: Any, request: Any,
              pump: Callable[[], None]) -> None:
        path = request.target.split(b"?", 1)[0]
        head = request.method == b"HEAD"
        if request.method not in (b"GET", b"HEAD"):
            self.respond(conn, http, 405, b"GET or HEAD\n", extra=[(b"allow", b"GET, HEAD")])
        elif path != b"/metrics":
            self.respond(conn, http, 404, b"the figures are at /metrics\n", head=head)
        else:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
            conn.pause()                 # the figures come back from the workers first

            def gathered(figures: Snapshot) -> None:
                self.figures = figures
                self.respond(conn, http, 200, generate_latest(self.registry), head=head,
                             content_type=CONTENT_TYPE_LATEST.encode())
                if not conn.closed:
                    conn.resume()
                    pump()

            gather(gathered)
            return
        pump()

    def respond(self, conn: net.Socket, http: Any, status: int, body: bytes, *,
                head: bool = False, close: bool = False,
                content_type: bytes = b"text/plain; charset=utf-8",
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        h11 = self.h11
        if conn.closed:
            return
        headers = [(b"content-type", content_type),
                   (b"content-length", str(len(body)).encode()), *(extra or [])]
        if close:
            headers.append((b"connection", b"close"))
        try:
            from http import HTTPStatus
            data = http.send(h11.Response(status_code=status, headers=headers,
                                          reason=HTTPStatus(status).phrase.encode()))
            if not head:
                data += http.send(h11.Data(data=body))
            data += http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            conn.destroy()
            return
        conn.write(data)
        if close or http.our_state is h11.MUST_CLOSE:
            conn.end()


def serve_metrics(port: int, host: str = "127.0.0.1") -> Metrics:
    """Serves /metrics on host:port from this primary; returns it, to close()."""
    if not _runtime.is_primary:
        raise RuntimeError("serve_metrics() is the primary's")
    return Metrics(host, port)
