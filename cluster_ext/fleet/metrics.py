"""/metrics (cluster.serve_metrics(), --metrics): the fleet's figures in the
Prometheus text format, from the primary; prometheus_client writes the
exposition and h11 parses HTTP."""
from __future__ import annotations

import socket

from .. import _runtime, net
from . import appmetrics
from .figures import gather
from .service import IDLE_TIMEOUT, MAX_CONNECTIONS, Service, limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .figures import Snapshot


def _metric_families(figures: Snapshot) -> list[Any]:
    """The snapshot as Prometheus metric families (prometheus_client's)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
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
        ("requests", CounterMetricFamily, "cluster_ext_worker_requests",
         "HTTP requests the worker answered (connections, outside the web layer)"),
        ("in_flight", GaugeMetricFamily, "cluster_ext_worker_requests_in_flight",
         "HTTP requests whose response the worker's web layer has in progress"),
        ("loop_lag", GaugeMetricFamily, "cluster_ext_worker_loop_lag_seconds",
         "the worst lateness of the worker's loop probe timer over the last 5-10 s"),
        ("rr_backlog", GaugeMetricFamily, "cluster_ext_worker_rr_backlog",
         "SCHED_RR: connections handed to the worker that it may not have taken yet"),
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
    duration = HistogramMetricFamily(
        "cluster_ext_request_duration_seconds", "HTTP requests by status class, from the "
        "application's start to the response's end; exited workers' included",
        labels=["status_class"])
    for status_class, histogram in figures.get("request_duration", {}).items():
        duration.add_metric([status_class], [(str(bound), count) for bound, count
                                             in histogram["buckets"]], histogram["sum"])
    families.append(duration)
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
        recycles = CounterMetricFamily("cluster_ext_recycles", "workers recycled, by the "
                                       "limit they passed", labels=["reason"])
        for reason, count in primary["recycles"].items():
            recycles.add_metric([reason], count)
        families.append(recycles)
    return families


def _http_refusal(body: bytes) -> bytes:
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\nretry-after: 10\r\n\r\n%s"
            % (len(body), body))


class Metrics(Service):
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
        return _metric_families(self.figures) + appmetrics.families()

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

            gather(lambda figures: self.guarded(conn, gathered, figures), application=True)
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
    return Metrics(host, port, *limits(max_connections, idle_timeout))
