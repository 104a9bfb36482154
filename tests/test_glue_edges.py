"""Edges of the glue (issue 23, item 9), checked in this process: no
workers are needed.

- A native constructor handed a descriptor owns it even when it fails
  (architecture.md, "Who owns each descriptor"): every bad argument after
  the fd, a wrong count, keywords, the wrong thread. An fd argument that is
  not an int is no descriptor, so nothing is closed; stdio (0-2) is never
  closed by a failing constructor.
- A delay or timeout the loop cannot wait (not finite, negative, or over
  _core.MAX_SECONDS, Node's 2**31-1 ms) is a ValueError, in C (call_later,
  turn) and at the Python timeouts whose timers start later."""
import errno
import math
import os
import threading

import pytest

import cluster_ext as cluster
from cluster_ext import _core
from cluster_ext._worker import Worker
from cluster_ext.fleet import notify

BIG = 2 ** 70                  # overflows every C integer
MAX_SECONDS = (2 ** 31 - 1) / 1000   # Node's TIMEOUT_MAX, 24.8 days
BAD_SECONDS = [math.nan, math.inf, -math.inf, 1e300, 1e10, 10 ** 400, -1, -0.5, -1e-9,
               2 ** 31 / 1000]  # the last: one ms past the bound


def short(value):
    return repr(value)[:12]


def ignore(*args):
    pass


class Falsy:
    def __bool__(self):
        raise ZeroDivisionError("no truth value")


