"""The packages depend one way: commlib -> collectives -> transport -> datatypes, without cycles.

Every module's imports are read with :mod:`ast` (``import x``, ``from x
import y``, relative imports resolved, and ``importlib.import_module`` of a
constant name), wherever they stand: at the top of the module or inside a
function. A module may import its own package and the packages to its right,
never one to its left; inside a package, the imports a module runs when it
is loaded (the top level, class bodies, ``if``/``try`` blocks, not functions
or ``if TYPE_CHECKING:``) form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("commlib", "collectives", "transport", "datatypes")  # each may import only the ones after it


@dataclass(frozen=True)
class Import:
    """One import statement: the module it names, where it stands, and whether it runs at load time."""

    target: str
    line: int
    top_level: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the four packages, by dotted name."""
    found = {}
    for package in ORDER:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under ``node`` with whether it runs when the module is loaded."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _walk(child, False)
        else:
            yield child, top_level
            yield from _walk(child, top_level)


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """The modules ``name`` (at ``path``) imports; ``from p import m`` names ``p.m`` where that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, top in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), True):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno, top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append(Import(sub if sub in known else source, node.lineno, top))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            found.append(Import(node.args[0].value, node.lineno, top))
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    """``module:line imports target`` for every import of a package to the module's left in :data:`ORDER`."""
    mods = modules(root)
    known = set(mods)
    bad = []
    for name, path in mods.items():
        rank = ORDER.index(name.split(".")[0])
        for imp in imports(name, path, known):
            top = imp.target.split(".")[0]
            if top in ORDER and ORDER.index(top) < rank:
                where = "" if imp.top_level else " (inside a function)"
                bad.append(f"{name}:{imp.line} imports {imp.target}{where}")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def load_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports when loaded."""
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if name.split(".")[0] != package:
            continue
        graph[name] = {
            imp.target
            for imp in imports(name, path, known)
            if imp.top_level and imp.target in known and imp.target.split(".")[0] == package and imp.target != name
        }
    return graph


def test_no_package_imports_one_to_its_left():
    bad = upward_imports()
    assert not bad, f"imports against the order {' -> '.join(ORDER)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ORDER)
def test_no_import_cycle_inside_a_package(package):
    cycle = find_cycle(load_graph(package))
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


# -- the checker itself, on a package tree made for it ----------------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ORDER:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


def test_the_checker_finds_every_form_of_upward_import(tmp_path):
    root = _tree(
        tmp_path,
        {
            "datatypes/a.py": "import commlib.config\n",
            "datatypes/b.py": "def f():\n    from commlib import calibration\n",
            "transport/c.py": "from collectives.topology import x\n",
            "transport/d.py": "import importlib\nm = importlib.import_module('collectives.moe')\n",
            "collectives/e.py": "class K:\n    from commlib import config\n",
            "collectives/sub/__init__.py": "from .. import e\n",  # relative, resolved: collectives.e
            "collectives/ok.py": "from transport import flows\nfrom .sub import e\nimport datatypes\n",
            "commlib/ok.py": "import collectives, transport, datatypes\n",
        },
    )
    bad = upward_imports(root)
    assert sorted(b.split(":")[0] for b in bad) == [
        "collectives.e",
        "datatypes.a",
        "datatypes.b",
        "transport.c",
        "transport.d",
    ]
    assert any("inside a function" in b for b in bad if b.startswith("datatypes.b"))


def test_the_checker_reports_a_cycle_of_load_time_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "datatypes/x.py": "from .y import f\n",
            "datatypes/y.py": "from . import z\n",
            "datatypes/z.py": "import datatypes.x\n",
            "transport/p.py": "from .q import g\n",
            "transport/q.py": "def g():\n    from .p import h\n",  # lazy: not a load-time cycle
            "transport/r.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .s import t\n",
            "transport/s.py": "from .r import u\n",
        },
    )
    assert find_cycle(load_graph("datatypes", root)) == ["datatypes.x", "datatypes.y", "datatypes.z", "datatypes.x"]
    assert find_cycle(load_graph("transport", root)) is None
