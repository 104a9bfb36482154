"""How a web worker logs: its error log (uvicorn.error) and its access log
(uvicorn.access), each on stderr, stdout or a file of its own, and the
access log's formats: uvicorn's line by default, logged by uvicorn's
protocols as a response starts, or gunicorn's atoms or a JSON object,
logged by access_logged() around the application as a response ends (its
size and its duration known). A file is opened in append mode by each
worker that writes to it, so that the workers' lines interleave whole;
SIGUSR1 reopens it (_runtime.reopen_log_files())."""
from __future__ import annotations

import logging
import os
import re
import sys
import time

from .. import _runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# What a worker's lines have always looked like (tests hold them)
ERROR_FORMAT = "%(asctime)s [%(cx_worker)s] %(levelname)s %(message)s"
ACCESS_FORMAT = '%(asctime)s [%(cx_worker)s] %(client_addr)s - "%(request_line)s" %(status_code)s'
JSON = "json"                 # --access-log-format json: one JSON object a line
# The loggers --log-level sets in a worker, as uvicorn's sets its own; the
# access log is asked for by itself (gunicorn's rule) and keeps INFO.
LEVELLED = ("uvicorn.error", "uvicorn.asgi", "cluster_ext")

# gunicorn's atoms (its docs' "Access log format"), over an ASGI request;
# %({name}i)s and %({name}o)s are a request's and a response's header.
ATOMS = {
    "h": "the client's address", "l": "'-'", "u": "the user of Basic authentication",
    "t": "the request's time, [day/month/year:hour:minute:second zone]",
    "r": "the request line", "m": "the method", "U": "the path", "q": "the query string",
    "H": "the protocol", "s": "the status", "B": "the body's bytes",
    "b": "the body's bytes, '-' for none", "f": "the Referer", "a": "the User-Agent",
    "T": "the duration in whole seconds", "M": "in milliseconds", "D": "in microseconds",
    "L": "in seconds, to the microsecond", "p": "<the worker's pid>", "w": "the worker's id",
}
_NAMED = re.compile(r"%\(([^)]*)\)")
_HEADER = re.compile(r"\{([^}]+)\}([io])")
# What goes into a line as \xHH (nginx's escaping): bytes outside printable
# ASCII, the quote and the backslash; a header or a path cannot end a line.
_UNSAFE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_configured = False           # a worker configures once (a template's fork inherits it)


def check_format(fmt: str) -> None:
    """ValueError naming what is wrong with an access log format."""
    if fmt == JSON:
        return
    for name in _NAMED.findall(fmt):
        if name not in ATOMS and not _HEADER.fullmatch(name):
            raise ValueError(f"unknown atom %({name})s (gunicorn's are "
                             f"{', '.join(ATOMS)}, {{header}}i and {{header}}o)")
    try:
        fmt % _Sample()
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"not a %-format of atoms such as %(h)s: {exc}") from None


