"""WSGI on the worker's loop, without a2wsgi's thread pool (--threads 1):
each request runs inline, its body read and its response sent by the
loop."""
from __future__ import annotations

import asyncio
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class InlineWSGI:
    """A WSGI application called on the worker's own loop, one request at a
    time: gunicorn's sync worker (--threads 1, its default too), with
    keep-alive and without a thread hop per request. The request's body is
    read before the call; the response goes out as the application yields
    it. With --threads N > 1, a2wsgi's pool runs the application instead."""

    def __init__(self, app: Callable[..., Any]) -> None:
        from a2wsgi.wsgi import build_environ
        self.app = app
        self.build_environ = build_environ

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        import io
        body = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        environ = self.build_environ(scope, io.BytesIO(b"".join(body)))  # type: ignore[arg-type]
        environ["wsgi.multithread"] = False
        environ["wsgi.errors"] = sys.stderr
        head: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            if exc_info is not None and head and head[0] is None:
                raise exc_info[1].with_traceback(exc_info[2])   # the head is out
            head[:] = [status, headers]
            return written.append            # PEP 3333's write(), kept for the response

        result = self.app(environ, start_response)
        try:
            if isinstance(result, (list, tuple)):   # the common case: one send()
                await self.respond(send, head, written + list(result), False)
            else:
                left = asyncio.ensure_future(receive())   # http.disconnect, if it comes
                try:
                    started = False
                    for chunk in result:
                        if chunk:
                            await self.respond(send, head, [*written, chunk], True)
                            written.clear()
                            started = True
                            if left.done():          # the client is gone: stop iterating
                                return
                    if not started:
                        await self.respond(send, head, written, False)
                    else:
                        await send({"type": "http.response.body", "body": b"".join(written)})
                finally:
                    left.cancel()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    @staticmethod
    async def respond(send: Any, head: list[Any], chunks: list[bytes], more: bool) -> None:
        if not head:
            raise RuntimeError("the WSGI application did not call start_response()")
        if head[0] is not None:                  # the head has not left yet
            status, headers = head
            head[0] = None
            await send({"type": "http.response.start", "status": int(status[:3]),
                        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                    for name, value in headers]})
        await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": more})
