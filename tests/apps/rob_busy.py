"""A worker stuck in `while True: pass` (its loop never runs again): the
primary ends it with kill() (MODE 'kill') or disconnect(timeout=0.5) (MODE
'disconnect_timeout'). Prints one JSON line with what the primary saw."""
import json
import sys
import time

import cluster_ext as cluster

MODE = sys.argv[1]

if cluster.is_primary:
    seen = []
    w = cluster.fork()
    t0 = [0.0]

    @w.on("message")
    def spinning(msg, handle):
        # The worker wrote this message and is now spinning: its Python code
        # will never read the channel again.
        assert msg == "spinning"
        t0[0] = time.monotonic()
        if MODE == "kill":
            w.kill()
        else:
            assert w.disconnect(timeout=0.5) is w

    w.on("disconnect", lambda: seen.append(["disconnect"]))

    @w.on("exit")
    def exited(code, sig):
        seen.append(["exit", code, sig.name if sig else None,
                     w.exited_after_disconnect, round(time.monotonic() - t0[0], 3)])

    cluster.run()
    print(json.dumps({"events": seen}), flush=True)
else:
    def spin(err):
        # Called once the message is on the wire; never returns.
        while True:
            pass

    cluster.worker.send("spinning", callback=spin)
    cluster.run()