class _Sample(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "-"


class Logs:
    """A web worker's logging: the access log on or off, its format (None:
    uvicorn's), and where each log goes ('-': stdout for the access log,
    stderr for the error log); level, --log-level's, or None for uvicorn.error
    at WARNING."""

    def __init__(self, *, access: bool = False, access_format: str | None = None,
                 access_file: str = "-", error_file: str = "-", level: int | None = None
                 ) -> None:
        self.access = access or access_format is not None or access_file != "-"
        self.access_format = access_format
        self.access_file, self.error_file, self.level = access_file, error_file, level

    def configure(self) -> None:
        """The handlers, once in a process, where nothing has put its own.
        The command line calls it before the application's import when a
        --log-config is to be laid over it; serve_worker() after."""
        global _configured
        if _configured:
            return
        _configured = True
        error = logging.getLogger("uvicorn.error")
        if not error.handlers:
            error.addHandler(_handler(self.error_file, sys.stderr,
                                      logging.Formatter(ERROR_FORMAT)))
            error.setLevel(logging.WARNING)
            error.propagate = False
        access = logging.getLogger("uvicorn.access")
        if self.access and not access.handlers:
            access.addHandler(_handler(self.access_file, sys.stdout, self.formatter()))
            access.setLevel(logging.INFO)
            access.propagate = False
        self.apply_level()

    def apply_level(self) -> None:
        """--log-level, on the loggers uvicorn's sets (and the package's)."""
        if self.level is not None:
            for name in LEVELLED:
                logging.getLogger(name).setLevel(self.level)

    def formatter(self) -> logging.Formatter:
        if self.access_format is None:
            from uvicorn.logging import AccessFormatter
            return AccessFormatter(ACCESS_FORMAT, use_colors=False)
        if self.access_format == JSON:
            return _JsonFormatter()
        return _AtomsFormatter(self.access_format)

    def wrap(self, app: Any) -> Any:
        """app with its requests logged as they end, under a format of ours;
        uvicorn's protocols log them otherwise (its own format)."""
        return access_logged(app) if self.access and self.access_format is not None else app

    @property
    def uvicorn_logs_access(self) -> bool:
        return self.access and self.access_format is None


def _handler(path: str, stream: Any, formatter: logging.Formatter) -> logging.Handler:
    """A handler of this worker's own: a file opened to append (O_APPEND:
    each record one write at the file's end, whole among the workers'), or
    the stream for '-'."""
    try:
        handler: logging.Handler = (logging.StreamHandler(stream) if path == "-" else
                                    logging.FileHandler(path, encoding="utf-8"))
    except OSError as exc:               # a boot failure, in one line
        raise ValueError(f"cannot open the log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(formatter)
    handler.addFilter(_tag_worker)
    return handler


def _tag_worker(record: logging.LogRecord) -> bool:
    """%(cx_worker)s: 'worker N', read as the record is made (a --preload
    template configures the handlers its workers inherit)."""
    w = _runtime.worker
    record.cx_worker = f"worker {w.id}" if w is not None else "web"
    return True


class Request:
    """What the access log says of one HTTP request, gathered around the
    application (access_logged())."""

    __slots__ = ("scope", "status", "headers", "sent", "began", "clock", "seconds", "logged")

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.status: int | None = None
        self.headers: Any = ()                # the response's
        self.sent = 0                         # the body's bytes
        self.began = time.time()
        self.clock = time.perf_counter()
        self.seconds = 0.0
        self.logged = False

    def log(self, logger: logging.Logger) -> None:
        """Once, at the response's end; with uvicorn's message and arguments,
        so that uvicorn's AccessFormatter in a --log-config still formats it."""
        if self.logged:
            return
        self.logged = True
        self.seconds = time.perf_counter() - self.clock
        scope = self.scope
        client = scope.get("client")
        logger.info('%s - "%s %s HTTP/%s" %d', f"{client[0]}:{client[1]}" if client else "",
                    scope["method"], _target(scope).decode("latin-1"), scope["http_version"],
                    self.status, extra={"cx_request": self})

    def header(self, name: bytes, response: bool = False) -> bytes | None:
        for key, value in self.headers if response else self.scope["headers"]:
            if key.lower() == name:
                return value  # type: ignore[no-any-return]
        return None


def access_logged(app: Any) -> Any:
    """app (ASGI 3), each HTTP request logged on uvicorn.access as its
    response ends: at its last body message, or when the application
    returns or raises without one (500 when it had not begun a response,
    which uvicorn then sends)."""
    logger = logging.getLogger("uvicorn.access")

    async def logged(scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        request = Request(scope)

        async def send_counted(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                request.status, request.headers = message["status"], message.get("headers", ())
            elif kind == "http.response.body":
                request.sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await send(message)
                    request.log(logger)
                    return
            await send(message)

        try:
            return await app(scope, receive, send_counted)
        finally:
            if request.status is None:           # uvicorn answers 500
                request.status = 500
            request.log(logger)

    return logged


class _Atoms(dict):  # type: ignore[type-arg]
    """A request's atoms, each made when the format asks for it."""

    def __init__(self, request: Request) -> None:
        super().__init__()
        self.request = request

    def __missing__(self, name: str) -> str:
        header = _HEADER.fullmatch(name)
        if header is not None:
            raw = self.request.header(header[1].lower().encode("latin-1"), header[2] == "o")
            value = "-" if raw is None else _clean(raw)
        else:
            value = _ATOM_MAKERS[name](self.request)
        self[name] = value
        return value


def _clean(raw: bytes) -> str:
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m[0][0], raw).decode("ascii")


def _user(request: Request) -> str:
    """The user of Basic authentication, as gunicorn's %(u)s."""
    auth = request.header(b"authorization")
    if auth is None or auth[:6].lower() != b"basic ":
        return "-"
    import base64
    import binascii
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[0]
    except (binascii.Error, ValueError):
        return "-"
    return _clean(user) or "-"


def _target(scope: dict[str, Any]) -> bytes:
    """The request line's target, as the client sent it."""
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    return target


def _request_line(request: Request) -> str:
    scope = request.scope
    return _clean(b"%s %s HTTP/%s" % (scope["method"].encode(), _target(scope),
                                      scope["http_version"].encode()))


def _when(request: Request) -> str:
    t = time.localtime(request.began)
    return time.strftime(f"[%d/{_MONTHS[t.tm_mon - 1]}/%Y:%H:%M:%S %z]", t)


def _header_or_dash(name: bytes) -> Callable[[Request], str]:
    def made(request: Request) -> str:
        value = request.header(name)
        return "-" if value is None else _clean(value)
    return made


_ATOM_MAKERS: dict[str, Callable[[Request], str]] = {
    "h": lambda r: r.scope["client"][0] if r.scope.get("client") else "-",
    "l": lambda r: "-",
    "u": _user,
    "t": _when,
    "r": _request_line,
    "m": lambda r: _clean(r.scope["method"].encode()),
    "U": lambda r: _clean(r.scope["path"].encode()),
    "q": lambda r: _clean(r.scope["query_string"]),
    "H": lambda r: f"HTTP/{r.scope['http_version']}",
    "s": lambda r: str(r.status),
    "B": lambda r: str(r.sent),
    "b": lambda r: str(r.sent) if r.sent else "-",
    "f": _header_or_dash(b"referer"),
    "a": _header_or_dash(b"user-agent"),
    "T": lambda r: str(int(r.seconds)),
    "M": lambda r: str(int(r.seconds * 1e3)),
    "D": lambda r: str(int(r.seconds * 1e6)),
    "L": lambda r: f"{r.seconds:.6f}",
    "p": lambda r: f"<{os.getpid()}>",
    "w": lambda r: str(_runtime.worker.id) if _runtime.worker is not None else "-",
}


class _AtomsFormatter(logging.Formatter):
    """--access-log-format FMT: gunicorn's atoms; another record on
    uvicorn.access (the application's own) is its message alone."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.atoms_format = fmt

    def format(self, record: logging.LogRecord) -> str:
        request = getattr(record, "cx_request", None)
        if request is None:
            return record.getMessage()
        return self.atoms_format % _Atoms(request)


class _JsonFormatter(logging.Formatter):
    """--access-log-format json: one object a line (docs/api.md names its
    keys); texts decoded as UTF-8, a byte that is not as \\xHH."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import datetime
        request = getattr(record, "cx_request", None)
        if request is None:
            return json.dumps({"message": record.getMessage()})
        scope = request.scope
        client = scope.get("client")
        return json.dumps({
            "time": datetime.fromtimestamp(request.began).astimezone().isoformat(
                timespec="milliseconds"),
            "worker": _runtime.worker.id if _runtime.worker is not None else None,
            "pid": os.getpid(),
            "client": client[0] if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "query": _text(scope["query_string"]),
            "protocol": f"HTTP/{scope['http_version']}",
            "status": request.status,
            "bytes": request.sent,
            "duration": round(request.seconds, 6),
            "referer": _text(request.header(b"referer")),
            "user_agent": _text(request.header(b"user-agent")),
        })


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")
