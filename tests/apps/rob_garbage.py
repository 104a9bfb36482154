"""A worker writes raw garbage on its IPC channel, behind the framing's back
(MODE 'badtype': 64 bytes 0xff, an impossible frame type; MODE 'oversize': a
well-formed header announcing a 2 GiB frame). The primary must report an
'error' on that Worker, then 'disconnect', and go on serving the other
worker. Prints one JSON line with the primary's log."""
import json
import os
import struct
import sys

import cluster_ext as cluster

MODE = sys.argv[1]

if cluster.is_primary:
    log = []
    bad, good = cluster.fork(), cluster.fork()

    @bad.on("error")
    def bad_error(exc):
        log.append(["bad.error", type(exc).__name__, isinstance(exc, OSError),
                    exc.errno, bad.is_connected()])

    @bad.on("disconnect")
    def bad_disconnect():
        log.append(["bad.disconnect"])
        good.send("ping")                   # does the other worker still talk?

    bad.on("exit", lambda code, sig: log.append(["bad.exit"]))

    @good.on("message")
    def pong(msg, handle):
        log.append(["good.message", msg])
        good.disconnect()

    good.on("exit", lambda code, sig: log.append(["good.exit", code, sig and sig.name]))

    @cluster.on("online")
    def both_online(w):
        if len([x for x in cluster.workers.values() if x.state == "online"]) == 2:
            bad.send("corrupt")

    try:
        cluster.run()
        log.append(["run returned"])
    except BaseException as exc:
        log.append(["run raised", repr(exc)])
    print(json.dumps({"log": log}), flush=True)
else:
    @cluster.worker.on("message")
    def order(msg, handle):
        if msg == "corrupt":
            if MODE == "badtype":
                garbage = b"\xff" * 64
            else:   # header {u32 len, u8 type, u8 nfds, u16 flags}: type 1 is a user message
                garbage = struct.pack("=IBBH", 0x7FFFFFFF, 1, 0, 0) + b"x" * 56
            # The channel's descriptor, reached directly: no API writes raw bytes.
            os.write(cluster.worker._chan.fd, garbage)
        elif msg == "ping":
            cluster.worker.send("pong")

    cluster.run()
