"""The loop's entries, in a plain primary (no worker needed except for
MODE 'raise'). Prints one JSON line."""
import json
import sys
import threading
import time

import cluster_ext as cluster

MODE = sys.argv[1]
out = {"log": []}
log = out["log"].append

if MODE == "timers":
    # cancelled before the loop runs, and due before everything else
    cluster.call_later(0, log, "cancelled early").cancel()
    # cancelled by an earlier callback, while the loop runs
    late = cluster.call_later(0.03, log, "cancelled late")
    cluster.call_later(0.02, late.cancel)
    cluster.call_later(0.02, log, "second")          # extra args reach fn
    cluster.call_later(0.01, log, "first")
    cluster.call_later(0, lambda: log("zero"))
    t0 = time.monotonic()
    cluster.run()                                    # returns: no timer left
    out["elapsed"] = time.monotonic() - t0

elif MODE == "unref":
    # ref(False): run() may return while it is pending (Node's unref());
    # it still fires while something else keeps the loop turning.
    cluster.call_later(60, log, "never").ref(False)
    cluster.call_later(0.01, log, "unref'd").ref(False)
    again = cluster.call_later(0.02, log, "ref'd again")
    again.ref(False)
    again.ref(True)
    cluster.call_later(0.03, log, "ref'd")
    t0 = time.monotonic()
    cluster.run()
    out["elapsed"] = time.monotonic() - t0

elif MODE == "threadsafe":
    main = threading.get_ident()

    def on_loop(tag):
        log([tag, threading.get_ident() == main])
        cluster.stop()

    def from_thread():
        cluster.call_soon_threadsafe(on_loop, "from thread")

    # keeps the loop alive far longer than the test allows: only the
    # threadsafe call (which stops the loop) can end run() in time
    keep = cluster.call_later(60, log, "kept alive")
    cluster.call_later(0, lambda: threading.Thread(target=from_thread).start())
    t0 = time.monotonic()
    cluster.run()
    out["elapsed"] = time.monotonic() - t0
    keep.cancel()

elif MODE == "stop":
    def stopper():
        cluster.call_later(0, log, "due with the stop")   # ready, but must wait
        cluster.stop()
        log("rest of the stopping callback")     # the current callback finishes

    keep = cluster.call_later(60, log, "kept alive")
    cluster.call_later(0.01, stopper)
    t0 = time.monotonic()
    cluster.run()
    out["elapsed"] = time.monotonic() - t0
    log("run returned")
    # the loop can be run again after a stop()
    cluster.call_later(0, lambda: (log("second run"), cluster.stop()))
    cluster.run()
    keep.cancel()

elif MODE == "raise":
    if cluster.is_primary:
        w = cluster.fork()

        @cluster.on("online")
        def bad_listener(w):
            raise KeyError("raised in a listener")

        try:
            cluster.run()
            log("run returned normally")
        except KeyError as exc:
            log(["run raised", type(exc).__name__, exc.args[0]])
        # the loop still works: end the worker and see it go
        w.on("exit", lambda code, sig: log(["exit", code, sig and sig.name]))
        w.disconnect()
        cluster.run()
    else:
        cluster.run()
        sys.exit(0)

if cluster.is_primary:
    print(json.dumps(out), flush=True)
