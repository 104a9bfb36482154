"""uvicorn's HTTP protocol classes (httptools' and h11's), made to drain and
to bound a request's head: the class draining() builds mixes Draining and
the head bounds into uvicorn's, and reads and writes the attributes of
uvicorn's that tests/test_uvicorn_coupling.py names. Responses are written
through a transport that coalesces a response's writes (Coalescing)."""
from __future__ import annotations

import asyncio
import time

from .. import _runtime, _saturation, aio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LIMIT_REQUEST_HEAD = 65536    # bytes of a request line and headers (0: no limit): 431 beyond
TIMEOUT_REQUEST_HEAD = 20.0   # seconds for a head to come whole (0: none): 408, or a silent close
KEEP_ALIVE_LINGER = 0.5       # a keep-alive connection answered this recently may be sending again
REFUSAL_LINGER = 2.0          # after a 431 or 408, the client's bytes are read and dropped so long


class Draining:
    """Mixed into uvicorn's HTTP protocol class (httptools or h11). At the
    drain: a request in progress is answered with Connection: close, then the
    connection closes; a keep-alive connection idle for KEEP_ALIVE_LINGER
    closes at once; one answered more recently than that, or whose next
    request is already in the socket, may be sending its next request and gets
    the rest of KEEP_ALIVE_LINGER for it; a connection that has not sent its
    (whole) first request gets FIRST_REQUEST_GRACE. A request that comes in
    that time is answered with Connection: close. Closing those at once is
    the race in which the peers lose a request per retired worker: the
    client's request crosses the server's close."""

    cx_worker_drain: float | None = None     # set on the class when the worker drains
    cx_close_websockets = False              # set on the class once WebSockets get 1012
    cx_draining = False
    cx_upgraded = False       # handed to the WebSocket protocol
    cx_idle = False           # everything received so far has been answered
    cx_refusal = 0            # see _HeadBounds: answered here, after the responses before it
    cx_answered_at = 0.0      # loop time of the last response
    cx_uvicorn_access_log = True   # set on the class: False when web.logs logs each request
    # when (time.monotonic(): uvloop's loop time is cached per turn, in
    # milliseconds) the application began the request answered now
    cx_began: float | None = None

    if TYPE_CHECKING:
        cycle: Any
        transport: asyncio.Transport
        loop: asyncio.AbstractEventLoop
        access_log: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvicorn reads the addresses and builds its flow control on the real
        # transport; the requests' cycles write through the coalescing one.
        super().connection_made(transport)  # type: ignore[misc]
        self.transport = _Coalescing(transport)  # type: ignore[assignment]
        if not self.cx_uvicorn_access_log:
            # web.logs logs the requests as they end, in a format of its own;
            # uvicorn's line, at each response's start, would be a second one
            self.access_log = False
        if self.cx_worker_drain is not None:     # made after the drain began
            self.cx_drain(self.cx_worker_drain)

    def data_received(self, data: bytes) -> None:
        self.cx_idle = False
        super().data_received(data)  # type: ignore[misc]
        if self.cx_draining:
            self.cx_last_request()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        if self.cx_began is not None:        # its client left before the response's end
            self.cx_began = None
            _in_flight[0] -= 1

    def on_response_complete(self) -> None:
        _requests[0] += 1                    # what --max-requests counts
        transport = self.transport
        transport.flush()  # type: ignore[attr-defined]
        self.cx_answered_at = self.loop.time()
        if self.cx_began is not None:
            _in_flight[0] -= 1
            _observe(transport.cx_status_class,  # type: ignore[attr-defined]
                     _monotonic() - self.cx_began)
            self.cx_began = None
        transport.cx_status_class = 0  # type: ignore[attr-defined]
        idle = self.cx_idle = not getattr(self, "pipeline", None)
        if self.cx_refusal and idle:         # a head refused (_HeadBounds) once this was out
            self.cx_answer_refusal()  # type: ignore[attr-defined]
            return
        super().on_response_complete()  # type: ignore[misc]
        self.cx_clock()                      # a pipelined request's application starts
        if self.cx_draining and not self.transport.is_closing():
            # a response whose head left before the drain, so without
            # Connection: close: its client may send again (cx_last_request)
            self.cx_drain(self.cx_worker_drain or 0.0)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self.cx_upgraded = True
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]
        websocket: Any = self.transport.get_protocol()
        aio.protocol_replaced(self, websocket)  # type: ignore[arg-type]
        if self.cx_close_websockets and websocket is not self:   # after the drain's 1012s
            close_websocket(websocket)

    def cx_clock(self) -> None:
        """A request's clock starts when uvicorn starts its application: at
        its head, or, pipelined behind another, at that one's end. One
        connection runs one request's application at a time."""
        cycle = self.cycle
        if self.cx_began is None and cycle is not None and not cycle.response_complete:
            self.cx_began = _monotonic()
            _in_flight[0] += 1

    def cx_drain(self, grace: float) -> None:
        self.cx_draining = True
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.cx_last_request()
            return
        if self.cx_idle:
            grace = KEEP_ALIVE_LINGER - (self.loop.time() - self.cx_answered_at)
            if grace <= 0 and not _bytes_waiting(self.transport):
                self.transport.close()
                return
        self.loop.call_later(max(grace, 0.05), self.cx_close_if_idle)

    def cx_last_request(self) -> None:
        """The request received last closes the connection: the ones before
        it (pipelined) are answered as they would have been. One whose head
        has left, without Connection: close, is not the last: its client
        takes the connection as kept alive and may have sent the next
        request already (a2wsgi's pool completes a response after its body
        is out), so closing after it would drop that one; the connection
        drains again when it completes (on_response_complete)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False
            if _CLOSE not in cycle.default_headers:
                # h11's cycle says Connection: close only when the request
                # did; httptools' sees this one and writes no second
                cycle.default_headers = [*cycle.default_headers, _CLOSE]

    def cx_close_if_idle(self) -> None:
        if self.cx_upgraded:                 # a WebSocket now: closed at the timeout
            return
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and not self.transport.is_closing() \
                and not _bytes_waiting(self.transport):
            self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        # A timer may run between a request's arrival and its read (in the
        # same loop turn, or a busy one): closing then, with the request
        # unread in the socket, resets the connection under its client. The
        # read that follows answers it (Connection: close once draining).
        if not _bytes_waiting(self.transport):
            super().timeout_keep_alive_handler()  # type: ignore[misc]


_CLOSE = (b"connection", b"close")
_requests = _runtime.requests
_in_flight = _saturation.in_flight
_observe = _saturation.observe
_monotonic = time.monotonic
_draining_classes: dict[type, type] = {}


def draining(base: type) -> type:
    """base (uvicorn's HTTP protocol class) with the drain and the bounds on
    a request's head (for the two protocol classes uvicorn has)."""
    cls = _draining_classes.get(base)
    if cls is None:
        heads: tuple[type, ...] = ()
        if hasattr(base, "on_headers_complete"):          # httptools: parser callbacks
            heads = (_HttptoolsHeads,)
        elif hasattr(base, "handle_events"):              # h11
            import h11
            _H11Heads.cx_h11_idle = h11.IDLE
            heads = (_H11Heads,)
        cls = _draining_classes[base] = type("Draining" + base.__name__,
                                             (Draining, *heads, base), {})
    return cls


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadBounds:
    """What bounds a request's head (its request line and headers) in both of
    uvicorn's protocols: the time it may take, counted from the accept for a
    connection's first request, and from the head's first byte on a
    kept-alive connection (its idle time is uvicorn's timeout_keep_alive);
    and the refusal, 431 or 408 with Connection: close. The size is counted
    by the mixin of each protocol class. A refused connection reads and
    drops what the client still sends for REFUSAL_LINGER: closing with
    unread bytes would reset the connection, and the reset can destroy the
    answer in the client's socket before it reads it."""

    cx_head_limit = LIMIT_REQUEST_HEAD   # set on the class by WorkerServer.serve()
    cx_head = 0               # bytes of the head received so far; -1 in a message, -2 refused
    cx_head_began: float | None = None   # loop time the head's wait began; None: no head due
    cx_refusal = 0            # 431 or 408, answered when the responses before it are out

    if TYPE_CHECKING:
        cycle: Any
        pipeline: Any
        server_state: Any
        transport: Any
        loop: asyncio.AbstractEventLoop

        def cx_head_over(self, data: bytes) -> None: ...   # each protocol's mixin
        def cx_clock(self) -> None: ...                     # Draining's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.cx_head_began = self.loop.time()

    def cx_count_head(self, data: bytes) -> bool:
        """Counts data into the head being received (its clock starts at a
        kept-alive request's first byte); False when it went over the limit,
        which cx_head_over() has then answered."""
        if self.cx_head_began is None:
            self.cx_head_began = self.loop.time()
        head = self.cx_head + len(data)
        if head > self.cx_head_limit:
            self.cx_head_over(data)
            return False
        self.cx_head = head
        return True

    def cx_head_late(self) -> None:
        """The head has not come whole within timeout_request_head: 408, or
        a silent close when not a byte of it came (a connection opened ahead
        of its use, as browsers do: an answer on it could be read as the
        answer to the request it will carry)."""
        if self.cx_head > 0:
            self.cx_refuse(408)
        else:
            self.cx_head_began = None
            self.transport.close()

    def cx_refuse(self, status: int) -> None:
        """status, with Connection: close, for the head being received: at
        once, or after the response in progress and those pipelined before
        it (on_response_complete). From now on, what comes is dropped."""
        self.cx_head, self.cx_head_began, self.cx_refusal = -2, None, status
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.cx_answer_refusal()
        else:                                # Draining.on_response_complete answers
            self.transport.pause_reading()

    def cx_answer_refusal(self) -> None:
        status = self.cx_refusal
        self.cx_refusal = 0
        transport = self.transport
        if transport.is_closing():
            return
        body = _REASONS[status] + b"\n"
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in
                 self.server_state.default_headers]
        head.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        transport.write(b"".join(head) + body)
        if not transport.can_write_eof():    # TLS: no half close
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        # Either the client closes (eof_received closes this side) or this does.
        self.loop.call_later(REFUSAL_LINGER, transport.abort)


