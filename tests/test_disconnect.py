"""worker.disconnect() with net servers, and net handles passed with messages
(API.md: "worker.disconnect()", "Worker" handles, "net"), through real
processes and sockets. The seed document is Node's worker.disconnect() doc;
its example is examples/seed_disconnect.py. Each scenario is an app in
tests/apps/disc_*.py; the test process plays the clients, since a SCHED_RR
primary accepts in its own loop and must never do blocking client I/O there."""
import errno
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import free_port, run_app

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed_disconnect.py"
TIMEOUT = 10.0          # any one client operation


# ---- helpers ------------------------------------------------------------------------

def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def read_line(sock):
    """One line (without its newline); '' at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data.decode()
        data += chunk
    return data[:-1].decode()


def exchange(sock, text):
    sock.sendall(text.encode() + b"\n")
    return read_line(sock)


def command(a, text):
    """A command line to an app's primary (disc_util.on_commands)."""
    a.proc.stdin.write(text.encode() + b"\n")
    a.proc.stdin.flush()


def close_stdin(a):
    """The test is done with the app (it disconnects what is left), and
    finish()'s communicate() must not touch that pipe."""
    a.proc.stdin.close()
    a.proc.stdin = None


def wait_line(a, text):
    """Reads lines until one is exactly text (at once if one was read already)."""
    if text in a.lines:
        return text
    while True:
        line = a.wait_for(text)
        if line == text:
            return line


def index_of(lines, words):
    """The index of the one line that is words, or starts with words + ' '."""
    found = [i for i, line in enumerate(lines)
             if line == words or line.startswith(words + " ")]
    assert len(found) == 1, (words, lines)
    return found[0]


def seconds(line, word):
    """The '+S.SSS' after word in a line."""
    parts = line.split()
    return float(parts[parts.index(word) + 1].lstrip("+"))


# ---- the seed example ------------------------------------------------------------------

def test_seed_example_as_written_with_no_client(app):
    """examples/seed_disconnect.py unchanged: nothing connects, so the server
    closes at once, 'disconnect' comes and cancels the 2 s timer, the worker
    exits 0 and the program ends: well before the timer could have fired."""
    # app() runs APPS / name: an absolute path stays itself
    a = app(str(SEED), env={"PORT": str(free_port())})
    assert a.wait_for("worker 1 exited") == (
        "worker 1 exited: code=0 signal=None exited_after_disconnect=True")
    exited = time.monotonic()
    assert a.finish(timeout=30) == [
        "worker 1 exited: code=0 signal=None exited_after_disconnect=True"]
    ended = time.monotonic()
    # The timer was armed when the worker listened, just before its exit; only
    # the example's 'disconnect' handler cancels it, and a pending timer keeps
    # run() going: without that cancel, the program would linger 2 s here. The
    # bound is that timer, with room for a loaded machine.
    assert ended - exited < 1.8, ended - exited


def test_seed_example_events_seen_from_outside(app):
    """The same example, with the primary's cluster events watched: 'disconnect'
    then 'exit'(0, None), both right after disconnect(), with
    exited_after_disconnect already True when disconnect() returned."""
    a = app("disc_seed_watch.py", env={"PORT": str(free_port())})
    lines = a.finish(timeout=30)
    assert lines[0] == "event listening 1 ead True", lines
    disc, exit_ = index_of(lines, "event disconnect"), index_of(lines, "event exit")
    assert disc < exit_, lines
    assert lines[exit_].split()[3:] == ["1", "0", "None", "True"], lines
    assert "worker 1 exited: code=0 signal=None exited_after_disconnect=True" in lines
    # from disconnect() to the end of run(): no 2 s timer in between
    assert seconds(lines[-1], "run-returned") < 1.8, lines


def test_seed_with_a_client_that_never_ends_is_killed_by_the_timer(app):
    """The seed's other case: a connection the worker owns never ends, so its
    server never closes and the disconnect cannot complete; after 2 s the
    timer's kill() ends it with SIGTERM. The client sees its connection close,
    and 'disconnect' still comes before 'exit'."""
    a = app("disc_seed_client.py")
    lines = a.finish(timeout=30)
    # the worker was told, and began its disconnect, but its server never closed
    assert "W got shutdown" in lines and "W disconnecting" in lines, lines
    assert "W server close" not in lines and "W disconnect" not in lines, lines
    disc, exit_ = index_of(lines, "P disconnect"), index_of(lines, "P exit")
    assert disc < exit_, lines
    # nothing completed before the timer fired, 2 s after disconnect()
    assert 1.9 <= seconds(lines[disc], "disconnect") < 5.0, lines
    assert lines[disc].endswith("state disconnected"), lines
    # code None, signal.Signals.SIGTERM (not a bare 15), exited_after_disconnect
    assert lines[exit_].split()[3:] == ["None", "Signals.SIGTERM", "True"], lines
    # the client had been greeted by the worker, then saw its connection close
    # when the worker died (not before)
    assert "client greeting hello" in lines, lines
    closed = lines[index_of(lines, "client closed")]
    assert closed.split()[2] == "eof", lines
    assert seconds(closed, "eof") >= 1.9, lines


