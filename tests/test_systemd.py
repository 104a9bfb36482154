"""Fitting systemd: socket activation through systemd's own
systemd-socket-activate, sd_notify to a datagram socket the test holds, and
the pid and ready files."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from test_web import WEBAPPS, Load, get, serving, stop, until

pytest.importorskip("uvicorn")


def test_socket_activation_with_systemds_own_tool(app):
    """systemd-socket-activate listens, and execs the primary on the first
    connection with LISTEN_FDS: the primary adopts the socket (no --bind),
    both workers serve it, the first connection included, and the variables
    reach no worker."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed")
    port = free_port()
    cmd = [tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "cluster_ext", "run",
           "-w", "2", "webapp:app"]
    a = app("activated", cmd=cmd, cwd=WEBAPPS, merge_stderr=True)
    until(a, "Listening on")
    first = socket.create_connection(("127.0.0.1", port), timeout=20)
    first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    serving(a)                                    # systemd-socket-activate exec'd us
    assert first.recv(4096).startswith(b"HTTP/1.1 200 ")
    first.close()
    assert len({get(port)[2].split()[1] for _ in range(6)}) == 2
    assert get(port, "/env?LISTEN_FDS")[2].strip() == "-"
    assert get(port, "/env?LISTEN_PID")[2].strip() == "-"
    stop(a)


