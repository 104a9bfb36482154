"""Shared test helpers: run a scenario app (tests/apps/*.py, both roles in one
script, as Node's test-cluster-*.js) as a real process tree, with a deadline.

Tests wait on lines the apps print, never on sleeps."""
from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"

try:
    import pytest_timeout  # noqa: F401
    HAVE_TIMEOUT_PLUGIN = True
except ImportError:
    HAVE_TIMEOUT_PLUGIN = False


@pytest.fixture(autouse=True)
def _hard_deadline():
    """pytest-timeout's job, for when the plugin is missing: a hang fails."""
    if HAVE_TIMEOUT_PLUGIN:
        yield
        return

    def expired(signum, frame):
        raise TimeoutError("test exceeded 60 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class App:
    """A running scenario app: its own session, so that a kill takes the
    workers too."""

    def __init__(self, name: str, *argv: str, env: dict | None = None,
                 stdin=subprocess.DEVNULL, cmd: list[str] | None = None,
                 cwd: str | os.PathLike | None = None, merge_stderr: bool = False,
                 pass_fds: tuple[int, ...] = ()) -> None:
        """name: a scenario in tests/apps run with argv; or, with cmd, any
        command line (then name only labels it). merge_stderr: one stream of
        lines, the primary's log among them."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.name = name
        self.proc = subprocess.Popen(
            cmd or [sys.executable, str(APPS / name), *argv], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, stdin=stdin,
            env=full_env, start_new_session=True, cwd=cwd, pass_fds=pass_fds)
        self._buf = b""
        self._err: str | None = None
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float = 20.0) -> str | None:
        """The next line of stdout, or None at EOF; fails the test at the deadline."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    pytest.fail(f"{self.name}: no line within {timeout}s; "
                                f"so far {self.lines}\n{self.stderr()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    if self._buf:
                        break
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode()
        self.lines.append(text)
        return text

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        """Reads lines until one starts with prefix; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"{self.name}: ended before {prefix!r}; lines {self.lines}\n"
                            f"{self.stderr()}")
            if line.startswith(prefix):
                return line

    def finish(self, timeout: float = 30.0, code: int | None = 0) -> list[str]:
        """Waits for the exit; returns every stdout line."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
            self._err = err.decode(errors="replace") if err is not None else ""
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name}: no exit after {timeout}s; lines {self.lines}\n"
                        f"{self.stderr()}")
        rest = (self._buf + out).decode().splitlines()
        self._buf = b""
        self.lines.extend(rest)
        if code is not None:
            assert self.proc.returncode == code, (
                f"{self.name} exited {self.proc.returncode}; lines {self.lines}\n"
                f"{self.stderr()}")
        return self.lines

    def stderr(self) -> str:
        if self.proc.stderr is None:
            return ""                       # merged into the lines
        if self._err is None:
            if self.proc.poll() is None:
                return "(still running)"
            self._err = self.proc.stderr.read().decode(errors="replace")
        return self._err

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def app():
    """app(name, *argv, env=...) starts a scenario; all are killed at teardown."""
    started: list[App] = []

    def start(name: str, *argv: str, **kw) -> App:
        a = App(name, *argv, **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.kill()
        for stream in (a.proc.stdout, a.proc.stderr):
            if stream is not None:
                stream.close()


def run_app(name: str, *argv: str, timeout: float = 30.0, code: int | None = 0,
            env: dict | None = None) -> list[str]:
    """Runs an app to its end; returns its stdout lines."""
    a = App(name, *argv, env=env)
    try:
        return a.finish(timeout=timeout, code=code)
    finally:
        if a.proc.poll() is None:
            a.kill()
        a.proc.stdout.close()
        a.proc.stderr.close()


def json_lines(lines: list[str], prefix: str = "") -> list[dict]:
    return [json.loads(line[len(prefix):]) for line in lines
            if line.startswith(prefix) and line[len(prefix):].startswith("{")]


def only_json(lines: list[str], prefix: str = "") -> dict:
    """The one JSON object line (after prefix) an app printed."""
    found = json_lines(lines, prefix)
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture
def tls(tmp_path):
    """What an operator hands `--ssl-*`, from trustme's CA: a certificate for
    127.0.0.1 (cert.pem) and its key (key.pem, and encrypted-key.pem under
    the password 'secret'), the CA's certificate (ca.pem), another
    certificate's key (other-key.pem); and the context of a client that
    trusts the CA (.client)."""
    trustme = pytest.importorskip("trustme")
    from types import SimpleNamespace

    from cryptography.hazmat.primitives import serialization
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = SimpleNamespace(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                            encrypted_key=tmp_path / "encrypted-key.pem",
                            ca=tmp_path / "ca.pem", other_key=tmp_path / "other-key.pem")
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    files.encrypted_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    ca.cert_pem.write_to_path(str(files.ca))
    ca.issue_cert("127.0.0.2").private_key_pem.write_to_path(str(files.other_key))
    import ssl
    files.client = ssl.create_default_context()
    ca.configure_trust(files.client)
    return files


def free_port() -> int:
    """A port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_gone(pids: list[int], seconds: float) -> None:
    """Waits up to seconds for the processes to end, on pidfds (readable once
    a process exits, child of ours or not)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    try:
        deadline = time.monotonic() + seconds
        waiting = list(fds)
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(waiting, [], [], deadline - time.monotonic())
            waiting = [fd for fd in waiting if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    return True
