"""systemd's socket activation (sd_listen_fds(3)), taken at the top of the
primary's import, before _core opens its epoll, timerfd, eventfd and pipes:
those take the lowest free numbers, which are the very ones a LISTEN_FDS
larger than what was passed names. Owns nothing: it marks the descriptors
close-on-exec and says which to adopt; _shared.adopt_listen_fds() adopts
them. Imports none of the package."""
from __future__ import annotations

import os
import stat

FIRST = 3                   # SD_LISTEN_FDS_START


def take() -> tuple[list[int], list[str]]:
    """Takes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES out of the environment
    (sd_listen_fds(1)), so that workers and the application's children never
    take them for theirs. Returns the descriptors to adopt and the warnings to
    log once logging can be (one line per problem).

    LISTEN_PID ours: the open descriptors among the LISTEN_FDS are marked
    close-on-exec, as sd_listen_fds() marks them, and are to be adopted; the
    numbers that are not open are one warning. LISTEN_PID another process's
    (a parent that did not take them, and passed them on with its
    environment): the sockets among those numbers are marked close-on-exec,
    so that no worker holds them (a connection to a socket that every worker
    holds and none accepts on waits for ever), and nothing is closed. They
    are that process's, or the numbers name what this process opened itself
    (the variables outlived the exec that carried the descriptors): closing
    ours would break it, and closing theirs would free a number that the
    next open() takes behind their back. sd_listen_fds() leaves an ignored
    LISTEN_FDS alone entirely; close-on-exec is per descriptor, so the other
    process's copies are untouched."""
    env = os.environ
    if "LISTEN_FDS" not in env:
        return [], []
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    try:
        n = int(count)
    except ValueError:
        n = -1
    if pid != str(os.getpid()):
        kept = [fd for fd in _open_fds(FIRST, FIRST + max(n, 0)) if _is_socket(fd)]
        for fd in kept:
            os.set_inheritable(fd, False)
        also = f"; its sockets ({_numbers(kept)}) are kept from the workers" if kept else ""
        return [], [f"LISTEN_FDS ignored: LISTEN_PID={pid!r} is not this process "
                    f"({os.getpid()}){also}"]
    if n < 0:
        return [], [f"LISTEN_FDS ignored: {count!r} is not a count"]
    fds = _open_fds(FIRST, FIRST + n)
    for fd in fds:
        os.set_inheritable(fd, False)
    warnings = []
    if len(fds) < n:
        missing = _gaps(fds, FIRST, FIRST + n)
        warnings.append(f"LISTEN_FDS={n}, but {n - len(fds)} of them ({missing}) are not "
                        f"open: {'only ' + _numbers(fds) if fds else 'none'} adopted")
    return fds, warnings


def _open_fds(first: int, end: int) -> list[int]:
    """The open descriptors from first to end (excluded), in order: from
    /proc, since a count may be as large as RLIMIT_NOFILE, or far larger."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(first, min(end, os.sysconf("SC_OPEN_MAX")))]
    fds = []
    for fd in sorted(int(name) for name in names):
        if first <= fd < end:
            try:
                os.get_inheritable(fd)   # the listing's own descriptor is closed by now
            except OSError:
                continue
            fds.append(fd)
    return fds


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _numbers(fds: list[int]) -> str:
    return ("fd " if len(fds) == 1 else "fds ") + ", ".join(map(str, fds))


def _gaps(fds: list[int], first: int, end: int) -> str:
    """The numbers from first to end (excluded) that are not in fds, as
    ranges: 'fds 4-5, 9'."""
    spans, start = [], first
    for fd in [*fds, end]:
        if fd > start:
            spans.append(str(start) if fd - 1 == start else f"{start}-{fd - 1}")
        start = fd + 1
    single = len(spans) == 1 and "-" not in spans[0]
    return ("fd " if single else "fds ") + ", ".join(spans)
