"""Every piece of uvicorn that cluster_ext.web relies on beyond its documented
API, by name: the protocol classes' methods it overrides, the attributes of
a connection and of its request cycle it reads and writes, the server state,
the lifespan, and the bytes of a response head it holds to coalesce. A
uvicorn release that renames, drops or reshapes one fails here, rather than
silently turning off the drain, the head bounds or the coalescing.
pyproject.toml bounds uvicorn to the releases CI runs this on (.ci/run: the
newest on the main Python, the oldest on 3.10)."""
import asyncio
import importlib.util

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("a2wsgi")

from uvicorn.config import Config  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from cluster_ext.web import protocol  # noqa: E402

IMPLEMENTATIONS = [impl for impl, module in (("httptools", "httptools"), ("h11", "h11"))
                   if importlib.util.find_spec(module) is not None]
# What the mixins override and call through super(): (every protocol, and each one's own)
OVERRIDDEN = ("connection_made", "connection_lost", "data_received", "on_response_complete",
              "handle_websocket_upgrade", "timeout_keep_alive_handler", "shutdown")
OVERRIDDEN_BY = {"httptools": ("on_headers_complete", "on_message_complete"),
                 "h11": ("handle_events", "send_400_response")}
# A connection's attributes that the drain and the head bounds read, and
# access_log, which Draining turns off when web.logs logs the requests
CONNECTION = ("cycle", "transport", "loop", "server_state", "config", "access_log")
CONNECTION_BY = {"httptools": ("pipeline",), "h11": ("conn",)}
# A request cycle's, read and written by the drain (Draining.cx_last_request)
CYCLE = ("response_complete", "response_started", "keep_alive", "default_headers")
# What WorkerServer takes from the configuration (and loaded_app, which
# worker.in_flight() wraps, its connections serve) and the server state
CONFIG = ("lifespan_class", "http_protocol_class", "ws_protocol_class", "backlog", "ssl",
          "date_header", "encoded_headers", "h11_max_incomplete_event_size", "app",
          "loaded_app")
SERVER_STATE = ("tasks", "connections", "default_headers")


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"hi"})


def loaded(impl, **options):
    config = Config(hello, http=impl, lifespan="off", log_level="warning", **options)
    config.load()
    return config


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_protocol_methods_the_mixins_override_are_uvicorns(impl):
    base = loaded(impl).http_protocol_class
    for name in OVERRIDDEN + OVERRIDDEN_BY[impl]:
        assert callable(getattr(base, name, None)), f"uvicorn's {base.__name__}.{name}"
    # draining() tells the two protocols apart by these
    assert hasattr(base, "on_headers_complete") == (impl == "httptools")
    assert hasattr(base, "handle_events") == (impl == "h11")


def test_the_configuration_and_server_state_have_what_the_worker_reads():
    config = loaded(IMPLEMENTATIONS[0])
    for name in CONFIG:
        assert hasattr(config, name), f"uvicorn's Config.{name}"
    assert callable(config.get_loop_factory)
    state = ServerState()
    for name in SERVER_STATE:
        assert hasattr(state, name), f"uvicorn's ServerState.{name}"
    lifespan = config.lifespan_class(config)
    for name in ("startup", "shutdown", "should_exit", "state"):
        assert hasattr(lifespan, name), f"uvicorn's {type(lifespan).__name__}.{name}"
    from uvicorn.logging import AccessFormatter  # the access log's format
    assert AccessFormatter


@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio", "wsproto"])
def test_the_websocket_protocols_tell_their_handshake_and_shut_down(ws):
    pytest.importorskip(ws.partition("-")[0])
    try:
        config = loaded(IMPLEMENTATIONS[0], ws=ws)
    except (KeyError, ImportError):      # not in this release of uvicorn
        pytest.skip(f"this uvicorn has no --ws {ws}")
    loop = asyncio.new_event_loop()
    try:
        connection = config.ws_protocol_class(config=config, server_state=ServerState(),
                                              app_state={}, _loop=loop)
    finally:
        loop.close()
    # protocol.close_websocket() reads one of the two, then calls shutdown()
    assert hasattr(connection, "handshake_completed_event") or \
        hasattr(connection, "handshake_complete")
    assert callable(connection.shutdown)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_request_through_the_draining_protocol_leaves_one_write(impl):
    """A real request on a real socket, through the class draining() makes:
    the connection and its cycle have what the drain reads, and the head
    and the body of the response reach the socket in one write (uvicorn
    writes its head alone, in the form _Coalescing holds)."""
    config = loaded(impl)
    writes, connections = [], []
    draining = protocol.draining(config.http_protocol_class)

    class Recorder:
        def __init__(self, transport):
            self.transport = transport

        def write(self, data):
            if data:                     # h11 ends a message with b"", which sends nothing
                writes.append(bytes(data))
            self.transport.write(data)

        def __getattr__(self, name):
            return getattr(self.transport, name)

    class Recorded(draining):
        def connection_made(self, transport):
            connections.append(self)
            super().connection_made(Recorder(transport))

    async def exchange():
        loop = asyncio.get_running_loop()
        state = ServerState()
        server = await loop.create_server(
            lambda: Recorded(config=config, server_state=state, app_state={}, _loop=loop),
            "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            body = await asyncio.wait_for(reader.readexactly(2), 10)
            writer.close()
            return head, body
        finally:
            server.close()

    head, body = asyncio.run(asyncio.wait_for(exchange(), 20))
    assert head.startswith(b"HTTP/1.1 200") and body == b"hi"
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\nhi"), writes
    (connection,) = connections
    for name in CONNECTION + CONNECTION_BY[impl]:
        assert hasattr(connection, name), f"uvicorn's {impl} connection.{name}"
    assert connection.cycle is not None
    for name in CYCLE:
        assert hasattr(connection.cycle, name), f"uvicorn's {impl} cycle.{name}"
    assert connection.cycle.response_complete
    if impl == "h11":
        assert hasattr(connection.conn, "their_state") and \
            hasattr(connection.conn, "trailing_data")
