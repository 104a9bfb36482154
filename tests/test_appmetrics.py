"""The application's own Prometheus metrics from every worker, in the
primary's /metrics, without PROMETHEUS_MULTIPROC_DIR: a real fleet scraped
and parsed by prometheus_client, and the merge checked against
prometheus_client's own multiprocess mode on the same operations."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from test_ops import scrape
from test_web import cli, get, serving, stop, until

pytest.importorskip("prometheus_client")
pytest.importorskip("uvicorn")

APPS = Path(__file__).parent / "apps"


def value(samples, name, **labels):
    """The one sample of name whose labels include labels."""
    [found] = [v for sample_labels, v in samples[name]
               if labels.items() <= sample_labels.items()]
    return found


def test_an_applications_metrics_are_merged_over_its_workers(app):
    metrics_port = free_port()
    a, port = cli(app, "prom_app:app", "--metrics", f"127.0.0.1:{metrics_port}", workers=4)
    serving(a, 4)
    pids = {int(get(port, "/")[2].split()[2]) for _ in range(40)}
    assert len(pids) == 4, pids
    samples = scrape(metrics_port)
    assert value(samples, "app_requests_total", path="/") == 40     # summed
    assert value(samples, "app_latency_seconds_count") == 40
    assert value(samples, "app_latency_seconds_bucket", le="+Inf") == 40
    assert {labels["pid"] for labels, _ in samples["app_started"]} == {str(p) for p in pids}
    assert value(samples, "app_live") == 4                           # livesum
    assert value(samples, "app_worker_id") == 4                      # max
    assert "app_requests_created" not in samples
    assert "process_cpu_seconds_total" in samples                    # the primary's, once
    assert len(samples["process_cpu_seconds_total"]) == 1

    os.kill(a.pid, signal.SIGHUP)        # every worker replaced: nothing goes backwards
    until(a, "reload done")
    samples = scrape(metrics_port)
    assert value(samples, "app_requests_total", path="/") == 40
    assert value(samples, "app_latency_seconds_bucket", le="+Inf") == 40
    assert value(samples, "app_live") == 4                           # the gone are not live
    assert len(samples["app_started"]) == 8                          # all: the gone stay
    assert value(samples, "app_worker_id") == 8
    for _ in range(4):
        get(port, "/")
    assert value(scrape(metrics_port), "app_requests_total", path="/") == 44
    stop(a)


class Worker:
    def __init__(self, id, pid):
        self.id, self.pid = id, pid


def test_the_merge_is_prometheus_clients_multiprocess_mode(tmp_path):
    """Three processes do the same operations with prometheus_client's
    multiprocess files and report what a worker would; one is dead: its
    MultiProcessCollector and our merge agree on every sample."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from cluster_ext.fleet import appmetrics
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    replies = []
    for n in (1, 2, 3):
        proc = subprocess.Popen([sys.executable, str(APPS / "prom_ops.py"), str(n)],
                                env=env, stdout=subprocess.PIPE, cwd=APPS)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        replies.append((Worker(n, proc.pid), out))
    mark_process_dead(replies[1][0].pid, str(tmp_path))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    expected = {(s.name, tuple(sorted(s.labels.items())), s.value)
                for family in registry.collect() for s in family.samples}

    appmetrics._latest.clear()
    appmetrics._retired_sums.clear()
    appmetrics._retired_gauges.clear()
    for w, payload in replies:
        appmetrics.received(w, payload)
    appmetrics._gone(replies[1][0])
    merged = {(s.name, tuple(sorted(s.labels.items())), s.value)
              for family in appmetrics.families() for s in family.samples}
    assert merged == expected, (sorted(merged - expected), sorted(expected - merged))
    assert any(name == "ops_total" and value == 6 for name, _, value in merged)


@pytest.mark.parametrize("payload,why", [
    (b"\xff", "codec"),
    (b"{}", "not a list of families"),
    (b'[["x", "counter", "", "", [["y_total", {}, 1]]]]', "a malformed sample"),
    (b'[["x", "gauge", "", "everything", []]]', "a malformed family"),
    (b'[["x", "counter", "", "", [["x_total", {"pid": "1"}, 1]]]]', "a malformed sample"),
    (b'[["x", "counter", "", "", [["x_total", {}, true]]]]', "a malformed sample"),
    (b"[" * 100000 + b"]" * 100000, "recursion"),
    (json.dumps([["x", "counter", "", "", [["x_total", {"k": str(i)}, 1]
                                            for i in range(50001)]]]).encode(), "more than"),
])
def test_a_malformed_reply_is_refused_whole(payload, why):
    """A worker may be compromised: what it sends is checked."""
    from cluster_ext.fleet import appmetrics
    with pytest.raises(ValueError, match=why):
        appmetrics._decode(payload)


def test_a_scripts_workers_report_their_metrics_too(app):
    """A script's workers (no web application, nothing of the fleet
    imported) answer the primary's request for the application's metrics."""
    import socket
    metrics_port, port = free_port(), free_port()
    script = APPS / "prom_script.py"
    cmd = [str(Path(sys.executable).parent / "cluster-ext"), "run", "-w", "2",
           "--metrics", f"127.0.0.1:{metrics_port}", str(script), str(port)]
    a = app(str(script), cmd=cmd, merge_stderr=True)
    serving(a, 2)
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(16) == b"counted\n"
    assert value(scrape(metrics_port), "script_connections_total") == 10
    stop(a)
