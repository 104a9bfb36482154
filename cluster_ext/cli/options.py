"""cluster-ext's arguments: the parser, its help, and the checks that make a
bad value one line and exit 2."""
from __future__ import annotations

import argparse
import os
import re
import sys

from .. import __version__, _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

DESCRIPTION = """\
Run a Python server as a cluster: one primary that supervises N worker
processes sharing the server's port (Node's cluster, with what PM2 and
gunicorn add: respawn, zero-downtime reload, hung-worker kills).

Signals to the primary: SIGTERM or Ctrl-C stop gracefully (a second one,
or SIGQUIT, stops at once), SIGHUP reloads every worker one by one, SIGTTIN adds a
worker, SIGTTOU retires the oldest, SIGUSR1 reopens the log files (the
workers' too). SIGTERM or SIGINT to a worker (or to the whole process
group) drains it: a group's signal stops as one to the primary does, and a
worker signalled alone is replaced."""

RUN_HELP = """\
Runs APP as the workers of a supervised cluster.

APP is either an ASGI or WSGI application, named as gunicorn and uvicorn name
it (module:attribute, e.g. myproject.asgi:application), which every worker
imports and serves over HTTP on each --bind address (uvicorn's protocols;
needs the web extra: pip install '.[web]' in the repository's root), or a
Python script that serves with cluster_ext.net, cluster_ext.aio or
cluster.listen_socket(): each worker runs it as __main__ with sys.argv =
[APP, *ARGS], and runs the event loop itself if APP returns without calling
cluster.run().

Every option, APP and ARGS too, may also come from the environment, as
CLUSTER_EXT_<OPTION> (CLUSTER_EXT_WORKERS=4, CLUSTER_EXT_GRACEFUL_TIMEOUT=10,
CLUSTER_EXT_APP=myproject.asgi:application), and from a TOML file: --config
PATH, else the table [tool.cluster-ext] of ./pyproject.toml, one key an option
(workers = 4, bind = ["0.0.0.0:8000"], preload = true, app = "mod:app"). The
command line wins over the environment, the environment over the file.

examples:
  cluster-ext run -w 4 --bind 0.0.0.0:8000 myproject.asgi:application
  cluster-ext run -w 4 --interface wsgi --threads 8 flaskapp:app
  cluster-ext run -w 4 server.py --port 8000"""


# uvicorn's --log-level names (trace: its protocols' own, below debug)
LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}

# gunicorn's --timeout: a worker whose loop has not answered a ping for this
# long is killed and replaced. Long enough for a WSGI request that runs on
# the loop (--threads 1) to take its time; 0 turns it off.
DEFAULT_HEARTBEAT = 30.0


class Parser(argparse.ArgumentParser):
    """A usage error is one line (`cluster-ext run: error: argument
    -w/--workers: must be at least 1, not 0`) and exit 2: `run`'s usage
    takes a screen, and the line that says what is wrong would scroll
    under it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _seconds(text: str, *, positive: bool = False) -> float:
    """An option's seconds: finite, 0 or more (more than 0 if positive), and
    within what a timer takes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 if positive else value >= 0) or not value <= _core.MAX_SECONDS:
        raise argparse.ArgumentTypeError(    # NaN fails too
            f"must be {'more than 0' if positive else '0 or more'} and at most "
            f"{_core.MAX_SECONDS} seconds, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    """Seconds where 0 would mean nothing useful (a grace of none)."""
    return _seconds(text, positive=True)


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, minimum or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def _port(text: str) -> int:
    port = _at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, not {port}")
    return port


def _positive_mib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if not 0 < value < 2**40:            # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, not {text}")
    return value


def _access_log_format(text: str) -> str:
    from ..web.logs import check_format
    try:
        check_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _host_port(text: str) -> tuple[str, int]:
    """[HOST:]PORT, HOST may be [IPv6]."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"takes [HOST:]PORT (a port from 0 to 65535), "
                                         f"not {text!r}")
    return host, int(port)


def _umask(text: str) -> int:
    """Octal always, as the shell's umask and systemd's UMask= take it:
    027, 0027, 0o027 (gunicorn would read 27 as decimal)."""
    found = re.fullmatch(r"(?:0o)?([0-7]{1,4})", text, re.IGNORECASE)
    if found is None or int(found[1], 8) > 0o777:
        raise argparse.ArgumentTypeError(f"not an octal mode from 000 to 777 (such as 027): "
                                         f"{text!r}")
    return int(found[1], 8)


