"""supervise(), reload() and the heartbeat through real processes and signals."""
import os
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port, run_app


def fleet_on_a_port(app, mode):
    """fleet.py MODE on a free port, once both its workers listen:
    (the app, the port, the lines seen so far)."""
    port = free_port()
    a = app("fleet.py", mode, env={"PORT": str(port)})
    seen = []
    lines_until(a, "listening", seen)
    lines_until(a, "listening", seen)
    return a, port, seen


def lines_until(a, prefix, seen):
    while True:
        line = a.read_line(20)
        assert line is not None, f"ended before {prefix!r}: {a.lines}\n{a.stderr()}"
        seen.append(line)
        if line.startswith(prefix):
            return line


def test_a_crashed_worker_is_respawned_and_sigterm_stops_gracefully(app):
    a = app("fleet.py", "respawn")
    seen = []
    lines_until(a, "online 3", seen)             # 1 and 2, then 3 replacing 1
    assert "exit 1 3 None False" in seen
    os.kill(a.pid, signal.SIGTERM)
    rest = a.finish(code=0)
    assert rest[-1] == "stopped"
    exits = sorted(line for line in rest if line.startswith("exit "))
    assert exits == ["exit 1 3 None False", "exit 2 0 None True", "exit 3 0 None True"]


def test_a_supervised_workers_own_kill_ends_it_by_its_signal(app):
    """A supervised worker drains on a SIGTERM from outside; its own kill()
    is still the exit table's (None, SIGTERM), asked for."""
    a = app("fleet.py", "selfkill")
    seen = []
    lines_until(a, "exit 1 ", seen)
    lines_until(a, "online 3", seen)             # replaced: the fleet keeps its size
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)
    assert "exit 1 None SIGTERM True" in seen, seen


def test_a_crash_loop_stops_instead_of_spinning(app):
    a = app("fleet.py", "crashloop")
    lines = a.finish(code=0, timeout=30)
    assert any(line.startswith("crashloop ") for line in lines), lines
    exits = [line for line in lines if line.startswith("exit ")]
    assert len(exits) >= 10
    assert lines[-1] == "stopped"
    # The back-off grows: 0.01 s, doubled at each crash, up to 0.64 s. The k-th
    # death is answered by the k-th respawn, and each delay is timed from the
    # death: a worker's start, which load stretches, is no part of it (fork to
    # fork, the first gap was once 0.11 s beside a largest of 0.47 s under
    # ASan and stress-ng). A fork's own cost is in every delay: a difference.
    forks = [float(line.split()[2]) for line in lines if line.startswith("fork ")]
    deaths = [float(line.split()[2]) for line in lines if line.startswith("died ")]
    delays = [fork - death for death, fork in zip(deaths, forks[2:], strict=False)]
    assert max(delays) - delays[0] >= 0.3, delays


def test_a_second_sigterm_stops_at_once(app):
    a = app("fleet.py", "linger")
    seen = []
    lines_until(a, "online", seen)
    lines_until(a, "online", seen)
    os.kill(a.pid, signal.SIGTERM)               # graceful: workers linger on a timer
    lines_until(a, "disconnect", seen)
    lines_until(a, "disconnect", seen)
    t0 = time.monotonic()
    os.kill(a.pid, signal.SIGTERM)               # at once
    lines = a.finish(code=0, timeout=10)
    assert time.monotonic() - t0 < 5
    exits = [line for line in lines if line.startswith("exit ")]
    assert len(exits) == 2 and all(" SIGKILL " in line for line in exits), exits


def test_the_heartbeat_replaces_a_stuck_worker(app):
    a = app("fleet.py", "heartbeat")
    seen = []
    lines_until(a, "online 2", seen)
    assert "exit 1 None SIGKILL False" in seen
    os.kill(a.pid, signal.SIGTERM)
    assert a.finish(code=0)[-1] == "stopped"


