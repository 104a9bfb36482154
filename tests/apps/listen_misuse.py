"""listen_socket() from inside a callback is a RuntimeError that says what to
do: it would have to wait for the primary inside the loop."""
import cluster_ext as cluster

if cluster.is_primary:
    w = cluster.fork()

    @w.on("message")
    def report(msg, handle):
        print(msg, flush=True)
        w.disconnect()

    cluster.run()
else:
    def try_listen():
        try:
            cluster.listen_socket(0, "127.0.0.1")
        except RuntimeError as exc:
            cluster.worker.send(f"RuntimeError: {exc}")
        else:
            cluster.worker.send("no error")

    cluster.call_later(0, try_listen)
    cluster.run()