def _hook(text: str) -> str:
    """A hook's MODULE:FUNCTION, checked for its form (cli.hooks imports it)."""
    module, colon, function = text.partition(":")
    if not colon or not all(name.isidentifier()
                            for name in (*module.split("."), *function.split("."))):
        raise argparse.ArgumentTypeError(
            f"takes MODULE:FUNCTION (for example hooks:on_starting), not {text!r}")
    return text


VERSION = f"cluster-ext {__version__} (Python {sys.version.split()[0]})"
VERSION_HELP = "print cluster_ext's version and Python's, and exit"


def common_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--version", action="version", version=VERSION, help=VERSION_HELP)
    common.add_argument("-w", "--workers", type=_at_least(1), default=None, metavar="N",
                        help="worker processes (default: $WEB_CONCURRENCY, as gunicorn and "
                             "uvicorn read it, else one per core)")
    common.add_argument("--sched", choices=("rr", "none"), default=None,
                        help="rr: the primary accepts and hands connections out in turn "
                             "(default); none: workers accept on the shared socket")
    common.add_argument("--graceful-timeout", type=_positive_seconds, default=30.0, metavar="S",
                        help="seconds a worker may take to finish its connections when "
                             "stopping or reloading before it is killed (default 30)")
    common.add_argument("--heartbeat-timeout", type=_seconds, default=DEFAULT_HEARTBEAT,
                        metavar="S",
                        help="kill and replace a worker whose event loop has not answered "
                             f"for S seconds (default {DEFAULT_HEARTBEAT:g}, as gunicorn's "
                             "--timeout; 0: off)")
    common.add_argument("--drain-delay", type=_seconds, default=0.0, metavar="S",
                        help="on SIGTERM, serve S seconds more (not ready, STOPPING=1) "
                             "before the graceful stop, while a load balancer lets go")
    common.add_argument("--env-file", default=None, metavar="PATH",
                        help="environment variables from PATH (a .env file, read by "
                             "python-dotenv) set in the primary before any fork, so that "
                             "the workers inherit them; one already set keeps its value")
    common.add_argument("--pid-file", default=None, metavar="PATH",
                        help="write the primary's pid to PATH while it runs")
    common.add_argument("--ready-file", default=None, metavar="PATH",
                        help="a file that exists exactly while every worker serves "
                             "(for exec readiness probes)")
    common.add_argument("--control", default=None, metavar="PATH",
                        help="answer `cluster-ext status PATH`, reload, scale and stop on "
                             "a Unix socket at PATH (mode 0600)")
    common.add_argument("--metrics", type=_host_port, default=None, metavar="[HOST:]PORT",
                        help="serve /metrics (Prometheus) from the primary on HOST:PORT "
                             "(HOST default 127.0.0.1); needs the metrics extra")
    identity = common.add_argument_group(
        "the workers' user (the primary stays as it is, and binds: port 80 as root)")
    identity.add_argument("--user", default=None, metavar="USER",
                          help="the workers (and --preload's template) serve as USER, a name "
                               "or a uid: its uid, its groups (initgroups) and, without "
                               "--group, its primary group; all of them or the worker does "
                               "not start (needs root)")
    identity.add_argument("--group", default=None, metavar="GROUP",
                          help="the workers' group, a name or a gid (alone, without --user: "
                               "no supplementary groups)")
    identity.add_argument("--umask", type=_umask, default=None, metavar="MODE",
                          help="the umask, in octal (such as 027), of the primary and so of "
                               "every process it starts: the workers, the template, and the "
                               "files and Unix sockets the primary makes")
    logs = common.add_argument_group(
        "logging (SIGUSR1 to the primary reopens the log files of the primary and of every "
        "worker, for logrotate)")
    logs.add_argument("--log-level", choices=tuple(LEVELS), default=None,
                      help="the primary's lines and the workers' errors at this level and "
                           "above (default: the primary's from info, the workers' from "
                           "warning); the access log is not affected")
    logs.add_argument("--log-config", default=None, metavar="PATH",
                      help="a logging.config dictionary in JSON (.json) or YAML (.yaml, "
                           ".yml; needs PyYAML), or an INI file (any other name) for "
                           "fileConfig, applied in the primary and in every worker before "
                           "the application's import")
    logs.add_argument("--error-logfile", default=None, metavar="PATH",
                      help="append the primary's lines and the workers' errors to PATH "
                           "(default -: stderr)")
    recycle = common.add_argument_group(
        "recycling (a worker past a limit is replaced as in a reload, one at a time)")
    recycle.add_argument("--max-requests", type=_at_least(1), default=None, metavar="N",
                         help="recycle a worker once it has answered N requests (HTTP "
                              "requests under APP module:attribute, connections otherwise)")
    recycle.add_argument("--max-requests-jitter", type=_at_least(0), default=0, metavar="J",
                         help="add a random 0 to J to each worker's --max-requests")
    recycle.add_argument("--max-lifetime", type=_positive_seconds, default=None, metavar="S",
                         help="recycle a worker once it has lived S seconds")
    recycle.add_argument("--max-lifetime-jitter", type=_seconds, default=0.0, metavar="S",
                         help="add a random 0 to S seconds to each worker's --max-lifetime")
    recycle.add_argument("--max-rss", type=_positive_mib, default=None, metavar="MIB",
                         help="recycle a worker whose resident memory passes MIB MiB "
                              "(checked by the primary four times a second)")
    return common


