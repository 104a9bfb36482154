"""The identity a worker takes: argv[1] is 'exec' (the worker is id(1),
exec'd as any program could be) or 'target' (fork(target=) reports its own
ids), argv[2] the settings as JSON (uid, gid). The worker's stdout is piped
back; prints {"ids": [uid, gid, sorted groups], "exit": [code, signal]}."""
import json
import os
import shutil
import sys

import cluster_ext as cluster

HOW, SETTINGS = sys.argv[1], json.loads(sys.argv[2])


def report():
    print(os.getuid(), os.getgid(), *sorted(os.getgroups()), flush=True)
    cluster.worker.disconnect()


if HOW == "exec":
    sh = shutil.which("sh")
    cluster.setup_primary(exec=[sh, "-c", 'echo "$(id -u) $(id -g) $(id -G)"'], args=[])
cluster.setup_primary(silent=True, **SETTINGS)
w = cluster.fork(target=report) if HOW == "target" else cluster.fork()
out = {}
chunks = []
w.process.stdout.on("data", chunks.append)
w.on("exit", lambda code, sig: out.update(exit=[code, sig]))
cluster.run()
numbers = [int(n) for n in b"".join(chunks).split()]
out["ids"] = [numbers[0], numbers[1], sorted(set(numbers[2:]))]
print(json.dumps(out), flush=True)
