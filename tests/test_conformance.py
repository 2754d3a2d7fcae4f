"""The Store contract (runbroker.testing.conformance) on every store runbroker has."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from runbroker.store.base import Indexes, LeavesOut, Store
from runbroker.store.files import FolderStore
from runbroker.store.sql import SQLStore
from runbroker.testing.conformance import StoreContract

_schemas = itertools.count()


class TestSQLite(StoreContract):
    capabilities = frozenset({Indexes})

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        return SQLStore(f"sqlite:///{path / 'runs.db'}")

    def reopen(self, store: Store) -> Store:
        return SQLStore(store.uri, readonly=True)


class TestPostgreSQL(StoreContract):
    capabilities = frozenset({Indexes})

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        from runbroker.store.urls import driver_url
        from runbroker.testing.postgres import new_schema

        base = request.getfixturevalue("postgres_url")
        # The URL as given: a store's uri leaves any password out.
        self.url = driver_url(new_schema(base, f"c{os.getpid()}_{next(_schemas)}"))
        return SQLStore(self.url)

    def reopen(self, store: Store) -> Store:
        return SQLStore(self.url, readonly=True)


class TestFolder(StoreContract):
    capabilities = frozenset({Indexes, LeavesOut})
    # An open folder store looks at its folder again at most every refresh_interval.
    visible_within = 2.0

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        return FolderStore(path)

    def reopen(self, store: Store) -> Store:
        return FolderStore(store.uri, readonly=True)


class TestHTTP(StoreContract):
    """The HTTP client over a fresh catalog of the test server (real uvicorn, own process)."""

    server = "http_server"
    prefix = "contract"

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        from runbroker.client import HTTPStore

        server = request.getfixturevalue(self.server)
        url = server.catalog_url(f"{self.prefix}{os.getpid()}-{next(_schemas)}")
        return HTTPStore(url, api_key=server.api_key)

    def reopen(self, store: Store) -> Store:
        from runbroker.client import HTTPStore

        return HTTPStore(store.uri, api_key=os.environ["RUNBROKER_API_KEY"], readonly=True)


class TestHTTPOverPostgreSQL(TestHTTP):
    """The same over a PostgreSQL catalog: the server's store differs, the client's answers
    must not."""

    server = "http_server_pg"
    prefix = "pg-contract"

    def reopen(self, store: Store) -> Store:
        from runbroker.client import HTTPStore

        return HTTPStore(store.uri, api_key="test-key", readonly=True)
