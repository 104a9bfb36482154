"""Back-pressure, both ways: COUNT messages of 1 KiB in one callback, without
waiting. send() must say False once the queue is over its high-water mark
(the messages are queued all the same), and 'drain' must follow, after the
callback. The primary prints one JSON line with both sides' reports."""
import json

import cluster_ext as cluster

COUNT, KIB = 2000, "k" * 1024


def flood(w, report):
    """Sends COUNT messages at once; report gets what send() returned (the
    first and last value, the index of the first False, the number of Falses)
    and counts 'drain'."""
    report["drains"] = 0
    w.on("drain", lambda: report.__setitem__("drains", report["drains"] + 1))
    returns = [w.send([i, KIB]) for i in range(COUNT)]
    report["first_false"] = returns.index(False) if False in returns else None
    report["falses"] = returns.count(False)
    report["first"], report["last"] = returns[0], returns[-1]
    report["drains_during_sends"] = report["drains"]   # must be 0: drain is later


def receiver(report, on_all):
    """A 'message' listener that checks order and size; on_all() at COUNT."""
    report["got"], report["in_order"] = 0, True

    def on_message(msg, handle):
        report["in_order"] &= msg == [report["got"], KIB]
        report["got"] += 1
        if report["got"] == COUNT:
            on_all()
    return on_message


if cluster.is_primary:
    w = cluster.fork()
    primary, received = {}, {}
    worker_report = {}

    def on_all():
        # the worker's report comes next, after its COUNT messages
        w.once("message", lambda msg, handle: (worker_report.update(msg), w.disconnect()))
        w.off("message", listener)

    listener = receiver(received, on_all)
    w.on("message", listener)
    w.on("online", lambda: flood(w, primary))
    cluster.run()
    print(json.dumps({"primary": {**primary, **received}, "worker": worker_report}),
          flush=True)
else:
    me = cluster.worker
    mine, received = {}, {}

    def on_all():
        me.off("message", listener)
        # a drain of our own flood comes after its callback: report once both are in
        if mine["drains"]:
            me.send({**mine, **received})
        else:
            me.once("drain", lambda: me.send({**mine, **received}))

    listener = receiver(received, on_all)
    me.on("message", listener)
    # the worker floods too, from inside a loop callback, as the primary does
    cluster.call_later(0, flood, me, mine)
    cluster.run()
