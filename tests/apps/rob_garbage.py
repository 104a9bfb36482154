"""A worker writes raw bytes on its IPC channel, behind the framing's back.
MODE 'badtype': 64 bytes 0xff, an impossible frame type; 'oversize': a
well-formed header announcing a 2 GiB frame; 'overlimit': 64 KiB over
max_message_size; 'nofds': a frame that claims two descriptors and carries
none. The primary must report an 'error' on that Worker, then 'disconnect',
and go on serving the other worker. MODE 'truncated': half a frame, then the
worker dies: no 'error' (a cut last frame is what any death mid-write
leaves), just 'disconnect' and 'exit'. Prints one JSON line with the
primary's log."""
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
            # header {u32 len, u8 type, u8 nfds, u16 flags}: type 1 is a user message
            garbage = {
                "badtype": b"\xff" * 64,
                "oversize": struct.pack("=IBBH", 0x7FFFFFFF, 1, 0, 0) + b"x" * 56,
                "overlimit": struct.pack("=IBBH", cluster.settings["max_message_size"] + 65536,
                                         1, 0, 0) + b"x" * 56,
                "nofds": struct.pack("=IBBH", 2, 1, 2, 0) + b"{}",
                "truncated": struct.pack("=IBBH", 1000, 1, 0, 0) + b"x" * 500,
            }[MODE]
            # The channel's descriptor, reached directly: no API writes raw bytes.
            os.write(cluster.worker._chan.fd, garbage)
            if MODE == "truncated":
                os._exit(0)
        elif msg == "ping":
            cluster.worker.send("pong")

    cluster.run()
