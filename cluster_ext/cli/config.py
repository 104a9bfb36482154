"""`cluster-ext run`'s options from outside its command line: the
environment (CLUSTER_EXT_<OPTION>) and a TOML file (--config PATH, else the
table [tool.cluster-ext] of ./pyproject.toml). Every option of `run` is a
key, found in the parser itself, and every value goes through the option's
own argparse type, so that a bad one says what the command line would say,
after where it was. The command line wins over the environment, the
environment over the file.

The primary settles them once, before anything is forked, and hands what it
took to the workers and --preload's template (TAKEN, in their environment),
which never read the file or the variables themselves: a file edited while
the fleet runs, or a variable --env-file sets, can neither make one worker
differ from the others nor fail a respawn."""
from __future__ import annotations

import argparse
import os
import sys

from .. import _runtime
from .options import command_parser, given_options, is_web_app, parser

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENV_PREFIX = "CLUSTER_EXT_"
TAKEN = "CLUSTER_EXT_CONFIGURED"         # JSON {key: value}, from the primary to its workers
PYPROJECT = "pyproject.toml"
TABLE = "cluster-ext"                    # [tool.cluster-ext]
ORIGINS = "config_origins"               # the namespace's: flag -> where its value came from
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ConfigError(Exception):
    """What is wrong with one value, to be said after where it was."""


def settle(args: argparse.Namespace, argv: list[str] | None, prog: str) -> str | None:
    """args completed from the environment and the config file (in the
    primary), or from what the primary took (in a worker or the template).
    What is wrong, as a usage error, or None."""
    if args.command != "run":
        return None
    setattr(args, ORIGINS, {})
    if not _runtime.is_primary:
        taken = os.environ.get(TAKEN)
        if taken:                        # checked by the primary: nothing can fail here
            import json
            run = command_parser(parser(prog), "run")
            options = keys(run)
            for key, value in json.loads(taken).items():
                give(run, args, options[key], value)
        return None
    try:
        _settle(args, argv, prog)
    except ConfigError as exc:
        return str(exc)
    if args.app is None:
        return "the following arguments are required: APP (or app in the config file)"
    return None


