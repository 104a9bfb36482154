"""net servers and sockets through real processes and sockets (API.md: net,
Worker handles, Errors). Each scenario is an app in tests/apps/net_*.py; the
test process plays the clients, since a SCHED_RR primary accepts in its own
loop and must never do blocking client I/O itself."""
import errno
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections import Counter

import pytest

from conftest import json_lines, pid_alive, run_app

TIMEOUT = 10.0


def payload_of(line, tag):
    """The JSON after 'TAG '."""
    assert line.startswith(tag + " "), line
    return json.loads(line[len(tag) + 1:])


def tagged(lines, tag):
    return json_lines(lines, tag + " ")


def collect(a, tag, n):
    """Reads the app's lines until it has printed n lines tagged tag."""
    while len(tagged(a.lines, tag)) < n:
        a.wait_for(tag)
    return tagged(a.lines, tag)


def connect(address, family=socket.AF_INET):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    return sock


def read_to_eof(sock, limit=64 << 20):
    """Everything until the peer's FIN (bounded by limit and the timeout)."""
    chunks, total = [], 0
    while total <= limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise AssertionError(f"more than {limit} bytes")


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def request(address, body, family=socket.AF_INET):
    """One request line; the whole reply up to the server's FIN."""
    with connect(address, family) as sock:
        sock.sendall(body + b"\n")
        return read_to_eof(sock)


def ask_pid(address, body, family=socket.AF_INET):
    """A request to a line_server: checks the echo, returns the serving pid."""
    reply = request(address, body, family)
    pid, sep, echoed = reply.partition(b" ")
    assert sep and echoed == body + b"\n", reply[:200]
    return int(pid)


def body_for(i):
    """Request i: distinct, of growing size (up to ~30 KB), so that a mixed up
    or cut reply shows."""
    return f"req-{i}-".encode() + bytes(range(65, 91)) * (i * 40)


def stop(a):
    """Tells an app that waits on its stdin that the test is done (and lets
    finish()'s communicate() run without that pipe)."""
    a.proc.stdin.close()
    a.proc.stdin = None


# ---- several workers share one port ---------------------------------------------------

POLICIES = [
    # (app mode, CLUSTER_EXT_SCHED_POLICY or None, the policy it must give)
    ("default", None, "rr"),
    ("default", "rr", "rr"),
    ("default", "none", "none"),
    ("attr_none", None, "none"),
    ("attr_rr", "none", "rr"),        # the attribute wins over the env var
]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode, env_policy, policy", POLICIES)
def test_workers_share_one_port(app, monkeypatch, n, mode, env_policy, policy):
    monkeypatch.delenv("CLUSTER_EXT_SCHED_POLICY", raising=False)
    env = {"CLUSTER_EXT_SCHED_POLICY": env_policy} if env_policy else {}
    a = app("net_share.py", str(n), mode, env=env, stdin=subprocess.PIPE)
    info = payload_of(a.wait_for("LISTENING"), "LISTENING")
    assert info["policy"] == policy
    assert len(info["pids"]) == n and info["ports"] == [info["port"]]
    addr = ("127.0.0.1", info["port"])

    served = [ask_pid(addr, body_for(i)) for i in range(30)]
    counts = Counter(served)
    assert set(counts) <= set(info["pids"]), counts
    if policy == "rr":
        # the primary hands connections out in turn: every worker serves,
        # and evenly
        assert set(counts) == set(info["pids"]), counts
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    else:
        # SCHED_NONE: the workers accept on the shared descriptor themselves,
        # so they serve while the primary cannot run at all
        os.kill(a.pid, signal.SIGSTOP)
        try:
            for i in range(5):
                assert ask_pid(addr, body_for(i)) in info["pids"]
        finally:
            os.kill(a.pid, signal.SIGCONT)

    stop(a)
    lines = a.finish()
    assert sorted(e["code"] for e in tagged(lines, "EXIT")) == [0] * n
    assert lines[-1] == "DONE {}"


# ---- listen(0) in several workers -------------------------------------------------------

