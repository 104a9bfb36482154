"""The primary's side of `cluster-ext run` and `demo`: the environment file
loaded, and what can be found wrong checked before any fork (WEB_CONCURRENCY,
--app-dir, the TLS files, the web application's spec, the files'
directories), the services opened, the lifecycle logged, and the fleet
supervised until it stops."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import cluster_ext as cluster

from .. import _primary
from .options import TLS_OPTIONS, default_workers, is_web_app

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .._protocol import Address
    from ..fleet.files import RunFile

log = logging.getLogger("cluster_ext")


def _open_services(args: argparse.Namespace) -> list[Any]:
    """--control and --metrics, before any fork: a taken path or port is a
    clear error now, not a surprise later."""
    services: list[Any] = []
    try:
        if args.control is not None:
            services.append(cluster.control(args.control))
        if args.metrics is not None:
            host, port = args.metrics
            services.append(cluster.serve_metrics(port, host))
            log.info("metrics on http://%s:%d/metrics", host, services[-1].address[1])
    except BaseException:
        for service in services:
            service.close()
        raise
    return services


def _log_lifecycle() -> None:
    cluster.on("fork", lambda w: log.info("worker %d forked (pid %d)", w.id, w.pid))
    cluster.on("online", lambda w: log.info("worker %d online", w.id))
    cluster.on("listening", lambda w, address: log.info("worker %d listening on %s",
                                                          w.id, _where(address)))
    cluster.on("disconnect", lambda w: log.info("worker %d disconnected", w.id))
    cluster.on("exit", lambda w, code, sig: log.info(
        "worker %d exited (%s%s)", w.id,
        f"code {code}" if sig is None else f"signal {sig.name}",
        ", as asked" if w.exited_after_disconnect else ""))


def _where(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def check_web(args: argparse.Namespace) -> str | None:
    """In the primary, before any fork: what stops APP from being served and
    can be told without the application's code."""
    from .. import web
    try:
        web.prepare_primary(args.app, [web.parse_bind(bind) for bind in args.bind or []],
                            factory=args.factory, interface=args.interface)
    except (ValueError, ImportError, web.AppLoadError) as exc:
        return str(exc)
    return None


def prepare(args: argparse.Namespace) -> str | None:
    """What the command line names outside itself, taken or checked before
    anything is logged, forked or written: --env-file loaded, then
    WEB_CONCURRENCY as -w's default (uvicorn's order: the file may set it),
    --app-dir a directory, the TLS files loaded, then the workers' identity
    and the umask taken. What is wrong, as a usage error, or None."""
    return (load_env_file(args) or default_workers(args) or _check_app_dir(args)
            or _check_tls(args) or _take_identity(args))


# capabilities(7): what lets a process that is not root (or a root that
# lost them, as in a container started with --cap-drop) change its ids
CAP_SETGID, CAP_SETUID = 6, 7


def _take_identity(args: argparse.Namespace) -> str | None:
    """--user and --group looked up, and set for every fork (the workers and
    --preload's template) once this process is known to be able to give
    them: a worker that cannot take its identity fails at every fork, after
    the log has begun. --umask set here, before the pid file is written:
    the primary's, which every process it starts inherits."""
    try:
        user, group = _id_of("--user", args.user), _id_of("--group", args.group)
    except ValueError as exc:
        return str(exc)
    if user is not None or group is not None:
        try:
            ids = _primary.worker_identity(user, group)
        except ValueError:
            return (f"argument --user: uid {user} has no user in the password database: "
                    "give --group too")
        assert ids is not None
        problem = _cannot_become(*ids, gid_flag="--user" if group is None else "--group")
        if problem is not None:
            return problem
        cluster.setup_primary(uid=user, gid=group)
    if args.umask is not None:
        os.umask(args.umask)
    return None


def _id_of(flag: str, name: str | None) -> int | None:
    """--user's uid or --group's gid: a number as it is (gunicorn's), else
    the name looked up here, not in every worker that parses the same
    command line. ValueError says what is wrong, as a usage error."""
    if name is None:
        return None
    if name.isascii() and name.isdigit():
        if int(name) > 0x7FFFFFFF:           # what setuid() and setgid() take
            raise ValueError(f"argument {flag}: an id is at most 2147483647, not {name}")
        return int(name)
    import grp
    import pwd
    try:
        return pwd.getpwnam(name).pw_uid if flag == "--user" else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"argument {flag}: no such {flag[2:]}: {name!r}") from None


