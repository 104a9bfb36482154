"""A worker's side of the application's own Prometheus metrics (the
primary's merge is fleet.appmetrics): asked for its figures with STATS_APP,
a worker whose application imported prometheus_client first answers with its
default registry's families (JSON, in a STATS frame flagged the same).
Imported by the first such request, never at a worker's start, and never
imports prometheus_client itself."""
from __future__ import annotations

import sys

from . import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._worker import Worker

STATS_APP = 2                # STATS flag: P->W also your application's metrics; W->P: they
TYPES = ("counter", "gauge", "histogram", "summary")


def collect() -> list[list[Any]]:
    """The default registry's families, less prometheus_client's own
    process, platform and gc collectors (the primary shows each worker's
    CPU and memory itself)."""
    import prometheus_client

    defaults = {prometheus_client.PROCESS_COLLECTOR, prometheus_client.PLATFORM_COLLECTOR,
                prometheus_client.GC_COLLECTOR}
    registry = prometheus_client.REGISTRY
    with registry._lock:
        collectors = [c for c in registry._collector_to_names if c not in defaults]
    families = []
    for collector in collectors:
        mode = getattr(collector, "_multiprocess_mode", "all")
        for family in collector.collect():
            if family.type not in TYPES:
                continue
            samples = [[s.name, s.labels, s.value] for s in family.samples
                       if not s.name.endswith("_created")]
            families.append([family.name, family.type, family.documentation,
                             mode if family.type == "gauge" else "", samples])
    return families


def report(w: Worker, flags: int) -> None:
    """The application's metrics, when asked for and when it uses
    prometheus_client."""
    if flags & STATS_APP and "prometheus_client" in sys.modules:
        import json
        w._send_frame(_core.FRAME_STATS, json.dumps(collect()).encode(), flags=STATS_APP)
