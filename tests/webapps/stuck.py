"""Workers that get stuck, for the heartbeat's timeout to kill and report.

  stuck:app         ASGI: /block?s=N blocks the worker's event loop for N
                    seconds (a time.sleep() in an async handler, the classic
                    mistake), while a thread of the application's own waits;
                    /fds answers with the inheritable flag of each memfd the
                    worker holds, and its CLUSTER_EXT_STACKS_FD; anything
                    else answers "hello <worker id> <pid>"
  stuck.py PORT     a script: a net server on PORT whose connections block
                    the loop (busy, in spin_on_the_loop()); with
                    STUCK_BLOCK_SIGNALS=1 it blocks every real-time signal
                    first, so that it dumps nothing when asked

A worker says "stuck <pid>" just before it blocks."""
import os
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


def spin_on_the_loop(sock):
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
