"""EventEmitter: Node's events.EventEmitter, in plain Python.

Listeners run in the order added; an exception in a listener propagates to
the caller of emit(), as in Node. Emitting 'error' with no listener raises it.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing costs milliseconds at every worker's start
    from collections.abc import Callable
    from typing import Any, TypeAlias, TypeVar, overload

    from typing_extensions import Self

    _L = TypeVar("_L", bound=Callable[..., Any])

__all__ = ["EventEmitter"]

# A string at run time (the annotation is not evaluated), an alias to type checkers.
Listener: TypeAlias = "Callable[..., Any]"


class _Entry:
    __slots__ = ("fn", "once", "fired")

    def __init__(self, fn: Listener, once: bool) -> None:
        self.fn, self.once, self.fired = fn, once, False


class EventEmitter:
    """Node's EventEmitter: on, once, off, emit, listeners, prepend_listener."""

    # Listener lists are tuples, replaced on change: emit() needs no copy to
    # keep changes made by a listener out of the emit in progress.
    _events: dict[str, tuple[_Entry, ...]]

    def __init__(self) -> None:
        self._events = {}

    if TYPE_CHECKING:   # with fn, the emitter; without, a decorator
        @overload
        def on(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...
        @overload
        def on(self, event: str, fn: Listener) -> Self: ...

    def on(self, event: str, fn: Listener | None = None) -> Any:
        """Adds fn for event; without fn, returns a decorator."""
        if fn is None or not callable(fn):
            return self._add(event, fn, once=False, prepend=False)
        entries = self._events.get(event)      # the common case, kept short
        self._events[event] = (*entries, _Entry(fn, False)) if entries else (_Entry(fn, False),)
        return self

    add_listener = on

    if TYPE_CHECKING:
        @overload
        def once(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...
        @overload
        def once(self, event: str, fn: Listener) -> Self: ...

    def once(self, event: str, fn: Listener | None = None) -> Any:
        """Like on(), but fn runs at most once."""
        return self._add(event, fn, once=True, prepend=False)

    if TYPE_CHECKING:
        @overload
        def prepend_listener(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...
        @overload
        def prepend_listener(self, event: str, fn: Listener) -> Self: ...

    def prepend_listener(self, event: str, fn: Listener | None = None) -> Any:
        """Like on(), but fn runs before the listeners already there."""
        return self._add(event, fn, once=False, prepend=True)

    if TYPE_CHECKING:
        @overload
        def prepend_once_listener(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...
        @overload
        def prepend_once_listener(self, event: str, fn: Listener) -> Self: ...

    def prepend_once_listener(self, event: str, fn: Listener | None = None) -> Any:
        return self._add(event, fn, once=True, prepend=True)

    def _add(self, event: str, fn: Listener | None, *, once: bool, prepend: bool) -> Any:
        if fn is None:                       # decorator form: @worker.on("exit")
            def register(f: Listener) -> Listener:
                self._add(event, f, once=once, prepend=prepend)
                return f
            return register
        if not callable(fn):
            raise TypeError(f"listener must be callable, not {type(fn).__name__}")
        entries = self._events.get(event, ())
        entry = _Entry(fn, once)
        self._events[event] = (entry, *entries) if prepend else (*entries, entry)
        return self

    def off(self, event: str, fn: Listener) -> Self:
        """Removes the most recently added registration of fn for event."""
        entries = self._events.get(event, ())
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].fn == fn:
                self._discard(event, entries[i])
                break
        return self

    remove_listener = off

    def remove_all_listeners(self, event: str | None = None) -> Self:
        if event is None:
            self._events.clear()
        else:
            self._events.pop(event, None)
        return self

    def listeners(self, event: str) -> list[Listener]:
        return [e.fn for e in self._events.get(event, ())]

    def listener_count(self, event: str) -> int:
        return len(self._events.get(event, ()))

    def event_names(self) -> list[str]:
        return list(self._events)

    def _discard(self, event: str, entry: _Entry) -> None:
        entries = tuple(e for e in self._events.get(event, ()) if e is not entry)
        if entries:
            self._events[event] = entries
        else:
            self._events.pop(event, None)

    def emit(self, event: str, *args: Any) -> bool:
        """Calls every listener of event with args; False if there was none."""
        entries = self._events.get(event)
        if not entries:
            if event == "error":             # Node: an unheard 'error' is thrown
                err = args[0] if args else None
                if isinstance(err, BaseException):
                    raise err
                raise RuntimeError(f"unhandled 'error' event: {err!r}")
            return False
        for entry in entries:                # a snapshot: changes apply from the next emit
            if entry.once:
                if entry.fired:              # a nested emit already ran it
                    continue
                entry.fired = True
                self._discard(event, entry)  # removed before the call, as in Node
            entry.fn(*args)
        return True
