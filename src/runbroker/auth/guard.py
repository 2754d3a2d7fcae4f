"""The access guard: a Store that shows only the runs of a scope, and hides the others as absent.

:class:`GuardedStore` wraps any store. Searches, counts and distinct values AND the scope into
the query, so the database filters (the access keys are ``meta`` rows with an index, never a
scan of JSON); ``get_run`` of a run outside the scope is None; every per-run call on such a
run raises :class:`~runbroker.errors.RunNotFoundError` exactly as for a run that does not exist
(a hidden run is absent: 404, never 403). Detector data is read through the guard too: a
catalog over it fills with a local filler that asks the guard for the run's assets and datums,
and following a run polls the guard's page list. A catalog over it (``Catalog(GuardedStore(store,
scope))``), and a server route reaching runs through it, cannot see past the scope.

That a run is visible is asked of the database once per run and remembered for the life of the
guard (a guard is made per request, or per principal's session): the first per-run call costs
one indexed lookup, the others nothing.

Example:
    >>> from runbroker.store.sql import SQLStore
    >>> from runbroker.queries import Key
    >>> store = SQLStore("sqlite://")
    >>> guard = GuardedStore(store, Key("proposal_id") == "p1")
    >>> guard.count(None), guard.get_run("anything")
    (0, None)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..queries import And, Key, Query
from ..store.base import (
    Columns,
    PageInfo,
    RunRecord,
    Store,
    distinct_values,
    run_not_found,
)

__all__ = ["GuardedStore"]


class GuardedStore:
    """``inner`` as a caller whose runs are those matching ``scope`` sees it."""

    def __init__(self, inner: Store, scope: Query) -> None:
        self.inner = inner
        self.scope = scope
        self.uri = inner.uri
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GuardedStore({self.inner!r}, {self.scope!r})"

    def __reduce__(self) -> tuple:
        # a dask worker gets the inner store's reader under the same scope
        return (GuardedStore, (self.inner, self.scope))

    def _within(self, query: Query | None) -> Query:
        return self.scope if query is None else And(self.scope, query)

    def _visible(self, run_uid: str) -> bool:
        # Only "visible" is remembered: a run not there yet may be written any moment.
        with self._lock:
            if run_uid in self._seen:
                return True
        if not self.inner.search(self._within(Key("uid") == run_uid), limit=1):
            return False
        with self._lock:
            self._seen.add(run_uid)
        return True

    def _check(self, run_uid: str) -> None:
        if not self._visible(run_uid):
            raise run_not_found(self, run_uid)

    # -- writing (the write rules of the access-control issue come here)

    def insert(self, name: str, doc: dict) -> None:
        self.inner.insert(name, doc)

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        return self.inner.ingest(pairs)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    # -- finding: the scope goes into the database's query

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        found = self.inner.search(
            self._within(query),
            offset=offset,
            limit=limit,
            before=before,
            oldest_first=oldest_first,
        )
        with self._lock:
            self._seen.update(r.uid for r in found)
        return found

    def count(self, query: Query | None) -> int:
        return self.inner.count(self._within(query))

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        return distinct_values(self.inner, key, self._within(query), limit)

    def get_run(self, uid: str) -> RunRecord | None:
        return self.inner.get_run(uid) if self._visible(uid) else None

    # -- one run: absent unless visible

    def descriptors(self, run_uid: str) -> list[dict]:
        self._check(run_uid)
        return self.inner.descriptors(run_uid)

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        self._check(run_uid)
        return self.inner.pages(run_uid, descriptor_uids)

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        self._check(run_uid)
        return self.inner.read_pages(run_uid, page_ids, columns)

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        self._check(run_uid)
        yield from self.inner.documents(run_uid, arrays=arrays, uids=uids)

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        self._check(run_uid)
        return self.inner.assets(run_uid)

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        self._check(run_uid)
        return self.inner.datums(run_uid, datum_ids)