@pytest.mark.parametrize("policy", ["rr", "none"])
def test_listen_zero_is_one_real_port_and_a_second_listen_gets_its_own(app, policy):
    n = 3
    a = app("net_listen0.py", str(n), env={"CLUSTER_EXT_SCHED_POLICY": policy},
            stdin=subprocess.PIPE)
    seen = payload_of(a.wait_for("LISTENING"), "LISTENING")
    workers = collect(a, "WORKER", n)
    pids = sorted(w["pid"] for w in workers)

    # in the workers: server.address() is (host, port), the first listen()
    # of every worker shares one real port, the second another one
    first = {tuple(w["addresses"][0]) for w in workers}
    second = {tuple(w["addresses"][1]) for w in workers}
    assert len(first) == 1 and len(second) == 1, workers
    (host1, port1), = first
    (host2, port2), = second
    assert host1 == host2 == "127.0.0.1"
    assert port1 != 0 and port2 != 0 and port1 != port2
    for w in workers:
        assert w["types"] == ["tuple", "tuple"]
        assert sorted(w["heard"]) == [0, 1]
        assert w["state"] == "listening"

    # in the primary: cluster 'listening'(worker, address) and the worker's
    # 'listening'(address), two per worker, with those same addresses
    both = sorted([["127.0.0.1", port1], ["127.0.0.1", port2]])
    for source in ("cluster", "worker"):
        events = seen[source]
        assert len(events) == 2 * n, seen
        assert {e["type"] for e in events} == {"tuple"}
        for pid in pids:
            assert sorted(e["address"] for e in events if e["pid"] == pid) == both
    assert {e["state"] for e in seen["cluster"]} == {"listening"}

    # both ports serve, each with its own server in every worker
    for index, port in ((1, port1), (2, port2)):
        for i in range(2 * n):
            head, _, echoed = request(("127.0.0.1", port), body_for(i)).partition(b" ")
            tag, _, pid = head.partition(b":")
            assert tag == str(index).encode() and int(pid) in pids
            assert echoed == body_for(i) + b"\n"
    stop(a)
    assert a.finish()[-1] == "DONE {}"


# ---- EADDRINUSE ---------------------------------------------------------------------------

