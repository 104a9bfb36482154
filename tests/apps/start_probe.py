"""What a worker that re-runs this script sees of how it started, for a test
that compares a worker forked from the template with an exec'd one
(CLUSTER_EXT_TEMPLATE=0). MODE 'facts': one worker (exec_args -X probe=1, a
cwd, fork(env=)), its facts in one JSON line, with the primary's children
that are no worker while it runs and after. MODE 'exit': workers that end in
sys.exit(7), an exception, and an atexit handler with an unclosed file.
MODE 'badcwd': a cwd that does not exist.
MODE 'refork': the template is SIGKILLed after the first worker is online;
the second fork is exec'd. MODE 'hold': at the worker's 'online', prints
the template's pid and the worker's, then blocks there until killed.
MODE 'serving': a worker that listens, then one forked while it serves;
each reports its frozen GC objects (the template's mark) and two variables
the primary drops or changes between the forks, and the primary the
templates it saw (its children that are no worker)."""
import atexit
import gc
import json
import os
import signal
import sys

import cluster_ext as cluster

MODE = sys.argv[1]


def children():
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return {int(pid) for pid in f.read().split()}


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def facts():
    main = sys.modules["__main__"]
    streams = {}
    for name in ("stdin", "stdout", "stderr"):
        s = getattr(sys, name)
        streams[name] = None if s is None else [
            s.fileno(), s.encoding, s.errors, s.line_buffering, s.write_through,
            s.isatty(), type(s.buffer).__name__, getattr(sys, f"__{name}__") is s]
    return {
        "name": __name__, "file": main.__file__, "loader": type(main.__loader__).__name__,
        "spec": main.__spec__, "package": main.__package__, "doc": main.__doc__[:20],
        "argv": sys.argv, "orig_argv": sys.orig_argv[1:], "path0": sys.path[0],
        "path": sys.path[1:], "cwd": os.getcwd(), "flags": list(sys.flags),
        "xoptions": sys._xoptions, "streams": streams,
        "env": {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_EXT_")},
        "cluster_env": [k for k in os.environ if k.startswith("CLUSTER_EXT_")],
        "env_order": list(os.environ),         # as an exec lays the environment out
        "parent_is_primary": os.getppid() == int(os.environ["PROBE_PRIMARY"]),
        "signals": {sig.name: str(signal.getsignal(sig)) for sig in (
            signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP, signal.SIGCHLD,
            signal.SIGXFSZ, signal.SIGUSR1)},
        "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "settings": {k: v for k, v in cluster.settings.items() if k != "scheduling_policy"},
        "worker_id": cluster.worker.id,
        "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode().split("\0"),
        "frozen": gc.get_freeze_count(),     # the template's gc.freeze() before its fork
    }


if cluster.is_primary and MODE == "facts":
    os.environ["PROBE_PRIMARY"] = str(os.getpid())
    out = {}
    cwd = sys.argv[2]
    cluster.setup_primary(exec_args=["-X", "probe=1"], cwd=cwd, args=["facts", cwd, "x"])
    w = cluster.fork({"PROBE_EXTRA": "yes"})

    def got(msg, handle):
        out["worker"] = msg
        out["others_while_running"] = len(children() - {w.process.pid})
        w.disconnect()

    w.on("message", got)
    w.on("exit", lambda code, sig: out.update(exit=[code, sig]))
    cluster.run()
    out["others_after"] = len(children())
    print(json.dumps(out), flush=True)
elif cluster.is_primary and MODE == "badcwd":
    cluster.setup_primary(cwd="/nonexistent/dir")
    try:
        cluster.fork()
        raised = None
    except OSError as exc:
        raised = [type(exc).__name__, exc.errno, exc.filename == sys.executable]
    print(json.dumps({"raised": raised, "workers": len(cluster.workers),
                      "children": sorted(state(pid) for pid in children())}), flush=True)
elif cluster.is_primary and MODE in ("refork", "hold"):
    out = {}
    first = cluster.fork()

    def first_online():
        template = (children() - {first.process.pid}).pop()
        if MODE == "hold":
            print(json.dumps({"template": template, "worker": first.process.pid}), flush=True)
            signal.pause()
            return
        os.kill(template, signal.SIGKILL)
        while state(template) != "Z":    # dead, not yet reaped: the next fork finds out
            pass
        second = cluster.fork()

        def second_online():
            out["states"] = sorted(state(pid) for pid in children())
            cluster.disconnect()

        second.on("online", second_online)

    first.on("online", first_online)
    cluster.run()
    out["children_after"] = len(children())
    print(json.dumps(out), flush=True)
elif cluster.is_primary and MODE == "serving":
    reports, templates = {}, set()

    def report(w, msg, handle):
        reports[w.id] = msg
        templates.update(children() - {x.process.pid for x in cluster.workers.values()})
        if len(reports) == 2:
            cluster.disconnect()

    def fork_again(address):
        # the environment moves on after the template's start: the next worker
        # sees it as it is now, as an exec would
        del os.environ["PROBE_GONE"]
        os.environ["PROBE_CHANGED"] = "after"
        cluster.fork()

    os.environ.update(PROBE_GONE="here", PROBE_CHANGED="before")
    cluster.on("message", report)
    cluster.fork().once("listening", fork_again)
    cluster.run()
    print(json.dumps({"reports": reports, "templates": sorted(templates)}), flush=True)
elif cluster.is_primary:
    out = {}
    for how in ("exit7", "raise", "atexit"):
        w = cluster.fork({"PROBE_HOW": how, "PROBE_FILE": sys.argv[2]})
        w.on("exit", lambda code, sig, how=how: out.update({how: [code, sig]}))
    cluster.run()
    print(json.dumps(out), flush=True)
elif MODE == "facts":
    cluster.worker.send(facts())
    cluster.run()
elif MODE == "serving":
    from cluster_ext import net
    if cluster.worker.id == 1:
        net.create_server().listen(0, "127.0.0.1")
    cluster.worker.send([gc.get_freeze_count(), os.environ.get("PROBE_GONE"),
                         os.environ.get("PROBE_CHANGED")])
    cluster.run()
elif MODE in ("refork", "hold"):
    cluster.run()
else:
    how = os.environ["PROBE_HOW"]
    if how == "exit7":
        sys.exit(7)
    if how == "raise":
        raise LookupError("from the script")
    f = open(os.environ["PROBE_FILE"], "w")          # never closed
    f.write("unclosed " * 1000)
    atexit.register(lambda: print("atexit ran", flush=True))
    cluster.worker.disconnect()
    cluster.run()
