"""Roles and misuse: aliases, scheduling_policy's rules, fork() in a worker,
an unknown signal name. MODE 'policy': only reads the policy at import (for
CLUSTER_EXT_SCHED_POLICY). Prints one JSON line."""
import json
import sys

import cluster_ext as cluster

MODE = sys.argv[1]


def outcome(fn):
    """What fn() did: ['ok', value] or [exception type, message]."""
    try:
        return ["ok", fn()]
    except Exception as exc:
        return [type(exc).__name__, str(exc)]


def set_policy(value):
    cluster.scheduling_policy = value
    return cluster.scheduling_policy


if cluster.is_primary and MODE == "policy":
    print(json.dumps({"policy": cluster.scheduling_policy,
                      "setting": cluster.settings["scheduling_policy"],
                      "RR": cluster.SCHED_RR, "NONE": cluster.SCHED_NONE}), flush=True)

elif cluster.is_primary:
    out = {"roles": [cluster.is_primary, cluster.is_master, cluster.is_worker,
                     cluster.worker is None, cluster.workers == {}],
           "setup_master_is_setup_primary": cluster.setup_master is cluster.setup_primary,
           "default": cluster.scheduling_policy,
           "set_none": outcome(lambda: set_policy(cluster.SCHED_NONE)),
           "setting_follows": cluster.settings["scheduling_policy"],
           "set_rr": outcome(lambda: set_policy(cluster.SCHED_RR)),
           "set_bad": outcome(lambda: set_policy(99)),
           "after_bad": cluster.scheduling_policy}
    w = cluster.fork()
    out["set_after_fork"] = outcome(lambda: set_policy(cluster.SCHED_NONE))
    out["after_fork_policy"] = cluster.scheduling_policy
    out["kill_bad_name"] = outcome(lambda: w.kill("SIGNOPE"))

    @w.on("message")
    def got(msg, handle):
        out["worker"] = msg
        # the bad kill() signalled nothing: the worker is alive and answered
        out["alive_after_bad_kill"] = not w.is_dead() and w.is_connected()
        w.disconnect()

    w.on("exit", lambda code, sig: out.update(exit=[code, sig and sig.name]))
    cluster.run()
    print(json.dumps(out), flush=True)

else:
    cluster.worker.send({
        "roles": [cluster.is_primary, cluster.is_master, cluster.is_worker,
                  cluster.worker is not None, cluster.workers is None],
        "fork": outcome(lambda: cluster.fork() and None),
        "fork_target": outcome(lambda: cluster.fork(target=lambda: None) and None),
        "kill_bad_name": outcome(lambda: cluster.worker.kill("SIGNOPE")),
    })
    cluster.run()
