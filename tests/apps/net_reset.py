"""Clients that reset (RST) must not kill a worker, though its sockets have
no 'error' listener. One worker; a request is one line: 'big' is answered
with 8 MiB, anything else with a short line, both as 'PID ...'. Each socket's
'close' prints CLOSED {had_error}. The primary prints EXIT if the worker ends."""
import os

from net_util import one_worker_until_stdin_eof, say

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    w = one_worker_until_stdin_eof()
    w.on("exit", lambda code, sig: say("EXIT", code=code, signal=sig and sig.name))
    cluster.run()
else:
    def connection(sock):
        buf = bytearray()

        @sock.on("data")
        def data(chunk):
            buf.extend(chunk)
            if b"\n" in buf:
                line = bytes(buf).partition(b"\n")[0]
                head = f"{os.getpid()} ".encode()
                sock.end(head + (b"." * (8 << 20) if line == b"big" else line + b"\n"))

        # Deliberately no 'error' listener.
        sock.on("close", lambda had_error: say("CLOSED", had_error=had_error))

    net.create_server(connection).listen(0, "127.0.0.1")
    cluster.run()
