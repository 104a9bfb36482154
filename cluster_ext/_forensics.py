"""What a worker was doing when the heartbeat kills it, kept where the
primary reads it after the kill: one memfd per worker of a fleet with a
heartbeat, made by the primary at the fork (close-on-exec on its side) and
inherited by the worker, whose number travels in CLUSTER_EXT_STACKS_FD as
the channel's does. No file on disk, and nothing of the worker's /proc is
read: a worker may run as another user.

    [0, 16)          the header: MAGIC once the worker's faulthandler is
                     registered, the table's slots (0: no table), and the
                     requests in flight that found no free slot
    [16, DUMP_AT)    the web layer's requests in flight, a SLOT each
    [DUMP_AT, ...)   faulthandler's dump of every thread, at SIGNAL

Both sides of that layout are here: the worker's (register(), table())
and the primary's (create(), registered(), dumped(), read()). The primary
trusts nothing a worker wrote: it reads a bounded amount, parses it
defensively and takes it as text to show, escaped."""
from __future__ import annotations

import os
import struct
import time

from . import _fast

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from typing import Any

# A real-time signal: the kernel sends one only to a program that asked for
# it (timer_create, F_SETSIG), neither Python nor the servers' libraries
# take one, and a program that does starts at the bottom of the range (the
# examples of timer_create(2); LinuxThreads took the first 3), while
# valgrind keeps the top. 7 above the bottom is clear of both.
SIGNAL = _fast.signal.SIGRTMIN + 7
MAGIC = b"cxstack2"        # the layout's version: another is not read
HEADER = struct.Struct("<8sII")          # MAGIC, slots, requests without a slot
SLOT = struct.Struct("<dII16s256s")      # its start (time.monotonic(); 0: free),
SLOTS = 64                               # the method's and the path's lengths, both cut
TABLE = HEADER.size + SLOTS * SLOT.size
DUMP_AT = -(-TABLE // 4096) * 4096       # a page boundary
READ_LIMIT = 256 << 10    # of a dump, at most: a compromised worker may write gigabytes
_U32, _START = struct.Struct("<I"), struct.Struct("<d")

fd = -1                   # in a worker: its memfd, once registered


def register(stacks_fd: int) -> None:
    """In a worker, at its boot: faulthandler writes every thread's stack
    into stacks_fd at SIGNAL. Nothing else changes for the program:
    faulthandler.enable()'s state stays its own, no other handler is
    chained, and its children do not inherit the descriptor."""
    global fd
    os.set_inheritable(stacks_fd, False)
    os.lseek(stacks_fd, DUMP_AT, os.SEEK_SET)   # faulthandler writes from there on
    _dump_into(stacks_fd)
    os.pwrite(stacks_fd, MAGIC, 0)
    fd = stacks_fd


def _dump_into(stacks_fd: int) -> None:
    import faulthandler
    faulthandler.register(SIGNAL, file=stacks_fd, all_threads=True, chain=False)


def table() -> Table | None:
    """In a worker: its table of requests in flight, or None without a
    heartbeat (nothing registered). mmap keeps a duplicate of the
    descriptor it maps (found by its inode): the dump goes to that one
    from now on, and the first is closed, so that the worker holds one
    descriptor more than its channel, not two."""
    global fd
    if fd < 0:
        return None
    import mmap
    kept = Table(mmap.mmap(fd, DUMP_AT))
    ours = os.fstat(fd)
    for name in os.listdir("/proc/self/fd"):
        try:
            other = os.fstat(int(name))
        except OSError:                  # the listing's own descriptor, closed by now
            continue
        if int(name) != fd and (other.st_dev, other.st_ino) == (ours.st_dev, ours.st_ino):
            _dump_into(int(name))        # the same open file: its offset too
            os.close(fd)
            fd = int(name)
            break
    return kept


class Table:
    """The web layer's requests in flight, where the primary reads them at a
    heartbeat timeout, when the worker can answer nothing: each request
    writes its slot at its start and frees it at its end, in memory it
    shares with the primary: no system call, 0.4 us the pair (timeit), and
    about 1 us a request in all, through web.worker.in_flight()'s coroutine."""

    def __init__(self, shared: mmap.mmap) -> None:
        self.map = shared
        self.free = [HEADER.size + i * SLOT.size for i in reversed(range(SLOTS))]
        self.unlisted = 0
        _U32.pack_into(self.map, 8, SLOTS)     # a table is kept

    def begin(self, method: str, path: bytes) -> int:
        """A request began: where it is written, or -1 (no slot was free)."""
        if not self.free:
            self.unlisted += 1
            _U32.pack_into(self.map, 12, self.unlisted)
            return -1
        at = self.free.pop()
        SLOT.pack_into(self.map, at, time.monotonic(), len(method), len(path),
                       method.encode(), path)
        return at

    def end(self, at: int) -> None:
        """A request ended: at is what its begin() returned."""
        if at < 0:
            self.unlisted -= 1
            _U32.pack_into(self.map, 12, self.unlisted)
            return
        _START.pack_into(self.map, at, 0.0)
        self.free.append(at)


# ---- the primary's side -----------------------------------------------------------------

def create() -> int:
    """A worker's memfd, close-on-exec here (the spawn passes it on)."""
    made = os.memfd_create("cluster_ext-stacks", os.MFD_CLOEXEC)
    try:
        os.ftruncate(made, DUMP_AT)     # the table's pages, for the worker to map
    except BaseException:
        os.close(made)
        raise
    return made


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


def read(stacks_fd: int) -> tuple[str | None, list[dict[str, Any]] | None, int]:
    """(the stacks dumped, the requests in flight, how many more found no
    slot) from a worker's memfd: None for what it did not write (no dump;
    no table: not a web worker). Each request is {method, path, seconds}:
    how long it has run, longest first. At most READ_LIMIT bytes of the
    dump are read; every text is decoded with replacement and escaped
    (printable())."""
    try:
        head = os.pread(stacks_fd, DUMP_AT, 0)
        dump = os.pread(stacks_fd, READ_LIMIT, DUMP_AT)
        size = os.fstat(stacks_fd).st_size
    except OSError:
        return None, None, 0
    now = time.monotonic()
    stacks = None
    if dump:
        stacks = "\n".join(printable(line) for line in
                           dump.decode("utf-8", "replace").rstrip("\n").split("\n"))
        if size - DUMP_AT > len(dump):
            stacks += f"\n[{size - DUMP_AT - len(dump)} more bytes not read]"
    if len(head) < TABLE:                # cut short by the worker
        return stacks, None, 0
    magic, slots, unlisted = HEADER.unpack_from(head)
    if magic != MAGIC or not slots:
        return stacks, None, 0
    requests = []
    for at in range(HEADER.size, HEADER.size + min(slots, SLOTS) * SLOT.size, SLOT.size):
        start, method_len, path_len, method, path = SLOT.unpack_from(head, at)
        if 0 < start <= now:             # else free, or not a time (NaN, inf)
            requests.append({"method": _cut(method, method_len), "path": _cut(path, path_len),
                             "seconds": round(now - start, 3)})
    requests.sort(key=lambda r: -r["seconds"])
    return stacks, requests, unlisted


def _cut(field: bytes, length: int) -> str:
    """A text the worker wrote into field, length long (... when cut; the
    field's padding is never text)."""
    text = printable(field[:length].rstrip(b"\0").decode("utf-8", "replace"))
    return text + "..." if length > len(field) else text


def printable(text: str) -> str:
    """text with what a terminal would act on (controls, escapes, bidi
    marks: every character that is not printable) as \\xNN or \\uNNNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
