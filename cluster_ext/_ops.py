"""Operating a running cluster, from the primary: the figures of every worker
and of the fleet (gather()), the control socket (control()) and the
Prometheus endpoint (serve_metrics()).

The figures come from three places. The primary's end of each worker's
channel counts the user messages it carried (in the engine); each worker
counts the connections its servers took and holds, and answers a STATS frame
with them; /proc gives memory, CPU time and age. No file is shared, so no
multiprocess directory is needed. Both services run on the primary's loop
(no thread: a thread in the primary would make every fork(target=) unsafe)
and are unref'd: they never hold a stop. Any local user may connect to
/metrics, so both are bounded: a connection cap, a deadline for each request
and descriptors they may not take, all of it so that they can never starve
the fleet (issue 24).
"""
from __future__ import annotations

import errno
import os
import resource
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
MAX_CONNECTIONS = 64           # open at once, for each service; more are refused
IDLE_TIMEOUT = 10.0            # seconds a connection has for each whole request
RESERVE_FDS = 128              # descriptors the services leave to the fleet (or a quarter)
REFUSALS_LOGGED_EVERY = 60.0   # seconds: one line for a flood, not one a connection
RECOUNT_EVERY = 0.1            # seconds between two counts of the primary's descriptors
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

_answers: dict[int, tuple[int, int]] = {}      # worker id -> (served, open): the last reply
_gatherings: list[_Gathering] = []
_cpu_samples: dict[int, tuple[float, float, float]] = {}   # pid -> (when, cpu s, cpu %)
_fd_count = [-RECOUNT_EVERY, 0]   # when the primary's descriptors were counted; the count


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
    """A listening socket served on the primary's loop, never holding it up
    and never its undoing: at most max_connections at once, none that would
    take a descriptor the fleet needs (_descriptors_short), each closed once
    idle_timeout passes without a whole request from it (bytes trickled in
    do not put that off: a slowloris is closed too), and no exception out of
    the loop. A refused client gets `refusal`, then the close."""

    name = "a service"                   # as the log names it
    refusal = b""

    def __init__(self, sock: socket.socket, max_connections: int,
                 idle_timeout: float) -> None:
        sock.setblocking(False)
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        # each connection, and its idle timer (None while it is being answered)
        self.connections: dict[net.Socket, _core.Handle | None] = {}
        self.refused = 0                 # since the last line that said so
        self.logged_at: float | None = None
        self.listener: Any = _core.Listener(sock.detach(), self._accepted, False, 16)
        self.listener.ref(False)

    def _accepted(self, fd: int) -> None:
        why = self._refusal(fd)
        if why is not None:
            try:
                os.write(fd, self.refusal)   # a fresh socket's buffer takes it
                os.read(fd, 65536)           # its request, or TCP resets the answer
            except OSError:
                pass
            os.close(fd)
            self._refused(why)
            return
        try:
            conn = net.Socket(fd)        # owns fd, even when it fails
        except (OSError, MemoryError) as exc:
            self._refused(f"cannot serve it: {exc}")
            return
        conn.unref()
        self.connections[conn] = None
        conn.on("close", lambda *_: self._forget(conn))
        conn.on("error", lambda exc: None)       # a client that went away
        self.deadline(conn)
        self.guarded(conn, self.serve, conn)

    def _refusal(self, fd: int) -> str | None:
        if len(self.connections) >= self.max_connections:
            return f"{len(self.connections)} connections are open, the most it serves at once"
        return _descriptors_short(fd)

    def _refused(self, why: str) -> None:
        """Logged at most once a minute, with the count since the last line."""
        self.refused += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < REFUSALS_LOGGED_EVERY:
            return
        more = self.refused - 1
        _runtime.log("warning", f"{self.name}: connection refused: {why}" +
                     (f" ({more} more refused since the last such line)" if more else ""))
        self.logged_at, self.refused = now, 0

    def deadline(self, conn: net.Socket) -> None:
        """From now on, the client has idle_timeout seconds to send a whole
        request, however it trickles it in."""
        self.answering(conn)
        if not conn.closed and conn in self.connections:
            timer = _runtime.call_later(self.idle_timeout, conn.destroy)
            timer.ref(False)             # a stop does not wait for it
            self.connections[conn] = timer

    def answering(self, conn: net.Socket) -> None:
        """Its request is being answered: no deadline until the answer."""
        timer = self.connections.get(conn)
        if timer is not None:
            timer.cancel()
            self.connections[conn] = None

    def _forget(self, conn: net.Socket) -> None:
        self.answering(conn)
        self.connections.pop(conn, None)

    def guarded(self, conn: net.Socket, fn: Callable[..., Any], *args: Any) -> None:
        """fn(*args) for one connection: a defect there ends the connection,
        never the primary (an exception would stop its loop)."""
        try:
            fn(*args)
        except Exception as exc:
            _runtime.log("error", f"{self.name}: a request failed: {exc!r}")
            conn.destroy()

    def serve(self, conn: net.Socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stops listening and ends every connection at once."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for conn in list(self.connections):
            self._forget(conn)
            conn.destroy()


def _descriptors_short(fd: int) -> str | None:
    """Why one more connection would take a descriptor the fleet may need
    (a respawn takes a few at once, the balancer one a connection until the
    worker has it), or None. fd is the one just accepted: the lowest number
    that was free, so fd + 1 are open at least. /proc/self/fd counts them,
    at most every RECOUNT_EVERY seconds (a count of 150 takes 0.1 ms, and a
    client that connects again and again must not make the primary spend
    it each time); in between, each connection let in counts one more."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    reserve = min(RESERVE_FDS, limit // 4)
    in_use = fd + 1
    now = time.monotonic()
    counted = False
    if in_use <= limit - reserve and now - _fd_count[0] >= RECOUNT_EVERY:
        try:
            _fd_count[:] = now, len(os.listdir("/proc/self/fd")) - 1   # less listdir's own
            counted = True
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                in_use = limit
            # else no /proc: the number is all there is
    in_use = max(in_use, int(_fd_count[1]))
    if in_use <= limit - reserve:
        if not counted:
            _fd_count[1] += 1            # this one, until the next count
        return None
    return (f"the primary's descriptors run short ({in_use} of RLIMIT_NOFILE {limit} open; "
            f"the last {reserve} are kept for the workers)")


def _limits(max_connections: int, idle_timeout: float) -> tuple[int, float]:
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) \
            or max_connections < 1:
        raise ValueError(f"max_connections must be an int of 1 or more, not {max_connections!r}")
    idle_timeout = _runtime.check_seconds("idle_timeout", idle_timeout)
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be positive")
    return max_connections, idle_timeout


# ---- the control socket ------------------------------------------------------------

class ControlError(Exception):
    """A request the primary cannot carry out; its text is the reply's error."""


class Control(_Service):
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
        fleet = _fleet._active
        if command == "status":
            gather(lambda figures: answer({"ok": True, **figures}))
        elif command == "reload":
            started = time.monotonic()

            def ended(complete: bool) -> None:
                took = round(time.monotonic() - started, 3)
                answer({"ok": True, "seconds": took} if complete else
                       {"ok": False, "seconds": took, "error": "the reload stopped: the "
                        "new workers could not start, the old ones serve on"})

            _fleet.rolling_restart(None, ended, cause="reload asked on the control socket")
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
    return Control(os.fspath(path), *_limits(max_connections, idle_timeout))


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


def _http_refusal(body: bytes) -> bytes:
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\nretry-after: 10\r\n\r\n%s"
            % (len(body), body))