def web_parser() -> Parser:
    parser = Parser(add_help=False)
    web = parser.add_argument_group("web applications (APP is module:attribute)")
    web.add_argument("-b", "--bind", action="append", default=None, metavar="ADDR",
                     help="HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N (an inherited "
                          "listening socket); repeatable (default 127.0.0.1:8000)")
    web.add_argument("--interface", choices=("auto", "asgi", "asgi3", "asgi2", "wsgi"),
                     default="auto", help="the application's interface (default: detected)")
    web.add_argument("--app-dir", default=None, metavar="DIR",
                     help="look for APP's module in DIR first: DIR goes before the current "
                          "directory on sys.path")
    web.add_argument("--factory", action="store_true",
                     help="APP names a function that returns the application")
    web.add_argument("--preload", action="store_true",
                     help="import the application once, in a template process that the "
                          "workers fork from (copy-on-write memory); a reload starts a new "
                          "template, so new code is served (by default each worker imports it)")
    web.add_argument("--access-log", action="store_true",
                     help="one line per request on stdout")
    web.add_argument("--access-logfile", default=None, metavar="PATH",
                     help="the access log, appended to PATH by each worker (-: stdout); "
                          "turns it on")
    web.add_argument("--access-log-format", type=_access_log_format, default=None,
                     metavar="FMT",
                     help="the access log's line, logged as each response ends, in "
                          "gunicorn's atoms (e.g. '%%(h)s %%(l)s %%(u)s %%(t)s \"%%(r)s\" "
                          "%%(s)s %%(b)s \"%%(f)s\" \"%%(a)s\" %%(L)s'; %%(D)s the "
                          "duration in microseconds, %%({header}i)s a request's header), "
                          "or json for one JSON object a line; turns it on")
    web.add_argument("--threads", type=_at_least(1), default=1, metavar="N",
                     help="threads per worker that run a WSGI application (default 1: "
                          "on the worker's loop, one request at a time, as gunicorn's "
                          "sync worker)")
    web.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                     help="uvicorn's HTTP implementation (default: httptools if installed)")
    web.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                     help="the ASGI lifespan protocol, run once in every worker")
    web.add_argument("--timeout-keep-alive", type=_seconds, default=5.0, metavar="S",
                     help="close a keep-alive connection idle for S seconds (default 5)")
    web.add_argument("--limit-concurrency", type=_at_least(1), default=None, metavar="N",
                     help="answer 503 beyond N connections or tasks per worker")
    web.add_argument("--limit-request-head", type=_at_least(0), default=65536,
                     metavar="BYTES",
                     help="answer 431 and close when a request's line and headers pass "
                          "BYTES (default 65536; 0: no limit)")
    web.add_argument("--timeout-request-head", type=_seconds, default=20.0,
                     metavar="S",
                     help="close a connection whose request line and headers have not come "
                          "whole S seconds after the accept, or after their first byte on a "
                          "kept-alive connection; 408 if part of them came (default 20; "
                          "0: none)")
    web.add_argument("--websocket-grace", type=_seconds, default=0.0, metavar="S",
                     help="at a reload or a stop, close open WebSockets with 1012 (service "
                          "restart) S seconds after the drain begins (default 0: at once)")
    web.add_argument("--backlog", type=_at_least(1), default=2048, metavar="N",
                     help="the listening sockets' backlog (default 2048)")
    web.add_argument("--root-path", default="", metavar="PATH",
                     help="the ASGI root_path, for an application mounted below /")
    web.add_argument("--proxy-headers", action="store_true",
                     help="trust X-Forwarded-For and X-Forwarded-Proto from "
                          "--forwarded-allow-ips")
    web.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                     help="comma-separated addresses trusted for proxy headers "
                          "(default 127.0.0.1)")
    tls = parser.add_argument_group(
        "TLS, HTTPS and WSS (uvicorn's options; the primary loads the files once, before "
        "any fork)")
    tls.add_argument("--ssl-certfile", default=None, metavar="PATH",
                     help="the server's certificate, then its chain (PEM): serve HTTPS")
    tls.add_argument("--ssl-keyfile", default=None, metavar="PATH",
                     help="its private key (PEM; default: the one in --ssl-certfile)")
    tls.add_argument("--ssl-keyfile-password", default=None, metavar="PASSWORD",
                     help="the password of an encrypted key")
    tls.add_argument("--ssl-ca-certs", default=None, metavar="PATH",
                     help="CA certificates (PEM) for clients' certificates, which are "
                          "not asked for (uvicorn's --ssl-cert-reqs default)")
    tls.add_argument("--ssl-ciphers", default=None, metavar="CIPHERS",
                     help="the OpenSSL cipher list of TLS 1.2 (default: OpenSSL's)")
    return parser


