"""What the package does differently from plain Python for speed, in one place,
each with the measurement that justifies it (CPython 3.11, best of 3 runs of
`python -X importtime`, or timeit for the codec; a worker imports the package
at every start, and the IPC codec runs once per message).

- `signal`: the C module `_signal` instead of `signal`, whose enums (and the
  `enum` module under them) cost 8.3 ms at import. `Signals` is built only
  where a name or number must become one (parse_signal, a worker's 'exit').
- `deque`: from `_collections`, not `collections` (2.6 ms).
- `MappingProxyType`, `ModuleType`: taken from objects at hand instead of
  importing `types` (0.5 ms).
- JSON: the C encoder and scanner of the json module, called directly:
  json.dumps() and json.loads() spend more in their Python wrappers than in
  the work (a small message: 8.9 us -> 2.6 us to encode, 4.5 us -> 0.8 us to
  decode). Loaded on the first message, not at start.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections import deque
    from collections.abc import Callable
    from types import MappingProxyType, ModuleType
    from typing import Any
else:
    import _signal as signal
    from _collections import deque

    MappingProxyType = type(type.__dict__)
    ModuleType = type(sys)

__all__ = ["MappingProxyType", "ModuleType", "deque", "json_decode", "json_encode", "signal"]

_json_chunks: Callable[[Any, int], list[str]] | None = None
_json_scan: Callable[[str, int], tuple[Any, int]] | None = None


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _load_json() -> tuple[Callable[[Any, int], list[str]], Callable[[str, int], tuple[Any, int]]]:
    global _json_chunks, _json_scan
    import json.encoder
    # c_make_encoder(markers, default, encoder, indent, key_separator,
    # item_separator, sort_keys, skipkeys, allow_nan): positional only
    _json_chunks = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        {}, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
        True)
    # scan_once is set by JSONDecoder.__init__, and typeshed does not declare it
    _json_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    assert _json_chunks is not None and _json_scan is not None
    return _json_chunks, _json_scan


def json_encode(message: Any) -> bytes:
    """Compact JSON; what JSON cannot hold is a TypeError (or ValueError)."""
    chunks = _json_chunks or _load_json()[0]
    try:
        return "".join(chunks(message, 0)).encode()
    except BaseException:
        chunks.markers.clear()  # type: ignore[attr-defined]   # a failed encode leaves its containers
        raise


def json_decode(payload: bytes) -> Any:
    """One JSON document; anything else is a ValueError."""
    scan = _json_scan or _load_json()[1]
    text = payload.decode()
    try:
        obj, end = scan(text, 0)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    except RecursionError:      # "[" * 1000 is enough: the scanner recurses
        raise ValueError("JSON nested too deeply") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON document at {end}")
    return obj
