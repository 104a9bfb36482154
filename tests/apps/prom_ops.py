"""Metrics of every type and gauge mode, moved by N (argv[1]); prints what
cluster_ext's worker side collects of them, one JSON line. Run with
PROMETHEUS_MULTIPROC_DIR set, it also writes prometheus_client's
multiprocess files, for the test to compare the two merges."""
import json
import sys

from prometheus_client import Counter, Gauge, Histogram, Summary

from cluster_ext import _appmetrics

n = int(sys.argv[1])
counter = Counter("ops", "a counter", ["kind"])
counter.labels("a").inc(n)
counter.labels("b").inc(2 * n)
histogram = Histogram("latency", "a histogram", buckets=(1, 5, 10))
for value in range(3 * n):
    histogram.observe(value)
Summary("size", "a summary").observe(n)
for mode in ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum"):
    Gauge(f"gauge_{mode}", mode, ["kind"], multiprocess_mode=mode).labels("x").set(n * 1.5)
print(json.dumps(_appmetrics.collect()))
