"""The engine can be driven from another loop through its one descriptor."""
from conftest import json_lines, run_app


def test_another_loop_drives_the_engine():
    result = json_lines(run_app("embed_turn.py"))[0]
    assert result["seen"] == ["timer", "hi!", ["exit", 0]]
    assert result["bounded"]
