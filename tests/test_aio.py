"""asyncio and plain Python servers on cluster-shared ports."""
import socket
import urllib.request

import pytest


def _readline(sock):
    """One line from sock (no makefile(): it would keep the socket open)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _port(a):
    return int(a.wait_for("LISTENING").split()[1])


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_asyncio_server_shared_by_two_workers(app, policy):
    import subprocess
    a = app("aio_echo.py", policy, stdin=subprocess.PIPE)
    port = _port(a)
    pids = set()
    for i in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(f"ping {i}\n".encode())
            reply = _readline(c)
        pid, text = reply.split(" ", 1)
        assert text == f"ping {i}\n"
        pids.add(pid)
    if policy == "rr":
        assert len(pids) == 2                    # round robin: both serve
    # a held connection keeps its worker's disconnect waiting
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    held.sendall(b"held\n")
    holder = _readline(held).split()[0]
    a.proc.stdin.write(b"disconnect\n")
    a.proc.stdin.flush()
    lines = []
    while len([ln for ln in lines if ln.startswith("disconnect")]) < 1:
        lines.append(a.read_line(20))
    held.sendall(b"still\n")                     # still served while disconnecting
    assert _readline(held) == f"{holder} still\n"
    held.close()
    rest = a.finish(code=0)
    assert sorted(ln for ln in rest if ln.startswith("msg")) == \
        ["msg 1 hello back", "msg 2 hello back"]
    assert sorted(ln for ln in rest if ln.startswith("exit")) == ["exit 1 0", "exit 2 0"]


def test_http_server_on_listen_socket_in_two_workers(app):
    import subprocess
    a = app("http_shared.py", stdin=subprocess.PIPE)
    port = _port(a)
    pids = set()
    for _ in range(30):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            pids.add(r.read().decode().split()[1])
    assert len(pids) >= 1
    a.proc.stdin.write(b"disconnect\n")
    a.proc.stdin.flush()
    lines = a.finish(code=0)
    assert sorted(ln for ln in lines if ln.startswith("exit")) == ["exit 1 0", "exit 2 0"]


def test_listen_socket_in_a_callback_says_what_to_do():
    from conftest import run_app
    line = run_app("listen_misuse.py")[0]
    assert line.startswith("RuntimeError: ") and "before run()" in line