# ---- disconnect() with servers ---------------------------------------------------------

POLICIES = ["rr", "none"]


WHO = {"primary": "disconnect", "worker": "ask"}    # who calls disconnect()


@pytest.mark.parametrize("who", sorted(WHO))
@pytest.mark.parametrize("policy", POLICIES)
def test_disconnect_keeps_accepted_connections_and_hands_new_ones_over(app, policy, who):
    """'disconnecting' first; the server stops listening while the connection
    it accepted keeps working; new connections go to the other worker (none
    lost, even those already on their way to the closing one); once the
    client ends, the server closes, then 'disconnect', then exit 0."""
    a = app("disc_handover.py", policy, "2", stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    held = connect(port)
    mine = read_line(held)                     # 'w1' or 'w2'
    assert mine in ("w1", "w2")
    other = "w2" if mine == "w1" else "w1"

    command(a, f"{WHO[who]} {mine[1:]}")
    # 'disconnecting' fires first, while the server still listens and holds
    # our connection ...
    assert a.wait_for(f"{mine} ").split()[1:] == [
        "disconnecting", "listening=True", "connections=1"], a.lines
    # ... then the server stops listening; the connection stays
    assert a.wait_for(f"{mine} after-close").split()[2:] == [
        "listening=False", "connections=1"], a.lines

    # new connections go to the other worker, none is refused
    for _ in range(10):
        with connect(port) as sock:
            assert read_line(sock) == other

    # the held connection still works, with a worker still connected
    assert exchange(held, "ping") == f"{mine}:ping connected=True"
    assert exchange(held, "again") == f"{mine}:again connected=True"
    command(a, "status")
    status = a.wait_for("status")
    assert f"{mine}:listening:connected=True" in status.split(), status
    assert not [line for line in a.lines if line.startswith(f"disconnect {mine}")]

    # the client ends: the server closes, then 'disconnect', then the exit
    held.close()
    a.wait_for(f"exit {mine}")
    lines = a.lines
    order = [index_of(lines, f"{mine} server close"), index_of(lines, f"disconnect {mine}"),
             index_of(lines, f"exit {mine}")]
    assert order == sorted(order), lines
    wait_line(a, f"{mine} disconnect")              # the worker's own event
    assert lines[order[-1]] == f"exit {mine} code=0 signal=None ead=True"

    # the other worker kept serving all along
    with connect(port) as sock:
        assert read_line(sock) == other
        assert exchange(sock, "x") == f"{other}:x connected=True"
    close_stdin(a)
    lines = a.finish()
    assert lines[-1] == "primary done"
    assert f"exit {other} code=0 signal=None ead=True" in lines


@pytest.mark.parametrize("policy", POLICIES)
def test_disconnecting_the_only_worker_closes_the_port(app, policy):
    """The primary closes a shared port with its last worker: new connections
    are refused (Node's behaviour), the connection already held still works."""
    a = app("disc_handover.py", policy, "1", stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    held = connect(port)
    assert read_line(held) == "w1"
    command(a, "disconnect 1")
    assert "listening=False" in a.wait_for("w1 after-close").split()
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError) as refused:
            connect(port).close()
        assert refused.value.errno == errno.ECONNREFUSED
    assert exchange(held, "still") == "w1:still connected=True"
    held.close()
    a.wait_for("exit w1")
    close_stdin(a)
    lines = a.finish()
    assert "exit w1 code=0 signal=None ead=True" in lines
    assert lines[-1] == "primary done"


def test_a_connection_accepted_as_the_disconnect_arrives_is_not_lost(app):
    """SCHED_NONE, made deterministic with SIGSTOP: both workers are stopped;
    the primary disconnects w1 (its frame reaches w1's channel), then a client
    connects (it waits in the shared backlog). w1 resumes and finds both ready
    in one turn, the disconnect first. The connection must still be served:
    by w1 if it accepts it (it is then one of its server's connections, which
    the disconnect waits for), or by w2 if w1 leaves it in the backlog, as
    Node's worker does once its listening handle is closed."""
    a = app("disc_handover.py", "none", "2", stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    command(a, "pids")
    pids = dict(item.split("=") for item in a.wait_for("pids").split()[1:])
    w1, w2 = int(pids["w1"]), int(pids["w2"])
    stopped = [w1, w2]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        command(a, "disconnect 1")
        a.wait_for("asked w1")
        # a later turn of the primary's loop: the disconnect frame, written at
        # the end of the turn that asked for it, is in w1's channel by now
        command(a, "status")
        a.wait_for("status")
        client = connect(port)
        os.kill(w1, signal.SIGCONT)
        stopped.remove(w1)
        assert "listening=False" in a.wait_for("w1 after-close").split()
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    with client:
        greeting = read_line(client)
        assert greeting in ("w1", "w2"), f"connection dropped: {greeting!r}"
        assert exchange(client, "ping").startswith(f"{greeting}:ping ")
    a.wait_for("exit w1")
    close_stdin(a)
    lines = a.finish()
    assert "exit w1 code=0 signal=None ead=True" in lines


# ---- the worker's own client connections ---------------------------------------------

def test_disconnect_does_not_wait_for_the_workers_own_client_connections(app):
    """Only server connections hold a disconnect back: a worker holding an
    outgoing connection (to a server the test runs) still disconnects, and
    that connection is not closed either; the process ends once it ends."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        a = app("disc_outgoing.py", str(listener.getsockname()[1]))
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        assert read_line(conn) == "hello w1"
        wait_line(a, "P disconnect")           # with our connection still open
        # the worker saw its own 'disconnect' too, with the connection open
        # (the two sides see the channel close independently: in either order)
        wait_line(a, "W disconnect outgoing_closed=False")
        lines = a.lines
        order = [index_of(lines, "P disconnect-called"), index_of(lines, "W disconnecting"),
                 index_of(lines, "W server close"), index_of(lines, "P disconnect")]
        assert order == sorted(order), lines
        # the connection still works: the worker lives on without its channel
        assert exchange(conn, "ping") == "w1:ping connected=False"
        assert not [line for line in a.lines if line.startswith("P exit")], a.lines
    # we end the connection: nothing is left in the worker's loop
    lines = a.finish()
    assert lines[-3:] == ["W outgoing close False", "P exit 0 None True", "P done"], lines


# ---- workers replaced one by one under load ---------------------------------------------

class Load:
    """Clients in threads of the test process, each one connection after
    another: connect, 'ping', read the reply, close. Bounded in count and
    time; every failure (refused, reset, timeout, no reply) is recorded."""

    MAX_CONNECTIONS, MAX_SECONDS, CLIENTS = 20000, 15.0, 4

    def __init__(self, port):
        self.port = port
        self.served = Counter()
        self.errors = []
        self.done = 0
        self.progress = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(self.CLIENTS)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def running(self):
        return any(thread.is_alive() for thread in self.threads)

    def _run(self):
        deadline = time.monotonic() + self.MAX_SECONDS
        while (not self.stopping.is_set() and self.done < self.MAX_CONNECTIONS
               and time.monotonic() < deadline):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"ping\n")
                    reply = read_line(s)
                error = None if re.fullmatch(r"w\d+", reply) else f"bad reply {reply!r}"
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self.progress:
                if error is None:
                    self.served[reply] += 1
                else:
                    self.errors.append(error)
                self.done += 1
                self.progress.notify_all()

    def wait_until(self, count):
        """Until count connections were made (or the clients ended)."""
        with self.progress:
            assert self.progress.wait_for(
                lambda: self.done >= count or not self.running(), TIMEOUT)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 5)
        assert not self.running()


@pytest.mark.parametrize("who", ["primary", "worker"])
@pytest.mark.parametrize("policy", POLICIES)
def test_no_connection_lost_while_workers_are_replaced_one_by_one(app, policy, who):
    """Three workers under client loops; each is replaced in turn: a new
    worker listens first, then an old one disconnects. No connection is
    refused, reset or left without a reply."""
    a = app("disc_roll.py", policy, who, stdin=subprocess.PIPE)
    load = Load(int(a.wait_for("ready ").split()[1]))
    load.start()
    try:
        load.wait_until(50)
        command(a, "roll")
        a.wait_for("rolled", timeout=30)
        after_roll = load.done
        load.wait_until(after_roll + 50)       # the new workers alone, for a while
    finally:
        load.stop()
    close_stdin(a)
    lines = a.finish()

    replaced = [line.split() for line in lines if line.startswith("replaced ")]
    assert [(r[1], r[3]) for r in replaced] == [("w1", "w4"), ("w2", "w5"), ("w3", "w6")]
    assert load.done >= after_roll + 50, "the load ended before the roll did"
    assert load.errors == [], (load.errors[:5], len(load.errors), load.done)
    assert sum(load.served.values()) == load.done
    # the new workers served, and the old ones too, before they left
    assert {"w4", "w5", "w6"} & set(load.served), load.served
    assert {"w1", "w2", "w3"} & set(load.served), load.served
    for w in ("w1", "w2", "w3"):                   # each old one left gracefully
        assert f"exit {w} code=0 signal=None ead=True" in lines, lines


# ---- net handles passed with messages -----------------------------------------------------

def test_primary_sends_an_accepted_net_socket_to_a_worker(app):
    """A connection the primary accepted on a plain server of its own, sent
    with worker.send(msg, sock): the worker gets a live net.Socket and serves
    the client on it; the primary's copy is closed, the connection is not."""
    a = app("disc_handles.py", "socket_to_worker", stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    with connect(port) as client:
        # the worker, not the primary, speaks on the connection
        assert read_line(client) == "hello from w1"
        wait_line(a, "W got take Socket net_socket=True closed=False")
        # the sender's copy is closed, without ending the connection
        wait_line(a, "P copy close False closed=True")
        wait_line(a, "P sending send=True")
        assert exchange(client, "ping") == "w1:ping"
        assert exchange(client, "pong") == "w1:pong"
    a.wait_for("W socket close")
    close_stdin(a)
    lines = a.finish()
    order = [index_of(lines, "P disconnect w1"), index_of(lines, "P exit w1 0 None"),
             index_of(lines, "P done")]
    assert order == sorted(order), lines


@pytest.mark.parametrize("policy", POLICIES)
def test_worker_sends_an_accepted_net_socket_to_the_primary(app, policy):
    """A connection the worker's shared server accepted, sent to the primary:
    cluster 'message' gets (worker, msg, live net.Socket); the worker's copy
    is closed and no longer holds the worker's disconnect back."""
    a = app("disc_handles.py", "socket_to_primary", policy, stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    with connect(port) as client:
        # the primary's cluster 'message' had (worker, msg, live net.Socket)
        assert read_line(client) == "hello from primary"
        wait_line(a, "P got take from=w1 Socket net_socket=True closed=False")
        assert exchange(client, "ping") == "primary:ping"
        # the worker's copy closed, so its server holds no connection: the
        # disconnect the primary asked for completes while the client is served
        a.wait_for("P exit w1")
        lines = a.lines
        assert "W sending send=True" in lines and "W copy close False" in lines, lines
        assert lines.index("W server close") < lines.index("P disconnect w1"), lines
        assert "P exit w1 0 None" in lines, lines
        assert exchange(client, "still") == "primary:still"
    a.wait_for("P socket close")
    close_stdin(a)
    assert a.finish()[-1] == "P done"


def test_primary_sends_a_listening_net_server_to_a_worker(app):
    """A plain listening net.Server of the primary, sent to a worker: the worker
    gets a listening net.Server and serves on it; the primary's copy is closed;
    the server counts among the worker's, so disconnect() closes it."""
    a = app("disc_handles.py", "server_to_worker", stdin=subprocess.PIPE)
    port = int(a.wait_for("ready ").split()[1])
    assert "W got serve Server net_server=True listening=True" in a.lines, a.lines
    # the primary's copy closed (the worker may print first: no order); so
    # every connection below is the worker's
    wait_line(a, "P server close listening=False")
    wait_line(a, "P sending send=True")
    for i in range(3):
        with connect(port) as client:
            assert read_line(client) == "hello from w1"
            assert exchange(client, f"ping{i}") == f"w1:ping{i}"
    close_stdin(a)
    lines = a.finish()
    # the passed server is one of the worker's: disconnect() closed it
    order = [index_of(lines, "W server close"), index_of(lines, "P disconnect w1"),
             index_of(lines, "P exit w1 0 None"), index_of(lines, "P done")]
    assert order == sorted(order), lines


@pytest.mark.parametrize("policy", POLICIES)
def test_a_listen_that_reaches_a_disconnecting_primary_never_completes(policy):
    """A worker disconnected as soon as it is online (a Ctrl-C while it
    starts) asks for its server after the primary began the disconnect: as
    in Node, whose primary leaves that query unanswered, the listen never
    completes and nothing is raised, so the worker ends with 0, not with a
    traceback."""
    lines = run_app("disc_listen_late.py", policy)
    assert lines == ["listen asked", "exit code=0 signal=None ead=True"], lines
