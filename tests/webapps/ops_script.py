"""webapp's app served by web.serve() from a script, two workers on the port
in argv[1]; the primary answers the workers' {"ask": path} messages
(webapp's /ask) and serves the control socket at argv[2] (cluster.control()),
which it closes once the fleet has stopped ("control closed")."""
import sys

import cluster_ext as cluster
from cluster_ext import web

if cluster.is_primary:
    def answer(w, message, handle):
        w.send({"for": message["key"], "answer": f"primary saw {message['ask']} from {w.id}"})

    cluster.on("message", answer)
    cluster.on("listening", lambda w, address: print("listening", w.id, flush=True))
    control = cluster.control(sys.argv[2])

web.serve("webapp:app", "127.0.0.1", int(sys.argv[1]), workers=2, graceful_timeout=5)

if cluster.is_primary:
    control.close()
    print("control closed", flush=True)