class Metrics(_Service):
    """serve_metrics(): GET /metrics in the Prometheus text format, over
    HTTP/1.1 parsed by h11 (a request head still unfinished past 16 KiB is
    its 431), the exposition written by prometheus_client."""

    name = "metrics"
    refusal = _http_refusal(b"refused: too many connections, or the primary's descriptors "
                            b"run short\n")

    def __init__(self, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        try:
            import h11
            from prometheus_client import CollectorRegistry, ProcessCollector
        except ImportError as exc:
            raise ImportError(f"metrics need prometheus_client and h11 ({exc}): "
                              "pip install '.[metrics]' in cluster_ext's repository root") from None
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
        self.stalled: set[net.Socket] = set()    # answers wait to be read: so does the rest
        super().__init__(sock, max_connections, idle_timeout)

    def _forget(self, conn: net.Socket) -> None:
        super()._forget(conn)
        self.stalled.discard(conn)

    def collect(self) -> list[Any]:
        return _metric_families(self.figures)

    def serve(self, conn: net.Socket) -> None:
        h11 = self.h11
        http = h11.Connection(h11.SERVER)

        def pump() -> None:
            # A client that does not read its answers gets no more of them
            # (on 'drain' it does): they would pile up in the primary.
            while not conn.closed and conn not in self.stalled:
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
                    self.answering(conn)
                    self.route(conn, http, event, pump)
                    return

        def on_data(data: bytes) -> None:
            http.receive_data(data)
            pump()

        def on_drain() -> None:
            self.stalled.discard(conn)
            conn.resume()
            pump()

        conn.on("data", lambda data: self.guarded(conn, on_data, data))
        conn.on("end", lambda: self.guarded(conn, on_data, b""))
        conn.on("drain", lambda: self.guarded(conn, on_drain))

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
                if not conn.closed and conn not in self.stalled:
                    conn.resume()
                    pump()

            gather(lambda figures: self.guarded(conn, gathered, figures))
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
        if not conn.write(data):
            self.stalled.add(conn)
            conn.pause()
        self.deadline(conn)
        if close or http.our_state is h11.MUST_CLOSE:
            conn.end()


def serve_metrics(port: int, host: str = "127.0.0.1", *,
                  max_connections: int = MAX_CONNECTIONS,
                  idle_timeout: float = IDLE_TIMEOUT) -> Metrics:
    """Serves /metrics on host:port from this primary; returns it, to close()."""
    if not _runtime.is_primary:
        raise RuntimeError("serve_metrics() is the primary's")
    return Metrics(host, port, *_limits(max_connections, idle_timeout))
