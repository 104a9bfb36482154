"""The source keeps its promises: the stub matches the module, only the glue
includes Python.h, and the C builds clean with -Wall -Wextra."""
import ast
import subprocess
import sysconfig
from pathlib import Path

import pytest

from cluster_ext import _core

ROOT = Path(__file__).resolve().parent.parent
GLUE = {"module.c", "py_channel.c", "glue.h"}


def test_stub_names_match_the_module():
    tree = ast.parse((ROOT / "src" / "cluster_ext" / "_core.pyi").read_text())
    stub = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stub.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            stub.add(node.target.id)
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert stub == public


def test_only_the_glue_sees_python():
    for path in sorted((ROOT / "src").glob("*.[ch]")):
        if path.name not in GLUE:
            assert "#include <Python.h>" not in path.read_text(), path.name


def test_c_is_warning_free():
    include = sysconfig.get_paths()["include"]
    for path in sorted((ROOT / "src").glob("*.c")):
        r = subprocess.run(["gcc", "-fsyntax-only", "-std=c11", "-D_GNU_SOURCE", "-Wall",
                            "-Wextra", "-Wshadow", "-Wstrict-prototypes",
                            "-Wmissing-prototypes", f"-I{include}", f"-I{ROOT / 'src'}",
                            str(path)], capture_output=True, text=True)
        if r.returncode == 127:
            pytest.skip("no gcc")
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
