"""Shared fixtures. Every API test takes ``catalog``, which is parametrised over the stores.

Adding a store (PostgreSQL, a folder of files, the HTTP client) means adding it to ``STORES``;
the whole API suite then runs against it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runbroker

STORES = ["sqlite", "postgresql"]
_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database: the test cluster (started once) or $RUNBROKER_TEST_POSTGRES."""
    from runbroker.testing.postgres import ENV, Cluster

    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    cluster = Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _open(
    kind: str, folder: Path, request: pytest.FixtureRequest, **options: Any
) -> runbroker.Catalog:
    if kind == "sqlite":
        return runbroker.open(folder / "runs.db", **options)
    if kind == "postgresql":
        from runbroker.testing.postgres import new_schema

        base = request.getfixturevalue("postgres_url")
        return runbroker.open(new_schema(base, f"t{os.getpid()}_{next(_schemas)}"), **options)
    raise ValueError(kind)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_catalog(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., runbroker.Catalog]]:
    """Factory for fresh, empty catalogs of the parametrised store kind (options go to
    ``runbroker.open``)."""
    made: list[runbroker.Catalog] = []

    def make(**options: Any) -> runbroker.Catalog:
        folder = tmp_path / f"cat{len(made)}"
        folder.mkdir()
        cat = _open(store_kind, folder, request, **options)
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
