"""net handles passed with messages, both ways. argv: MODE [POLICY].

socket_to_worker: the primary accepts a connection on a plain net server of
  its own and sends that net.Socket to the worker, which greets the client
  and answers its lines; the primary's copy closes.
socket_to_primary: the worker sends a net.Socket its shared server accepted
  to the primary, whose cluster 'message' listener greets the client and
  answers its lines; the worker's copy closes, so it can disconnect at once
  while the client is still served (by the primary).
server_to_worker: the primary sends a plain listening net.Server of its own
  to the worker, which serves on it; the primary's copy closes.

Greetings name who speaks ('hello from w1' / 'hello from primary'); replies
are 'WHO:LINE'. The test closes our stdin when it is done: cluster.disconnect().
Lines: 'ready PORT', 'P ...' (primary), 'W ...' (worker), 'P done'."""
import sys

from disc_util import on_commands, say, serve_lines, set_policy, show

import cluster_ext as cluster
from cluster_ext import net

MODE = sys.argv[1]


def greet_and_serve(sock, who):
    sock.write(f"hello from {who}\n")
    serve_lines(sock, lambda line: f"{who}:{line}")


if cluster.is_primary:
    set_policy(sys.argv[2] if len(sys.argv) > 2 else "rr")
    w = cluster.fork()
    w.on("disconnect", lambda: say("P disconnect w1"))
    w.on("exit", lambda code, sig: say("P exit w1", show(code), show(sig)))
    on_commands(lambda words: cluster.disconnect())
    own = net.create_server()            # the primary's own, never shared

    if MODE == "socket_to_worker":
        @own.on("connection")
        def hand_over(sock):
            sock.on("close", lambda had_error: say(
                "P copy close", had_error, f"closed={sock.closed}"))
            say("P sending", f"send={w.send('take', sock)}")
            own.close()                  # one connection is all this needs

        w.once("online", lambda: own.listen(
            0, "127.0.0.1", callback=lambda: say("ready", own.address()[1])))

    elif MODE == "socket_to_primary":
        w.once("listening", lambda address: say("ready", address[1]))

        @cluster.on("message")
        def take(worker, msg, handle):
            say("P got", msg, f"from=w{worker.id}", type(handle).__name__,
                f"net_socket={isinstance(handle, net.Socket)}", f"closed={handle.closed}")
            handle.on("close", lambda had_error: say("P socket close", had_error))
            greet_and_serve(handle, "primary")
            worker.disconnect()          # the worker holds no connection now

    elif MODE == "server_to_worker":
        @own.on("listening")
        def send_server():
            own.on("close", lambda: say("P server close", f"listening={own.listening}"))
            say("P sending", f"send={w.send('serve', own)}")

        w.once("online", lambda: own.listen(0, "127.0.0.1"))

    cluster.run()
    say("P done")
else:
    me = cluster.worker
    me.on("disconnect", lambda: say("W disconnect"))

    @me.on("message")
    def on_message(msg, handle):
        if msg == "take":
            say("W got", msg, type(handle).__name__,
                f"net_socket={isinstance(handle, net.Socket)}", f"closed={handle.closed}")
            handle.on("close", lambda had_error: say("W socket close", had_error))
            greet_and_serve(handle, "w1")
        elif msg == "serve":
            say("W got", msg, type(handle).__name__,
                f"net_server={isinstance(handle, net.Server)}",
                f"listening={handle.listening}")
            handle.on("connection", lambda sock: greet_and_serve(sock, "w1"))
            handle.on("close", lambda: say("W server close"))
            say("ready", handle.address()[1])

    if MODE == "socket_to_primary":
        def send_to_primary(sock):
            sock.on("close", lambda had_error: say("W copy close", had_error))
            say("W sending", f"send={me.send('take', sock)}")

        server = net.create_server(send_to_primary)
        server.on("close", lambda: say("W server close"))
        server.listen(0, "127.0.0.1")

    cluster.run()
