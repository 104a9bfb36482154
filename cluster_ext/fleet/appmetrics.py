"""The application's own Prometheus metrics, from every worker, in the
primary's /metrics: no PROMETHEUS_MULTIPROC_DIR, no shared files.

At each scrape the primary asks every worker for its figures with the
STATS_APP flag; a worker whose application imported prometheus_client
answers first with its default registry's families (JSON, in a STATS frame
flagged the same: the worker's side is cluster_ext._appmetrics), then with
its figures. The primary merges them as
prometheus_client's multiprocess mode does: counters, histograms and
summaries summed across workers, a worker gone keeping its last values in
the sums so that no counter goes backwards; gauges by their
multiprocess_mode (all and liveall per worker, with a pid label; min, max
and sum, and their live forms; mostrecent as the newest worker's value).
A worker may be compromised: what it sends is checked, and a reply that
is not well formed is dropped whole."""
from __future__ import annotations

from .. import _runtime
from .._appmetrics import TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from .._worker import Worker

    Labels: TypeAlias = tuple[tuple[str, str], ...]
    # name -> (type, documentation, gauge mode, {(sample name, labels): value})
    Families: TypeAlias = dict[str, tuple[str, str, str, dict[tuple[str, Labels], float]]]

GAUGE_MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
               "mostrecent", "livemostrecent")
MAX_SAMPLES = 50_000         # a worker's reply with more is dropped
MAX_REPLY = 8 << 20          # bytes: and one longer, before it is parsed
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z"     # Prometheus' metric names, and label names:
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*\Z"      # compiled in the primary, not at a worker's start

_latest: dict[int, tuple[int, Families]] = {}   # worker id -> (pid, its last reply)
_retired_sums: Families = {}                    # gone workers' counters, histograms, summaries
_retired_gauges: dict[int, Families] = {}       # pid -> a gone worker's non-live gauges
_warned: set[int] = set()                       # workers whose malformed reply was logged


# ---- in the primary ---------------------------------------------------------------------

def _decode(payload: bytes) -> Families:
    """A worker's reply, checked: ValueError for anything else."""
    import json
    import re
    name_ok, label_ok = re.compile(NAME).match, re.compile(LABEL).match
    if len(payload) > MAX_REPLY:
        raise ValueError(f"{len(payload)} bytes, more than {MAX_REPLY}")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(raw, list):
        raise ValueError("not a list of families")
    families: Families = {}
    count = 0
    for family in raw:
        if not (isinstance(family, list) and len(family) == 5):
            raise ValueError("a family is [name, type, documentation, mode, samples]")
        name, kind, documentation, mode, samples = family
        if not (isinstance(name, str) and name_ok(name) and kind in TYPES
                and isinstance(documentation, str) and isinstance(samples, list)
                and (mode in GAUGE_MODES if kind == "gauge" else mode == "")):
            raise ValueError(f"a malformed family {str(name)[:100]!r}")
        count += len(samples)
        if count > MAX_SAMPLES:
            raise ValueError(f"more than {MAX_SAMPLES} samples")
        values: dict[tuple[str, Labels], float] = {}
        for sample in samples:
            if not (isinstance(sample, list) and len(sample) == 3):
                raise ValueError("a sample is [name, labels, value]")
            sample_name, labels, value = sample
            if not (isinstance(sample_name, str) and sample_name.startswith(name)
                    and name_ok(sample_name) and isinstance(labels, dict)
                    and all(isinstance(k, str) and label_ok(k) and k != "pid"
                            and isinstance(v, str) for k, v in labels.items())
                    and isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise ValueError(f"a malformed sample of {name!r}")
            values[(sample_name, tuple(sorted(labels.items())))] = float(value)
        if name not in families:
            families[name] = (kind, documentation, mode, values)
    return families


def received(w: Worker, payload: bytes) -> None:
    try:
        _latest[w.id] = (w.pid, _decode(payload))
    except ValueError as exc:
        if w.id not in _warned:
            _warned.add(w.id)
            _runtime.log("warning", f"worker {w.id}: its application's metrics are "
                         f"dropped: {exc}")


def _gone(w: Worker, *_: Any) -> None:
    """A worker's last values stay: its sums, and its gauges of the modes
    that keep a dead process's value."""
    _warned.discard(w.id)
    pid, families = _latest.pop(w.id, (w.pid, {}))
    gauges: Families = {}
    for name, (kind, documentation, mode, values) in families.items():
        if kind == "gauge":
            if not mode.startswith("live"):
                gauges[name] = (kind, documentation, mode, values)
            continue
        total = _retired_sums.setdefault(name, (kind, documentation, mode, {}))
        if total[0] != kind:
            continue
        for key, value in values.items():
            total[3][key] = total[3].get(key, 0.0) + value
    if gauges:
        _retired_gauges[pid] = gauges


def families() -> list[Any]:
    """Every worker's metrics merged, as prometheus_client's Metric families."""
    from prometheus_client.core import Metric

    merged: dict[str, tuple[str, str, str, dict[tuple[str, Labels], float]]] = {}

    def take(families: Families, pid: int | None) -> None:
        for name, (kind, documentation, mode, values) in families.items():
            into = merged.setdefault(name, (kind, documentation, mode, {}))
            if into[0] != kind or into[2] != mode:
                continue                 # another worker's code says otherwise: the first wins
            out = into[3]
            for (sample_name, labels), value in values.items():
                if kind != "gauge":
                    key = (sample_name, labels)
                    out[key] = out.get(key, 0.0) + value
                elif mode in ("all", "liveall"):
                    out[(sample_name, (*labels, ("pid", str(pid))))] = value
                else:
                    key = (sample_name, labels)
                    if key not in out or mode.endswith("mostrecent"):
                        out[key] = value     # workers come oldest first: the newest stays
                    elif mode.endswith("min"):
                        out[key] = min(out[key], value)
                    elif mode.endswith("max"):
                        out[key] = max(out[key], value)
                    else:
                        out[key] += value

    take(_retired_sums, None)
    for pid, gauges in _retired_gauges.items():
        take(gauges, pid)
    for _, (pid, latest) in sorted(_latest.items()):
        take(latest, pid)
    result = []
    for name, (kind, documentation, _, values) in merged.items():
        metric = Metric(name, documentation, kind)
        for (sample_name, labels), value in values.items():
            metric.add_sample(sample_name, dict(labels), value)
        result.append(metric)
    return result


_runtime.emitter.on("exit", _gone)