def _settle(args: argparse.Namespace, argv: list[str] | None, prog: str) -> None:
    run = command_parser(parser(prog), "run")
    options = keys(run)
    given = given_options(argv, prog)
    from_env = _from_environment(options)
    config = _config_file(args, given)
    from_file = _from_file(*config, options) if config is not None else []
    # Each layer checked whole, a value the command line overrides included.
    for key, value, where in (*from_file, *from_env):
        try:
            give(run, argparse.Namespace(), options[key], value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    chosen = {options[key].dest: (key, value, where)
              for key, value, where in (*from_file, *from_env)}     # the environment's last
    taken: dict[str, Any] = {}
    for dest, (key, value, where) in chosen.items():
        if dest not in given:
            give(run, args, options[key], value)
            taken[key] = value
            getattr(args, ORIGINS).update(dict.fromkeys(options[key].option_strings, where))
    if "args" in taken and args.app is not None and is_web_app(args.app):
        raise ConfigError(f"{chosen['args'][2]}: ARGS are a script's arguments; a web "
                          "application's options are keys of their own")
    if taken:
        import json
        os.environ[TAKEN] = json.dumps(taken)
    else:
        os.environ.pop(TAKEN, None)


def keys(run: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option of run by its key: the long flag without its dashes
    (graceful-timeout), APP and ARGS as app and args; --config names the
    file itself, and is not one."""
    found = {}
    for action in run._actions:
        if action.dest in (argparse.SUPPRESS, "config"):     # --help, --version
            continue
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if flags or not action.option_strings:
            found[flags[0][2:] if flags else action.dest] = action
    return found


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace("-", "_")


def _from_environment(options: dict[str, argparse.Action]) -> list[tuple[str, Any, str]]:
    """(key, value, where) for each CLUSTER_EXT_<OPTION> set; a value typed
    as TOML would type it: a flag's true or false, a list's items split as
    a shell splits them."""
    found = []
    for key, action in options.items():
        name = env_name(key)
        text = os.environ.get(name)
        if text is None:
            continue
        where = f"environment variable {name}"
        value: Any = text
        if action.nargs == 0:
            if text.lower() not in TRUE + FALSE:
                raise ConfigError(f"{where}: takes 1 or 0 (true or false, yes or no, on or "
                                  f"off), not {text!r}")
            value = text.lower() in TRUE
        elif _takes_many(action):
            import shlex
            try:
                value = shlex.split(text)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}, as a shell splits it") from None
        found.append((key, value, where))
    return found


def _config_file(args: argparse.Namespace, given: set[str]) -> tuple[str, bool] | None:
    """(the file, whether its options are in [tool.cluster-ext]) or None:
    --config, else CLUSTER_EXT_CONFIG, else ./pyproject.toml if there is one
    (gunicorn's order: a file named wins over the default one, which is then
    not read at all)."""
    path = args.config if "config" in given else os.environ.get(env_name("config"))
    if path is None:
        return (PYPROJECT, True) if os.path.isfile(PYPROJECT) else None
    return path, os.path.basename(path) == PYPROJECT


def _from_file(path: str, in_table: bool,
               options: dict[str, argparse.Action]) -> list[tuple[str, Any, str]]:
    """(key, value, where) for each key of the file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:       # the same parser, before the standard library took it
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"argument --config: {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    label = path
    if in_table:
        label = f"{path} [tool.{TABLE}]"
        tool = document.get("tool")
        tool = tool if isinstance(tool, dict) else {}
        if "cluster_ext" in tool:
            raise ConfigError(f"{path}: [tool.cluster_ext]: the table is [tool.{TABLE}]")
        document = tool.get(TABLE, {})
        if not isinstance(document, dict):
            raise ConfigError(f"{label}: a table, not {_shown(document)}")
    found: dict[str, tuple[str, Any, str]] = {}
    written_as: dict[str, str] = {}
    for written, value in document.items():
        key = written.replace("_", "-")
        where = f"{label}: {written}"
        if key not in options:
            raise ConfigError(f"{where}: {_unknown(key, options)}")
        if key in found:
            raise ConfigError(f"{where}: given twice, as {written_as[key]} and {written}")
        found[key], written_as[key] = (key, value, where), written
    return list(found.values())


def _unknown(key: str, options: dict[str, argparse.Action]) -> str:
    if key == "config":
        return "a config file cannot name another"
    import difflib
    close = difflib.get_close_matches(key, options, n=1)
    return "not an option of cluster-ext run" + (f" (did you mean {close[0]}?)" if close else "")


def give(run: argparse.ArgumentParser, namespace: argparse.Namespace,
         action: argparse.Action, value: Any) -> None:
    """value, typed as TOML types it, given to action as the command line
    gives it: a flag's true or false, one value (a string or a number), a
    list for a repeatable option (or one value) and for ARGS. ConfigError:
    what is wrong, as the command line would say it."""
    if action.nargs == 0:                # a flag
        if not isinstance(value, bool):
            raise ConfigError(f"takes true or false, not {_shown(value)}")
        negative = next((flag for flag in action.option_strings if flag.startswith("--no-")),
                        None)
        if value or negative is not None:
            action(run, namespace, [], action.option_strings[0] if value else negative)
        else:
            setattr(namespace, action.dest, action.default)
        return
    if _takes_many(action) and isinstance(value, list):
        calls = [[_text(item) for item in value]]
        if isinstance(action, argparse._AppendAction):   # one call per value
            calls = [[text] for text in calls[0]]
    elif _takes_many(action) and not isinstance(action, argparse._AppendAction):
        raise ConfigError(f"takes a list of strings, not {_shown(value)}")
    else:
        calls = [[_text(value)]]
    for texts in calls:
        try:
            action(run, namespace, run._get_values(action, texts), action.option_strings[0]
                   if action.option_strings else None)
        except argparse.ArgumentError as exc:
            raise ConfigError(exc.message) from None


def _takes_many(action: argparse.Action) -> bool:
    """Repeatable (--bind), or more than one value (ARGS)."""
    return isinstance(action, argparse._AppendAction) or action.nargs not in (None, "?")


def _text(value: Any) -> str:
    """One value as the command line has it: a string, or a number written out."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"takes a string or a number, not {_shown(value)}")
    return str(value)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    return "a table" if isinstance(value, dict) else f"a {type(value).__name__}"


def locate(args: argparse.Namespace, problem: str) -> str:
    """A usage error found after parsing ("argument -b/--bind: why") said of
    where its value came from, when that was the environment or the file."""
    head, _, why = problem.partition(": ")
    origins = getattr(args, ORIGINS, {})
    if head.startswith("argument "):
        for flag in head[len("argument "):].split("/"):
            if flag in origins:
                return f"{origins[flag]}: {why}"
    return problem
