"""Workers that get stuck, for the heartbeat's timeout to kill and report.

  stuck:app         ASGI: /block?s=N blocks the worker's event loop for N
                    seconds (a time.sleep() in an async handler, the classic
                    mistake), while a thread of the application's own waits;
                    /wait says "waiting" and answers a minute later;
                    /fds answers with the inheritable flag of each memfd the
                    worker holds, and its CLUSTER_EXT_STACKS_FD; anything
                    else answers "hello <worker id> <pid>"
  stuck.py PORT     a script: a net server on PORT whose connections block
                    the loop (busy, in spin_on_the_loop()); with
                    STUCK_BLOCK_SIGNALS=1 it blocks every real-time signal
                    first, so that it dumps nothing when asked; with
                    STUCK_GARBAGE=1 it writes into its memfd what a
                    compromised worker might (see garbage())

A worker says "stuck <pid>" just before it blocks."""
import asyncio
import os
import struct
import sys
import threading
import time

import cluster_ext as cluster


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


def helper_thread_waits(event):
    event.wait()


def block_the_loop(seconds):
    time.sleep(seconds)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/wait":
        say("waiting")
        await asyncio.sleep(60)
    if scope["path"] == "/block":
        say("stuck", os.getpid())
        block_the_loop(float(scope["query_string"].decode().partition("=")[2] or 60))
    body = f"hello {cluster.worker.id} {os.getpid()}\n".encode()
    if scope["path"] == "/fds":
        body = f"{memfds()} {os.environ.get('CLUSTER_EXT_STACKS_FD')}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def memfds():
    found = []
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                found.append(os.get_inheritable(fd))
        except OSError:          # the listing's own descriptor, closed by now
            pass
    return found


def garbage():
    """A table whose header claims 2**32-1 slots and 5 more requests; a
    slot whose start is NaN, one that starts in the future, and one whose
    method and path hold a terminal's escapes, bidi marks and bytes that
    are not UTF-8, with lengths past their fields; 1 MiB of dump, a
    terminal's title and bell 100 KiB in (faulthandler's own dump, at the
    start, leaves it)."""
    from cluster_ext import _forensics as f
    table = struct.pack("<8sII", f.MAGIC, 2**32 - 1, 5)
    table += struct.pack("<dII16s256s", float("nan"), 3, 3, b"NAN", b"/nan")
    table += struct.pack("<dII16s256s", time.monotonic() + 3600, 3, 4, b"NEW", b"/new")
    table += struct.pack("<dII16s256s", time.monotonic(), 2**31, 2**32 - 1,
                         b"G\x1b[2J\xff", "/\u202eevil\x07".encode() + b"\xc3")
    os.pwrite(f.fd, table, 0)
    title = b"\x1b]0;pwned\x07"
    dump = b"\xff" * (100 << 10) + title + b"\xff" * ((1 << 20) - (100 << 10) - len(title))
    os.pwrite(f.fd, dump, f.DUMP_AT)


def spin_on_the_loop(sock):
    if os.environ.get("STUCK_GARBAGE"):
        garbage()
    say("stuck", os.getpid())
    while True:
        pass


if __name__ == "__main__":
    from cluster_ext import net
    if os.environ.get("STUCK_BLOCK_SIGNALS"):
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK,
                               range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    net.create_server(spin_on_the_loop).listen(int(sys.argv[1]), "127.0.0.1")
    cluster.run()
else:
    threading.Thread(target=helper_thread_waits, args=(threading.Event(),), daemon=True,
                     name="helper").start()
