"""fork(target=...) beside exec'ed workers."""
from conftest import json_lines, run_app


def test_target_and_exec_workers_share_the_primary():
    result = json_lines(run_app("fork_mix.py"))[0]
    assert result["replies"] == {str(i): f"hello {i}" for i in range(1, 5)}