def identity(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@pytest.fixture(autouse=True)
def stdio_untouched():
    before = [identity(fd) for fd in (0, 1, 2)]
    yield
    assert [identity(fd) for fd in (0, 1, 2)] == before


def is_open(fd):
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def fresh_fd():
    """A descriptor above stdio (a pipe's read end): a failing constructor
    never gets as far as looking at its kind."""
    r, w = os.pipe()
    os.close(w)
    assert r > 2
    return r


# Each: a name, and the call with fd in its first place. Every one fails after
# the fd argument has been read.
BAD_CALLS = [
    ("Channel: too few", lambda fd: _core.Channel(fd)),
    ("Channel: too many", lambda fd: _core.Channel(fd, ignore, ignore, 1 << 20, 1 << 16, 0)),
    ("Channel: a keyword", lambda fd: _core.Channel(fd, ignore, ignore, 1 << 20, hwm=1)),
    ("Channel: on_frame", lambda fd: _core.Channel(fd, 1, ignore, 1 << 20, 1 << 16)),
    ("Channel: on_event", lambda fd: _core.Channel(fd, ignore, None, 1 << 20, 1 << 16)),
    ("Channel: max_frame type", lambda fd: _core.Channel(fd, ignore, ignore, "1", 1 << 16)),
    ("Channel: max_frame 0", lambda fd: _core.Channel(fd, ignore, ignore, 0, 1 << 16)),
    ("Channel: max_frame > u32", lambda fd: _core.Channel(fd, ignore, ignore, 1 << 32, 1)),
    ("Channel: max_frame overflow", lambda fd: _core.Channel(fd, ignore, ignore, BIG, 1)),
    ("Channel: hwm -1", lambda fd: _core.Channel(fd, ignore, ignore, 1 << 20, -1)),
    ("Channel: hwm overflow", lambda fd: _core.Channel(fd, ignore, ignore, 1 << 20, BIG)),
    ("Stream: too few", lambda fd: _core.Stream(fd, ignore, ignore)),
    ("Stream: too many", lambda fd: _core.Stream(fd, ignore, ignore, 1, -1, 0)),
    ("Stream: a keyword", lambda fd: _core.Stream(fd, ignore, ignore, 1, is_socket=0)),
    ("Stream: on_data", lambda fd: _core.Stream(fd, "x", ignore, 1 << 16)),
    ("Stream: on_event", lambda fd: _core.Stream(fd, ignore, 2, 1 << 16)),
    ("Stream: hwm type", lambda fd: _core.Stream(fd, ignore, ignore, 1.5)),
    ("Stream: hwm -1", lambda fd: _core.Stream(fd, ignore, ignore, -1)),
    ("Stream: hwm overflow", lambda fd: _core.Stream(fd, ignore, ignore, BIG)),
    ("Stream: is_socket type", lambda fd: _core.Stream(fd, ignore, ignore, 1, "no")),
    ("Stream: is_socket overflow", lambda fd: _core.Stream(fd, ignore, ignore, 1, 1 << 40)),
    ("Listener: too few", lambda fd: _core.Listener(fd, ignore, False)),
    ("Listener: too many", lambda fd: _core.Listener(fd, ignore, False, 16, 0)),
    ("Listener: a keyword", lambda fd: _core.Listener(fd, ignore, False, max_accepts=16)),
    ("Listener: on_connection", lambda fd: _core.Listener(fd, None, False, 16)),
    ("Listener: raced", lambda fd: _core.Listener(fd, ignore, Falsy(), 16)),
    ("Listener: max_accepts type", lambda fd: _core.Listener(fd, ignore, False, "16")),
    ("Listener: max_accepts overflow", lambda fd: _core.Listener(fd, ignore, False, 1 << 40)),
    ("Balancer: too few", lambda fd: _core.Balancer(fd)),
    ("Balancer: too many", lambda fd: _core.Balancer(fd, 1, 2)),
    ("Balancer: a keyword", lambda fd: _core.Balancer(fd, key=1)),
    ("Balancer: key type", lambda fd: _core.Balancer(fd, None)),
    ("Balancer: key -1", lambda fd: _core.Balancer(fd, -1)),
    ("Balancer: key > u16", lambda fd: _core.Balancer(fd, 1 << 16)),
    ("Balancer: key overflow", lambda fd: _core.Balancer(fd, BIG)),
]

# A good call of each, for the checks on the fd argument itself.
GOOD_CALLS = {
    "Channel": lambda fd, *rest: _core.Channel(fd, ignore, ignore, 1 << 20, 1 << 16, *rest),
    "Stream": lambda fd, *rest: _core.Stream(fd, ignore, ignore, 1 << 16, -1, *rest),
    "Listener": lambda fd, *rest: _core.Listener(fd, ignore, False, 16, *rest),
    "Balancer": lambda fd, *rest: _core.Balancer(fd, 1, *rest),
}


@pytest.mark.parametrize("name, call", BAD_CALLS, ids=[name for name, _ in BAD_CALLS])
def test_a_failing_constructor_closes_the_fd_it_was_handed(name, call):
    fd = fresh_fd()
    try:
        with pytest.raises((TypeError, ValueError, OverflowError, ZeroDivisionError)):
            call(fd)
        assert not is_open(fd), f"{name}: fd {fd} left open"
    finally:
        if is_open(fd):
            os.close(fd)


@pytest.mark.parametrize("kind", sorted(GOOD_CALLS))
def test_a_constructor_called_from_another_thread_closes_its_fd(kind):
    fd = fresh_fd()
    raised = []

    def other():
        try:
            GOOD_CALLS[kind](fd)
        except RuntimeError as exc:
            raised.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    try:
        assert raised and "another thread" in str(raised[0])
        assert not is_open(fd)
    finally:
        if is_open(fd):
            os.close(fd)


@pytest.mark.parametrize("kind", sorted(GOOD_CALLS))
@pytest.mark.parametrize("as_what", [float, str, bool, lambda fd: None])
def test_an_fd_that_is_not_an_int_is_not_taken(kind, as_what):
    fd = fresh_fd()
    try:
        with pytest.raises(TypeError, match="fd must be an int"):
            GOOD_CALLS[kind](as_what(fd))
        assert is_open(fd)       # a bool is 1: stdout, checked by the fixture
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", sorted(GOOD_CALLS))
@pytest.mark.parametrize("fd", [-1, -BIG, 1 << 31, BIG])
def test_an_fd_out_of_range_is_a_value_error(kind, fd):
    with pytest.raises(ValueError, match="fd"):
        GOOD_CALLS[kind](fd)


@pytest.mark.parametrize("kind", sorted(GOOD_CALLS))
@pytest.mark.parametrize("fd", [0, 1, 2])
def test_a_failing_constructor_never_closes_stdio(kind, fd):
    with pytest.raises(TypeError):
        GOOD_CALLS[kind](fd, "one argument too many")
    assert is_open(fd)           # and the same file: the fixture


def test_no_arguments_at_all_is_a_type_error():
    for kind in ("Channel", "Stream", "Listener", "Balancer"):
        with pytest.raises(TypeError):
            getattr(_core, kind)()


# ---- delays and timeouts ---------------------------------------------------------


def test_the_bound_is_nodes_timeout_max():
    assert _core.MAX_SECONDS == MAX_SECONDS


@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=short)
def test_call_later_refuses_a_delay_it_cannot_wait(seconds):
    with pytest.raises(ValueError, match="call_later"):
        handle = _core.call_later(seconds, ignore)
        handle.cancel()          # before the fix: not left to fire
    with pytest.raises(ValueError, match="call_later"):
        cluster.call_later(seconds, ignore)


@pytest.mark.parametrize("seconds", [0, 0.0, 1e-9, 1, MAX_SECONDS])
def test_call_later_takes_every_delay_up_to_the_bound(seconds):
    _core.call_later(seconds, ignore).cancel()


def test_call_later_still_refuses_what_is_not_a_number():
    with pytest.raises(TypeError):
        _core.call_later("1", ignore)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=short)
