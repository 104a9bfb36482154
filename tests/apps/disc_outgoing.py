"""A worker's own client connection is neither closed nor waited for by
disconnect(). argv: PORT of a server that the test runs.

The worker connects to the test's server (a net.Socket over a plain connected
socket), says 'hello w<id>' on it and answers every line L with
'w<id>:L connected=<its IPC channel is open>'. It also listens on a shared
port, so that disconnect() has a server to close. Once it listens, the
primary disconnects it. Lines: 'P ...' (primary), 'W ...' (worker)."""
import socket
import sys

from disc_util import say, serve_lines, show

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    w = cluster.fork()

    @w.on("listening")
    def on_listening(address):
        say("P disconnect-called")      # first: the worker may print before we do
        w.disconnect()

    w.on("disconnect", lambda: say("P disconnect"))
    w.on("exit", lambda code, sig: say(
        "P exit", show(code), show(sig), w.exited_after_disconnect))
    cluster.run()
    say("P done")
else:
    me = cluster.worker
    tag = f"w{me.id}"
    # A blocking connect is fine here: this is a worker, and the test accepts.
    plain = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    plain.setblocking(False)
    out = net.Socket(plain.detach())
    out.write(f"hello {tag}\n")
    serve_lines(out, lambda line: f"{tag}:{line} connected={me.is_connected()}")
    out.on("close", lambda had_error: say("W outgoing close", had_error))

    server = net.create_server()
    server.on("close", lambda: say("W server close"))
    server.listen(0, "127.0.0.1")
    me.on("disconnecting", lambda: say("W disconnecting"))
    me.on("disconnect", lambda: say("W disconnect", f"outgoing_closed={out.closed}"))
    cluster.run()
