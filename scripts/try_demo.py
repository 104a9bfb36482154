"""Runs a command that starts the demo as a user would, then checks what the user
would: a worker answers on the port it logs, an echo comes back, and Ctrl-C (SIGINT
to the whole process group) stops everything with exit status 0.

    python scripts/try_demo.py COMMAND [ARGS...]

CI runs it on the README's main command and on the installed wheel's demo."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

START_TIMEOUT = 600         # the README's command installs the package first
STOP_TIMEOUT = 60


def main(argv: list[str]) -> int:
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = wait_listening(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            reader = conn.makefile("rb")
            hello = reader.readline().decode()
            assert hello.startswith("hello from worker"), hello
            conn.sendall(b"ping\n")
            echo = reader.readline().decode()
            assert echo.endswith("] ping\n"), echo
        print(f"try_demo: port {port} answered: {hello.strip()!r}, {echo.strip()!r}")
        os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C at a terminal
        code = proc.wait(STOP_TIMEOUT)
        rest = proc.stderr.read()
        assert code == 0, f"exit status {code}: {rest}"
        assert "all workers stopped" in rest, rest
        print("try_demo: Ctrl-C stopped it with status 0")
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_listening(proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
        assert time.monotonic() < deadline, "the demo did not listen in time"
    raise AssertionError(f"the command ended (status {proc.wait()}) before a worker listened")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