def test_turn_refuses_a_timeout_it_cannot_wait(seconds):
    with pytest.raises(ValueError, match="turn"):
        _core.turn(seconds)
    assert not _core.running()


@pytest.mark.timeout(10)
def test_turn_takes_zero_the_bound_and_none():
    _core.turn(0)
    _core.wakeup()               # the wait ends at once: the eventfd is readable
    _core.turn(MAX_SECONDS)
    _core.wakeup()
    _core.turn(None)             # forever, until something happens


@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=short)
def test_worker_disconnect_refuses_a_bad_timeout(seconds):
    for primary_side in (True, False):
        w = Worker(99, os.getpid(), primary_side=primary_side)
        with pytest.raises(ValueError, match="timeout"):
            w.disconnect(timeout=seconds)
        assert w.exited_after_disconnect is None      # nothing was started


@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=short)
def test_cluster_disconnect_and_reload_refuse_a_bad_timeout(seconds):
    called = []
    with pytest.raises(ValueError, match="timeout"):
        cluster.disconnect(lambda: called.append(1), timeout=seconds)
    with pytest.raises(ValueError, match="timeout"):
        cluster.reload(lambda: called.append(2), timeout=seconds)
    _core.turn(0)
    assert called == []


def test_python_timeouts_take_every_value_up_to_the_bound():
    for seconds in (0, 0.5, MAX_SECONDS):
        w = Worker(99, os.getpid(), primary_side=True)     # not connected: nothing to do
        assert w.disconnect(timeout=seconds) is w
        cluster.disconnect(timeout=seconds)                 # no worker here
    assert _core.call_later(0, ignore)                      # and the loop's own
    _core.turn(0)


@pytest.mark.parametrize("arg", ["graceful_timeout", "heartbeat_timeout", "drain_delay",
                                 "backoff"])
@pytest.mark.parametrize("seconds", [math.nan, math.inf, 1e300, -1], ids=short)
def test_supervise_refuses_bad_seconds_before_it_starts(arg, seconds):
    # workers=0 is refused too: the seconds are checked first, before any fork.
    value = (0.1, seconds) if arg == "backoff" else seconds
    with pytest.raises(ValueError, match=arg):
        cluster.supervise(0, **{arg: value})


@pytest.mark.parametrize("usec, interval", [("400000", 0.2), ("-4", None), ("0", None),
                                            (str(10 ** 20), MAX_SECONDS)])
def test_the_watchdog_beats_at_an_interval_the_loop_can_wait(monkeypatch, usec, interval):
    # WATCHDOG_USEC comes from the environment: a bad one is a warning and no
    # watchdog, never a ValueError out of supervise().
    monkeypatch.setenv("NOTIFY_SOCKET", "@cluster-ext-test-nobody")
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    notify.start()
    try:
        assert notify.watchdog_interval == interval
    finally:
        notify.stop()


# ---- batches of descriptors: marked only for a peer that reads the marks ----------------

def _sent_nfds(raw):
    """The nfds byte of the next frame on raw, whose descriptors are closed."""
    import socket
    import struct
    data, fds, _, _ = socket.recv_fds(raw, 4096, 16)
    for fd in fds:
        os.close(fd)
    return struct.unpack("=IBBH", data[:8])[2]


def test_a_channel_marks_its_batches_once_asked_or_once_its_peer_does():
    import socket
    import struct
    got = []
    r, w = os.pipe()
    try:
        raw, end = socket.socketpair()
        chan = _core.Channel(end.detach(), lambda *frame: got.append(frame), ignore,
                             1 << 20, 1 << 16)
        # A worker's end: unmarked (CX_NFDS_LEAD), as an older primary reads them
        chan.send(_core.FRAME_USER, 0, b"{}", (r,))
        assert _sent_nfds(raw) == 1
        # until its peer marks a batch of its own
        socket.send_fds(raw, [struct.pack("=IBBH", 0, _core.FRAME_NEWCONN, 0x81, 7)], [w])
        while not got:
            _core.turn(1)
        (ftype, flags, payload, fds), = got
        assert (ftype, flags, payload, len(fds)) == (_core.FRAME_NEWCONN, 7, b"", 1)
        os.close(fds[0])
        chan.send(_core.FRAME_USER, 0, b"{}", (r,))
        assert _sent_nfds(raw) == 0x81
        chan.close()
        raw.close()
        # The primary's end marks from the start.
        raw, end = socket.socketpair()
        chan = _core.Channel(end.detach(), ignore, ignore, 1 << 20, 1 << 16)
        chan.mark_batches()
        chan.send(_core.FRAME_USER, 0, b"{}", (r, w))
        assert _sent_nfds(raw) == 0x82
        chan.close()
        raw.close()
        _core.turn(0)
    finally:
        os.close(r)
        os.close(w)
