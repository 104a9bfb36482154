"""What a peer sends the Python side: malformed frames must end in the
documented error, never stop a loop. Found by fuzz/py_decode_fuzz.py
(atheris); its regression inputs are in fuzz/py_corpus/ and replayed here."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import only_json, run_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", ["frames", "protocol", "control"])
def test_the_fuzzers_corpus_replays_clean(target):
    # Each input once through the fuzz target, without atheris: a user message
    # ends in 'message' or ValueError("undecodable message from ..."), a
    # server frame raises nothing out of its handler, a record decodes or is a
    # ValueError, a control line is a command or a ControlError; and no
    # descriptor is left open (fuzz/py_corpus/*/regress-*: each failed once).
    r = subprocess.run([sys.executable, str(ROOT / "fuzz" / "py_decode_fuzz.py"), target,
                        "--replay", str(ROOT / "fuzz" / "py_corpus" / target)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("replayed "), r.stdout


@pytest.mark.parametrize("mode", ["deep_json", "short_query", "short_stats", "listening_utf8"])
def test_a_malformed_frame_from_a_worker_leaves_the_primary_running(mode):
    # deep_json: RecursionError passed the hot path's `except ValueError`;
    # the server records: struct.error (not a ValueError, though _ops caught
    # ValueError for it) or UnicodeDecodeError left the handler. Either
    # stopped the primary's run().
    log = only_json(run_app("rob_malformed.py", mode))["log"]
    assert log[-1] == ["run returned"], log
    assert ["message", ["after", None]] in log, log
    assert ["exit", 0, None] in log, log
    errors = [entry for entry in log if entry[0] == "error"]
    if mode == "deep_json":
        # the scanner of 3.13 gives up on depth by itself; older ones recurse
        assert len(errors) == 1 and errors[0][:2] == ["error", "ValueError"], log
        assert errors[0][2].startswith("undecodable message from worker 1: ValueError("), log
    else:
        assert errors == [], log         # dropped, with a warning on the logger


@pytest.mark.parametrize("mode", ["long_host", "nul_path", "port_70000"])
def test_a_listen_the_primary_cannot_do_is_einval_in_the_worker(mode):
    # The primary's listen_socket() raised UnicodeError (idna: a label over
    # 63 letters), ValueError (a NUL in a path) or OverflowError (bind()'s
    # port check): only OSError was caught, so a worker's listen() stopped the
    # primary instead of failing itself.
    log = only_json(run_app("rob_malformed.py", mode))["log"]
    assert log[-1] == ["run returned"], log
    assert ["message", ["after", ["OSError", errno.EINVAL]]] in log, log
    assert ["exit", 0, None] in log, log


@pytest.mark.parametrize("role", ["primary", "worker"])
@pytest.mark.parametrize("ser", ["json", "pickle"])
def test_a_frame_in_another_serialization_is_an_error_and_never_decoded(role, ser):
    # The frame's flags chose the decoder: a json primary unpickled what a
    # worker flagged pickle, and so ran its __reduce__; a pickle side took a
    # plain JSON frame through the JSON hot path. Only the Worker's own
    # setting decodes; the frame is 'error', its descriptor is closed, and
    # the next frame arrives.
    peer = "worker 7" if role == "primary" else "the primary"
    result = only_json(run_app("peer_foreign.py", role, ser))
    assert result["payload_live"] is True, result     # the control: it would run
    assert result["called_by_frames"] == [], result
    events = result["events"]
    assert len(events) == 3, events
    for name, kind, text in events[:2]:
        assert (name, kind) == ("error", "ValueError"), events
        assert text.startswith(f"undecodable message from {peer}: "), events
    assert events[2] == ["message", ["own"], "None"], events
    assert result["fd_closed"] is True, result
