"""A client that never reads: its worker's writes back up (write() returns
False, the rest waits for 'drain'), and neither that worker nor the primary
stalls: other clients keep being served.

stdout: LISTENING <port>, BLOCKED (the slow client's queue is over its mark)."""
import os

from disc_util import on_commands, say, say_when_listening

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    say_when_listening(2)

    cluster.on("message", lambda w, msg, handle: say(msg))
    on_commands(lambda words: words == ["eof"] and cluster.disconnect())
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    CHUNK = b"z" * 65536

    def serve(sock):
        sock.on("error", lambda exc: None)

        def on_data(data):
            if data.startswith(b"big"):
                def pump():                      # write until the queue is full
                    while sock.write(CHUNK):
                        pass
                    cluster.worker.send("BLOCKED")
                sock.on("drain", pump)
                pump()
            else:
                sock.end(f"pong {os.getpid()}\n".encode())

        sock.on("data", on_data)

    net.create_server(serve).listen(0, "127.0.0.1")
    cluster.run()