@pytest.mark.parametrize("sched", ["rr", "none"])
def test_a_restart_of_the_whole_primary_refuses_no_connection(app, sched):
    """What `systemctl restart` does to a socket-activated service: the
    listening socket stays with systemd (here, this test) while one primary
    stops and the next starts with LISTEN_FDS. Clients that connect all the
    while, one connection per request, see no failure: the connections made
    between the two wait in the backlog."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port, fd = listener.getsockname()[1], listener.fileno()
    # sd_listen_fds(3): the socket at fd 3, LISTEN_PID the primary's own pid
    # (the pid that exec keeps), as systemd sets them up
    activate = (f"import os, sys; os.dup2({fd}, 3); os.environ.update(LISTEN_PID=str("
                "os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='web'); os.execv(sys.executable, "
                f"[sys.executable, '-m', 'cluster_ext', 'run', '-w', '2', '--sched', '{sched}', "
                "'webapp:app'])")
    cmd = [sys.executable, "-c", activate]
    first = app("first", cmd=cmd, cwd=WEBAPPS, merge_stderr=True, pass_fds=(fd,))
    serving(first)
    load = Load(port, clients=4)
    try:
        load.wait_ok(100)
        pids_before = set(load.pids)
        stop(first)
        second = app("second", cmd=cmd, cwd=WEBAPPS, merge_stderr=True, pass_fds=(fd,))
        serving(second)
        load.wait_ok(100)
    finally:
        load.stop()
    assert load.errors == [], load.errors[:5]
    assert load.pids - pids_before, "the second primary's workers served"
    stop(second)
    listener.close()


def test_an_adopted_socket_on_every_address_serves_a_listen_without_host(app, tmp_path):
    """systemd's ListenStream=PORT listens on [::]:PORT; a net server's
    listen(PORT) with no host (every address) is that socket, not a second
    bind (which the held port would refuse)."""
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen(64)
    port, fd = listener.getsockname()[1], listener.fileno()
    script = tmp_path / "any_address.py"
    script.write_text("import sys\nimport cluster_ext as cluster\nfrom cluster_ext import net\n"
                      "net.create_server(lambda s: s.end(f'{cluster.worker.id}\\n'))"
                      ".listen(int(sys.argv[1]))\n")
    activate = (f"import os, sys; os.dup2({fd}, 3); os.environ.update(LISTEN_PID=str("
                "os.getpid()), LISTEN_FDS='1'); os.execv(sys.executable, [sys.executable, "
                f"'-m', 'cluster_ext', 'run', '-w', '2', '{script}', '{port}'])")
    a = app("any", cmd=[sys.executable, "-c", activate], cwd=tmp_path, merge_stderr=True,
            pass_fds=(fd,))
    serving(a)
    answers = set()
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            answers.add(c.makefile().read().strip())
    assert answers == {"1", "2"}, answers
    stop(a)
    listener.close()


@pytest.mark.parametrize("case", ["not_a_socket", "not_our_pid"])
def test_listen_fds_that_are_not_ours_to_adopt_are_a_warning(app, case):
    """A LISTEN_FDS descriptor that is not a listening socket, or a LISTEN_PID
    that is not the primary's: one warning, nothing adopted, the variables
    gone from the workers, and the cluster serves its --bind."""
    r, w = os.pipe()
    port = free_port()
    pid = "os.getpid()" if case == "not_a_socket" else "1"
    activate = (f"import os, sys; os.dup2({r}, 3); os.close({r}); os.environ.update("
                f"LISTEN_PID=str({pid}), LISTEN_FDS='1'); os.execv(sys.executable, "
                "[sys.executable, '-m', 'cluster_ext', 'run', '-w', '2', '--bind', "
                f"'127.0.0.1:{port}', 'webapp:app'])")
    try:
        a = app("bad-fds", cmd=[sys.executable, "-c", activate], cwd=WEBAPPS,
                merge_stderr=True, pass_fds=(r,))
        serving(a)
        assert get(port)[0] == 200
        assert get(port, "/env?LISTEN_FDS")[2].strip() == "-"
        pipe = os.readlink(f"/proc/self/fd/{r}")
        held = [fd for fd in os.listdir(f"/proc/{a.pid}/fd")
                if _readlink(f"/proc/{a.pid}/fd/{fd}") == pipe]
        assert held == ["3"], held                # no duplicate left by the look at it
        lines = stop(a)
    finally:
        os.close(r)
        os.close(w)
    expected = ("LISTEN_FDS: fd 3 is not an open socket" if case == "not_a_socket"
                else "LISTEN_FDS ignored: LISTEN_PID='1'")
    assert sum(expected in line for line in lines) == 1, lines


@pytest.mark.parametrize("count", ["3", "40"])
def test_a_listen_fds_count_beyond_the_passed_descriptors_is_one_warning(app, count):
    """LISTEN_FDS counts more descriptors than were passed (one socket, at
    3): one warning that names the missing ones, none for the descriptors
    the package opens itself at those numbers, and the passed socket serves."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port, fd = listener.getsockname()[1], listener.fileno()
    activate = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); os.environ.update("
                f"LISTEN_PID=str(os.getpid()), LISTEN_FDS='{count}'); os.execv(sys.executable, "
                "[sys.executable, '-m', 'cluster_ext', 'run', '-w', '2', 'webapp:app'])")
    a = app("too-many", cmd=[sys.executable, "-c", activate], cwd=WEBAPPS, merge_stderr=True,
            pass_fds=(fd,))
    serving(a)
    listener.close()                              # the primary's copy serves
    assert len({get(port)[2].split()[1] for _ in range(6)}) == 2
    lines = stop(a)
    last = int(count) + 2
    warnings = [line for line in lines if "LISTEN_FDS" in line]
    assert warnings == [f"LISTEN_FDS={count}, but {int(count) - 1} of them (fds 4-{last}) "
                        "are not open: only fd 3 adopted"], lines
    assert "Traceback" not in "\n".join(lines), lines


