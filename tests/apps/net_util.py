"""Helpers shared by the net_*.py scenario apps (imported, never run)."""
import json
import os
import sys
import threading

import cluster_ext as cluster


def say(tag, **data):
    """One line for the test: TAG {json}. Workers share the primary's stdout:
    one write(2) per line (under PIPE_BUF) keeps lines whole, where print()
    under PYTHONUNBUFFERED writes the text and its newline apart."""
    line = f"{tag} {json.dumps(data)}\n".encode()
    assert len(line) <= 4096, "too long to stay whole among the workers' lines"
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line)


def set_policy(mode):
    """'attr_none' / 'attr_rr' set cluster.scheduling_policy before the first
    fork; anything else leaves the default (CLUSTER_EXT_SCHED_POLICY)."""
    if mode == "attr_none":
        cluster.scheduling_policy = cluster.SCHED_NONE
    elif mode == "attr_rr":
        cluster.scheduling_policy = cluster.SCHED_RR


def policy_name():
    return {cluster.SCHED_RR: "rr", cluster.SCHED_NONE: "none"}[cluster.scheduling_policy]


def one_worker_until_stdin_eof():
    """Primary: forks one worker, says LISTENING port=... when it listens and
    disconnects once the test closes our stdin. Returns the worker."""
    w = cluster.fork()
    cluster.on("listening", lambda w, address: say("LISTENING", port=address[1]))
    on_stdin_eof(cluster.disconnect)
    return w


def on_stdin_eof(fn):
    """Runs fn on the loop once the test closes our stdin: the test's way to
    say 'done'. A thread, since the primary must never block its own loop."""
    def wait():
        sys.stdin.buffer.read()
        cluster.call_soon_threadsafe(fn)
    threading.Thread(target=wait, daemon=True).start()


def line_server(prefix=""):
    """A server that answers one request line with 'PREFIXPID LINE' and ends."""
    from cluster_ext import net

    def on_connection(sock):
        buf = bytearray()

        def on_data(data):
            buf.extend(data)
            if b"\n" in buf:
                line = bytes(buf).split(b"\n", 1)[0]
                sock.end(f"{prefix}{os.getpid()} ".encode() + line + b"\n")

        sock.on("data", on_data)

    return net.create_server(on_connection)