def test_reload_under_load_replaces_every_worker_without_errors(app):
    a, port, seen = fleet_on_a_port(app, "reload")
    stop, stats = threading.Event(), {"ok": 0, "errors": [], "pids": set()}

    def load():
        # on until the reload is over and a new worker has answered too: on a
        # busy machine a reload may be over before this thread got that far
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stats["ok"] < 20000 and not (
                stop.is_set() and len(stats["pids"]) >= 3):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"ping\n")
                    reply = c.recv(64)
                if not reply.startswith(b"pong "):
                    stats["errors"].append(reply)
                else:
                    stats["pids"].add(int(reply.split()[1]))
                    stats["ok"] += 1
            except OSError as exc:
                stats["errors"].append(repr(exc))

    client = threading.Thread(target=load)
    client.start()
    try:
        os.kill(a.pid, signal.SIGHUP)
        lines_until(a, "exit 1 ", seen)
        lines_until(a, "exit 2 ", seen)
        assert "exit 1 0 None True" in seen and "exit 2 0 None True" in seen
    finally:
        stop.set()
        client.join()
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)
    assert stats["errors"] == []
    assert stats["ok"] > 0 and len(stats["pids"]) >= 3   # old and new workers served


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_a_fleet_with_every_worker_killed_refuses_no_connection(app, policy):
    """While supervise() respawns, the address stays open: a connection made
    when no worker is alive waits in the backlog and the next worker serves it."""
    port = free_port()
    a = app("fleet.py", "killall", env={"PORT": str(port), "CLUSTER_EXT_SCHED_POLICY": policy})
    seen = []
    old = {int(lines_until(a, "pid", seen).split()[1]) for _ in range(2)}
    assert len(old) == 2
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    lines_until(a, "exit ", seen)
    lines_until(a, "exit ", seen)
    assert not any(line.startswith("fork 3") for line in seen), seen   # none alive yet
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.settimeout(10)
        c.sendall(b"ping\n")
        reply = c.recv(64)
    assert reply.startswith(b"pong ") and int(reply.split()[1]) not in old, reply
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)


def test_connections_the_last_worker_gives_back_wait_for_the_next(app):
    """SCHED_RR: the only worker retires with connections handed to it and
    not read; it gives them back. With no worker to take them, the primary
    holds them for the next one, as the backlog holds the ones it has not
    accepted, instead of closing them under their clients."""
    port = free_port()
    a = app("fleet.py", "giveback", env={"PORT": str(port), "HOLD": "2",
                                         "CLUSTER_EXT_SCHED_POLICY": "rr"})
    seen = []
    lines_until(a, "listening 1", seen)
    holder = socket.create_connection(("127.0.0.1", port), timeout=10)
    holder.sendall(b"hold\n")
    first = int(lines_until(a, "holding", seen).split()[1])
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    for c in clients:
        c.sendall(b"ping\n")
    holder.close()                               # so that worker 1 may end its drain
    replies = []
    for c in clients:
        with c:
            replies.append(c.recv(64))
    assert all(r.startswith(b"pong ") and int(r.split()[1]) != first for r in replies), replies
    lines_until(a, "exit 1 0 None True", seen)
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)