def _fds_of(pid, inode):
    """The descriptors of process pid that are the socket of that inode."""
    return [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
            if _readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"]


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:                               # closed since the listing
        return None


def test_the_sockets_of_an_ignored_listen_fds_reach_no_worker(app):
    """LISTEN_PID another process's: its socket is not adopted, and it is not
    inherited by the workers either (close-on-exec in the primary, which
    keeps it open: it is not its own to close)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    fd, inode = listener.fileno(), os.fstat(listener.fileno()).st_ino
    port = free_port()
    activate = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); os.environ.update("
                "LISTEN_PID='1', LISTEN_FDS='1'); os.execv(sys.executable, [sys.executable, "
                f"'-m', 'cluster_ext', 'run', '-w', '2', '--bind', '127.0.0.1:{port}', "
                "'webapp:app'])")
    a = app("ignored", cmd=[sys.executable, "-c", activate], cwd=WEBAPPS, merge_stderr=True,
            pass_fds=(fd,))
    serving(a)
    workers = {int(get(port)[2].split()[2]) for _ in range(6)}
    assert len(workers) == 2, workers
    for pid in workers:
        assert _fds_of(pid, inode) == [], f"worker {pid} holds the ignored socket"
    assert get(port, "/env?LISTEN_FDS")[2].strip() == "-"
    assert _fds_of(a.pid, inode) == [3]           # the primary keeps it: not its own to close
    with open(f"/proc/{a.pid}/fdinfo/3") as info:
        flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
    assert flags & os.O_CLOEXEC, oct(flags)
    lines = stop(a)
    listener.close()
    warnings = [line for line in lines if "LISTEN_FDS" in line]
    assert warnings == [f"LISTEN_FDS ignored: LISTEN_PID='1' is not this process ({a.pid}); "
                        "its sockets (fd 3) are kept from the workers"], lines


class Notifications:
    """The datagrams sd_notify sends, on a socket this test binds."""

    def __init__(self, tmp_path, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cluster_ext-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)
        self.seen = []

    def until(self, line, timeout=20):
        """Datagrams until one holds line; returns that datagram's lines."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                lines = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                pytest.fail(f"no {line!r} within {timeout} s; seen {self.seen}")
            self.seen.append(lines)
            if line in lines:
                return lines


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_reloading_stopping_watchdog(app, tmp_path, abstract):
    n = Notifications(tmp_path, abstract)
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "2", "--bind",
           f"127.0.0.1:{port}", "webapp:app"]
    a = app("notify", cmd=cmd, cwd=WEBAPPS, merge_stderr=True,
            env={"NOTIFY_SOCKET": n.address, "WATCHDOG_USEC": "400000"})
    ready = n.until("READY=1")
    assert "STATUS=2 workers, 2 listening, 0 restarts" in ready, ready
    assert get(port)[0] == 200                    # ready means serving
    n.until("WATCHDOG=1")
    n.until("WATCHDOG=1")                         # every 0.2 s: the loop turns
    assert get(port, "/env?NOTIFY_SOCKET")[2].strip() == "-"   # the workers' is gone
    os.kill(a.pid, signal.SIGHUP)
    reloading = n.until("RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading), reloading
    reloaded = n.until("READY=1")
    assert any(line.startswith("STATUS=reloaded") for line in reloaded), reloaded
    os.kill(a.pid, signal.SIGTERM)
    n.until("STOPPING=1")
    a.finish(code=0)


def answers(port):
    """Whether a request made now is answered (200)."""
    try:
        return get(port)[0] == 200
    except OSError:                               # refused: nothing listens yet
        return False


@pytest.mark.parametrize("spec,env", [("slow_import:app", {}),
                                      ("webapp:app", {"WEBAPP_SLOW_STARTUP": "3"})],
                         ids=["slow-import", "slow-lifespan"])
def test_ready_only_once_every_worker_answers(app, tmp_path, spec, env):
    """An application that takes 3 s to import, or 3 s in its lifespan
    startup: READY=1 and the ready file come only once requests are answered
    (not a second after the workers are online). Watched from here: each
    time either is seen, a request made right after it is answered."""
    n = Notifications(tmp_path)
    ready_file = tmp_path / "ready"
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "2", "--bind",
           f"127.0.0.1:{port}", "--ready-file", str(ready_file), spec]
    a = app("slow", cmd=cmd, cwd=WEBAPPS, merge_stderr=True,
            env={"NOTIFY_SOCKET": n.address, **env})
    deadline = time.monotonic() + 30
    notified, seen_file = None, False
    n.sock.settimeout(0.05)                       # the pace of the watch
    while notified is None or not seen_file:
        assert time.monotonic() < deadline, (notified, seen_file, a.lines)
        try:
            lines = n.sock.recv(4096).decode().split("\n")
        except TimeoutError:
            lines = []
        if "READY=1" in lines:
            notified = lines
        seen_file = seen_file or ready_file.exists()
        if notified is not None or seen_file:
            assert answers(port), f"ready (file: {seen_file}, READY=1: {notified}) " \
                                  "before a request is answered"
    assert "STATUS=2 workers, 2 listening, 0 restarts" in notified, notified
    until(a, "ready: 2 workers, 2 listening")
    stop(a)


