"""Modules that must depend on each other one way only.

An import inside a function still makes a cycle (it only hides it until the function runs), so
every ``import`` in a module counts, except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runbroker

SRC = Path(runbroker.__file__).parent


def _imports(module: str) -> set[str]:
    """The runbroker modules ``module`` (dotted, under ``runbroker``) imports, anywhere in it."""
    path = SRC.joinpath(*module.split(".")[1:]).with_suffix(".py")
    package = module.rpartition(".")[0]
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
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


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
