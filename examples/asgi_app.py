"""A plain ASGI application, with the lifespan protocol (FastAPI, Starlette,
Django's ASGI handler and Litestar look the same to the server): every worker
serves it, and runs its startup and shutdown once.

    cluster-ext run -w 4 examples.asgi_app:app

in the repository's root; then `curl 127.0.0.1:8000/`, `kill -HUP <primary>`
to reload with no failed request, Ctrl-C to stop. /slow?s=N answers after N
seconds (a request that a reload or a stop lets finish).
"""
import asyncio
import os
from urllib.parse import parse_qs

import cluster_ext as cluster


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            # open the pools and clients this worker needs here
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})   # and close them here
        return
    if scope["path"] == "/slow":
        seconds = float(parse_qs(scope["query_string"].decode()).get("s", ["1"])[0])
        await asyncio.sleep(seconds)
    who = f"worker {cluster.worker.id}" if cluster.worker else "a plain process"
    body = f"hello {scope['path']} from {who}, pid {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
