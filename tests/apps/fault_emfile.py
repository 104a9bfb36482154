"""The primary runs out of descriptors (RLIMIT_NOFILE) while SCHED_RR
connections arrive: accept4 fails with EMFILE, the balancer backs off instead
of spinning, the connections wait in the backlog, and once descriptors are
free again every one of them is served.

stdin: 'low' (no free descriptor left), 'high' (the limit restored);
stdout: LISTENING <port>, LOW, HIGH."""
import os
import resource

from disc_util import on_commands, say, say_when_listening

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    say_when_listening(2)

    def command(words):
        if words == ["low"]:
            in_use = len(os.listdir("/proc/self/fd")) - 1     # listdir's own fd
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, limits[1]))
            say("LOW")
        elif words == ["high"]:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            say("HIGH")
        elif words == ["eof"]:
            cluster.disconnect()

    on_commands(command)
    cluster.fork()
    cluster.fork()
    cluster.run()
else:
    def serve(sock):
        sock.on("data", lambda data: sock.end(f"pong {os.getpid()}\n".encode()))

    net.create_server(serve).listen(0, "127.0.0.1")
    cluster.run()
