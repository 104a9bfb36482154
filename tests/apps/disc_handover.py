"""worker.disconnect() with a shared server. argv: POLICY (rr|none) COUNT.

COUNT workers listen on one port (127.0.0.1, port 0). A worker greets each
connection with 'w<id>' and answers every line L with
'w<id>:L connected=<its IPC channel is open>', so that a client can tell who
serves it, and whether that worker is still connected while it does.

The test drives: it plays the clients, and tells the primary on stdin to
'disconnect <id>' (the primary's worker.disconnect()), 'ask <id>' (a message
after which the worker calls cluster.worker.disconnect() itself), print the
workers' 'status' or 'pids', or 'quit' (cluster.disconnect()).
Lines: 'ready PORT', 'w<id> ...' from workers, 'asked w<id>' (the primary
called disconnect() or sent the message), 'disconnect w<id>',
'exit w<id> code=.. signal=.. ead=..', 'status ...', 'pids ...', 'primary done'."""
import sys

from disc_util import on_commands, say, serve_lines, set_policy, show

import cluster_ext as cluster
from cluster_ext import net

POLICY, COUNT = sys.argv[1], int(sys.argv[2])

if cluster.is_primary:
    set_policy(POLICY)
    listening = set()

    @cluster.on("listening")
    def on_listening(w, address):
        listening.add(w.id)
        if len(listening) == COUNT:
            say("ready", address[1])

    cluster.on("disconnect", lambda w: say(f"disconnect w{w.id}"))
    cluster.on("exit", lambda w, code, sig: say(
        f"exit w{w.id} code={show(code)} signal={show(sig)} ead={w.exited_after_disconnect}"))

    def command(words):
        if words[0] == "disconnect":
            cluster.workers[int(words[1])].disconnect()
            say(f"asked w{words[1]}")
        elif words[0] == "ask":
            cluster.workers[int(words[1])].send("leave")
            say(f"asked w{words[1]}")
        elif words[0] == "pids":
            say("pids", *(f"w{w.id}={w.pid}" for w in cluster.workers.values()))
        elif words[0] == "status":
            say("status", *(f"w{w.id}:{w.state}:connected={w.is_connected()}"
                            for w in cluster.workers.values()))
        else:                            # 'quit', or the test closed our stdin
            cluster.disconnect()

    on_commands(command)
    for _ in range(COUNT):
        cluster.fork()
    cluster.run()
    say("primary done")
else:
    me = cluster.worker
    tag = f"w{me.id}"

    def on_connection(sock):
        sock.write(tag + "\n")
        serve_lines(sock, lambda line: f"{tag}:{line} connected={me.is_connected()}")

    server = net.create_server(on_connection)
    server.listen(0, "127.0.0.1")
    server.on("close", lambda: say(tag, "server close"))

    @me.on("disconnecting")
    def disconnecting():
        # Emitted as the disconnect begins: the server is still listening.
        say(tag, "disconnecting", f"listening={server.listening}",
            f"connections={server.connections}")
        # The worker closes its servers right after this event; look again
        # once it has.
        cluster.call_later(0, lambda: say(tag, "after-close",
                                          f"listening={server.listening}",
                                          f"connections={server.connections}"))

    me.on("disconnect", lambda: say(tag, "disconnect"))
    me.on("message", lambda msg, handle: me.disconnect())    # 'leave'
    cluster.run()
