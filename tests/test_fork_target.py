"""fork(target=...) beside exec'ed workers."""
from conftest import json_lines, only_json, run_app


def test_target_and_exec_workers_share_the_primary():
    result = json_lines(run_app("fork_mix.py"))[0]
    assert result["replies"] == {str(i): f"hello {i}" for i in range(1, 5)}


def test_a_target_worker_loses_nothing_it_wrote_and_runs_only_its_atexit(tmp_path):
    """Defect J: every byte through an unclosed buffered file and unflushed
    stdout; the worker's atexit handlers run, the primary's do not run again."""
    lines = run_app("target_flush.py", str(tmp_path / "out"))
    assert only_json(lines) == {"exit": [[0, None]], "bytes": 51200, "intact": True,
                                "worker_atexit": True}
    assert lines[0] == "worker wrote, unflushed", lines
    assert lines[-1] == "primary atexit in primary"
    assert sum("primary atexit" in line for line in lines) == 1, lines
