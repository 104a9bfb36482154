"""What a worker was doing when the heartbeat kills it, kept where the
primary reads it after the kill: one memfd per worker of a fleet with a
heartbeat, made by the primary at the fork (close-on-exec on its side) and
inherited by the worker, whose number travels in CLUSTER_EXT_STACKS_FD as
the channel's does. No file on disk, and nothing of the worker's /proc is
read: a worker may run as another user.

    [0, 8)           MAGIC, once the worker's faulthandler is registered
    [DUMP_AT, ...)   faulthandler's dump of every thread, at SIGNAL

Both sides of that layout are here: the worker's (register()) and the
primary's (create(), registered(), dumped(), read()). The primary
trusts nothing a worker wrote: it reads a bounded amount, parses it
defensively and takes it as text to show, escaped."""
from __future__ import annotations

import os

from . import _fast

# A real-time signal: the kernel sends one only to a program that asked for
# it (timer_create, F_SETSIG), neither Python nor the servers' libraries
# take one, and a program that does starts at the bottom of the range (the
# examples of timer_create(2); LinuxThreads took the first 3), while
# valgrind keeps the top. 7 above the bottom is clear of both.
SIGNAL = _fast.signal.SIGRTMIN + 7
MAGIC = b"cxstack1"        # the layout's version: another is not read
DUMP_AT = 4096
READ_LIMIT = 256 << 10    # of a dump, at most: a compromised worker may write gigabytes


def register(stacks_fd: int) -> None:
    """In a worker, at its boot: faulthandler writes every thread's stack
    into stacks_fd at SIGNAL. Nothing else changes for the program:
    faulthandler.enable()'s state stays its own, no other handler is
    chained, and its children do not inherit the descriptor."""
    import faulthandler
    os.set_inheritable(stacks_fd, False)
    os.lseek(stacks_fd, DUMP_AT, os.SEEK_SET)   # faulthandler writes from there on
    faulthandler.register(SIGNAL, file=stacks_fd, all_threads=True, chain=False)
    os.pwrite(stacks_fd, MAGIC, 0)


# ---- the primary's side -----------------------------------------------------------------

def create() -> int:
    """A worker's memfd, close-on-exec here (the spawn passes it on)."""
    return os.memfd_create("cluster_ext-stacks", os.MFD_CLOEXEC)


def registered(stacks_fd: int) -> bool:
    """Whether the worker said it dumps its stacks at SIGNAL: a process
    that did not (not Python, or another layout) gets no signal it might
    die of, only the SIGKILL."""
    try:
        return os.pread(stacks_fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return False


def dumped(stacks_fd: int) -> int:
    """Bytes of the dump written so far."""
    try:
        return max(0, os.fstat(stacks_fd).st_size - DUMP_AT)
    except OSError:
        return 0


def read(stacks_fd: int) -> str | None:
    """The stacks a worker dumped into its memfd (at most READ_LIMIT bytes
    of them), decoded with replacement and escaped (printable()); None
    when it dumped nothing."""
    try:
        dump = os.pread(stacks_fd, READ_LIMIT, DUMP_AT)
        size = os.fstat(stacks_fd).st_size
    except OSError:
        return None
    if not dump:
        return None
    stacks = "\n".join(printable(line) for line in
                       dump.decode("utf-8", "replace").rstrip("\n").split("\n"))
    if size - DUMP_AT > len(dump):
        stacks += f"\n[{size - DUMP_AT - len(dump)} more bytes not read]"
    return stacks


def printable(text: str) -> str:
    """text with what a terminal would act on (controls, escapes, bidi
    marks: every character that is not printable) as \\xNN or \\uNNNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