class _HttptoolsHeads(_HeadBounds):
    """The size of a head under uvicorn's httptools protocol, which has no
    limit of its own (httptools keeps a header whole until its end: 256 MB
    of one header took 224 MB in a worker). Counted from data_received, a
    chunk at a time, while a head is due: from the end of a message (or the
    accept) to the end of the next head (httptools' on_headers_complete).
    Only a chunk that takes the count over the limit is looked into: the
    parser is fed what the limit leaves room for, and says whether the head
    ended in it. Exact for every head but one pipelined behind another
    request in the same read: the bytes of it fed along with the end of
    that request go uncounted, so it may take up to twice the limit."""

    def data_received(self, data: bytes) -> None:
        head = self.cx_head
        if head < -1 or (head >= 0 and not self.cx_count_head(data)):   # refused: dropped
            return
        super().data_received(data)  # type: ignore[misc]

    def cx_head_over(self, data: bytes) -> None:
        limit = self.cx_head_limit
        room = limit - self.cx_head
        self.cx_head = limit
        if room:
            super().data_received(data[:room])  # type: ignore[misc]
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return                           # a 400, or a WebSocket now (uvicorn drops the rest)
        if self.cx_head == limit:            # the head did not end within the limit
            self.cx_refuse(431)
        else:
            _HttptoolsHeads.data_received(self, data[room:])

    def on_headers_complete(self) -> None:
        self.cx_head, self.cx_head_began = -1, None
        super().on_headers_complete()  # type: ignore[misc]
        self.cx_clock()

    def on_message_complete(self) -> None:
        self.cx_head = 0
        super().on_message_complete()  # type: ignore[misc]


