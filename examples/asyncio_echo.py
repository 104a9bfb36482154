"""An asyncio echo server on a cluster-shared port.

    python -m cluster_ext run -w 4 examples/asyncio_echo.py --port 8000
"""
import argparse
import asyncio
import os

import cluster_ext as cluster
from cluster_ext import aio

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=8000)
args = ap.parse_args()


async def echo(reader, writer):
    while line := await reader.readline():
        writer.write(f"[{os.getpid()}] ".encode() + line)
        await writer.drain()
    writer.close()


async def main():
    await aio.start_server(echo, "127.0.0.1", args.port)
    stopped = asyncio.Event()
    if cluster.is_worker:           # disconnect() closes the server; then we are done
        cluster.worker.on("disconnect", stopped.set)
    await stopped.wait()


asyncio.run(main())