def test_a_shrink_drops_a_respawn_to_come_before_a_serving_worker(app):
    """SIGTTOU while a crashed worker's respawn waits out its back-off: the
    respawn is the one that goes, not the worker that serves (the fleet
    would serve nothing until the back-off ended); the stop that follows
    ends at once."""
    a = app("fleet.py", "slowrespawn", env={"LOG": "1"})
    seen = []
    lines_until(a, "exit 1 3 None False", seen)  # its respawn waits 30 s
    if "online 2" not in seen:
        lines_until(a, "online 2", seen)
    os.kill(a.pid, signal.SIGTTOU)
    lines_until(a, "log SIGTTOU received", seen)
    # Worker 2 still serves, so a reload replaces it at once; had the shrink
    # retired it, nothing would be forked before the back-off's 30 s.
    os.kill(a.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(line.startswith("fork 3") for line in seen):
        line = a.read_line(max(0.01, deadline - time.monotonic()))
        assert line is not None, seen
        seen.append(line)
    lines_until(a, "exit 2 0 None True", seen)
    os.kill(a.pid, signal.SIGTERM)
    rest = a.finish(code=0, timeout=20)
    assert rest[-1] == "stopped"
    assert not any(line.startswith("fork 4") for line in rest), rest


def test_a_shrink_after_a_grow_took_a_respawns_place_keeps_the_primary(app):
    """SIGTTIN while a respawn waits out its back-off forks a worker that
    takes the respawn's place in the count of restarts; the SIGTTOU after
    drops the waiting respawn all the same."""
    a = app("fleet.py", "slowrespawn", env={"LOG": "1"})
    seen = []
    lines_until(a, "exit 1 3 None False", seen)
    os.kill(a.pid, signal.SIGTTIN)
    lines_until(a, "online 3", seen)
    os.kill(a.pid, signal.SIGTTOU)
    lines_until(a, "log SIGTTOU received", seen)
    os.kill(a.pid, signal.SIGTERM)
    rest = a.finish(code=0, timeout=20)
    assert rest[-1] == "stopped", rest
    assert sorted(line for line in rest if line.startswith("exit ")) == \
        ["exit 1 3 None False", "exit 2 0 None True", "exit 3 0 None True"], rest


def test_a_retired_worker_is_not_replaced(app):
    a = app("fleet.py", "retire")
    seen = []
    lines_until(a, "online", seen)
    lines_until(a, "online", seen)
    os.kill(a.pid, signal.SIGTTOU)               # retire the oldest: asked, not a crash
    lines_until(a, "exit 1 0 None True", seen)
    os.kill(a.pid, signal.SIGTTIN)               # one more: it is the only new fork
    lines_until(a, "online 3", seen)
    os.kill(a.pid, signal.SIGTERM)
    lines = a.finish(code=0)                     # every line, from the start
    assert sorted(line for line in lines if line.startswith("online")) == \
        ["online 1", "online 2", "online 3"]


def test_sigterm_drains_held_connections_then_exits_0(app):
    a, port, seen = fleet_on_a_port(app, "drain")
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    held.sendall(b"ping\n")
    assert held.recv(64).startswith(b"pong ")
    os.kill(a.pid, signal.SIGTERM)
    lines_until(a, "disconnect", seen)           # the worker without a connection
    held.sendall(b"ping\n")                      # the other still serves its client
    assert held.recv(64).startswith(b"pong ")
    held.close()                                 # now it can finish
    lines = a.finish(code=0)
    exits = sorted(line for line in lines if line.startswith("exit "))
    assert exits == ["exit 1 0 None True", "exit 2 0 None True"]


def test_workers_forked_by_reload_are_timed_from_their_fork():
    lines = run_app("fleet_reload_crash.py", "serve", timeout=30)
    assert lines == ["whole", "stopped"], lines


def ask(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"ping\n")
        return c.recv(64)


def test_a_reload_that_a_worker_never_answers_ends_in_sigkill(app):
    """Workers whose own loop never reads the channel: the reload's
    disconnect is bounded by the graceful timeout, then SIGKILL (defect K)."""
    port = free_port()
    a = app("fleet.py", "deaf", env={"PORT": str(port), "GRACE": "1"})
    seen = []
    lines_until(a, "listening", seen)
    lines_until(a, "listening", seen)
    old_pids = {int(ask(port).split()[1]) for _ in range(4)}
    os.kill(a.pid, signal.SIGHUP)
    lines_until(a, "exit 1 ", seen)
    lines_until(a, "exit 2 ", seen)
    assert "exit 1 None SIGKILL True" in seen and "exit 2 None SIGKILL True" in seen, seen
    assert [line for line in seen if line.startswith("listening")][2:] == \
        [f"listening 3 {port}", f"listening 4 {port}"]
    assert int(ask(port).split()[1]) not in old_pids    # the replacements serve
    os.kill(a.pid, signal.SIGTERM)               # they do not answer either: SIGKILL
    lines = a.finish(code=0, timeout=15)
    assert lines[-1] == "stopped"


def test_a_second_sigterm_during_a_hung_reload_stops_at_once(app):
    """The reload waits on a deaf worker; SIGTERM, SIGTERM: nothing more is
    forked and the primary is gone at once (defect L)."""
    for _ in range(3):                           # it was a race: 5 of 12 tries
        port = free_port()
        a = app("fleet.py", "deaf", env={"PORT": str(port), "GRACE": "30", "LOG": "1"})
        seen = []
        lines_until(a, "listening", seen)
        lines_until(a, "listening", seen)
        os.kill(a.pid, signal.SIGHUP)
        lines_until(a, "listening 3", seen)      # worker 1 is asked to go, and hangs
        t0 = time.monotonic()
        os.kill(a.pid, signal.SIGTERM)           # graceful: waits on deaf workers
        # The second must come after the first was taken (two pending SIGTERMs
        # are one): once the primary says so.
        lines_until(a, "log SIGTERM received: stopping gracefully", seen)
        os.kill(a.pid, signal.SIGTERM)
        lines = a.finish(code=0, timeout=10)
        assert "log SIGTERM received: stopping at once (SIGKILL to 3 workers)" in lines, lines
        assert time.monotonic() - t0 < 5
        assert lines[-1] == "stopped"
        forks = [line.split()[1] for line in lines if line.startswith("fork ")]
        assert forks == ["1", "2", "3"], "\n".join(lines) + a.stderr()
        exits = sorted(line for line in lines if line.startswith("exit "))
        assert len(exits) == 3 and all(" SIGKILL " in line for line in exits), \
            (exits, a.stderr())


def test_a_worker_that_disconnects_but_never_exits_is_killed_at_the_timeout(app):
    """'disconnect' came, then a timer keeps the process: the graceful
    timeout still ends it (SIGKILL), and the stop completes."""
    a = app("fleet.py", "linger", env={"GRACE": "1"})
    seen = []
    lines_until(a, "online", seen)
    lines_until(a, "online", seen)
    t0 = time.monotonic()
    os.kill(a.pid, signal.SIGTERM)               # once: graceful
    lines = a.finish(code=0, timeout=20)
    assert time.monotonic() - t0 < 10
    assert sum(line.startswith("disconnect ") for line in lines) == 2, lines
    exits = sorted(line for line in lines if line.startswith("exit "))
    assert exits == ["exit 1 None SIGKILL True", "exit 2 None SIGKILL True"], lines


def tell(a, command):
    a.proc.stdin.write(command.encode() + b"\n")
    a.proc.stdin.flush()


def test_a_primary_out_of_descriptors_keeps_its_fleet_and_forks_once_it_can(app):
    """Issue 24, item 2: the respawn's socketpair() fails with EMFILE. The
    primary logs it and tries again with its back-off; more refusals than a
    crash loop takes (10) are not one; a reload stops and the old workers
    serve on; SIGTTIN's worker waits with the respawn; once descriptors are
    free, both are forked."""
    port = free_port()
    a = app("fault_fleet_emfile.py", env={"PORT": str(port)}, stdin=subprocess.PIPE)
    seen = []
    pids = dict(map(int, lines_until(a, "pid ", seen).split()[1:]) for _ in range(2))
    assert sorted(pids) == [1, 2], seen
    tell(a, "fill")
    lines_until(a, "FULL", seen)
    os.kill(pids[1], signal.SIGKILL)
    first = lines_until(a, "log cannot fork worker 3: ", seen)
    assert first.endswith(": Too many open files: the primary's descriptors are used up "
                          "(RLIMIT_NOFILE); trying again in 0.05 s"), first
    os.kill(a.pid, signal.SIGHUP)
    lines_until(a, "log reload stopped, the workers keep their code: cannot fork a "
                   "replacement: Too many open files", seen)
    os.kill(a.pid, signal.SIGTTIN)
    while sum(line.startswith("log cannot fork worker 3: ") for line in seen) < 12:
        lines_until(a, "log cannot fork worker 3: ", seen)
    delays = [float(line.rsplit(" ", 2)[1]) for line in seen
              if line.startswith("log cannot fork worker 3: ")]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4], delays    # one line a try
    assert set(delays[4:]) == {0.4}, delays
    assert not any(line.startswith(("crashloop", "stopped")) for line in seen), seen
    tell(a, "free")
    lines_until(a, "FREED", seen)
    new = dict(map(int, lines_until(a, "pid ", seen).split()[1:]) for _ in range(2))
    assert sorted(new) == [3, 4], seen
    served = {int(ask(port).split()[1]) for _ in range(3)}
    assert served == {pids[2], new[3], new[4]}, (served, pids, new)
    os.kill(a.pid, signal.SIGTERM)
    lines = a.finish(code=0)
    assert lines[-1] == "stopped", lines
    assert not any(line.startswith(("crashloop", "Traceback")) for line in lines), lines


