"""net.Socket in a worker. The client's first line names what the worker
does with that connection; at the socket's 'close' the worker prints SOCK
{mode, events, ...}: the socket's events in order (consecutive 'data'
counted once) and what its calls returned.

echo        echoes each 'data' with write(data, callback), until the client ends
end         end(b'bye\\n'), then end() again (harmless)
pause       pause(), writes 'paused'; once the client's next bytes wait in the
            kernel, checks that no 'data' came, resume()s and answers them
destroy     destroy()
destroy_err destroy(ValueError('boom'))"""
import select

from net_util import one_worker_until_stdin_eof, say

import cluster_ext as cluster
from cluster_ext import net

if cluster.is_primary:
    one_worker_until_stdin_eof()
    cluster.run()
else:
    def connection(sock):
        report = {"mode": None, "events": [], "remote": sock.remote_address}
        events = report["events"]
        buf = bytearray()

        def log(event):
            if not (event == "data" and events and events[-1] == "data"):
                events.append(event)

        @sock.on("data")
        def data(chunk):
            log("data")
            if report["mode"] is None:
                buf.extend(chunk)
                if b"\n" not in buf:
                    return
                mode, _, rest = bytes(buf).partition(b"\n")
                report["mode"] = mode.decode()
                start(report["mode"], rest)
            elif report["mode"] == "echo":
                echo(chunk)
            elif report["mode"] == "pause":
                report["after_resume"] = chunk.decode()
                sock.end(b"resumed " + chunk)

        def echo(chunk):
            report["writes"].append(sock.write(chunk, lambda err: report["callbacks"].append(
                repr(err))))

        def start(mode, rest):
            if mode == "echo":
                report.update(writes=[], callbacks=[])
                if rest:
                    echo(rest)
            elif mode == "end":
                sock.end(b"bye\n")
                sock.end()
            elif mode == "pause":
                sock.pause()
                report["during_pause"] = len(events)
                sock.write(b"paused\n")
                wait_readable(500)
            elif mode == "destroy":
                sock.destroy()
            elif mode == "destroy_err":
                sock.destroy(ValueError("boom"))

        def wait_readable(tries):
            # the client's bytes are in the kernel's buffer, unread: the
            # paused socket must not have emitted them
            if select.select([sock.fileno()], [], [], 0)[0]:
                report["during_pause"] = events[report["during_pause"]:]
                sock.resume()
            elif tries:
                cluster.call_later(0.01, wait_readable, tries - 1)
            else:
                report["during_pause"] = "the client's bytes never came"
                sock.destroy()

        sock.on("end", lambda: log("end"))
        sock.on("error", lambda exc: log(f"error {type(exc).__name__} {exc}"))

        @sock.on("close")
        def close(had_error):
            log(f"close {had_error}")
            report["closed"] = sock.closed
            say("SOCK", **report)

    net.create_server(connection).listen(0, "127.0.0.1")
    cluster.run()
