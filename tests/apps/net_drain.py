"""Back-pressure: a worker writes 8 MiB, in 64 KiB chunks, to a client that
does not read yet. It writes while write() returns True, then waits for
'drain'. BLOCKED {at} comes at the first False (the test starts reading only
then); at the socket's 'close', WROTE {...} tells how it went."""
from net_util import one_worker_until_stdin_eof, say

import cluster_ext as cluster
from cluster_ext import net

CHUNKS = 128                     # 128 * 64 KiB = 8 MiB


def chunk(i):
    """Chunk i: its own number over and over, so that a lost, doubled or
    reordered chunk shows (the test builds the same bytes)."""
    return i.to_bytes(4, "big") * (1 << 14)


if cluster.is_primary:
    one_worker_until_stdin_eof()
    cluster.run()
else:
    def connection(sock):
        state = {"next": 0, "falses": 0, "drains": 0, "waiting": False,
                 "drain_without_false": 0}

        def pump():
            while state["next"] < CHUNKS:
                ok = sock.write(chunk(state["next"]))
                state["next"] += 1
                if not ok:
                    state["falses"] += 1
                    state["waiting"] = True
                    if state["falses"] == 1:
                        say("BLOCKED", at=state["next"])
                    return
            sock.end()

        @sock.on("drain")
        def drained():
            state["drains"] += 1
            if not state["waiting"]:
                state["drain_without_false"] += 1
            state["waiting"] = False
            pump()

        sock.on("close", lambda had_error: say("WROTE", had_error=had_error, **state))
        pump()

    net.create_server(connection).listen(0, "127.0.0.1")
    cluster.run()
