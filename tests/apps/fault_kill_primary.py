"""The primary SIGKILLs itself at a point drawn from the seed, in the middle
of ACTIVITY (argv: ACTIVITY SEED):

  stream      three workers (two exec'ed, one fork(target=)) stream
              messages both ways; the primary dies at the k-th message;
  disconnect  three workers hold client connections; cluster.disconnect(),
              the connections close one by one, and the primary dies at
              the k-th event after disconnect() (0: at once);
  reload      a supervised fleet of three reloads; the primary dies at the
              k-th fleet event after reload() (0: at once), so also while a
              replacement is being forked.

It prints 'dying <point>' first. The test then finds every process left in
the app's session: none may outlive the primary."""
import os
import random
import signal
import socket
import sys
import threading

from disc_util import say, serve_lines, stream_to_primary

import cluster_ext as cluster
from cluster_ext import net

ACTIVITY = sys.argv[1]
EVENTS = ("fork", "online", "listening", "disconnect", "exit")


def die(point):
    say("dying", point)
    os.kill(os.getpid(), signal.SIGKILL)


def die_at_event(k, what):
    """SIGKILL ourselves at the k-th cluster event from now (0: now)."""
    seen = [0]
    if k == 0:
        die(f"{what} at once")

    def count(name):
        seen[0] += 1
        if seen[0] == k:
            die(f"{what} at {name} #{k}")

    for name in EVENTS:
        cluster.on(name, lambda *_, name=name: count(name))


def fleet_listening(size):
    alive = [w for w in cluster.workers.values() if not w.is_dead()]
    return len(alive) == size and all(w.state == "listening" for w in alive)


def hold_connections(port, count, then):
    """A client thread: count connections, each answered once, held until
    then(release) calls release(), and closed one by one after that."""
    release = threading.Event()

    def client():
        held = []
        for _ in range(count):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"hold\n")
            c.recv(64)
            held.append(c)
        cluster.call_soon_threadsafe(then, release.set)
        release.wait()
        for c in held:
            c.close()
    threading.Thread(target=client, daemon=True).start()


def primary(rng):
    if ACTIVITY == "stream":
        k = rng.randint(1, 3000)
        got = [0]

        def on_message(w, msg, handle):
            got[0] += 1
            if got[0] == k:
                die(f"stream at message {k}")
            w.send({"back": "y" * rng.randint(1, 5000)})

        cluster.on("message", on_message)
        cluster.fork()
        cluster.fork()
        cluster.fork(target=stream_worker)
        cluster.run()
    elif ACTIVITY == "disconnect":
        k = rng.randint(0, 6)            # 3 x ('disconnect', 'exit')

        def all_held(release):
            cluster.disconnect()
            die_at_event(k, "disconnect")
            release()

        @cluster.on("listening")
        def listening(w, address):
            if fleet_listening(3):
                hold_connections(address[1], 6, all_held)

        for _ in range(3):
            cluster.fork()
        cluster.run()
    else:
        k = rng.randint(0, 14)
        started = [False]

        @cluster.on("listening")
        def listening(w, address):
            if not started[0] and fleet_listening(3):
                started[0] = True
                cluster.reload()
                die_at_event(k, "reload")

        cluster.supervise(3)


def stream_worker():
    stream_to_primary(10, 20000)


def server_worker():
    server = net.create_server(lambda sock: serve_lines(sock, lambda line: "held"))
    server.listen(0, "127.0.0.1")


if cluster.is_primary:
    primary(random.Random(int(sys.argv[2])))
else:
    (stream_worker if ACTIVITY == "stream" else server_worker)()
    cluster.run()
