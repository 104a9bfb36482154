"""IPC messages through real processes (API.md: Worker.send, handles, 'drain',
'message' order, Errors). Each scenario is an app in tests/apps/msg_*.py."""
import json

import pytest

import cluster_ext
from conftest import only_json, run_app

SERIALIZATIONS = ["json", "pickle"]


def only_json_list(lines):
    """The one JSON list line an app printed."""
    found = [json.loads(line) for line in lines if line.startswith("[")]
    assert len(found) == 1, lines
    return found[0]


@pytest.mark.parametrize("ser", SERIALIZATIONS)
def test_ten_thousand_messages_each_way_in_order(ser):
    n = 10_000
    result = only_json(run_app("msg_flood.py", ser, str(n)))
    expect = {"count": n, "in_order": True, "first_bad": None}
    assert result["primary"] == expect          # worker -> primary
    worker = dict(result["worker"])             # primary -> worker
    assert worker.pop("type") == result["type"]
    assert worker == expect
    # the setting reached both ends: a tuple stays a tuple only under pickle
    assert result["type"] == ("tuple" if ser == "pickle" else "list")


@pytest.mark.parametrize("ser", SERIALIZATIONS)
def test_eight_mib_message_each_way(ser):
    result = only_json(run_app("msg_big.py", ser))
    for side, origin in (("primary_got", "worker"), ("worker_got", "primary")):
        got = result[side]
        assert got["origin"] == origin
        assert got["len"] == 8 << 20
        assert got["got_sha"] == got["sent_sha"]
        assert got["type"] == ("bytes" if ser == "pickle" else "str")


@pytest.mark.parametrize("mode, error", [
    ("json", "TypeError"),        # an object() inside a dict
    ("pickle", "TypeError"),      # a lambda inside a dict
    ("oversize", "ValueError"),   # 2000 bytes over max_message_size=1024
])
def test_refused_message_raises_and_loses_nothing(mode, error):
    result = only_json(run_app("msg_invalid.py", mode))
    for side in ("primary_raised", "worker_raised"):
        kind, text = result[side]
        assert kind == error, result
        assert text                                # it says what was wrong
    # the messages around the refused one all arrived, in order, and nothing
    # else did: no partial frame, no stray callback of the refused send
    assert result["received"] == ["w-before", "w-after", "echo:before",
                                  "echo:OK_BIG", "echo:after"]
    assert result["stray"] == []


@pytest.mark.parametrize("ser", ["json", "pickle"])
def test_fixed_message_can_be_sent_again(ser):
    result = only_json(run_app("msg_resend.py", ser))
    first, *again = result["raised"]
    assert first and "cannot" in first
    assert again == [None, None], result["raised"]
    fixed = {"n": 1, "when": "2024-01-01"}
    assert result["echoed"] == [{"name": "job", "inner": fixed}, {"other": [fixed]}]


def test_send_callback_and_closed_channel():
    lines = run_app("msg_closed.py")
    for role in ("primary", "worker"):
        result = only_json(lines, role + " ")
        # the callback runs once, with None, after send() returned
        assert result["hello"] == {"returned": True, "callback": [["None", True]]}
        assert result["got"] == ["hello"]
        late = result["late"]
        # after 'disconnect': both sends say False ...
        assert late["returns"] == [False, False]
        closed = {"type": "ChannelClosedError", "closed": True, "broken_pipe": True,
                  "after_return": True}
        # ... the callback gets ChannelClosedError, and without a callback
        # 'error' does; both asynchronously, after send() returned
        assert sorted(late["reports"], key=lambda r: r["what"]) == [
            {"what": "callback", **closed}, {"what": "error", **closed}]


def test_channel_closed_error_is_a_broken_pipe_error():
    assert issubclass(cluster_ext.ChannelClosedError, BrokenPipeError)


def test_send_returns_false_over_high_water_mark_then_drain():
    result = only_json(run_app("msg_drain.py"))
    for side in ("primary", "worker"):
        r = result[side]
        assert r["first"] is True, r               # an empty queue takes a message
        assert 0 < r["first_false"] < 2000, r      # 2 MiB is over the mark ...
        assert r["last"] is False and r["falses"] > 0, r
        assert r["drains_during_sends"] == 0, r   # ... 'drain' comes later
        assert r["drains"] >= 1, r
        # every message was queued all the same: all arrived, in order
        assert r["got"] == 2000 and r["in_order"] is True, r


def test_socket_handle_both_ways():
    result = only_json(run_app("msg_handle.py"))
    live = {"type": "socket", "family": "AF_UNIX", "open": True}
    # primary -> worker: the worker got a live socket.socket and wrote to it;
    # the primary's own `a` stayed open and usable after the send
    assert result["send_returned"] is True
    assert result["a_after_send"] == live
    assert result["b_read"] == "primary-via-a\nworker-via-handle\n"
    worker = result["worker"]
    assert worker["handle"] == live
    # worker -> primary: cluster 'message' got (worker, message, handle) and
    # wrote to the handle; the worker's `c` stayed open
    assert worker["send_returned"] is True
    assert worker["c_after_send"] == live
    assert worker["d_read"] == "worker-via-c\nprimary-via-handle\n"
    # a message without a handle has handle None, on both listeners
    assert worker["read_d_handle"] == "None"
    assert result["worker_listener"] == [
        ["wrote", "None"], [["take"], live], [["report"], "None"]]
    assert result["cluster_listener"] == [[True, "None"], [True, live], [True, "None"]]


def test_worker_message_event_before_cluster_message_event():
    log = only_json_list(run_app("msg_order.py"))
    assert log == [
        ["worker", 1, 0, False], ["cluster", 1, 0, False],
        ["worker", 1, 1, False], ["cluster", 1, 1, False],
        ["worker", 1, 2, True], ["cluster", 1, 2, True],
    ]


@pytest.mark.parametrize("mode", ["pickle_up", "pickle_down", "json_up"])
def test_a_message_in_another_serialization_is_an_error_and_never_decoded(mode, tmp_path):
    # The sender's flags named the deserializer: a json primary unpickled a
    # frame its worker flagged pickle, and ran the payload's __reduce__
    # (here os.mkdir; in the report, os.getpid as the primary's user). The
    # channel's setting decides, on both sides; the frame is an 'error' and
    # the channel carries on.
    result = only_json(run_app("msg_foreign.py", mode, str(tmp_path)))
    log = result["log"]
    assert result["unpickled"] is False, log
    if mode == "pickle_down":       # the worker's 'error', sent up as a message
        errors = [e[1][1:] for e in log if e[0] == "message" and e[1][0] == "worker error"]
        peer, after = "the primary", ["message", ["worker got", "after"]]
    else:
        errors = [e[1:] for e in log if e[0] == "error"]
        peer, after = "worker 1", ["message", "after"]
    assert len(errors) == 1, log
    kind, text = errors[0]
    assert kind == "ValueError", log
    assert text.startswith(f"undecodable message from {peer}: "), log
    # the foreign message never arrived; the next one did
    assert [e for e in log if e[0] == "message" and e[1][0] != "worker error"] == [after], log
    assert log[-2:] == [["exit", 0, None], ["run returned"]], log
