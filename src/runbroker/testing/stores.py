"""Which stores the API test suite runs on, and the tests kept off some of them (with why).

Every test taking the ``catalog`` fixture runs once per store in :data:`STORES`. A test that
is about one kind of store (schema migrations, connection pools, SQL indexes, several
processes writing one run at once) says so with :func:`stores_except`: it then does not exist
for the other stores, and the test run lists it with its reason at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EXCLUDED", "STORES", "stores_except"]

#: The stores the suite runs on (see ``tests/conftest.py`` for how each is opened).
STORES = ["sqlite", "postgresql", "folder", "http"]
#: ``module::test`` -> (stores it is kept off, why).
EXCLUDED: dict[str, tuple[list[str], str]] = {}


def stores_except(*kinds: str, reason: str) -> Callable[[Any], Any]:
    """Decorator: run a ``catalog`` test on every store but ``kinds``, because ``reason``.

    Example:
        >>> @stores_except("folder", reason="about SQL schema migrations")
        ... def test_upgrade(catalog): ...
        >>> EXCLUDED.pop(f"{__name__}::test_upgrade")[0]
        ['folder']
    """
    unknown = sorted(set(kinds) - set(STORES))
    if unknown or not kinds:
        raise ValueError(f"stores_except: name stores of {STORES}, not {unknown or 'none'}")
    if not reason.strip():
        raise ValueError("stores_except: say why the test is kept off those stores")
    import pytest

    def mark(test: Any) -> Any:
        EXCLUDED[f"{test.__module__}::{test.__name__}"] = (list(kinds), reason)
        kept = [k for k in STORES if k not in kinds]
        return pytest.mark.parametrize("store_kind", kept)(test)

    return mark
