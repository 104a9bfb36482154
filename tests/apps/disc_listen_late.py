"""A worker that listens as it starts, with no 'error' listener, while the
primary disconnects it as soon as it is online (Ctrl-C during a start):
the primary has begun its disconnect when the worker's listen reaches it.
argv: POLICY (rr|none).

Lines: 'listen asked' from the worker, then the primary's
'exit code=.. signal=.. ead=..'."""
import sys

from disc_util import say, set_policy, show

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    set_policy(sys.argv[1])
    w = cluster.fork()
    w.on("online", lambda: w.disconnect())
    w.on("exit", lambda code, sig: say(
        f"exit code={show(code)} signal={show(sig)} ead={w.exited_after_disconnect}"))
    cluster.run()
else:
    net.create_server(lambda sock: sock.end(b"hello\n")).listen(0, "127.0.0.1")
    say("listen asked")
    cluster.run()
