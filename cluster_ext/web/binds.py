"""Where the servers listen: gunicorn's --bind forms (HOST:PORT, [IPv6]:PORT,
unix:PATH, fd://N), and the sockets a supervisor handed over (systemd's
socket activation), adopted by the primary and resolved in the workers."""
from __future__ import annotations

import os

from .. import _shared

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    # ("tcp", host, port), ("unix", path, 0) or ("fd", "", fd)
    Bind: TypeAlias = tuple[str, str, int]

DEFAULT_BIND = "127.0.0.1:8000"


def parse_bind(text: str) -> Bind:
    """gunicorn's --bind: HOST:PORT, [IPv6]:PORT, :PORT, PORT, unix:PATH, and
    fd://N, a listening socket inherited as descriptor N (from systemd or a
    supervisor), which the primary adopts and shares."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"--bind {text!r}: unix: needs a path")
        return ("unix", os.path.abspath(path), 0)
    if text.startswith("fd://"):
        try:
            fd = int(text[5:])
        except ValueError:
            raise ValueError(f"--bind {text!r}: fd:// takes a descriptor number") from None
        return ("fd", "", fd)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--bind {text!r}: expected HOST:PORT or unix:PATH") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--bind {text!r}: port {port} is out of range")
    return ("tcp", host or "0.0.0.0", port)


def adopt_fds(addresses: list[Bind]) -> None:
    """In the primary: every fd:// bind's socket becomes the shared one for its
    address, and the workers learn that address from the environment."""
    for kind, _, fd in addresses:
        if kind == "fd":
            _shared.adopt_bind(fd)


def default_binds() -> list[str]:
    """Every socket systemd (or a supervisor) handed over, else 127.0.0.1:8000."""
    return [f"fd://{fd}" for fd in _shared.fd_binds()] or [DEFAULT_BIND]


def resolve_fds(addresses: list[Bind]) -> list[Bind]:
    """In a worker: an fd:// bind is the address its socket listens at."""
    mapping = _shared.fd_binds()
    resolved = []
    for bind in addresses:
        if bind[0] == "fd":
            if str(bind[2]) not in mapping:
                raise ValueError(f"--bind fd://{bind[2]}: the primary did not adopt it")
            bind = parse_bind(mapping[str(bind[2])])
        resolved.append(bind)
    return resolved