class _H11Heads(_HeadBounds):
    """The size of a head under uvicorn's h11 protocol, counted as under
    httptools while h11 waits for a head (their_state IDLE): h11's own bound
    (h11_max_incomplete_event_size, set to the same limit) counts only what
    it buffers of a head that has not ended, so a head that comes whole in
    one read passes it, and uvicorn answers its error with a 400. It stays
    for the heads this does not count: those pipelined behind a request,
    which h11 holds until that request is answered; its 400 becomes a 431."""

    cx_h11_idle: Any = None   # h11.IDLE, set by draining(): h11 is imported only for h11

    if TYPE_CHECKING:
        conn: Any
        config: Any

    def handle_events(self) -> None:
        super().handle_events()  # type: ignore[misc]
        self.cx_clock()

    def data_received(self, data: bytes) -> None:
        if self.cx_head < -1:                # refused: dropped
            return
        conn, idle = self.conn, self.cx_h11_idle
        if conn.their_state is not idle:     # in a request: its body, or pipelined heads
            super().data_received(data)  # type: ignore[misc]
            return
        if not self.cx_count_head(data):
            return
        super().data_received(data)  # type: ignore[misc]
        if conn.their_state is not idle and self.cx_head >= 0:   # the head came whole
            self.cx_head, self.cx_head_began = 0, None

    def cx_head_over(self, data: bytes) -> None:
        limit = self.cx_head_limit
        room = limit - self.cx_head
        self.cx_head = limit
        if room:                             # h11 takes b"" for the end of the stream
            super().data_received(data[:room])  # type: ignore[misc]
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.conn.their_state is self.cx_h11_idle:    # the head did not end within it
            self.cx_refuse(431)
        else:
            self.cx_head, self.cx_head_began = 0, None
            _H11Heads.data_received(self, data[room:])

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.config.h11_max_incomplete_event_size:
            self.cx_refuse(431)              # h11's "Receive buffer too long"
            return
        super().send_400_response(msg)  # type: ignore[misc]


