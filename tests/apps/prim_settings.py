"""cluster.settings and setup_primary(). MODE 'mapping': the mapping, its
keys and defaults, misuse, and when 'setup' is emitted. MODE 'exec' /
'target': args, exec_args, cwd (argv[2]) and fork(env=...) as the worker
sees them, and whether the worker's own subprocess is a worker. Prints one
JSON line."""
import json
import os
import subprocess
import sys
import types

import cluster_ext as cluster

MODE = sys.argv[1]
PROBE = ("import json, os, cluster_ext as c; print(json.dumps([c.is_primary, c.is_worker,"
         " sorted(k for k in os.environ if k.startswith('CLUSTER_EXT_'))]))")


def report():
    """Worker side: what this worker was started with."""
    child = subprocess.run([sys.executable, "-c", PROBE], capture_output=True,
                           text=True, timeout=20)
    cluster.worker.send({
        "argv": sys.argv[1:], "xoptions": sys._xoptions, "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("PRIM_INHERITED", "PRIM_OVERRIDE",
                                               "PRIM_EXTRA")},
        "cluster_env": sorted(k for k in os.environ if k.startswith("CLUSTER_EXT_")),
        "subprocess": [child.returncode, child.stdout.strip(), child.stderr[-300:]],
    })


if cluster.is_primary and MODE == "mapping":
    s = cluster.settings
    out = {"type": type(s).__name__, "is_proxy": isinstance(s, types.MappingProxyType),
           "keys": sorted(s), "defaults": {k: s[k] for k in (
               "exec", "args", "exec_args", "cwd", "silent", "stdio", "uid", "gid",
               "serialization", "max_message_size", "scheduling_policy")},
           "SCHED_RR": cluster.SCHED_RR, "argv": sys.argv[1:]}
    try:
        s["silent"] = True
        out["assign"] = "allowed"
    except TypeError:
        out["assign"] = "TypeError"
    try:
        cluster.setup_primary(foo=1)
        out["unknown"] = None
    except TypeError as exc:
        out["unknown"] = ["TypeError", "foo" in str(exc)]
    setups = []
    cluster.on("setup", lambda settings: setups.append(
        [settings is cluster.settings or dict(settings) == dict(cluster.settings),
         settings["args"]]))
    cluster.setup_primary(args=["mapping", "one"])
    out["setups_sync"] = list(setups)          # before any loop turn
    cluster.setup_master(args=["mapping", "two"])
    out["setups_after_two_calls"] = len(setups)
    out["args_now"] = cluster.settings["args"]
    w = cluster.fork()                         # must not emit 'setup'
    w.on("online", w.disconnect)
    cluster.run()
    out["setups_after_fork"] = len(setups)
    print(json.dumps(out), flush=True)

elif cluster.is_primary:
    out = {}
    if MODE == "exec":
        cluster.setup_primary(args=["worker", "alpha", "beta"],
                              exec_args=["-X", "prim_flag=on"], cwd=sys.argv[2])
        w = cluster.fork(env={"PRIM_EXTRA": "x", "PRIM_OVERRIDE": "new"})
    else:
        cluster.setup_primary(cwd=sys.argv[2])
        w = cluster.fork(env={"PRIM_EXTRA": "x", "PRIM_OVERRIDE": "new"}, target=report)
    # fork(env=...) changes the worker's environment, not ours
    out["primary_env"] = [os.environ.get("PRIM_EXTRA"), os.environ.get("PRIM_OVERRIDE")]

    @w.on("message")
    def got(msg, handle):
        out["worker"] = msg
        w.disconnect()

    cluster.run()
    print(json.dumps(out), flush=True)

else:
    # MODE is 'worker' for the exec worker (its args were replaced);
    # a 'mapping' worker has nothing to report.
    if MODE == "worker":
        report()
    cluster.run()
