"""Shared fixtures. Every API test takes ``catalog``, which is parametrised over the stores.

Adding a store (PostgreSQL, a folder of files, the HTTP client) means adding it to ``STORES``;
the whole API suite then runs against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runbroker

STORES = ["sqlite"]


def _open(kind: str, folder: Path) -> runbroker.Catalog:
    if kind == "sqlite":
        return runbroker.open(folder / "runs.db")
    raise ValueError(kind)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_catalog(store_kind: str, tmp_path: Path) -> Iterator[Callable[[], runbroker.Catalog]]:
    """Factory for fresh, empty catalogs of the parametrised store kind."""
    made: list[runbroker.Catalog] = []

    def make() -> runbroker.Catalog:
        folder = tmp_path / f"cat{len(made)}"
        folder.mkdir()
        cat = _open(store_kind, folder)
        made.append(cat)
        return cat

    yield make
    for cat in made:
        cat.close()


@pytest.fixture
def catalog(make_catalog: Callable[[], runbroker.Catalog]) -> runbroker.Catalog:
    """A fresh, empty catalog of the parametrised store kind."""
    return make_catalog()


@pytest.fixture
def RE(catalog: runbroker.Catalog):
    """A real bluesky RunEngine whose documents go into ``catalog``."""
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(catalog.insert)
    return engine
