"""The binary records of the servers' internal frames (not JSON: small fixed
headers and, last, an address). Both roles use these to speak of servers.

    QUERY_SERVER   W->P  seq u32, port i32, backlog i32, index u16, kind u8 | host or path
                         (kind: 1 a Unix path, 2 the listening fd itself is wanted)
    SERVER_REPLY   P->W  seq u32, errno i32, key u16, policy u8, port u16 | host or path (+fd: NONE)
    LISTENING      W->P  port u16, unix u8 | host or path
    SERVER_CLOSE   W->P  (flags: key) stop routing to me; P->W the same: nothing more is coming
    NEWCONN        P->W  (flags: key) + fd of a connection (SCHED_RR)
    NEWCONN_ACK    W->P  (flags: key) + fd: not taken (my server is closing), route it elsewhere
    STATS          P->W  (empty) your figures?  W->P  connections served u64, open u32,
                         requests u64 (HTTP requests answered, or connections served);
                         then its saturation (SATURATION): requests in flight u32, loop
                         lag f64 (seconds; -1: not probed yet), responses cut u64 and
                         connections closed u64 at its graceful deadline, and the
                         latency histogram: per status class 1xx-5xx, a count per
                         bucket of LATENCY_BOUNDS (not cumulative; the last is +Inf)
                         u64, then the sums of seconds f64. A reply without that part
                         (a worker of an older install, during a reload) has none.

A record too short for its header, or whose address is not UTF-8, is a
ValueError: what a peer sent must not stop the loop with another type.
"""
from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias
    Address: TypeAlias = tuple[str, int] | str    # (host, port), or a Unix socket's path

_QUERY = struct.Struct("<IiiHB")
_REPLY = struct.Struct("<IiHBH")
_LISTENING = struct.Struct("<HB")
_SEQ = struct.Struct("<I")
_STATS = struct.Struct("<QIQ")
# Prometheus' default buckets: a request's seconds, by status class
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                  10.0)
STATUS_CLASSES = 5
BUCKETS = len(LATENCY_BOUNDS) + 1
_FOREVER = float("inf")
_SATURATION = struct.Struct(f"<IdQQ{STATUS_CLASSES * BUCKETS}Q{STATUS_CLASSES}d")


def _header(record: struct.Struct, payload: bytes) -> tuple[Any, ...]:
    try:
        return record.unpack_from(payload)
    except struct.error:                 # not a ValueError
        raise ValueError(f"a record of {len(payload)} bytes, under its "
                         f"{record.size}-byte header") from None


QUERY_UNIX, QUERY_WANT_FD = 1, 2


def pack_query(seq: int, port: int, backlog: int, index: int, host: str | None,
               path: str | None, want_fd: bool = False) -> bytes:
    where = path if path is not None else (host or "")
    kind = (QUERY_UNIX if path is not None else 0) | (QUERY_WANT_FD if want_fd else 0)
    return _QUERY.pack(seq, port, backlog, index, kind) + where.encode()


def unpack_query(payload: bytes) -> tuple[int, int, int, int, str | None, str | None, bool]:
    seq, port, backlog, index, kind = _header(_QUERY, payload)
    where = payload[_QUERY.size:].decode()
    want_fd = bool(kind & QUERY_WANT_FD)
    if kind & QUERY_UNIX:
        return seq, port, backlog, index, None, where, want_fd
    return seq, port, backlog, index, where or None, None, want_fd


def _pack_address(address: Address) -> tuple[int, bytes]:
    if isinstance(address, str):
        return 0, address.encode()
    return address[1], address[0].encode()


def _unpack_address(port: int, unix: int, rest: bytes) -> Address:
    return rest.decode() if unix else (rest.decode(), port)


def pack_reply(seq: int, err: int, key: int, policy: int, address: Address | None) -> bytes:
    port, where = _pack_address(address) if address is not None else (0, b"")
    return _REPLY.pack(seq, err, key, policy, port) + where


def reply_seq(payload: bytes) -> int:
    seq: int = _header(_SEQ, payload)[0]
    return seq


def unpack_reply(payload: bytes, unix: bool) -> tuple[int, int, int, int, Address]:
    seq, err, key, policy, port = _header(_REPLY, payload)
    return seq, err, key, policy, _unpack_address(port, unix, payload[_REPLY.size:])


def pack_listening(address: Address) -> bytes:
    port, where = _pack_address(address)
    return _LISTENING.pack(port, isinstance(address, str)) + where


def unpack_listening(payload: bytes) -> Address:
    port, unix = _header(_LISTENING, payload)
    return _unpack_address(port, unix, payload[_LISTENING.size:])


class Saturation:
    """How loaded a worker is: what its STATS reply carries after its counts."""

    __slots__ = ("in_flight", "loop_lag", "cut", "closed", "counts", "sums")

    def __init__(self, in_flight: int, loop_lag: float | None, cut: int, closed: int,
                 counts: list[list[int]], sums: list[float]) -> None:
        self.in_flight = in_flight          # requests whose response is in progress
        self.loop_lag = loop_lag            # seconds; None before the first probe
        self.cut = cut                      # responses cut at the graceful deadline
        self.closed = closed                # connections closed then
        self.counts = counts                # [status class][bucket]: not cumulative
        self.sums = sums                    # [status class]: seconds


def pack_stats(served: int, open_connections: int, requests: int, s: Saturation) -> bytes:
    counts = [count for by_class in s.counts for count in by_class]
    lag = -1.0 if s.loop_lag is None else s.loop_lag
    return _STATS.pack(served, open_connections, requests) + _SATURATION.pack(
        s.in_flight, lag, s.cut, s.closed, *counts, *s.sums)


def unpack_stats(payload: bytes) -> tuple[int, int, int, Saturation | None]:
    served, open_connections, requests = _header(_STATS, payload)
    if len(payload) < _STATS.size + _SATURATION.size:
        return served, open_connections, requests, None
    in_flight, lag, cut, closed, *rest = _SATURATION.unpack_from(payload, _STATS.size)
    flat, sums = rest[:-STATUS_CLASSES], rest[-STATUS_CLASSES:]
    # Seconds the primary adds up and shows: a NaN or an infinity would stay
    # in the fleet's histogram for good (lag -1 is the worker's "not yet").
    if not (lag == -1.0 or 0.0 <= lag < _FOREVER) or \
            not all(0.0 <= seconds < _FOREVER for seconds in sums):
        raise ValueError("a STATS reply whose seconds are negative or not finite")
    counts = [list(flat[i * BUCKETS:(i + 1) * BUCKETS]) for i in range(STATUS_CLASSES)]
    return served, open_connections, requests, Saturation(
        in_flight, None if lag < 0 else lag, cut, closed, counts, list(sums))
