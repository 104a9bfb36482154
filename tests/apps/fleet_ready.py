"""supervise()'s readiness with workers that take their time: the primary
writes READY_FILE once the fleet is ready.

  listen   each worker sets up for 1.5 s (its loop turning), then listens on PORT
  signal   the workers never listen: each says 'said ready ID' and calls
           cluster.worker.ready() after 1.5 s of setup
  silent   the workers never listen and never say they serve: 'set up ID'
           after 1.5 s, then they idle
"""
import os
import sys

import cluster_ext as cluster
from cluster_ext import net

MODE = sys.argv[1]


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


if cluster.is_primary:
    cluster.on("online", lambda w: say("online", w.id))
    cluster.on("listening", lambda w, a: say("listening", w.id))
    cluster.supervise(2, ready_file=os.environ["READY_FILE"], graceful_timeout=5)
    say("stopped")
else:
    me = cluster.worker

    def set_up():
        if MODE == "listen":
            net.create_server(lambda s: s.end(f"{me.id}\n")).listen(
                int(os.environ["PORT"]), "127.0.0.1")
        elif MODE == "signal":
            say("said ready", me.id)
            me.ready()
        else:
            say("set up", me.id)

    cluster.call_later(1.5, set_up)
    if MODE != "listen":
        cluster.call_later(3600, lambda: None)  # the loop keeps turning
    cluster.run()