def _cannot_become(groups: list[int] | None, gid: int, uid: int, *,
                   gid_flag: str) -> str | None:
    """Why a worker could not take these ids from this process, as a usage
    error, or None: setuid() to a uid not its own needs CAP_SETUID, and
    setgroups() or setgid() to a gid not its own CAP_SETGID."""
    if uid >= 0 and uid not in os.getresuid() and not _capable(CAP_SETUID):
        return (f"argument --user: the workers cannot become uid {uid}: that needs root's "
                f"CAP_SETUID, which this primary (uid {os.geteuid()}) lacks")
    if ((groups is not None or (gid >= 0 and gid not in os.getresgid()))
            and not _capable(CAP_SETGID)):
        return (f"argument {gid_flag}: the workers cannot take gid {gid}: that needs root's "
                f"CAP_SETGID, which this primary (uid {os.geteuid()}) lacks")
    return None


def _capable(capability: int) -> bool:
    """Whether this process holds capability (its effective set)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> capability & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _check_app_dir(args: argparse.Namespace) -> str | None:
    app_dir = getattr(args, "app_dir", None)
    if app_dir is None or os.path.isdir(app_dir):
        return None
    why = "not a directory" if os.path.exists(app_dir) else "no such directory"
    return f"argument --app-dir: {app_dir}: {why}"


def _check_tls(args: argparse.Namespace) -> str | None:
    """The TLS files loaded here once, as each worker's uvicorn.Config loads
    them (cheap: files and a key check, no handshake), so that a missing or
    unreadable file, a key that is not the certificate's, a wrong password
    or a cipher list OpenSSL refuses is one line before any fork, not the
    boot failure of every worker."""
    given = [name for name in TLS_OPTIONS if getattr(args, name, None) is not None]
    if not given:
        return None
    if args.ssl_certfile is None:    # uvicorn: plain HTTP, or a failed assert
        return f"argument {_flag(given[0])}: needs --ssl-certfile"
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        path = getattr(args, name)
        why = None if path is None else _unreadable(path)
        if why is not None:
            return f"argument {_flag(name)}: {why}"
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)      # uvicorn's protocol
    for name in ("ssl_certfile", "ssl_ca_certs"):
        path = getattr(args, name)
        try:
            if path is not None:
                context.load_verify_locations(path)
        except ssl.SSLError:
            return f"argument {_flag(name)}: {path}: no PEM certificate in it"
    key_name = "ssl_keyfile" if args.ssl_keyfile is not None else "ssl_certfile"
    key, password = getattr(args, key_name), args.ssl_keyfile_password
    try:
        # A callback: without one, OpenSSL asks for a missing password on
        # the terminal.
        context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile, lambda: password or "")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return (f"argument {_flag(key_name)}: {key}: not the key of the certificate "
                    f"in {args.ssl_certfile}")
        hints = [] if args.ssl_keyfile is not None else ["give the key with --ssl-keyfile"]
        hints.append("check --ssl-keyfile-password" if password else
                     "an encrypted key needs --ssl-keyfile-password")
        return (f"argument {_flag(key_name)}: {key}: no PEM private key that can be read "
                f"({'; '.join(hints)})")
    try:
        if args.ssl_ciphers is not None:
            context.set_ciphers(args.ssl_ciphers)
    except ssl.SSLError:
        return f"argument --ssl-ciphers: OpenSSL selects no cipher from {args.ssl_ciphers!r}"
    return None


def _flag(name: str) -> str:
    """An option's flag from its name in the namespace: ssl_keyfile, --ssl-keyfile."""
    return "--" + name.replace("_", "-")


def load_env_file(args: argparse.Namespace) -> str | None:
    """--env-file's variables set in the primary's environment before any
    fork, so that every worker and preload's template inherit them, as
    uvicorn sets them in its own process; a variable already set keeps its
    value (python-dotenv's default, which uvicorn keeps). What is wrong, as
    a usage error, or None."""
    if args.env_file is None:
        return None
    why = _unreadable(args.env_file)
    if why is not None:
        return f"argument --env-file: {why}"
    try:
        import dotenv
    except ImportError:
        return ("argument --env-file: needs python-dotenv: pip install python-dotenv "
                "(the web extra brings it)")
    dotenv.load_dotenv(dotenv_path=args.env_file)
    return None


