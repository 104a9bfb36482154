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
                         requests u64 (HTTP requests answered, or connections served)

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


def pack_stats(served: int, open_connections: int, requests: int) -> bytes:
    return _STATS.pack(served, open_connections, requests)


def unpack_stats(payload: bytes) -> tuple[int, int, int]:
    served, open_connections, requests = _header(_STATS, payload)
    return served, open_connections, requests
