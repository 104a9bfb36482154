"""N workers serve one TCP port together. argv: N, policy mode ('default',
'attr_none', 'attr_rr'; the env var CLUSTER_EXT_SCHED_POLICY is the test's).
The primary prints LISTENING {port, pids, policy} once every worker listens,
then waits for the test to close stdin, and disconnects everyone."""
import sys

from net_util import line_server, on_stdin_eof, policy_name, say, set_policy

import cluster_ext as cluster

N, MODE = int(sys.argv[1]), sys.argv[2]

if cluster.is_primary:
    set_policy(MODE)
    ports = {}

    @cluster.on("listening")
    def listening(w, address):
        ports[w.process.pid] = address[1]
        if len(ports) == N:
            say("LISTENING", port=address[1], ports=sorted(set(ports.values())),
                pids=sorted(ports), policy=policy_name())

    cluster.on("exit", lambda w, code, sig: say("EXIT", id=w.id, code=code))
    for _ in range(N):
        cluster.fork()
    on_stdin_eof(cluster.disconnect)
    cluster.run()
    say("DONE")
else:
    line_server().listen(0, "127.0.0.1")
    cluster.run()