def held_port():
    """A port the test process listens on (no SO_REUSEPORT: nobody may share it)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def assert_eaddrinuse(err):
    assert err["type"] != "ChannelClosedError" and err["oserror"] is True, err
    assert err["errno"] == errno.EADDRINUSE, err
    assert err["listening"] is False, err


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_listen_on_a_used_port_is_an_error_event_and_the_worker_lives(app, policy):
    holder, port = held_port()
    with holder:
        a = app("net_inuse.py", str(port), "cluster",
                env={"CLUSTER_EXT_SCHED_POLICY": policy}, stdin=subprocess.PIPE)
        assert_eaddrinuse(payload_of(a.wait_for("ERROR"), "ERROR"))
    # The port is free now: the same worker listens on it after all, and serves.
    stop(a)
    listening = payload_of(a.wait_for("LISTENING"), "LISTENING")
    assert listening == {"address": ["127.0.0.1", port], "state": "listening"}
    pid = ask_pid(("127.0.0.1", port), b"after the error")
    assert pid != a.pid
    lines = a.finish()
    assert tagged(lines, "EXIT") == [{"code": 0, "signal": None, "ead": True}]
    assert lines[-1] == "DONE {}"
    # one 'listening' in all: none for the failed listen()
    assert len(tagged(lines, "LISTENING")) == 1, lines


def test_an_unheard_listen_error_in_a_plain_forks_worker_is_raised(app):
    """Node throws an 'error' nobody listens to; only a supervised worker
    turns it into a boot failure (exit 3: test_web's port in use)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        a = app("net_inuse.py", str(port), "unheard")
        assert payload_of(a.wait_for("EXIT"), "EXIT") == {"code": 1, "signal": None}
        a.finish()
    assert "OSError" in a.stderr() and f"127.0.0.1:{port}" in a.stderr(), a.stderr()


def test_listen_on_a_used_port_outside_a_cluster():
    holder, port = held_port()
    with holder:
        lines = run_app("net_inuse.py", str(port), "plain")
    assert [line.split()[0] for line in lines] == ["ERROR", "DONE"], lines
    assert_eaddrinuse(tagged(lines, "ERROR")[0])


# ---- server.close() waits for its connections -------------------------------------------

def close_scenario(a):
    """Two clients come (connections 1, 2), one goes (1); the other asks the
    worker to close its server. Returns (port, that client, the status the
    worker wrote to it after the primary had seen the close)."""
    port = payload_of(a.wait_for("LISTENING"), "LISTENING")["port"]
    held = connect(("127.0.0.1", port))
    assert payload_of(a.wait_for("CONN"), "CONN") == {"connections": 1}
    with connect(("127.0.0.1", port)):
        assert payload_of(a.wait_for("CONN"), "CONN") == {"connections": 2}
    assert payload_of(a.wait_for("GONE"), "GONE")["connections"] == 1
    held.sendall(b"close\n")
    return port, held, json.loads(read_line(held))


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_server_close_waits_for_open_connections(app, policy):
    a = app("net_close.py", env={"CLUSTER_EXT_SCHED_POLICY": policy})
    port, held, status = close_scenario(a)
    with held:
        # closed to new clients, but one connection is open: no callback yet
        assert status == {"callback": False, "connections": 1, "listening": False}
        # and that connection is still served
        held.sendall(b"more\n")
        assert read_line(held) == b"still more\n"
        assert not any(line.startswith("CLOSED") for line in a.lines)
    # the client leaves: only now the server closes
    closed = payload_of(a.wait_for("CLOSED"), "CLOSED")
    assert closed == {"log": ["socket close False", "socket close False", "server close",
                              "callback"], "connections": 0}
    lines = a.finish()
    assert tagged(lines, "EXIT") == [{"code": 0}]


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_closed_server_refuses_new_connections(app, policy):
    """API.md: the primary closes a shared socket when its last server
    closes, and new connections are then refused."""
    a = app("net_close.py", env={"CLUSTER_EXT_SCHED_POLICY": policy})
    port, held, status = close_scenario(a)
    with held:
        assert status["listening"] is False
        with pytest.raises(ConnectionRefusedError):
            connect(("127.0.0.1", port)).close()
    a.wait_for("CLOSED")
    a.finish()


def test_close_outside_a_drain_leaves_the_accept_queue_unserved(app):
    """Node's server.close(): no 'connection' for what was queued; only a
    worker's drain takes the queue (test_web's stops under load)."""
    a = app("net_close_queued.py")
    assert payload_of(a.wait_for("CLIENTS"), "CLIENTS") == \
        {"outcomes": ["reset"] * 3, "connections": 0}
    a.finish()


def test_connections_does_not_count_a_socket_in_its_close_event(app):
    a = app("net_close.py")
    port = payload_of(a.wait_for("LISTENING"), "LISTENING")["port"]
    with connect(("127.0.0.1", port)):
        a.wait_for("CONN")
    assert payload_of(a.wait_for("GONE"), "GONE") == {"connections": 0, "in_close": 0}


# ---- Unix sockets --------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["rr", "none"])
def test_two_workers_share_a_unix_socket(app, tmp_path, policy):
    path = str(tmp_path / "s.sock")
    a = app("net_unix.py", path, env={"CLUSTER_EXT_SCHED_POLICY": policy},
            stdin=subprocess.PIPE)
    info = payload_of(a.wait_for("LISTENING"), "LISTENING")
    assert info["addresses"] == [path, path]          # the address is the path
    workers = collect(a, "WORKER", 2)
    assert sorted(w["pid"] for w in workers) == info["pids"]
    assert [w["address"] for w in workers] == [path, path]

    served = Counter(ask_pid(path, body_for(i), socket.AF_UNIX) for i in range(10))
    assert set(served) <= set(info["pids"]), served
    if policy == "rr":
        assert set(served) == set(info["pids"]), served
        assert max(served.values()) - min(served.values()) <= 1, served
    stop(a)
    lines = a.finish()
    # the primary removed the socket file with its last server
    assert tagged(lines, "DONE") == [{"exists": False}]
    assert not os.path.exists(path)


# ---- a plain process -----------------------------------------------------------------------

def test_server_in_a_plain_process(app):
    a = app("net_plain.py")
    info = payload_of(a.wait_for("LISTENING"), "LISTENING")
    host, port = info.pop("address")
    assert host == "127.0.0.1" and port != 0
    assert info == {"type": "tuple", "listening": True, "is_primary": True, "workers": 0}
    with connect((host, port)) as client:
        # close() from the 'connection' listener: no new client gets in ...
        assert payload_of(a.wait_for("CLOSING"), "CLOSING") == {
            "connections": 1, "listening": False}
        with pytest.raises(ConnectionRefusedError):
            connect((host, port)).close()
        # ... but the open one is served, and run() waits for it
        client.sendall(b"hello\n")
        assert read_to_eof(client) == b"served hello\n"
    returned = payload_of(a.wait_for("RETURNED"), "RETURNED")
    assert returned == {"log": ["connection", "data", "socket close False", "server close",
                                "close callback"], "connections": 0}
    a.finish()


# ---- net.Socket in a worker ----------------------------------------------------------------

@pytest.fixture
def socket_app(app):
    """net_socket.py running; yields (app, address)."""
    a = app("net_socket.py", stdin=subprocess.PIPE)
    port = payload_of(a.wait_for("LISTENING"), "LISTENING")["port"]
    yield a, ("127.0.0.1", port)
    stop(a)
    a.finish()


def test_socket_echo_write_and_the_peer_ending_first(socket_app):
    a, addr = socket_app
    body = bytes(range(256)) * 1024                      # 256 KiB: many 'data' events
    with connect(addr) as client:
        client.sendall(b"echo\n")
        client.sendall(body)
        got = b""
        while len(got) < len(body):
            chunk = client.recv(1 << 16)
            assert chunk, f"EOF after {len(got)} bytes"
            got += chunk
        assert got == body
        local = list(client.getsockname())
        # we end first: the worker gets 'end', ends its side too (no half
        # open), and we see its FIN
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b""
    report = payload_of(a.wait_for("SOCK"), "SOCK")
    assert report["events"] == ["data", "end", "close False"], report
    assert report["writes"] and all(w is True or w is False for w in report["writes"])
    assert report["callbacks"] == ["None"] * len(report["writes"])
    assert report["remote"] == local
    assert report["closed"] is True


def test_socket_end_sends_data_then_fin(socket_app):
    a, addr = socket_app
    with connect(addr) as client:
        client.sendall(b"end\n")
        assert read_to_eof(client) == b"bye\n"
    report = payload_of(a.wait_for("SOCK"), "SOCK")
    assert report["events"] == ["data", "end", "close False"], report


def test_socket_pause_stops_data_and_resume_restarts_it(socket_app):
    a, addr = socket_app
    with connect(addr) as client:
        client.sendall(b"pause\n")
        assert read_line(client) == b"paused\n"
        client.sendall(b"sent while paused\n")
        assert read_to_eof(client) == b"resumed sent while paused\n"
    report = payload_of(a.wait_for("SOCK"), "SOCK")
    assert report["during_pause"] == [], report
    assert report["after_resume"] == "sent while paused\n"


@pytest.mark.parametrize("mode, events", [
    ("destroy", ["data", "close False"]),
    ("destroy_err", ["data", "error ValueError boom", "close True"]),
])
def test_socket_destroy_gives_close(socket_app, mode, events):
    a, addr = socket_app
    with connect(addr) as client:
        client.sendall(mode.encode() + b"\n")
        assert read_to_eof(client) == b""
    report = payload_of(a.wait_for("SOCK"), "SOCK")
    assert report["events"] == events, report
    assert report["closed"] is True


# ---- a client whose FIN comes first ---------------------------------------------------------

def half_closed(address):
    """A client that ends its side at once (as `nc -N` with nothing to send)."""
    sock = connect(address)
    sock.shutdown(socket.SHUT_WR)
    return sock


def first_reply_app(app, start, policy, mode):
    """net_first_reply.py listening: (the app, its address, its servers)."""
    n = 1 if start == "plain" else 2
    env = {}
    if policy is not None:
        env["CLUSTER_EXT_SCHED_POLICY"] = policy
    a = app("net_first_reply.py", start, str(n), mode, stdin=subprocess.PIPE, env=env)
    info = payload_of(a.wait_for("LISTENING"), "LISTENING")
    assert info["policy"] == policy
    return a, ("127.0.0.1", info["port"]), n


def half_closed_replies(address, latencies=None):
    """What 100 half-closing clients read to EOF: 50 one after the other,
    then 50 ten at a time. latencies, if given, gets the sequential ones'
    seconds from connect to EOF."""
    replies = []
    for _ in range(50):                              # one after the other
        began = time.monotonic()
        with half_closed(address) as client:
            replies.append(read_to_eof(client))
        if latencies is not None:
            latencies.append(time.monotonic() - began)
    for _ in range(5):                               # 10 at a time
        clients = [half_closed(address) for _ in range(10)]
        for client in clients:
            with client:
                replies.append(read_to_eof(client))
    return replies


def served_totals(a, start, n, keys):
    """Stops the app; the sum of its servers' SERVED counts for keys."""
    stop(a)
    lines = a.finish()
    served = tagged(lines, "SERVED")
    assert len(served) == n, lines
    if start != "plain":
        assert sorted(e["code"] for e in tagged(lines, "EXIT")) == [0] * n
        assert lines[-1] == "DONE {}"
    return {key: sum(s[key] for s in served) for key in keys}


@pytest.mark.parametrize("start, policy", [
    ("exec", "rr"), ("exec", "none"),        # exec'd workers
    ("target", "rr"), ("target", "none"),    # fork(target=) workers
    ("aio", "rr"), ("aio", "none"),          # aio.create_server(): asyncio's transports
    ("plain", None),                         # a server in a plain process
])
def test_a_reply_written_in_connection_leaves_though_the_client_ended_first(
        app, start, policy):
    """Node emits 'connection' before it reads from the socket, so what the
    listener writes (here sock.end(b'1')) leaves even when the client's FIN
    is already queued; the socket then sees the peer's 'end' and, with
    allowHalfOpen false, closes once its reply is written."""
    a, addr, n = first_reply_app(app, start, policy, "reply")
    replies = half_closed_replies(addr)
    assert replies == [b"1"] * 100, Counter(replies)
    total = served_totals(a, start, n, ("connections", "ends", "closes"))
    assert total == {"connections": 100, "ends": 100, "closes": 100}


END_STARTS = [
    ("exec", "rr"), ("exec", "none"),        # exec'd workers
    ("target", "rr"), ("target", "none"),    # fork(target=) workers
    ("plain", None),                         # a server in a plain process
]


@pytest.mark.parametrize("start, policy", END_STARTS)
def test_a_reply_written_in_end_leaves(app, start, policy):
    """Node's socket (allowHalfOpen false) ends itself on the tick after
    'end', so an 'end' listener may still answer: sock.on('end', lambda:
    sock.end(b'bye')) sends b'bye' to a client that half-closed first."""
    a, addr, n = first_reply_app(app, start, policy, "end")
    replies = half_closed_replies(addr)
    assert replies == [b"bye"] * 100, Counter(replies)
    total = served_totals(a, start, n, ("connections", "ends", "closes"))
    assert total == {"connections": 100, "ends": 100, "closes": 100}


@pytest.mark.parametrize("start, policy", [("exec", "rr"), ("target", "none"),
                                           ("plain", None)])
def test_writes_in_end_leave_before_the_sockets_own_end(app, start, policy):
    """An 'end' listener that only write()s (256 KiB, more than one write
    takes): the socket's own end comes after the last byte, never in place
    of it."""
    a, addr, n = first_reply_app(app, start, policy, "endwrite")
    big = bytes(range(256)) * 1024
    replies = half_closed_replies(addr)
    assert all(reply == big for reply in replies), Counter(map(len, replies))
    total = served_totals(a, start, n, ("connections", "ends", "closes"))
    assert total == {"connections": 100, "ends": 100, "closes": 100}


@pytest.mark.parametrize("start, policy", END_STARTS)
def test_a_socket_without_an_end_listener_still_ends_at_once(app, start, policy):
    """No 'end' listener, nothing written: the socket ends itself right
    after the peer's end, and the client reads EOF without doing anything
    more."""
    a, addr, n = first_reply_app(app, start, policy, "silent")
    latencies = []
    replies = half_closed_replies(addr, latencies)
    assert replies == [b""] * 100, Counter(replies)
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    total = served_totals(a, start, n, ("connections", "ends", "closes"))
    assert total == {"connections": 100, "ends": 0, "closes": 100}


@pytest.mark.parametrize("start, policy", [
    ("exec", "rr"), ("exec", "none"), ("target", "rr"), ("plain", None)])
def test_a_socket_paused_in_connection_has_read_nothing(app, start, policy):
    """Nothing is read before 'connection': a socket paused there emits no
    'data' (the client's line waits in the kernel), and all of it comes once
    resumed."""
    n = 1 if start == "plain" else 2
    env = {}
    if policy is not None:
        env["CLUSTER_EXT_SCHED_POLICY"] = policy
    a = app("net_first_reply.py", start, str(n), "pause", stdin=subprocess.PIPE, env=env)
    addr = ("127.0.0.1", payload_of(a.wait_for("LISTENING"), "LISTENING")["port"])
    for i in range(20):
        with connect(addr) as client:
            client.sendall(b"line %d\n" % i)
            assert read_to_eof(client) == b"got line %d\n" % i
    stop(a)
    lines = a.finish()
    served = tagged(lines, "SERVED")
    assert len(served) == n, lines
    total = {key: sum(s[key] for s in served)
             for key in ("connections", "early", "ends", "closes")}
    assert total == {"connections": 20, "early": 0, "ends": 20, "closes": 20}, served


# ---- a client that resets ------------------------------------------------------------------

def reset(sock):
    """Closes with an RST rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
@pytest.mark.parametrize("when", ["mid_request", "mid_reply"])
def test_a_resetting_client_does_not_kill_the_worker(app, policy, when):
    a = app("net_reset.py", env={"CLUSTER_EXT_SCHED_POLICY": policy},
            stdin=subprocess.PIPE)
    addr = ("127.0.0.1", payload_of(a.wait_for("LISTENING"), "LISTENING")["port"])
    pid = ask_pid(addr, b"first")
    assert payload_of(a.wait_for("CLOSED"), "CLOSED") == {"had_error": False}

    client = connect(addr)
    if when == "mid_request":
        client.sendall(b"half a requ")           # no newline: the worker waits for more
    else:
        client.sendall(b"big\n")
        # the worker is writing its 8 MiB: take a little, leave the rest queued
        assert client.recv(1 << 16).startswith(f"{pid} ".encode())
    reset(client)
    # the worker saw the connection end ...
    a.wait_for("CLOSED")
    # ... and serves the next client, in the same process
    assert ask_pid(addr, b"next") == pid
    assert ask_pid(addr, b"and the next") == pid
    assert pid_alive(pid)
    stop(a)
    lines = a.finish()
    assert tagged(lines, "EXIT") == [{"code": 0, "signal": None}], lines


# ---- back-pressure -------------------------------------------------------------------------

def test_write_returns_false_then_drain_and_every_byte_arrives(app):
    a = app("net_drain.py", stdin=subprocess.PIPE)
    addr = ("127.0.0.1", payload_of(a.wait_for("LISTENING"), "LISTENING")["port"])
    expected = b"".join(i.to_bytes(4, "big") * (1 << 14) for i in range(128))
    with connect(addr) as client:
        # we read nothing until the worker's write() has said "stop"
        blocked = payload_of(a.wait_for("BLOCKED"), "BLOCKED")
        assert 0 < blocked["at"] < 128          # before the last chunk: a real wait
        got = read_to_eof(client)
    assert len(got) == len(expected)
    assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
    wrote = payload_of(a.wait_for("WROTE"), "WROTE")
    assert wrote["had_error"] is False and wrote["next"] == 128
    # every False was followed by exactly one 'drain', and no 'drain' came unasked
    assert wrote["falses"] >= 1 and wrote["drains"] == wrote["falses"], wrote
    assert wrote["drain_without_false"] == 0 and wrote["waiting"] is False
    stop(a)
    a.finish()
