"""Passing a plain socket.socket with a message, both ways.

Primary -> worker: the primary sends `a` of a socketpair (a, b); the worker
writes to the socket it receives; the primary reads both its own write to `a`
(the sender keeps a usable socket) and the worker's from `b`.
Worker -> primary: the worker sends `c` of its pair (c, d); the primary's
cluster 'message' listener writes to the handle; the worker reads `d`.
The primary prints one JSON line with what both sides saw."""
import json
import socket

import cluster_ext as cluster


def read_lines(sock, n):
    """n lines from sock; they were written before the message that asks for
    them was sent, so this does not wait on anyone."""
    sock.settimeout(10)
    data = b""
    while data.count(b"\n") < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def describe(handle):
    if not isinstance(handle, socket.socket):
        return repr(handle)
    return {"type": type(handle).__name__, "family": handle.family.name,
            "open": handle.fileno() != -1}


if cluster.is_primary:
    a, b = socket.socketpair()
    w = cluster.fork()
    result = {"worker_listener": [], "cluster_listener": []}

    @w.on("online")
    def give():
        result["send_returned"] = w.send({"take": "a"}, a)
        # a socket.socket stays the caller's: open, and still writable
        result["a_after_send"] = describe(a)
        a.sendall(b"primary-via-a\n")

    @w.on("message")
    def on_worker_message(msg, handle):
        result["worker_listener"].append([msg if isinstance(msg, str) else sorted(msg),
                                          describe(handle)])

    @cluster.on("message")
    def on_cluster_message(worker, msg, handle):
        result["cluster_listener"].append([worker is w, describe(handle)])
        if msg == "wrote":                    # the worker wrote to its copy of a
            result["b_read"] = read_lines(b, 2)
        elif isinstance(msg, dict) and msg.get("take") == "c":
            handle.sendall(b"primary-via-handle\n")
            handle.close()
            w.send("read-d")
        elif isinstance(msg, dict) and "report" in msg:
            result["worker"] = msg["report"]
            w.disconnect()

    cluster.run()
    print(json.dumps(result), flush=True)
else:
    me = cluster.worker
    c, d = socket.socketpair()
    report = {}

    @me.on("message")
    def on_message(msg, handle):
        if msg == {"take": "a"}:
            report["handle"] = describe(handle)
            handle.sendall(b"worker-via-handle\n")
            handle.close()
            me.send("wrote")
            # now the other way
            c.sendall(b"worker-via-c\n")
            report["send_returned"] = me.send({"take": "c"}, c)
            report["c_after_send"] = describe(c)
        elif msg == "read-d":
            report["d_read"] = read_lines(d, 2)
            report["read_d_handle"] = repr(handle)
            me.send({"report": report})

    cluster.run()
