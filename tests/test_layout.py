"""The package's layering, as a test: the import contracts of pyproject.toml
(import-linter: no cycle among the modules of a package, each layer over the
ones below), and a check of the whole graph that import-linter cannot make,
since grimp reads Python files only and takes `from . import _core` (the
engine) for an import of the package's face. Imports inside functions
count; those under TYPE_CHECKING never run and do not."""
import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "cluster_ext._core"
FACE = "cluster_ext"
# What may import the package's face (`import cluster_ext as cluster`): the
# command line, which drives the Node API as a user's script does.
FACE_IMPORTERS = ("cluster_ext.__main__", "cluster_ext.cli")


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    # --config: the newest import-linter takes the file as an argument too, but
    # the newest for Python 3.10 (2.15) takes only the option
    r = subprocess.run([str(lint), "--no-cache", "--config", "pyproject.toml"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


GRAPH = """
import json, grimp
g = grimp.build_graph("cluster_ext", exclude_type_checking_imports=True, cache_dir=None)
print(json.dumps({
    "origin": __import__("importlib.util").util.find_spec("cluster_ext").origin,
    "edges": {m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules},
    "face": {m: [d["line_contents"] for d in
                 g.get_import_details(importer=m, imported="cluster_ext")]
             for m in g.modules}}))
"""


@functools.cache
def graph() -> dict[str, frozenset[str]]:
    """Every module of the source tree -> the modules it imports, the
    engine's imports read as such. grimp runs in the repository's root,
    where -c finds the tree's package first (without running it)."""
    r = subprocess.run([sys.executable, "-c", GRAPH], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert Path(found["origin"]) == ROOT / "cluster_ext" / "__init__.py", found["origin"]
    edges = {m: set(imported) for m, imported in found["edges"].items()}
    edges[ENGINE] = set()
    for importer, lines in found["face"].items():
        if lines and all("_core" in line and "import cluster_ext" not in line
                         for line in lines):
            edges[importer].discard(FACE)
            edges[importer].add(ENGINE)
    return {m: frozenset(imported) for m, imported in edges.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of edges as the list of its modules, or None."""
    state: dict[str, int] = {}           # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(edges.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_round_a_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_command_line_imports_the_packages_face():
    edges = graph()
    importers = sorted(m for m, imported in edges.items() if FACE in imported)
    assert importers, "the command line imports cluster_ext: the graph misses it"
    assert all(m.startswith(FACE_IMPORTERS) for m in importers), importers


def test_the_checks_see_function_local_imports_and_find_a_circle():
    """What the checks above rest on: an import inside a function is an edge
    (supervisor imports files, and the command line the web layer, only
    when they are needed), and a circle is found."""
    edges = graph()
    assert "cluster_ext.fleet.files" in edges["cluster_ext.fleet.supervisor"]
    assert "cluster_ext.web" in edges["cluster_ext.cli.primary"]
    assert find_cycle({**edges, ENGINE: frozenset({"cluster_ext._runtime"})}) == \
        ["cluster_ext._core", "cluster_ext._runtime", "cluster_ext._core"]
