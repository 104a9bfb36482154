"""The example of Node's worker.disconnect() documentation, in Python.

The primary forks one worker; as soon as the worker listens, the primary sends
it 'shutdown', asks it to disconnect, and kills it if 'disconnect' has not come
within 2 s. The worker's connections never end by themselves: with a client
connected, the disconnect cannot complete and the timer kills the worker.

    python examples/seed_disconnect.py        (PORT=8000 by default)
"""
import os

import cluster_ext as cluster
from cluster_ext import net

PORT = int(os.environ.get("PORT", "8000"))

if cluster.is_master:
    worker = cluster.fork()
    timeout = None

    @worker.on("listening")
    def on_listening(address):
        global timeout
        worker.send("shutdown")
        worker.disconnect()
        timeout = cluster.call_later(2.0, worker.kill)

    @worker.on("disconnect")
    def on_disconnect():
        timeout.cancel()

    @worker.on("exit")
    def on_exit(code, signal):
        print(f"worker {worker.id} exited: code={code} signal={signal} "
              f"exited_after_disconnect={worker.exited_after_disconnect}", flush=True)

    cluster.run()

elif cluster.is_worker:
    server = net.create_server(lambda socket: None)    # connections never end
    server.listen(PORT)

    @cluster.worker.on("message")
    def on_message(msg, handle):
        if msg == "shutdown":
            pass    # initiate graceful close of any connections to server

    cluster.run()
