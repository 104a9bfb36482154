"""Regressions of defects found in review, each proved through a real process
(or, for an engine path that Python cannot reach, a small C program)."""
import pytest

from conftest import only_json, run_app


def test_a_constructor_out_of_memory_crashes_nothing_and_keeps_stdin():
    # Balancer: a failed list allocation ran dealloc over an engine struct
    # that was never set up (fd 0, no forget function).
    result = only_json(run_app("defect_ctor_nomem.py"))
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["stdin_intact"], result
    assert result["memory_errors"]["Balancer"] >= 2, result   # the object, then its list