def test_an_unreachable_notify_socket_is_one_warning(app, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "1", "--bind",
           f"127.0.0.1:{port}", "webapp:app"]
    a = app("notify", cmd=cmd, cwd=WEBAPPS, merge_stderr=True,
            env={"NOTIFY_SOCKET": str(tmp_path / "nobody-here.sock")})
    serving(a, 1)
    assert get(port)[0] == 200
    lines = stop(a)
    warnings = [line for line in lines if "NOTIFY_SOCKET" in line]
    assert len(warnings) == 1, lines


def test_pid_and_ready_files(app, tmp_path):
    pid_file, ready_file = tmp_path / "cluster.pid", tmp_path / "ready"
    died = subprocess.Popen(["true"])
    died.wait()
    ready_file.write_text(f"{died.pid}\n")       # left by a primary that died
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "2", "--bind",
           f"127.0.0.1:{port}", "--pid-file", str(pid_file), "--ready-file",
           str(ready_file), "webapp:app"]
    a = app("files", cmd=cmd, cwd=WEBAPPS, merge_stderr=True)
    until(a, "ready: 2 workers, 2 listening")     # logged once the file is written
    assert ready_file.read_text() == f"{a.pid}\n"
    assert pid_file.read_text() == f"{a.pid}\n"
    stop(a)
    assert not pid_file.exists() and not ready_file.exists()


def test_the_example_units_pass_systemd_analyze_verify(tmp_path):
    """examples/systemd/, with its paths pointed at this checkout."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    units = Path(__file__).resolve().parent.parent / "examples" / "systemd"
    script = Path(sys.executable).parent / "cluster-ext"
    for unit in units.iterdir():
        text = unit.read_text().replace("/opt/app/.venv/bin/cluster-ext", str(script))
        (tmp_path / unit.name).write_text(text.replace("/opt/app", str(units.parent.parent)))
    r = subprocess.run([tool, "verify", "--man=no",
                        *sorted(str(p) for p in tmp_path.iterdir())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.parametrize("to", ["primary", "group"])
def test_a_drain_delay_serves_on_after_sigterm_then_stops(app, tmp_path, to):
    """SIGTERM with --drain-delay: not ready at once (file gone, STOPPING=1),
    still serving through the delay, then the graceful stop. A SIGTERM to
    the whole group (KillMode=control-group) too: the workers wait the
    delay as well."""
    n = Notifications(tmp_path)
    ready_file = tmp_path / "ready"
    port = free_port()
    cmd = [sys.executable, "-m", "cluster_ext", "run", "-w", "2", "--bind",
           f"127.0.0.1:{port}", "--drain-delay", "1.5", "--ready-file", str(ready_file),
           "webapp:app"]
    a = app("drain", cmd=cmd, cwd=WEBAPPS, merge_stderr=True,
            env={"NOTIFY_SOCKET": n.address})
    n.until("READY=1")
    (os.kill if to == "primary" else os.killpg)(a.pid, signal.SIGTERM)
    n.until("STOPPING=1")
    until(a, "stopping in 1.5 s (drain delay)")
    assert not ready_file.exists()
    for _ in range(5):
        assert get(port)[0] == 200                # new connections are still served
    lines = a.finish(code=0)
    assert sum("exited (code 0, as asked)" in line for line in lines) == 2, lines


def test_the_kubernetes_example_parses_and_its_stop_fits_the_grace_period():
    yaml = pytest.importorskip("yaml")
    from cluster_ext.cli import options
    path = Path(__file__).resolve().parent.parent / "examples" / "kubernetes" / "deployment.yaml"
    deployment = next(d for d in yaml.safe_load_all(path.read_text())
                      if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[0] == "cluster-ext"
    args = options.parser("cluster-ext").parse_args(command[1:])    # every flag is ours
    assert args.ready_file == "/tmp/ready" and args.pid_file == "/tmp/cluster.pid"
    port = next(p["containerPort"] for p in pod["containers"][0]["ports"]
                if p["name"] == "metrics")
    assert args.metrics == ("0.0.0.0", port) and args.control == "/tmp/control.sock"
    assert args.drain_delay + args.graceful_timeout < pod["terminationGracePeriodSeconds"]