def test_a_listening_socket_the_primary_cannot_copy_fails_only_that_listen(app):
    """SCHED_NONE hands each worker a copy of the listening socket. With the
    primary's descriptors used up between a respawn and its listen, that
    copy fails (EMFILE): the worker's listen fails, the primary carries on,
    and once descriptors are free a new worker serves."""
    port = free_port()
    a = app("fault_fleet_emfile.py", env={"PORT": str(port), "CLUSTER_EXT_SCHED_POLICY": "none"},
            stdin=subprocess.PIPE)
    seen = []
    pids = dict(map(int, lines_until(a, "pid ", seen).split()[1:]) for _ in range(2))
    tell(a, "fill-at-fork")
    lines_until(a, "FULL", seen)
    os.kill(pids[1], signal.SIGKILL)
    lines_until(a, f"log worker 3 cannot listen on 127.0.0.1:{port}: Too many open files", seen)
    tell(a, "free")
    lines_until(a, "FREED", seen)
    wid, pid = map(int, lines_until(a, "pid ", seen).split()[1:])
    assert wid > 3, seen
    assert {int(ask(port).split()[1]) for _ in range(8)} <= {pids[2], pid}
    os.kill(a.pid, signal.SIGTERM)
    lines = a.finish(code=0)
    assert lines[-1] == "stopped", lines


