"""cluster_ext.events.EventEmitter in isolation (API.md, EventEmitter): no
processes, no loop."""
import pytest

from cluster_ext.events import EventEmitter


@pytest.fixture
def em():
    return EventEmitter()


def recorder(log, tag):
    """A listener that appends (tag, args) to log."""
    def fn(*args):
        log.append((tag, args))
    return fn


# ---- on / emit --------------------------------------------------------------

def test_on_returns_self_and_listener_gets_args(em):
    log = []
    assert em.on("x", recorder(log, "a")) is em
    assert em.emit("x", 1, "two", None) is True
    assert log == [("a", (1, "two", None))]


def test_emit_return_value(em):
    assert em.emit("nobody") is False
    em.on("x", lambda: None)
    assert em.emit("x") is True
    assert em.emit("y") is False          # another event has no listener


def test_listeners_run_in_order_added(em):
    log = []
    for tag in "abcde":
        em.on("x", recorder(log, tag))
    em.emit("x")
    assert [t for t, _ in log] == list("abcde")


def test_same_function_added_twice_runs_twice(em):
    log = []
    fn = recorder(log, "a")
    em.on("x", fn).on("x", fn)
    em.emit("x")
    assert len(log) == 2 and em.listener_count("x") == 2
    em.off("x", fn)                       # removes one registration only
    assert em.listener_count("x") == 1
    log.clear()
    em.emit("x")
    assert len(log) == 1


def test_decorator_form(em):
    log = []

    @em.on("x")
    def handler(v):
        log.append(v)

    # the decorator returns the function itself, so it can still be off()'ed
    assert callable(handler) and not isinstance(handler, EventEmitter)
    assert em.listeners("x") == [handler]
    em.emit("x", 42)
    assert log == [42]
    em.off("x", handler)
    assert em.emit("x", 43) is False
    assert log == [42]


def test_decorator_form_once(em):
    log = []

    @em.once("x")
    def handler(v):
        log.append(v)

    em.emit("x", 1)
    em.emit("x", 2)
    assert log == [1]


def test_events_are_independent(em):
    log = []
    em.on("a", recorder(log, "a"))
    em.on("b", recorder(log, "b"))
    em.emit("b", 1)
    assert log == [("b", (1,))]


# ---- once -------------------------------------------------------------------------

def test_once_fires_once(em):
    log = []
    assert em.once("x", recorder(log, "o")) is em
    assert em.emit("x", 1) is True
    assert em.emit("x", 2) is False       # nothing left
    assert log == [("o", (1,))]
    assert em.listener_count("x") == 0


def test_once_fires_once_even_with_nested_emit(em):
    log = []

    def outer(n):
        log.append(("outer", n))
        em.emit("x", n + 1)               # re-entrant emit of the same event

    em.once("x", outer)
    em.once("x", recorder(log, "second"))
    em.on("x", recorder(log, "always"))
    em.emit("x", 0)
    # outer once; the nested emit ran 'second' and 'always'; the outer loop
    # must then skip 'second' (already fired) but run 'always' again.
    assert log == [("outer", 0), ("second", (1,)), ("always", (1,)), ("always", (0,))]
    log.clear()
    em.emit("x", 5)
    assert log == [("always", (5,))]


def test_once_listener_sees_itself_removed(em):
    seen = []
    em.once("x", lambda: seen.append(em.listener_count("x")))
    em.emit("x")
    assert seen == [0]                    # removed before the call, as in Node


def test_off_removes_once_listener_by_original_function(em):
    log = []
    fn = recorder(log, "o")
    em.once("x", fn)
    assert em.listeners("x") == [fn]      # listeners() shows the original function
    em.off("x", fn)
    assert em.listener_count("x") == 0
    assert em.emit("x") is False
    assert log == []


def test_mixed_on_and_once_keep_order(em):
    log = []
    em.on("x", recorder(log, "a"))
    em.once("x", recorder(log, "b"))
    em.on("x", recorder(log, "c"))
    em.emit("x")
    em.emit("x")
    assert [t for t, _ in log] == ["a", "b", "c", "a", "c"]


# ---- off / remove_listener / remove_all_listeners ------------------------------

def test_off_and_remove_listener(em):
    log = []
    a, b = recorder(log, "a"), recorder(log, "b")
    em.on("x", a).on("x", b)
    assert em.off("x", a) is em
    em.emit("x")
    assert log == [("b", ())]
    assert em.remove_listener("x", b) is em
    assert em.emit("x") is False
    assert em.listeners("x") == []