def _unreadable(path: str) -> str | None:
    """Why the file at path cannot be read, or None."""
    try:
        open(path, "rb").close()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return None


PATH_OPTIONS = (("--pid-file", "pid_file"), ("--ready-file", "ready_file"),
                ("--control", "control"))


def _unwritable_directory(path: str) -> str | None:
    """Why no file can be made at path because of its directory, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        return f"{path}: its directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{path}: its directory {directory} is not writable"
    return None


def claim_files(args: argparse.Namespace) -> tuple[RunFile | None, str | None]:
    """Every path option's directory checked (--bind unix:PATH's too),
    --pid-file written and --ready-file's path made way for (as supervise()
    does), before anything is logged or forked, so that a path in use or
    that cannot be written is one line and exit 2, as a bad argument is.
    Returns (the pid file, None) or (None, what is wrong)."""
    from ..fleet import files
    paths = [(flag, getattr(args, name)) for flag, name in PATH_OPTIONS]
    paths += [("-b/--bind", bind[len("unix:"):]) for bind in getattr(args, "bind", None) or ()
              if bind.startswith("unix:")]
    for flag, path in paths:
        why = _unwritable_directory(path) if path else None
        if why is not None:
            return None, f"argument {flag}: {why}"
    pid_file = None
    flag = "--pid-file"
    try:
        if args.pid_file:
            pid_file = files.claim(os.path.abspath(args.pid_file), f"{os.getpid()}\n")
        flag = "--ready-file"
        if args.ready_file:
            files.make_way(os.path.abspath(args.ready_file))
            files.probe(os.path.abspath(args.ready_file))
    except OSError as exc:
        if pid_file is not None:
            pid_file.remove("pid file")
        return None, f"argument {flag}: {exc.filename}: {exc.strerror or exc}"
    return pid_file, None


def supervise(args: argparse.Namespace) -> int:
    """The primary of `run` and `demo`, its files claimed."""
    if args.sched is not None:
        cluster.scheduling_policy = cluster.SCHED_NONE if args.sched == "none" \
            else cluster.SCHED_RR
    try:
        services = _open_services(args)
    except (OSError, ImportError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    _log_lifecycle()
    what = args.app if args.command == "run" else f"the demo on {args.host}:{args.port}"
    heartbeat = args.heartbeat_timeout or None          # 0: off
    log.info("primary %d: supervising %s workers running %s (heartbeat %s)", os.getpid(),
             args.workers or os.cpu_count(), what,
             f"{heartbeat:g} s" if heartbeat else "off")
    preloading = None
    try:
        if args.command == "run" and is_web_app(args.app) and args.preload:
            from .. import web
            try:
                preloading = web.start_preload()
            except web.AppLoadError as exc:
                log.error("cannot serve %s: %s", args.app, str(exc).rstrip())
                return 2
            assert preloading.current is not None
            log.info("preload template %d imported %s", preloading.current.pid, args.app)
        cluster.supervise(args.workers, graceful_timeout=args.graceful_timeout,
                          heartbeat_timeout=heartbeat,
                          ready_file=args.ready_file, drain_delay=args.drain_delay,
                          max_requests=args.max_requests,
                          max_requests_jitter=args.max_requests_jitter,
                          max_lifetime=args.max_lifetime,
                          max_lifetime_jitter=args.max_lifetime_jitter, max_rss=args.max_rss)
    except cluster.CrashLoopError as exc:
        log.error("stopped: %s", exc)
        return 1
    except cluster.BootError as exc:
        if exc.load_error and args.command == "run" and is_web_app(args.app):
            # a worker found the spec wrong: as the primary reports it
            log.error("cannot serve %s: %s", args.app, exc.reason.rstrip())
            return 2
        log.error("stopped: %s", exc)
        return 3
    except OSError as exc:
        if exc.filename != sys.executable:
            raise
        # The first worker (or the template) could not be exec'd: the
        # workers' user cannot run the interpreter, not a defect to trace.
        uid = cluster.settings["uid"]
        who = "" if uid is None else f" as uid {uid}"
        log.error("cannot start: the workers cannot run %s%s: %s (they must be able to run "
                  "the interpreter and read the application)", exc.filename, who,
                  exc.strerror)
        return 2
    finally:
        if preloading is not None:
            preloading.close()
        for service in services:
            service.close()
    log.info("primary %d: all workers stopped", os.getpid())
    return 0
