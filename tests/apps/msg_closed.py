"""send()'s callback and a closed channel, in both roles.

Each side sends 'hello' with a callback, which must run once, with None, after
send() has returned. Once the primary's callback says its message was
written, it disconnects the worker. In each side's 'disconnect' listener:
send with a callback (returns False, the callback gets ChannelClosedError),
then send without one (returns False, 'error' gets ChannelClosedError).
Each side records whether send() had returned before the error came: the
report must be asynchronous. The worker prints 'worker {json}', the primary
'primary {json}'."""
import json

import cluster_ext as cluster


def describe(err):
    return {"type": type(err).__name__,
            "closed": isinstance(err, cluster.ChannelClosedError),
            "broken_pipe": isinstance(err, BrokenPipeError)}


def send_after_disconnect(w, log, done):
    """The two late sends; done() once both errors have been reported. log
    gets 'returns' (what each send returned) and 'reports' (the errors)."""
    state = {"returned": False}
    reports = log.setdefault("reports", [])

    def report(what, err):
        reports.append({"what": what, "after_return": state["returned"], **describe(err)})
        if len(reports) == 2:
            done()

    w.on("error", lambda err: report("error", err))
    log["returns"] = [w.send("late", callback=lambda err: report("callback", err)),
                      w.send("late2")]
    state["returned"] = True


def send_hello(w, log, then=lambda: None):
    """Sends 'hello' with a callback; log gets what send() returned and one
    entry per callback call: [repr(err), had send() returned]."""
    returned = []

    def written(err):
        log["callback"].append([repr(err), bool(returned)])
        then()

    log["callback"] = []
    log["returned"] = w.send("hello", callback=written)
    returned.append(True)


if cluster.is_primary:
    w = cluster.fork()
    result = {"hello": {}, "late": {}, "got": []}
    w.on("online", lambda: send_hello(w, result["hello"], then=w.disconnect))
    w.on("message", lambda msg, handle: result["got"].append(msg))
    w.on("disconnect", lambda: send_after_disconnect(w, result["late"], lambda: None))
    cluster.run()
    print("primary", json.dumps(result), flush=True)
else:
    me = cluster.worker
    result = {"hello": {}, "late": {}, "got": []}
    me.on("message", lambda msg, handle: result["got"].append(msg))
    send_hello(me, result["hello"])           # outside the loop: before run()

    def done():
        print("worker", json.dumps(result), flush=True)

    me.on("disconnect", lambda: send_after_disconnect(me, result["late"], done))
    cluster.run()
