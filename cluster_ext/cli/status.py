"""status, reload, scale and stop: one request to a primary's control socket,
and its reply as a person reads it."""
from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def control_client(args: argparse.Namespace) -> int:
    """status, reload, scale and stop: one request to a primary's control
    socket. Exit 0 when it did it, 1 when it answered with an error, 2 when
    no primary answered."""
    import json

    from ..fleet import control
    line = f"scale {args.n}" if args.command == "scale" else args.command
    try:
        reply = control.request(args.path, line)
    except (OSError, ValueError) as exc:
        print(f"cluster-ext {args.command}: no primary answered on {args.path}: {exc}",
              file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"cluster-ext {args.command}: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(reply, indent=2) if args.json else _status_table(reply))
    elif args.command == "reload":
        cost = ""                       # a primary of an older install does not say
        if "connections_reset" in reply:
            cost = (f": {reply['connections_reset']} connections reset, "
                    f"{reply['requests_failed']} requests failed")
        print(f"reloaded in {reply['seconds']:.1f} s{cost}")
    elif args.command == "scale":
        print(f"{reply['workers_wanted']} workers wanted")
    return 0


def _status_table(figures: dict[str, Any]) -> str:
    """The figures as a person reads them at a glance."""
    primary = figures["primary"]
    head = f"primary {primary['pid']}"
    if primary["supervised"]:
        last = primary["last_reload_seconds"]
        head += (f": {primary['state']}, {len(figures['workers'])} of "
                 f"{primary['workers_wanted']} workers, {primary['restarts']} restarts, "
                 f"{primary['reloads']} reloads" + (f" (last {last:.1f} s)" if last else ""))
        recycled = sum(primary["recycles"].values())
        if recycled:
            head += f", {recycled} recycled (" + ", ".join(
                f"{count} {reason}" for reason, count in primary["recycles"].items()
                if count) + ")"
    rows = [("ID", "PID", "STATE", "AGE", "RESTARTS", "RSS", "CPU%", "CONNS", "SERVED",
             "REQUESTS", "IN-FLIGHT", "LAG", "BACKLOG", "MSGS IN/OUT")]
    for w in figures["workers"]:
        rows.append((str(w["id"]), str(w["pid"]), w["state"], _age(w["age"]),
                     str(w["restarts"]), _size(w["rss"]),
                     "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
                     _count(w["connections"]), _count(w["served"]), _count(w["requests"]),
                     _count(w.get("in_flight")), _lag(w.get("loop_lag")),
                     _count(w.get("rr_backlog")),
                     f"{w['messages_received']}/{w['messages_sent']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    timeouts = primary.get("timeouts")
    if timeouts:
        lines.append(_last_timeout(len(timeouts), timeouts[-1]))
    return "\n".join([head, *lines])


def _last_timeout(count: int, last: dict[str, Any]) -> str:
    """The last worker the heartbeat killed, and where its stacks are."""
    import time
    text = (f"last heartbeat timeout: worker {last['worker']} (pid {last['pid']}), "
            f"{_age(max(0.0, time.time() - last['at']))} ago")
    if last["requests"]:
        request = last["requests"][0]
        text += f", in {request['method']} {request['path']} (for {request['seconds']:.1f} s)"
    return text + "; `status --json` has its stacks" + (
        f" and the {count - 1} before it" if count > 1 else "")


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s // 60 % 60:02d}m"
    return f"{s // 86400}d{s // 3600 % 24:02d}h"


def _size(rss: int | None) -> str:
    if rss is None:
        return "-"
    if rss < 1024:
        return f"{rss} B"
    size, unit = rss / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