def _glob(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("an empty pattern matches nothing")
    return text


def reload_parser() -> Parser:
    """--reload and its uvicorn options: for a script as for a web
    application, so neither group holds them."""
    parser = Parser(add_help=False)
    dev = parser.add_argument_group(
        "development (a change on disk reloads the workers one by one, as SIGHUP does)")
    dev.add_argument("--reload", action="store_true",
                     help="watch the application's files and reload the workers on a "
                          "change; new code that cannot start leaves the old workers "
                          "serving (needs watchfiles, which the web extra brings)")
    dev.add_argument("--reload-dir", action="append", default=None, metavar="DIR",
                     help="watch DIR and what is below it; repeatable (default: the current "
                          "directory, and --app-dir or the script APP's directory)")
    dev.add_argument("--reload-include", action="append", type=_glob, default=None,
                     metavar="GLOB",
                     help="reload on a change to a file that matches GLOB too (a file name, "
                          "or a path with /), even one excluded by default; repeatable "
                          "(default *.py)")
    dev.add_argument("--reload-exclude", action="append", type=_glob, default=None,
                     metavar="GLOB",
                     help="never reload on a file that matches GLOB, or one in a directory "
                          "that does; repeatable (excluded by default: .* (hidden files and "
                          "directories), *.py[cod], *~, ~*)")
    return parser


# The operator's hooks, gunicorn's server hooks by name: where and when each runs.
HOOKS = (
    ("on-starting", "in the primary, before it binds or forks anything: FUNCTION()"),
    ("when-ready", "in the primary, once every worker serves, as READY=1 is sent and "
                   "--ready-file written: FUNCTION()"),
    ("post-fork", "in each worker, before it imports the application (after its fork from "
                  "--preload's template): FUNCTION(worker), the worker's cluster.worker"),
    ("worker-exit", "in the primary, at each worker's exit: FUNCTION(worker, code, signal), "
                    "as the cluster's 'exit' event"),
    ("on-reload", "in the primary, as a reload begins (SIGHUP, cluster-ext reload), "
                  "before its first fork: FUNCTION()"),
)


def config_parser() -> Parser:
    parser = Parser(add_help=False)
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="read options from the TOML file at PATH, one key an option "
                             "(default: [tool.cluster-ext] in ./pyproject.toml, if any)")
    hooks = parser.add_argument_group(
        "hooks (MODULE:FUNCTION, looked for as APP's module is; the primary imports them "
        "before anything serves; an exception is logged in one line and the fleet goes on)")
    for name, when in HOOKS:
        hooks.add_argument(f"--{name}", type=_hook, default=None, metavar="MODULE:FUNCTION",
                           help=when)
    return parser