class _Coalescing:
    """The connection's transport, as uvicorn's cycles write to it: the head
    of a response of known length is held until its body's first write, and
    both leave in one send(). uvicorn writes them apart, which costs a second
    system call, a second segment and a second wake-up of the client for every
    response. A body that
    never comes (HEAD) releases the head when the response completes
    (Draining.on_response_complete); a streamed response (no length) is not
    held at all."""

    __slots__ = ("transport", "held", "cx_status_class")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.held: bytes | None = None
        # the status class of the response being written (its head's first
        # digit, a 100 Continue's overwritten), for its latency; 0 at its end
        self.cx_status_class = 0

    def write(self, data: bytes) -> None:
        if self.cx_status_class < 2 and data.startswith(b"HTTP/1.1 ") and len(data) > 9:
            self.cx_status_class = data[9] - 48
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= 65536:           # a copy is cheaper than a second send()
                self.transport.write(held + data)
            else:
                self.transport.write(held)
                self.transport.write(data)
        elif data[:9] == b"HTTP/1.1 " and b"\r\ncontent-length:" in data \
                and data[-4:] == b"\r\n\r\n":
            self.held = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        """The rest (get_extra_info, set_protocol, ...) as the transport has it."""
        return getattr(self.transport, name)


def _bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Whether the socket holds bytes not read yet (the next request)."""
    import array
    import fcntl
    import termios
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except OSError:
        return False
    return count[0] > 0


def close_websocket(websocket: Any) -> None:
    """uvicorn's shutdown() of a WebSocket: 1012 once its handshake is done
    (before, it would answer the handshake 500: the application is asked
    first, and the close follows its accept or its refusal)."""
    if websocket.transport.is_closing():
        return
    completed = getattr(websocket, "handshake_completed_event", None)   # websockets' legacy
    done = completed.is_set() if completed is not None else websocket.handshake_complete
    if not done:
        asyncio.get_running_loop().call_later(0.05, close_websocket, websocket)
        return
    try:
        websocket.shutdown()
    except Exception:
        log_error("closing a WebSocket at the drain")


def log_error(what: str) -> None:
    import logging
    logging.getLogger("uvicorn.error").exception("%s", what)
