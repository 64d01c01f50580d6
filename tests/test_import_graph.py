"""No import loops in `biasbench/`: every cycle of two or more modules fails this test.

The graph is read from the source with `ast`, without importing anything. Its nodes are the
modules of `biasbench/` (a package is its `__init__.py`); an edge A -> B says that running A
imports B. Every `import` and `from ... import` counts, at module level and inside functions
or methods (a late import is still a dependency, only a hidden one), except those under
`if TYPE_CHECKING:`, which never run. Relative imports are resolved against A's package.

Which module an import names:
- `import a.b.c` and `from a.b import c` where `a/b/c.py` (or `a/b/c/`) exists: the module
  `a.b.c`; `from a.b import name` where `name` is not a submodule: `a.b` (the package's
  `__init__` defines `name`).
- Python runs every enclosing package's `__init__` before the module itself, so an import of
  `a.b.c` is also an edge to `a.b` (and `a`) - except to the packages that enclose A itself:
  they started running before A did, so this implied step never waits for them. A package
  that A names itself (`from a.b import name`, with A inside `a.b`) is an edge like any other:
  A reads a name from it, which is a loop when `a.b`'s `__init__` imports A before defining
  that name. So the edges are what a cold import runs: a package whose `__init__` imports a
  module that imports the package back is a loop; a module that imports a sibling module,
  whose package is already running, is not.
- Imports of names built at run time (`importlib.import_module(f"...")`, as `plugins.py`
  does to register every file of a folder) are not seen; those import the registering
  modules after the package that registers them has finished, so they close no loop.

Strongly connected components (Tarjan) of two or more modules are the loops; the failure
lists each with its modules and the import lines that join them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "biasbench"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of `package` under `root`, by dotted name (a package is its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions too, skipping `if TYPE_CHECKING:` bodies (not their else)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    here = module.split(".") if is_package else module.split(".")[:-1]
    base = here[: len(here) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import in `path` naming a module in `known`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
            continue
        base = _absolute(node, module, path.name == "__init__.py")
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield (sub if sub in known else base), node.lineno


def _with_packages(target: str, source: str, known: set[str]) -> list[str]:
    """`target` and the packages Python runs first to import it, less those enclosing `source`."""
    parts = target.split(".")
    enclosing = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [m for m in enclosing if m in known and not source.startswith(m + ".")] + [target] * (target in known)


def import_graph(files: dict[str, Path]) -> list[Edge]:
    known = set(files)
    edges = []
    for module, path in files.items():
        for target, line in imported_modules(module, path, known):
            edges += [Edge(module, t, line) for t in _with_packages(target, module, known) if t != module]
    return edges


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components, each sorted."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        succ[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                components.append(sorted(component))
    return components


def import_loops(files: dict[str, Path]) -> list[str]:
    """One text per loop: its modules, and each import inside it as `a:line -> b`."""
    edges = import_graph(files)
    out = []
    for component in strongly_connected(sorted(files), edges):
        if len(component) < 2:
            continue
        inside = sorted({(e.source, e.line, e.target) for e in edges
                         if e.source in component and e.target in component})
        joins = "; ".join(f"{s}:{line} -> {t}" for s, line, t in inside)
        out.append(f"{' <-> '.join(component)} ({joins})")
    return out


def test_biasbench_has_no_import_loop():
    loops = import_loops(module_files())
    assert not loops, f"{len(loops)} import loops:\n" + "\n".join(loops)


# -- the checker itself, on small packages written for it --------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path, "pkg")


def test_finds_a_loop_through_a_late_import(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import f\n",
        "b.py": "def f():\n    from pkg import a\n    return a\n",
    })
    assert import_loops(files) == ["pkg.a <-> pkg.b (pkg.a:1 -> pkg.b; pkg.b:2 -> pkg.a)"]


def test_resolves_relative_imports_and_a_three_module_loop(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "",
        "sub/x.py": "from .y import g\n",
        "sub/y.py": "from ..z import h\n",
        "z.py": "from pkg.sub import x\n",
        "lone.py": "import pkg.z\n",
    })
    [loop] = import_loops(files)
    assert loop.startswith("pkg.sub.x <-> pkg.sub.y <-> pkg.z ")


def test_type_checking_imports_and_own_packages_are_no_edges(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "from pkg.a import f\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import g\n"
                "from pkg import c\ndef f():\n    pass\n",
        "b.py": "from pkg.a import f\n",
        "c.py": "import pkg.a\n",  # reaches pkg.a through pkg, which encloses c: started already
    })
    edges = {(e.source, e.target) for e in import_graph(files)}
    assert ("pkg.a", "pkg.b") not in edges and ("pkg.c", "pkg") not in edges
    assert ("pkg.c", "pkg.a") in edges and ("pkg.b", "pkg.a") in edges
    # pkg.a <-> pkg.c is a real loop (a imports c, c imports a)
    assert import_loops(files) == ["pkg.a <-> pkg.c (pkg.a:4 -> pkg.c; pkg.c:1 -> pkg.a)"]


def test_a_package_init_that_reaches_back_is_a_loop(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "from pkg.models.m import build\n",
        "models/m.py": "from pkg.trainer import run\ndef build():\n    pass\n",
        "trainer.py": "from pkg.models.m import build\ndef run():\n    pass\n",
    })
    # trainer imports pkg.models.m, which runs pkg.models's __init__ first: trainer -> pkg.models too
    edges = {(e.source, e.target) for e in import_graph(files)}
    assert {("pkg.trainer", "pkg.models"), ("pkg.trainer", "pkg.models.m")} <= edges
    [loop] = import_loops(files)
    assert loop.startswith("pkg.models <-> pkg.models.m <-> pkg.trainer ")


def test_a_module_reading_a_name_from_its_own_package_that_imports_it_is_a_loop(tmp_path):
    files = _package(tmp_path, {
        "__init__.py": "from pkg.a import f\nNAME = 1\n",
        "a.py": "from pkg import NAME\ndef f():\n    pass\n",
        "b.py": "import pkg.a\n",  # through pkg, which encloses b: no edge b -> pkg
    })
    assert ("pkg.b", "pkg") not in {(e.source, e.target) for e in import_graph(files)}
    assert import_loops(files) == ["pkg <-> pkg.a (pkg:1 -> pkg.a; pkg.a:1 -> pkg)"]


@pytest.mark.parametrize("statement, target", [
    ("from . import b", "pkg.b"),
    ("from .b import name", "pkg.b"),
    ("from pkg import name", "pkg"),
    ("import pkg.b as bb", "pkg.b"),
])
def test_import_forms_resolve_to_modules(tmp_path, statement, target):
    files = _package(tmp_path, {"__init__.py": "", "a.py": statement + "\n", "b.py": ""})
    found = {t for t, _ in imported_modules("pkg.a", files["pkg.a"], set(files))}
    assert found == {target}
