"""The web tests' applications, served by `cluster-ext run webapp:...` with
this folder as the working directory.

  app          ASGI 3: / answers "hello <worker id> <pid>"; /slow?s=N answers
               after N seconds; /ask sends {"ask": path} to the primary and
               answers with its reply; /stream sends a chunk every 0.1 s until
               the client leaves (30 s at most; /stream?n=N: N chunks); /grow?mb=N
               keeps N MiB more resident; /block?s=N blocks the loop N seconds
               (time.sleep in the handler); /nothing answers 404; /ws
               echoes WebSocket text (/ws?accept-after=S: accepted S seconds
               after "ws accepting"). Lifespan lines "startup <pid>" and
               "shutdown <pid>" go to stdout.
  wsgi_app     WSGI: "wsgi <pid>"
  wsgi_iter    the same as an iterable that is not a list (a Flask or Django
               response), so a server sends its body apart from its end
  Asgi2App     ASGI 2 (a class whose instances are awaitable)
  create_app   a factory of app
  not_an_app   an int
"""
import asyncio
import os
import time

import cluster_ext as cluster

PID = os.getpid()


def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\n").encode())


def wid():
    return cluster.worker.id if cluster.worker is not None else 0


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("WEBAPP_FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            if os.environ.get("WEBAPP_SLOW_STARTUP"):
                say("starting slowly", PID)
                await asyncio.sleep(float(os.environ["WEBAPP_SLOW_STARTUP"]))
            say("startup", PID)
            if cluster.worker is not None:
                cluster.worker.on("disconnecting", lambda: say("draining", PID))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            say("shutdown", PID)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


_replies = {}
_kept = []


def _on_message(message, handle):
    future = _replies.pop(message["for"], None)
    if future is not None and not future.done():
        future.set_result(message["answer"])


async def _ask(path):
    # 'message' arrives on this loop: the native loop runs inside it
    if not cluster.worker.listeners("message"):
        cluster.worker.on("message", _on_message)
    future = asyncio.get_running_loop().create_future()
    key = f"{PID}-{len(_replies)}-{id(future)}"
    _replies[key] = future
    cluster.worker.send({"ask": path, "key": key})
    return await asyncio.wait_for(future, 10)


async def _websocket(scope, receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    if scope["query_string"].startswith(b"accept-after="):
        say("ws accepting", PID)
        await asyncio.sleep(float(scope["query_string"].partition(b"=")[2]))
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{wid()} {message.get('text')}"})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    path, query = scope["path"], scope["query_string"].decode()
    if path == "/slow":
        say("slow begins", PID)
        await asyncio.sleep(float(query.partition("=")[2] or 1))
        await _answer(send, f"slow {wid()} {PID}\n".encode())
    elif path == "/ask":
        await _answer(send, f"{await _ask(path)}\n".encode())
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for _ in range(int(query.partition("=")[2] or 300)):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/env":                          # /env?NAME: the worker's os.environ[NAME]
        await _answer(send, f"{os.environ.get(query, '-')}\n".encode())
    elif path == "/boom":
        raise RuntimeError("boom")
    elif path == "/block":
        time.sleep(float(query.partition("=")[2]))
        await _answer(send, f"blocked {wid()} {PID}\n".encode())
    elif path == "/nothing":
        await _answer(send, b"nothing here\n", status=404)
    elif path == "/grow":                         # /grow?mb=N: N MiB more, kept resident
        _kept.append(b"x" * (int(query.partition("=")[2]) << 20))
        await _answer(send, f"grown {wid()} {PID}\n".encode())
    else:
        await _answer(send, f"hello {wid()} {PID}\n".encode())


def wsgi_app(environ, start_response):
    body = f"wsgi {wid()} {PID} {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def wsgi_iter(environ, start_response):
    return iter(wsgi_app(environ, start_response))


class Asgi2App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "http":
            await _answer(send, f"asgi2 {wid()} {PID}\n".encode())


def create_app():
    say("factory called in", "worker" if cluster.is_worker else "primary")
    return app


not_an_app = 42


def wsgi_echo(environ, start_response):
    """POST: the body back, in three chunks from a generator."""
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("201 Created", [("Content-Type", "application/octet-stream"),
                                   ("X-Threaded", str(environ["wsgi.multithread"]))])

    def chunks():
        third = len(data) // 3
        yield data[:third]
        yield data[third:2 * third]
        yield data[2 * third:]

    return chunks()
