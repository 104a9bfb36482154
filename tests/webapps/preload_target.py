"""web.serve(..., preload=True) beside a fork(target=) worker of the same
primary, which says which SOCK_SEQPACKET descriptors it holds (the preload
template's channel is the package's only one) in one JSON line. argv: PORT."""
import json
import os
import socket
import sys

import cluster_ext as cluster
from cluster_ext import web


def seqpackets():
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            if sock.type == socket.SOCK_SEQPACKET:
                found.append(int(name))
    return found


def probe():
    cluster.worker.send({"seqpackets": seqpackets()})


if cluster.is_primary:
    probes = []

    @cluster.on("listening")
    def serving(worker, address):
        if not probes:
            probes.append(cluster.fork(target=probe))

    @cluster.on("message")
    def said(worker, message, handle):
        if isinstance(message, dict) and "seqpackets" in message:
            print(json.dumps(message), flush=True)

web.serve("preload_app:app", "127.0.0.1", int(sys.argv[1]), workers=1, preload=True)
