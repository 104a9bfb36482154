"""The source keeps its promises: the stub matches the module, only the glue
includes Python.h, the C builds clean with -Wall -Wextra, and the docs' links
lead somewhere."""
import ast
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cluster_ext import _core

ROOT = Path(__file__).resolve().parent.parent
# The files that see Python; every other src/*.c is the engine.
GLUE = {"glue.h", "module.c", "glue.c", "py_loop.c", "py_handle.c", "py_spawn.c",
        "py_channel.c", "py_stream.c", "py_balance.c"}


def test_stub_names_match_the_module():
    tree = ast.parse((ROOT / "cluster_ext" / "_core.pyi").read_text())
    stub = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stub.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            stub.add(node.target.id)
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert stub == public


def test_only_the_glue_sees_python():
    """Every engine file compiles without Python's headers: one that included
    Python.h or glue.h (directly or through a header) fails here."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    engine = [p for p in sorted((ROOT / "src").glob("*.c")) if p.name not in GLUE]
    assert {p.name for p in engine} >= {"loop.c", "channel.c", "util.c"}
    for path in engine:
        r = subprocess.run(["gcc", "-fsyntax-only", "-std=c11", "-D_GNU_SOURCE",
                            f"-I{ROOT / 'src'}", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (f"{path.name} needs Python (if it is glue, list it "
                                   f"in GLUE):\n{r.stderr}")


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


# What public macros and inline functions of CPython's headers compile to; any
# other _Py symbol is private API, which a release may remove (3.13 removed
# _PyLong_AsInt, and the module then failed at import).
PUBLIC_EXPANSIONS = {
    "_Py_Dealloc",                                  # Py_DECREF
    "_Py_NoneStruct", "_Py_TrueStruct", "_Py_FalseStruct",    # Py_None, Py_True, Py_False
    "_PyObject_GC_New",                             # PyObject_GC_New
    "_PyArg_ParseTuple_SizeT", "_Py_BuildValue_SizeT",         # PY_SSIZE_T_CLEAN, < 3.13
    "_PyObject_MakeTpCall", "_Py_CheckFunctionResult",        # PyObject_Vectorcall, 3.10
}


def test_only_public_c_api_in_the_source():
    for path in sorted((ROOT / "src").glob("*.[ch]")):
        code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        assert not re.findall(r"\b_Py[A-Za-z_]+", code), path.name


def test_only_public_c_api_in_the_built_module():
    r = subprocess.run(["nm", "-D", "--undefined-only", _core.__file__],
                       capture_output=True, text=True, check=True)
    private = {line.split()[-1] for line in r.stdout.splitlines()
               if line.split()[-1].startswith("_Py")}
    assert private <= PUBLIC_EXPANSIONS, private - PUBLIC_EXPANSIONS


def test_mypy_strict_is_clean():
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                        str(ROOT / ".mypy_cache"), str(ROOT / "cluster_ext")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_is_clean():
    """Style, import order, pyupgrade and bugbear over the package, its tests
    and scripts, with pyproject.toml's rules."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_stub_agrees_with_the_module(tmp_path):
    """stubtest imports the built _core (not the root's unbuilt tree, which
    -m would put first) and checks every name and signature."""
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "cluster_ext._core"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def _anchors(text):
    """The #fragments a Markdown page has: GitHub's slugs of its headings
    (a repeated one numbered -1, -2, ...) and its <a id=...>."""
    found, seen = set(), {}
    for heading in re.findall(r"^#+ (.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found | set(re.findall(r'<a id="([^"]+)"', text))


def test_the_docs_links_lead_somewhere():
    """Every relative link of README.md, CONTRIBUTING.md and docs/*.md names
    a file of the repository, and its #fragment a heading there (api.md's
    contents linked a section that had gone)."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue                     # https:, mailto:
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and linked.suffix == ".md" and \
                    fragment not in _anchors(linked.read_text()):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
