"""The application a spec names ("module:attribute"): checked in the
primary without running its code, loaded in the workers, and its interface
(ASGI 3, ASGI 2 or WSGI) told from what it is."""
from __future__ import annotations

import importlib
import inspect
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INTERFACES = ("auto", "asgi", "asgi3", "asgi2", "wsgi")


class AppLoadError(Exception):
    """An application spec that does not name an application."""


# ---- the application ----------------------------------------------------------------

def _split_spec(spec: str) -> tuple[str, str]:
    """"module.path:attribute" -> (module, attribute), each made of dotted
    names, or the AppLoadError that says how a spec is written."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not all(module_name.split(".")) or not all(attr.split(".")):
        raise AppLoadError(f"{spec!r}: an application is named as 'module:attribute', "
                           "for example 'myproject.asgi:application'")
    look_in()
    return module_name, attr


def look_in(app_dir: str | None = None) -> None:
    """The current directory on sys.path, where gunicorn and uvicorn look for
    an application's module, and app_dir (uvicorn's --app-dir) before it."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if app_dir is not None:
        sys.path.insert(0, os.path.abspath(app_dir))


def _no_module(spec: str, name: str) -> AppLoadError:
    return AppLoadError(f"{spec!r}: no module named {name!r} "
                        f"(looked in {os.getcwd()} and sys.path)")


def check_spec(spec: str) -> None:
    """What the primary can tell of a spec without running any of the
    application's code: its form, and that its top-level module is there.
    importlib.util.find_spec() of a top-level name asks the finders of
    sys.meta_path and imports nothing; of a dotted name it would import the
    parent packages, whose __init__ is the application's code, and a parent
    may extend its own __path__, so nothing below the top level can be
    judged without the import. That, the attribute and its interface are
    left to the workers, which report what is wrong as the same
    AppLoadError (BootError.load_error)."""
    module_name, _ = _split_spec(spec)
    top = module_name.partition(".")[0]
    import importlib.util
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):   # a finder's own error, or a module without __spec__
        return                          # the workers' import tells
    if found is None:
        raise _no_module(spec, top)


def load_app(spec: str, *, factory: bool = False) -> Any:
    """The object that "module.path:attribute" names (attribute may be dotted),
    imported as gunicorn and uvicorn do, with the current directory on
    sys.path; with factory, the result of calling it."""
    module_name, attr = _split_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit too: an app that exits on import
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and module_name.startswith(missing) and \
                module_name[len(missing):][:1] in ("", "."):   # the spec's own module
            raise _no_module(spec, missing) from None
        raise AppLoadError(f"{spec!r}: importing {module_name!r} failed:\n"
                           f"{traceback_of(exc, application=True)}") from None
    app: Any = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(f"{spec!r}: module {module_name!r} has no attribute "
                               f"{attr!r}") from None
    if factory:
        if not callable(app):
            raise AppLoadError(f"{spec!r}: --factory, but {attr!r} is not callable")
        try:
            app = app()
        except Exception as exc:
            raise AppLoadError(f"{spec!r}: the factory failed:\n{traceback_of(exc)}") from None
    if not callable(app):
        raise AppLoadError(f"{spec!r} is not an application: a {type(app).__name__} "
                           "object is not callable")
    return app


def traceback_of(exc: BaseException, *, application: bool = False) -> str:
    """exc and its traceback; with application, an import's, from the
    application's first frame: load_app()'s and importlib's own are not the
    user's to read (with none of the application's, as for a SyntaxError
    raised by the compiler, the exception alone, which says where it is)."""
    import traceback
    tb = exc.__traceback__
    while application and tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (name == __file__ or name.startswith("<frozen importlib")
                or os.path.basename(os.path.dirname(name)) == "importlib"):
            break
        tb = tb.tb_next
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def detect_interface(app: Any) -> str:
    """'asgi3', 'asgi2' or 'wsgi' for an application object, as uvicorn tells
    ASGI 3 from ASGI 2, and WSGI by its two arguments: a coroutine function
    (or an object whose __call__ is one) is ASGI 3, and so is a class whose
    instances are awaitable; any other callable of (environ, start_response)
    is WSGI, and of (scope) alone (a class, typically) ASGI 2."""
    if inspect.isclass(app) and hasattr(app, "__await__"):
        return "asgi3"
    call = app if inspect.isroutine(app) or inspect.isclass(app) else type(app).__call__
    if inspect.iscoroutinefunction(call):
        return "asgi3"
    try:
        params = [p for p in inspect.signature(app).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        raise AppLoadError(f"cannot tell the interface of {app!r}: name it with "
                           "--interface asgi3, asgi2 or wsgi") from None
    if len(params) == 2:
        return "wsgi"
    if len(params) == 1:
        return "asgi2"
    return "asgi3"                      # (scope, receive, send) behind a plain function
