"""fork(target=...) beside exec'ed workers."""
import pytest

from conftest import json_lines, only_json, run_app


def test_target_and_exec_workers_share_the_primary():
    result = json_lines(run_app("fork_mix.py"))[0]
    assert result["replies"] == {str(i): f"hello {i}" for i in range(1, 5)}


@pytest.mark.parametrize("mode", ["target", "exec"])
def test_a_worker_that_disconnects_loses_nothing_it_wrote(tmp_path, mode):
    """Defect J, and the exit of both kinds of worker: every byte through
    an unclosed buffered file and unflushed stdout, the worker's atexit
    handlers and its non-daemon thread run to their end, the primary's
    handlers do not run again; an exec'ed worker's run() returns and its
    script goes on to its sys.exit(7)."""
    # stdout buffered, as a user has it (this machine sets PYTHONUNBUFFERED)
    lines = run_app("target_flush.py", str(tmp_path / "out"), mode,
                    env={"PYTHONUNBUFFERED": ""})
    code = 0 if mode == "target" else 7
    assert only_json(lines) == {"exit": [[code, None]], "bytes": 51200, "intact": True,
                                "worker_atexit": True, "thread_joined": True}
    assert ("after run" in lines) is (mode == "exec")
    assert lines[0] == "worker wrote, unflushed", lines
    assert lines[-1] == "primary atexit in primary"
    assert sum("primary atexit" in line for line in lines) == 1, lines