# ---- readiness ---------------------------------------------------------------------------

def pace(a, seconds=0.05):
    """Waits up to seconds for a's exit, the pace of a watch: a must not end."""
    fd = os.pidfd_open(a.pid)
    try:
        assert not select.select([fd], [], [], seconds)[0], f"ended: {a.finish(code=None)}"
    finally:
        os.close(fd)


def lines_now(a):
    """Every line a has written so far, without waiting for more."""
    fd = a.proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        a._buf += chunk
    *complete, a._buf = a._buf.split(b"\n")
    a.lines.extend(line.decode() for line in complete)
    return a.lines


def until_ready(a, ready_file):
    deadline = time.monotonic() + 20
    while not ready_file.exists():
        assert time.monotonic() < deadline, lines_now(a)
        pace(a)


def test_a_fleet_is_ready_once_every_worker_listens_however_long_it_takes(app, tmp_path):
    """Workers that set up for 1.5 s before they listen: when the ready file
    appears, the port answers and both have said 'listening' (it used to
    appear a second after 'online')."""
    port, ready_file = free_port(), tmp_path / "ready"
    a = app("fleet_ready.py", "listen", env={"PORT": str(port), "READY_FILE": str(ready_file)})
    until_ready(a, ready_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert c.recv(16).strip() in (b"1", b"2")
    assert sum(line.startswith("listening") for line in lines_now(a)) == 2, a.lines
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)


def test_workers_that_never_listen_are_ready_once_each_says_so(app, tmp_path):
    """cluster.worker.ready(): the file appears once both workers have said
    it (each prints 'said ready' before it does), not before."""
    ready_file = tmp_path / "ready"
    a = app("fleet_ready.py", "signal", env={"READY_FILE": str(ready_file)})
    until_ready(a, ready_file)
    assert sum(line.startswith("said ready") for line in lines_now(a)) == 2, a.lines
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)


def test_workers_that_neither_listen_nor_say_so_are_never_ready(app, tmp_path):
    """No timer declares a fleet ready: 1.5 s after its workers are online
    (past the second after which it used to be), no ready file."""
    ready_file = tmp_path / "ready"
    a = app("fleet_ready.py", "silent", env={"READY_FILE": str(ready_file)})
    a.wait_for("set up")
    a.wait_for("set up")
    assert not ready_file.exists()
    os.kill(a.pid, signal.SIGTERM)
    a.finish(code=0)
