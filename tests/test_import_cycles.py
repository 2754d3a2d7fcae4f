"""Modules that must depend on each other one way only.

An import inside a function still makes a cycle (it only hides it until the function runs), so
every ``import`` in a module counts, except those under ``if TYPE_CHECKING:``, which never run.

The layers, bottom up: the shared helpers (:mod:`runbroker.columns`, :mod:`runbroker.docfiles`),
then ``runbroker.store`` and ``runbroker.export`` side by side (a store never writes an export;
an exporter reads what a catalog hands it, not a store's insides), then the user API
(``catalog``, ``stream``, ``v1``) and ``runbroker`` itself.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import runbroker

SRC = Path(runbroker.__file__).parent
MODULES = {
    ".".join(
        ("runbroker", *path.relative_to(SRC).with_suffix("").parts[:-1])
        if path.name == "__init__.py"
        else ("runbroker", *path.relative_to(SRC).with_suffix("").parts)
    ): path
    for path in SRC.rglob("*.py")
}


def _imports(module: str) -> set[str]:
    """The runbroker modules ``module`` (dotted, under ``runbroker``) imports, anywhere in it.

    ``from package import name`` counts as importing ``package.name`` when that is a module,
    else ``package`` itself (the name is defined in its ``__init__``). A package that is only
    the parent of what is imported is not counted: Python runs it first whatever one writes.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for branch in child.orelse:
                    visit(branch)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                for alias in child.names:
                    name = f"{target}.{alias.name}"
                    found.add(name if name in MODULES else target)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {name for name in found if name.startswith("runbroker")} - {module}


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize(
    ("one", "other"),
    [("runbroker.catalog", "runbroker.v1"), ("runbroker.queries", "runbroker.mongoquery")],
)
def test_one_way_dependency(one: str, other: str) -> None:
    both = other in _imports(one) and one in _imports(other)
    assert not both, f"{one} and {other} import each other; only one may know the other"


def test_the_check_sees_imports_inside_functions() -> None:
    # Catalog.search translates dict queries: the check must see it, or it proves nothing.
    assert "runbroker.mongoquery" in _imports("runbroker.catalog")
    assert "runbroker.queries" in _imports("runbroker.mongoquery")
    # And a name taken from a package's __init__ is an import of that package.
    assert "runbroker.export" in _imports("runbroker.catalog")


# What each layer must not import: the layers above it.
_ABOVE = {
    "runbroker.columns": ("runbroker.store", "runbroker.export", "runbroker.assets"),
    "runbroker.docfiles": ("runbroker.store", "runbroker.export"),
    "runbroker.store": (
        "runbroker.export",
        "runbroker.catalog",
        "runbroker.stream",
        "runbroker.v1",
    ),
    # An exporter reads columns a catalog hands it; a store's codec is the store's own.
    "runbroker.export": ("runbroker.store.pages", "runbroker.store.sql", "runbroker.store.files"),
}


@pytest.mark.parametrize("layer", sorted(_ABOVE))
def test_layers_point_one_way(layer: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if _under(module, layer)
        for target in _imports(module)
        if _under(target, *_ABOVE[layer])
    )
    assert not wrong, f"{layer} must not import {', '.join(_ABOVE[layer])}: " + "; ".join(wrong)


def _cycles() -> list[list[str]]:
    """Groups of runbroker modules that import each other, directly or through others."""
    graph = {module: _imports(module) & MODULES.keys() for module in MODULES}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module]:
            if target not in order:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for module in sorted(graph):
            if module not in order:
                connect(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "modules that import each other (directly or not): " + " | ".join(
        ", ".join(group) for group in cycles
    )
