"""A service on the primary's loop (the control socket, /metrics): a
listener and its connections, unref'd so that it never holds a stop (no
thread: a thread in the primary would make every fork(target=) unsafe).
Any local user may connect to /metrics, so a service is bounded: a
connection cap, a deadline for each request and descriptors it may not
take, all of it so that it can never starve the fleet.
"""
from __future__ import annotations

import errno
import os
import resource
import socket
import time

from .. import _core, _runtime, net

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_CONNECTIONS = 64           # open at once, for each service; more are refused
IDLE_TIMEOUT = 10.0            # seconds a connection has for each whole request
RESERVE_FDS = 128              # descriptors the services leave to the fleet (or a quarter)
REFUSALS_LOGGED_EVERY = 60.0   # seconds: one line for a flood, not one a connection
RECOUNT_EVERY = 0.1            # seconds between two counts of the primary's descriptors

_fd_count = [-RECOUNT_EVERY, 0]   # when the primary's descriptors were counted; the count


class Service:
    """A listening socket served on the primary's loop, never holding it up
    and never its undoing: at most max_connections at once, none that would
    take a descriptor the fleet needs (_descriptors_short), each closed once
    idle_timeout passes without a whole request from it (bytes trickled in
    do not put that off: a slowloris is closed too), and no exception out of
    the loop. A refused client gets `refusal`, then the close."""

    name = "a service"                   # as the log names it
    refusal = b""

    def __init__(self, sock: socket.socket, max_connections: int,
                 idle_timeout: float) -> None:
        sock.setblocking(False)
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        # each connection, and its idle timer (None while it is being answered)
        self.connections: dict[net.Socket, _core.Handle | None] = {}
        self.refused = 0                 # since the last line that said so
        self.logged_at: float | None = None
        self.listener: Any = _core.Listener(sock.detach(), self._accepted, False, 16)
        self.listener.ref(False)

    def _accepted(self, fd: int) -> None:
        why = self._refusal(fd)
        if why is not None:
            try:
                os.write(fd, self.refusal)   # a fresh socket's buffer takes it
                os.read(fd, 65536)           # its request, or TCP resets the answer
            except OSError:
                pass
            os.close(fd)
            self._refused(why)
            return
        try:
            conn = net.Socket(fd)        # owns fd, even when it fails
        except (OSError, MemoryError) as exc:
            self._refused(f"cannot serve it: {exc}")
            return
        conn.unref()
        self.connections[conn] = None
        conn.on("close", lambda *_: self._forget(conn))
        conn.on("error", lambda exc: None)       # a client that went away
        self.deadline(conn)
        self.guarded(conn, self.serve, conn)

    def _refusal(self, fd: int) -> str | None:
        if len(self.connections) >= self.max_connections:
            return f"{len(self.connections)} connections are open, the most it serves at once"
        return _descriptors_short(fd)

    def _refused(self, why: str) -> None:
        """Logged at most once a minute, with the count since the last line."""
        self.refused += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < REFUSALS_LOGGED_EVERY:
            return
        more = self.refused - 1
        _runtime.log("warning", f"{self.name}: connection refused: {why}" +
                     (f" ({more} more refused since the last such line)" if more else ""))
        self.logged_at, self.refused = now, 0

    def deadline(self, conn: net.Socket) -> None:
        """From now on, the client has idle_timeout seconds to send a whole
        request, however it trickles it in."""
        self.answering(conn)
        if not conn.closed and conn in self.connections:
            timer = _runtime.call_later(self.idle_timeout, conn.destroy)
            timer.ref(False)             # a stop does not wait for it
            self.connections[conn] = timer

    def answering(self, conn: net.Socket) -> None:
        """Its request is being answered: no deadline until the answer."""
        timer = self.connections.get(conn)
        if timer is not None:
            timer.cancel()
            self.connections[conn] = None

    def _forget(self, conn: net.Socket) -> None:
        self.answering(conn)
        self.connections.pop(conn, None)

    def guarded(self, conn: net.Socket, fn: Callable[..., Any], *args: Any) -> None:
        """fn(*args) for one connection: a defect there ends the connection,
        never the primary (an exception would stop its loop)."""
        try:
            fn(*args)
        except Exception as exc:
            _runtime.log("error", f"{self.name}: a request failed: {exc!r}")
            conn.destroy()

    def serve(self, conn: net.Socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stops listening and ends every connection at once."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for conn in list(self.connections):
            self._forget(conn)
            conn.destroy()


def _descriptors_short(fd: int) -> str | None:
    """Why one more connection would take a descriptor the fleet may need
    (a respawn takes a few at once, the balancer one a connection until the
    worker has it), or None. fd is the one just accepted: the lowest number
    that was free, so fd + 1 are open at least. /proc/self/fd counts them,
    at most every RECOUNT_EVERY seconds (a count of 150 takes 0.1 ms, and a
    client that connects again and again must not make the primary spend
    it each time); in between, each connection let in counts one more."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    reserve = min(RESERVE_FDS, limit // 4)
    in_use = fd + 1
    now = time.monotonic()
    counted = False
    if in_use <= limit - reserve and now - _fd_count[0] >= RECOUNT_EVERY:
        try:
            _fd_count[:] = now, len(os.listdir("/proc/self/fd")) - 1   # less listdir's own
            counted = True
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                in_use = limit
            # else no /proc: the number is all there is
    in_use = max(in_use, int(_fd_count[1]))
    if in_use <= limit - reserve:
        if not counted:
            _fd_count[1] += 1            # this one, until the next count
        return None
    return (f"the primary's descriptors run short ({in_use} of RLIMIT_NOFILE {limit} open; "
            f"the last {reserve} are kept for the workers)")


def limits(max_connections: int, idle_timeout: float) -> tuple[int, float]:
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) \
            or max_connections < 1:
        raise ValueError(f"max_connections must be an int of 1 or more, not {max_connections!r}")
    idle_timeout = _runtime.check_seconds("idle_timeout", idle_timeout)
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be positive")
    return max_connections, idle_timeout
