"""A worker sends the primary what no worker of ours would, in well-formed
frames: MODE 'deep_json' a user message nested 5000 deep; 'short_query',
'short_stats' and 'listening_utf8' server records that are cut short or not
UTF-8; or asks, through the public API, to listen where the primary cannot:
'long_host' (a 64-letter label, which idna refuses), 'nul_path' (a Unix path
with a NUL), 'port_70000' (listen_socket() checks no port; with no host the primary's
bind() does). Then it says
'after' and disconnects. The primary must carry on: each of these once raised
out of its frame handler and stopped run(), taking every worker with it.
Prints one JSON line with the primary's log."""
import json
import sys

import cluster_ext as cluster
from cluster_ext import _core, net  # noqa: F401
from cluster_ext.fleet import figures  # noqa: F401  (the primary's STATS handler)

MODE = sys.argv[1]

if cluster.is_primary:
    log = []
    w = cluster.fork()
    w.on("error", lambda exc: log.append(["error", type(exc).__name__, str(exc)[:120]]))
    w.on("message", lambda msg, handle: log.append(["message", msg]))
    w.on("exit", lambda code, sig: log.append(["exit", code, sig and sig.name]))
    try:
        cluster.run()
        log.append(["run returned"])
    except BaseException as exc:
        log.append(["run raised", repr(exc)])
    print(json.dumps({"log": log}), flush=True)
else:
    worker = cluster.worker

    def after(result=None):
        worker.send(["after", result])
        worker.disconnect()

    def listen_failed(exc):
        after([type(exc).__name__, exc.errno])

    raw = {
        "deep_json": (_core.FRAME_USER, b"[" * 5000),
        "short_query": (_core.FRAME_QUERY_SERVER, b"abc"),
        "short_stats": (_core.FRAME_STATS, b"\x01"),
        "listening_utf8": (_core.FRAME_LISTENING, b"\x00\x00\x00\xff"),
    }
    if MODE in raw:
        worker._send_frame(*raw[MODE])
        after()
    elif MODE == "long_host":
        server = net.create_server()
        server.on("error", listen_failed)
        server.on("listening", lambda: after("listening"))
        server.listen(0, "a" * 64)
    elif MODE == "nul_path":
        server = net.create_server()
        server.on("error", listen_failed)
        server.on("listening", lambda: after("listening"))
        server.listen(path="cx-\0-nul.sock")
    elif MODE == "port_70000":
        try:
            net.listen_socket(70000)     # any address: bind(("::", 70000))
            after("listening")
        except OSError as exc:
            listen_failed(exc)
    cluster.run()
