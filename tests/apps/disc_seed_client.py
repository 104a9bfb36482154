"""The seed example with a client whose connection never ends (as Node's
experiment e05_seed.js ran it): the worker greets each connection with
'hello'; once a client has that greeting (so the worker owns the
connection), the primary does what the example does on 'listening': sends
'shutdown', calls disconnect() and arms the 2 s kill timer. The worker's
server cannot close while the connection is open, so the timer kills it.

The client is a thread of the primary (blocking I/O on the loop would stall
the SCHED_RR primary, which accepts the connection itself); it comes back to
the loop with call_soon_threadsafe. Prints 'P ...' (primary), 'W ...'
(worker) and, at the end, 'client ...' lines; times are seconds since
disconnect() was called."""
import socket
import threading
import time

from disc_util import say, show

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_master:
    worker = cluster.fork()
    timeout = None
    t0 = []
    client = {}

    def since():
        return f"+{time.monotonic() - t0[0]:.3f}"

    def go():
        # the example's 'listening' handler, verbatim
        global timeout
        worker.send("shutdown")
        worker.disconnect()
        t0.append(time.monotonic())
        say("P disconnect-called")
        timeout = cluster.call_later(2.0, worker.kill)

    def run_client(port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        client["greeting"] = sock.recv(5).decode()
        cluster.call_soon_threadsafe(go)
        try:
            rest = sock.recv(100)        # blocks until the connection closes
            client["closed"] = "eof" if rest == b"" else f"data {rest!r}"
        except OSError as exc:
            client["closed"] = type(exc).__name__
        client["closed_at"] = time.monotonic()
        sock.close()

    thread = None

    @worker.on("listening")
    def on_listening(address):
        global thread
        thread = threading.Thread(target=run_client, args=(address[1],), daemon=True)
        thread.start()

    @worker.on("disconnect")
    def on_disconnect():
        say("P disconnect", since(), "state", worker.state)
        timeout.cancel()

    @worker.on("exit")
    def on_exit(code, signal):
        say("P exit", since(), show(code), show(signal), worker.exited_after_disconnect)

    cluster.run()
    thread.join(10)
    say("client greeting", client.get("greeting"))
    say("client closed", client.get("closed"),
        f"+{client['closed_at'] - t0[0]:.3f}" if "closed_at" in client else "never")

elif cluster.is_worker:
    server = net.create_server(lambda socket: socket.write("hello"))  # never ends
    server.on("close", lambda: say("W server close"))
    server.listen(0, "127.0.0.1")
    cluster.worker.on("disconnecting", lambda: say("W disconnecting"))
    cluster.worker.on("disconnect", lambda: say("W disconnect"))

    @cluster.worker.on("message")
    def on_message(msg, handle):
        if msg == "shutdown":
            say("W got shutdown")    # the app would close its connections here

    cluster.run()
