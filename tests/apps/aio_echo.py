"""Two workers serve one port with cluster_ext.aio inside asyncio.run().

Primary lines: LISTENING <port>, msg <id> <text>, disconnect <id>, exit <id> <code>.
The test sends commands on stdin: 'disconnect' (cluster.disconnect())."""
import asyncio
import os
import sys

from disc_util import run_until_told, say

import cluster_ext as cluster
from cluster_ext import aio

if cluster.is_primary:
    if sys.argv[1] == "none":
        cluster.scheduling_policy = cluster.SCHED_NONE
    ports = []

    @cluster.on("listening")
    def listening(w, address):
        w.send("hello")
        ports.append(address[1])
        if len(ports) == 2:
            say("LISTENING", address[1])

    cluster.on("message", lambda w, msg, handle: say("msg", w.id, msg))
    cluster.on("disconnect", lambda w: say("disconnect", w.id))
    run_until_told(2)
else:
    async def echo(reader, writer):
        while line := await reader.readline():
            writer.write(f"{os.getpid()} {line.decode()}".encode())
            await writer.drain()
        writer.close()

    async def main():
        done = asyncio.get_running_loop().create_future()
        cluster.worker.on("disconnect", lambda: done.set_result(None))
        # 'message' arrives inside asyncio.run(), through aio's reader
        cluster.worker.on("message", lambda msg, handle: cluster.worker.send(msg + " back"))
        await aio.start_server(echo, "127.0.0.1", 0)
        await done

    asyncio.run(main())
