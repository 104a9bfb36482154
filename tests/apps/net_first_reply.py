"""'connection' comes before the first read of the connection, as in Node.

MODE 'reply': a reply written in 'connection' leaves even when the client's
FIN came first (clients such as `nc -N` half-close before they read). The
'connection' listener only calls sock.end(b'1'); the test's clients connect,
shutdown(SHUT_WR) at once and read to EOF.

MODE 'end': a reply written in 'end' leaves, as in Node, where a socket
(allowHalfOpen false) ends itself on the tick after 'end': the 'end'
listener calls sock.end(b'bye'). MODE 'endwrite': the 'end' listener only
write()s BIG, in two parts; the socket's own end must come after every byte
of it. MODE 'silent': the socket has no 'end' listener and writes nothing;
it must still end at once (the client sees EOF). The clients connect,
shutdown(SHUT_WR) at once and read to EOF, as in 'reply'.

MODE 'pause': a socket paused in 'connection' emits no 'data': the listener
pauses, waits until the client's line is in the kernel, resumes, and
answers the line (from 'data') with b'got ' + line. The clients send a
line, do not end, and read to EOF.

argv: START, N, MODE. START is 'exec' (cluster.fork(); the test sets the
policy), 'target' (cluster.fork(target=serve)),
'aio' (exec'd workers serving with aio.create_server(), MODE 'reply' only:
connection_made writes b'1' and write_eof()s) or 'plain' (no cluster: the
server listens in this process). With N workers, the primary prints
LISTENING {port, policy} once every one listens, and disconnects them once
the test closes stdin. Each server prints SERVED {connections, ends, closes}
as it stops: the connections it took, the peer's ends it saw ('end';
eof_received; no listener with MODE 'silent'), the clean closes
('close'(False); connection_lost(None)), and with MODE 'pause' 'early':
the sockets that emitted 'data' while paused."""
import select
import sys

from net_util import on_stdin_eof, policy_name, say

import cluster_ext as cluster
from cluster_ext import net

START, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
BIG = bytes(range(256)) * 1024          # MODE 'endwrite': more than one write() takes
counts = {"connections": 0, "ends": 0, "closes": 0}
if MODE == "pause":
    counts["early"] = 0


def count(key):
    counts[key] += 1


def serve(announce=None):
    def connection(sock):
        count("connections")
        if MODE != "silent":
            sock.on("end", lambda: count("ends"))
        sock.on("close", lambda had_error: had_error or count("closes"))
        if MODE == "pause":
            paused(sock)
        elif MODE == "reply":
            sock.end(b"1")
        elif MODE == "end":
            sock.on("end", lambda: sock.end(b"bye"))
        elif MODE == "endwrite":
            @sock.on("end")
            def reply():
                sock.write(BIG[:1000])
                sock.write(BIG[1000:])

    def paused(sock):
        buf = bytearray()
        state = {"paused": True}

        @sock.on("data")
        def data(chunk):
            if state["paused"]:
                count("early")
            buf.extend(chunk)
            if b"\n" in buf:
                sock.end(b"got " + bytes(buf))

        def wait_readable(tries):
            # until the client's line is in the kernel, unread (or was read
            # all the same: then 'early' says so)
            if select.select([sock.fileno()], [], [], 0)[0] or buf or not tries:
                state["paused"] = False
                sock.resume()
            else:
                cluster.call_later(0.01, wait_readable, tries - 1)

        sock.pause()
        wait_readable(500)

    server = net.create_server(connection)
    server.on("close", lambda: say("SERVED", **counts))
    if announce is not None:
        server.on("listening", lambda: announce(server))
    server.listen(0, "127.0.0.1")


def serve_aio():
    import asyncio

    from cluster_ext import aio

    class Reply(asyncio.Protocol):
        def connection_made(self, transport):
            count("connections")
            transport.write(b"1")
            transport.write_eof()

        def eof_received(self):
            count("ends")               # and None: asyncio closes the transport

        def connection_lost(self, exc):
            if exc is None:
                count("closes")

    async def main():
        done = asyncio.get_running_loop().create_future()
        cluster.worker.on("disconnect", lambda: done.set_result(None))
        await aio.create_server(Reply, "127.0.0.1", 0)
        await done
        say("SERVED", **counts)

    asyncio.run(main())


if START == "plain":
    def announce(server):
        say("LISTENING", port=server.address()[1], policy=None)
        on_stdin_eof(server.close)

    serve(announce)
    cluster.run()
elif cluster.is_primary:
    ports = []

    @cluster.on("listening")
    def listening(w, address):
        ports.append(address[1])
        if len(ports) == N:
            say("LISTENING", port=address[1], policy=policy_name())

    cluster.on("exit", lambda w, code, sig: say("EXIT", id=w.id, code=code))
    for _ in range(N):
        cluster.fork(target=serve) if START == "target" else cluster.fork()
    on_stdin_eof(cluster.disconnect)
    cluster.run()
    say("DONE")
elif START == "aio":
    serve_aio()
else:
    serve()
    cluster.run()
