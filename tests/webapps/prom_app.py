"""An ASGI application with its own Prometheus metrics, in the default
registry, as an application instruments itself (no multiprocess setup):
each request counts, is timed, and sets the gauges of each mode."""
import os

from prometheus_client import Counter, Gauge, Histogram

import cluster_ext as cluster

REQUESTS = Counter("app_requests", "requests answered", ["path"])
LATENCY = Histogram("app_latency_seconds", "time to answer", buckets=(0.001, 0.1, 1.0))
STARTED = Gauge("app_started", "1 in each worker")                           # all
LIVE = Gauge("app_live", "1 in each live worker", multiprocess_mode="livesum")
NEWEST = Gauge("app_worker_id", "the highest worker id", multiprocess_mode="max")
STARTED.set(1)
LIVE.set(1)
NEWEST.set(cluster.worker.id if cluster.worker is not None else 0)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    with LATENCY.time():
        REQUESTS.labels(scope["path"]).inc()
        body = f"hello {cluster.worker.id} {os.getpid()}\n".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
