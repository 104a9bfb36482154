"""The seed example (examples/seed_disconnect.py) run unchanged, with the
primary's cluster events watched from outside it: this script adds cluster
listeners, then runs the example as __main__ in both roles (its workers run
this script again, which runs the example's worker branch).

Cluster events fire after the worker's own, so 'listening' here comes right
after the example's handler called disconnect() and started its 2 s timer.
Prints 'event NAME +SECONDS-SINCE-LISTENING ...' lines, then the example's own."""
import runpy
import time
from pathlib import Path

from disc_util import say, show

import cluster_ext as cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed_disconnect.py"

if cluster.is_primary:
    t0 = []

    def since():
        return f"+{time.monotonic() - t0[0]:.3f}"

    @cluster.on("listening")
    def listening(w, address):
        t0.append(time.monotonic())
        say("event listening", w.id, "ead", w.exited_after_disconnect)

    cluster.on("disconnect", lambda w: say("event disconnect", since(), w.id))
    cluster.on("exit", lambda w, code, sig: say(
        "event exit", since(), w.id, show(code), show(sig), w.exited_after_disconnect))

runpy.run_path(str(EXAMPLE), run_name="__main__")
if cluster.is_primary:
    say("event run-returned", since())
