"""Two workers listen on one Unix socket path (argv[1]). Each worker prints
WORKER {pid, address} (its server.address()); the primary prints LISTENING
{addresses, pids} from cluster 'listening' once both listen, then waits for
the test to close stdin and disconnects everyone."""
import os
import sys

from net_util import line_server, on_stdin_eof, say

import cluster_ext as cluster

PATH = sys.argv[1]

if cluster.is_primary:
    seen = {}

    @cluster.on("listening")
    def listening(w, address):
        seen[w.process.pid] = address
        if len(seen) == 2:
            say("LISTENING", addresses=list(seen.values()), pids=sorted(seen))

    cluster.fork()
    cluster.fork()
    on_stdin_eof(cluster.disconnect)
    cluster.run()
    say("DONE", exists=os.path.exists(PATH))
else:
    server = line_server()
    server.listen(path=PATH, callback=lambda: say("WORKER", pid=os.getpid(),
                                                  address=server.address()))
    cluster.run()