def run_parents() -> list[Parser]:
    """What `run` takes besides APP and ARGS, before APP and after a web APP."""
    return [common_parser(), web_parser(), reload_parser(), config_parser()]


# The TLS options, as uvicorn.Config names them: a worker's Config gets
# those given, and --ssl-certfile turns TLS on.
TLS_OPTIONS = ("ssl_certfile", "ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs",
               "ssl_ciphers")


def parser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=VERSION,
                        help=VERSION_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    run = commands.add_parser("run", parents=[common, web_parser(), reload_parser(),
                                              config_parser()],
                              help="run APP as a supervised cluster",
                              description=RUN_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    # Optional here: the environment or the config file may name it (cli.config)
    run.add_argument("app", metavar="APP", nargs="?",
                     help="module:attribute of an ASGI/WSGI application, or a Python script")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="arguments for APP")
    demo = commands.add_parser(
        "demo", parents=[common],
        help="an echo service on 127.0.0.1:8000, one worker per core",
        description="An echo service: connect with `nc 127.0.0.1 8000` and type; each "
                    "line comes back with the pid of the worker that served it. Try "
                    "`kill -HUP <primary pid>` to reload, Ctrl-C to stop.")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--host", default="127.0.0.1")
    status = commands.add_parser(
        "status", help="the workers of a running cluster, from its --control socket",
        description="One row per worker of the cluster whose primary serves the control "
                    "socket PATH (--control PATH): id, pid, state, age, restarts, resident "
                    "memory, CPU %%, open connections, connections served, messages "
                    "received/sent by the primary.")
    status.add_argument("path", metavar="PATH", help="the control socket")
    status.add_argument("--json", action="store_true", help="the figures as one JSON object")
    for name, text in (("reload", "a rolling restart of a running cluster; waits for its end"),
                       ("stop", "a graceful stop of a running cluster")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("path", metavar="PATH", help="the control socket")
    scale = commands.add_parser("scale", help="a running cluster keeps N workers from now on")
    scale.add_argument("path", metavar="PATH", help="the control socket")
    scale.add_argument("n", type=_at_least(1), metavar="N", help="workers")
    return parser


CONTROL_COMMANDS = ("status", "reload", "stop", "scale")


def is_web_app(app: str) -> bool:
    """module:attribute, as gunicorn and uvicorn take it (a file of that name
    wins: it is a script)."""
    return ":" in app and not os.path.exists(app)


def default_workers(args: argparse.Namespace) -> str | None:
    """-w/--workers' default from WEB_CONCURRENCY, as gunicorn and uvicorn
    take it (a platform sets it for the machine); what is wrong with its
    value, as a usage error, or None."""
    if args.workers is None and "WEB_CONCURRENCY" in os.environ:
        try:
            args.workers = _at_least(1)(os.environ["WEB_CONCURRENCY"])
        except argparse.ArgumentTypeError as exc:
            return f"environment variable WEB_CONCURRENCY (the default of -w/--workers): {exc}"
    return None


def parse_args(argv: list[str] | None, prog: str, *,
               defaults: bool = True) -> argparse.Namespace:
    """The command line; without defaults, only what it gave (every default
    suppressed), for the layers under it (cli.config)."""
    top = parser(prog)
    if not defaults:
        _suppress_defaults(top)
    args = top.parse_args(argv)
    app = getattr(args, "app", None)
    if args.command == "run" and app is not None and is_web_app(app) and args.args:
        # uvicorn's order (APP, then options): what follows APP is ours
        rest = Parser(prog=f"{prog} run", parents=run_parents())
        if not defaults:
            _suppress_defaults(rest)
        rest.parse_args(args.args, namespace=args)
    return args


def given_options(argv: list[str] | None, prog: str) -> set[str]:
    """The options (by dest) the command line itself gave. ARGS, which
    argparse sets to [] when there are none, counts only when it has some."""
    return {dest for dest, value in vars(parse_args(argv, prog, defaults=False)).items()
            if value != []}


def _suppress_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _suppress_defaults(command)
        elif action.dest != argparse.SUPPRESS:
            action.default = argparse.SUPPRESS


def command_parser(top: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand name (argparse has no public way)."""
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]    # type: ignore[no-any-return]
    raise KeyError(name)