def test_off_unknown_is_harmless(em):
    fn = lambda: None  # noqa: E731
    assert em.off("nothing", fn) is em
    em.on("x", lambda: None)
    assert em.off("x", fn) is em
    assert em.listener_count("x") == 1


def test_remove_all_listeners(em):
    log = []
    em.on("a", recorder(log, "a")).on("a", recorder(log, "a2"))
    em.on("b", recorder(log, "b"))
    assert em.remove_all_listeners("a") is em
    assert em.emit("a") is False
    assert em.emit("b") is True
    assert em.remove_all_listeners() is em
    assert em.emit("b") is False
    assert log == [("b", ())]
    assert em.listener_count("a") == 0 and em.listener_count("b") == 0


def test_removing_during_emit_does_not_affect_current_emit(em):
    log = []
    b = recorder(log, "b")

    def a():
        log.append(("a", ()))
        em.off("x", b)                    # b is later in this emit's snapshot
        em.on("x", recorder(log, "late")) # added now: only from the next emit

    em.on("x", a)
    em.on("x", b)
    em.emit("x")
    assert [t for t, _ in log] == ["a", "b"]
    log.clear()
    em.emit("x")
    assert [t for t, _ in log] == ["a", "late"]


def test_remove_all_during_emit_does_not_affect_current_emit(em):
    log = []
    em.on("x", lambda: (log.append("a"), em.remove_all_listeners("x")))
    em.on("x", lambda: log.append("b"))
    em.emit("x")
    assert log == ["a", "b"]
    assert em.emit("x") is False


# ---- listeners / listener_count / prepend_listener --------------------------------

def test_listeners_and_count(em):
    a, b = (lambda: None), (lambda: None)
    assert em.listeners("x") == [] and em.listener_count("x") == 0
    em.on("x", a)
    em.once("x", b)
    assert em.listeners("x") == [a, b]
    assert em.listener_count("x") == 2
    # listeners() returns a copy: mutating it does not change the emitter
    em.listeners("x").clear()
    assert em.listener_count("x") == 2


def test_prepend_listener(em):
    log = []
    em.on("x", recorder(log, "a"))
    em.on("x", recorder(log, "b"))
    assert em.prepend_listener("x", recorder(log, "first")) is em
    em.emit("x")
    assert [t for t, _ in log] == ["first", "a", "b"]
    assert em.listener_count("x") == 3


def test_prepend_listener_decorator(em):
    log = []
    em.on("x", recorder(log, "a"))

    @em.prepend_listener("x")
    def first():
        log.append(("first", ()))

    em.emit("x")
    assert [t for t, _ in log] == ["first", "a"]


# ---- 'error' and misuse -----------------------------------------------------------

def test_error_without_listener_raises_the_exception(em):
    exc = ValueError("boom")
    with pytest.raises(ValueError) as info:
        em.emit("error", exc)
    assert info.value is exc


def test_error_without_listener_non_exception_is_runtime_error(em):
    with pytest.raises(RuntimeError, match="boom"):
        em.emit("error", "boom")
    with pytest.raises(RuntimeError):
        em.emit("error")


def test_error_with_listener_is_delivered_not_raised(em):
    got = []
    em.on("error", got.append)
    exc = OSError(5, "io")
    assert em.emit("error", exc) is True
    assert got == [exc]


def test_error_raises_again_once_listener_removed(em):
    fn = lambda e: None  # noqa: E731
    em.once("error", fn)
    em.emit("error", KeyError("k"))       # handled by the once listener
    with pytest.raises(KeyError):
        em.emit("error", KeyError("k2"))


def test_exception_in_listener_propagates_to_emit(em):
    log = []
    em.on("x", lambda: 1 / 0)
    em.on("x", lambda: log.append("after"))
    with pytest.raises(ZeroDivisionError):
        em.emit("x")
    assert log == []                      # as in Node: the emit stops there


@pytest.mark.parametrize("method", ["on", "once", "prepend_listener"])
@pytest.mark.parametrize("bad", [42, "name", [1]])
def test_non_callable_listener_is_type_error(em, method, bad):
    with pytest.raises(TypeError):
        getattr(em, method)("x", bad)
    assert em.listener_count("x") == 0


def test_non_callable_through_decorator_is_type_error(em):
    with pytest.raises(TypeError):
        em.on("x")(42)
    assert em.listener_count("x") == 0
