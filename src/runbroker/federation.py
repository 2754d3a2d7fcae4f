"""Several catalogs searched and read as one: :func:`merge` and its :class:`FederatedStore`.

A federation is a Store wrapper over the sources' stores, so the merged catalog is an ordinary
:class:`~runbroker.catalog.Catalog`: lookups by uid, uid prefix, scan_id and recency, searches
and reads are the catalog's own code over :class:`FederatedStore`.

The rules, in order of the Store protocol (:mod:`runbroker.store.base`):

- **Order.** One newest-first ``(time, uid)`` order across the sources. A search asks every
  source (in parallel) for the first ``offset + limit`` runs after the ``before`` cursor --
  only their ``(time, uid)`` where the source can list them alone (SQL catalogs) -- merges
  the answers, and then fetches the documents of the runs kept from their sources: a page of
  the merged catalog costs one or two queries per source, whatever the sources' sizes, and
  decodes only the runs it shows.
- **Duplicates.** A run (a uid) held by several sources is shown once: *the first source
  wins* (the order given to :func:`merge`), its copy is listed and read. Every other holder
  is reported: a :class:`FederationWarning` naming the uid and the sources, once per uid, and
  :attr:`FederatedStore.duplicates` (uid -> the sources holding it, winner first). A copy of a
  run has the same start document, so both copies sit at the same place in the order and
  each search sees both.
- **Count.** Exact (duplicates counted once) while the sources' counts add up to at most
  ``exact_count`` runs: the uids are listed and counted. Above that, listing every uid to
  count would cost as much as reading the catalogs, so the count is the sum of the sources'
  counts minus the duplicates already reported that match the query: exact when those are
  all the duplicates, else too high by the ones not seen yet.
- **Reads.** Every per-run call goes to the source that holds the run (the first, when
  several do), with that source's page ids (a per-run call names its run, so ids of two
  sources never meet). Detector data is filled by the filler of the source catalog.
- **A source that is down** (its calls raise ``CatalogUnavailableError``,
  ``ServerUnreachableError`` or another ``OSError``) is left out of that answer with a
  :class:`FederationWarning` naming it (its uri, password redacted), and the others answer;
  :attr:`FederatedStore.unavailable` names the sources that failed in the last call that
  asked them all. When every source fails, the first error is raised.
- **Writes** are refused with :class:`~runbroker.errors.ReadOnlyError`: a merged catalog
  belongs to no one database. Write to one of the sources (the first wins for duplicates).

Example:
    >>> import runbroker
    >>> a, b = runbroker.temp(), runbroker.temp()
    >>> both = merge(a, b)
    >>> len(both), both.store.unavailable, both.store.duplicates
    (0, [], {})
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import ReadOnlyError
from .filler import FieldEvents, Filler
from .queries import And, In, Query
from .store.base import Columns, PageInfo, RunRecord, SearchesKeys, Store, run_not_found
from .store.urls import redact

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["FederatedStore", "FederationWarning", "merge"]

T = TypeVar("T")

#: Above this many runs (the sources' counts added up) ``count`` stops listing uids.
EXACT_COUNT = 20_000
# Errors that mean "this source cannot answer now" rather than "the question is wrong".
_DOWN = (OSError,)  # CatalogUnavailableError and ServerUnreachableError are OSErrors


class FederationWarning(UserWarning):
    """A source of a merged catalog could not answer, or holds a run another source holds."""


def merge(*catalogs: Catalog, exact_count: int = EXACT_COUNT) -> Catalog:
    """One catalog over several: searches in one newest-first order, lookups, reads.

    Any mix of SQLite, PostgreSQL, folder and remote catalogs; a catalog that is a search
    (``cat.search(...)``) takes part with the runs of that search only. A run held by several
    sources is read from the first that holds it (see :mod:`runbroker.federation`).

    Example:
        >>> import runbroker
        >>> from event_model import compose_run
        >>> a, b = runbroker.temp(), runbroker.temp()
        >>> for cat, scan_id in ((a, 1), (b, 2)):
        ...     run = compose_run(metadata={"scan_id": scan_id})
        ...     cat.ingest([("start", run.start_doc), ("stop", run.compose_stop())])
        2
        2
        >>> both = runbroker.merge(a, b)
        >>> len(both), both[-1].start["scan_id"], both[1].start["scan_id"]
        (2, 2, 1)
    """
    from .catalog import Catalog

    if not catalogs:
        raise TypeError("merge() needs at least one catalog")
    for i, cat in enumerate(catalogs):
        if not isinstance(cat, Catalog):
            raise TypeError(
                f"merge() takes catalogs (runbroker.open(...)); argument {i + 1} is a "
                f"{type(cat).__name__}"
            )
    stores = [_scoped(cat) for cat in catalogs]
    fillers = [cat.filler for cat in catalogs]
    return Catalog(FederatedStore(stores, fillers, exact_count=exact_count))


def _scoped(cat: Catalog) -> Store:
    """The catalog's store, showing only the runs of its scope and search."""
    view = cat._view
    if view is None:
        return cat.store
    from .auth.guard import GuardedStore

    return GuardedStore(cat.store, view)


class FederatedStore:
    """The Store of a merged catalog: ``sources`` asked in parallel, the first winning.

    ``fillers`` (one per source, optional) read the detector data of each source's runs;
    ``close_sources`` closes the sources with this store (when it opened them).
    """

    def __init__(
        self,
        sources: Sequence[Store],
        fillers: Sequence[Filler] | None = None,
        *,
        exact_count: int = EXACT_COUNT,
        close_sources: bool = False,
    ) -> None:
        if not sources:
            raise ValueError("a federation needs at least one source")
        self.sources = list(sources)
        self.fillers = list(fillers) if fillers is not None else None
        if self.fillers is not None and len(self.fillers) != len(self.sources):
            raise ValueError("one filler per source, or none")
        self.exact_count = exact_count
        self.close_sources = close_sources
        self.names = [redact(s.uri) for s in self.sources]
        self.uri = f"merge({', '.join(self.names)})"
        #: uid -> the sources holding it (the one read first), for runs held by several.
        self.duplicates: dict[str, list[str]] = {}
        #: The sources that could not answer the last call that asked them all.
        self.unavailable: list[str] = []
        self._home: dict[str, int] = {}  # uid -> index of the source read for it
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(self.sources), thread_name_prefix="federation")
        self._closed = False

    def __repr__(self) -> str:
        return f"FederatedStore({self.names!r})"

    def __reduce__(self) -> tuple:
        # a dask worker gets each source's reader (sources pickle so) and the fillers
        return (_rebuild, (self.sources, self.fillers, self.exact_count))

    # -- asking every source

    def _ask_all(self, ask: Callable[[Store], T]) -> list[tuple[int, T]]:
        """``(index, answer)`` of every source that answered, in source order; the others
        are warned about and named in :attr:`unavailable`."""
        # Remote sources are asked in parallel; SQL catalogs answer in about a millisecond,
        # less than handing the question to a thread costs, so they are asked here meanwhile.
        futures = {
            i: self._pool.submit(ask, source)
            for i, source in enumerate(self.sources)
            if not isinstance(source, SearchesKeys)
        }
        answers: list[tuple[int, T]] = []
        failed: list[tuple[int, BaseException]] = []
        for i, source in enumerate(self.sources):
            try:
                future = futures.get(i)
                answers.append((i, future.result() if future is not None else ask(source)))
            except _DOWN as err:
                failed.append((i, err))
        self.unavailable = [self.names[i] for i, _ in failed]
        if failed and not answers:
            raise failed[0][1]
        for i, err in failed:
            warnings.warn(
                FederationWarning(
                    f"source {self.names[i]} of {self.uri} did not answer and is left out "
                    f"({type(err).__name__}: {redact(str(err))}); the other sources answered"
                ),
                stacklevel=4,
            )
        return answers

    def _report(self, uid: str, holders: Iterable[int]) -> None:
        names = [self.names[i] for i in sorted(set(holders))]
        with self._lock:
            if uid in self.duplicates:
                return
            self.duplicates[uid] = names
        warnings.warn(
            FederationWarning(
                f"run {uid!r} is held by {len(names)} sources ({', '.join(names)}); the copy "
                f"in {names[0]} is the one read (the first source wins)"
            ),
            stacklevel=4,
        )

    # -- writing: refused

    def _refuse(self) -> ReadOnlyError:
        return ReadOnlyError(
            f"{self.uri} is a merged catalog and is read-only: write to one of its sources "
            f"({', '.join(self.names)}) by opening it, e.g. runbroker.open({self.names[0]!r}); "
            "the first source's copy of a run wins when several hold it"
        )

    def insert(self, name: str, doc: dict) -> None:
        raise self._refuse()

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        raise self._refuse()

    def flush(self) -> None:
        """Nothing is written through a federation, so nothing waits to be flushed."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False)
        if self.close_sources:
            for source in self.sources:
                source.close()

    # -- finding

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        # The first offset + limit runs of the union are among the first offset + limit of
        # each source: the runs ahead of one in its source are ahead of it in the union.
        window = None if limit is None else offset + limit

        def page(source: Store) -> list[tuple[float, str, RunRecord | None]]:
            # Keys alone where the source can: only the runs kept are decoded, afterwards.
            if isinstance(source, SearchesKeys):
                keys = source.search_keys(
                    query, limit=window, before=before, oldest_first=oldest_first
                )
                return [(t, u, None) for t, u in keys]
            found = source.search(query, limit=window, before=before, oldest_first=oldest_first)
            return [(r.start["time"], r.uid, r) for r in found]

        merged = self._merged(self._ask_all(page), oldest_first)
        end = None if limit is None else offset + limit
        return self._records(merged[offset:end])

    def _records(self, kept: list[tuple[str, int, RunRecord | None]]) -> list[RunRecord]:
        """The records of the runs kept, fetched from their sources where the page held only
        their keys."""
        missing: dict[int, list[str]] = {}
        for uid, i, record in kept:
            if record is None:
                missing.setdefault(i, []).append(uid)
        fetched: dict[str, RunRecord] = {}
        for i, uids in missing.items():  # SQL catalogs (SearchesKeys): asked here, see _ask_all
            try:
                fetched.update((r.uid, r) for r in self.sources[i].get_runs(uids))  # type: ignore[attr-defined]
            except _DOWN:
                continue  # down since it answered the page: its runs are left out
        out = []
        for uid, _, record in kept:
            record = record if record is not None else fetched.get(uid)
            if record is not None:  # a run removed meanwhile is left out
                out.append(record)
        return out

    def _merged(
        self,
        answers: list[tuple[int, list[tuple[float, str, RunRecord | None]]]],
        oldest_first: bool,
    ) -> list[tuple[str, int, RunRecord | None]]:
        """The sources' runs in one order, each uid once: the copy of the first source, as
        ``(uid, source index, record or None)``."""
        merged = [(t, u, i, r) for i, found in answers for t, u, r in found]
        # Each source's page is sorted already (timsort merges such runs in linear time), and
        # the sort is stable: equal (time, uid) copies stay in source order.
        merged.sort(key=lambda e: (e[0], e[1]), reverse=not oldest_first)
        holders: dict[str, list[int]] = {}
        for _, uid, i, _ in merged:
            holders.setdefault(uid, []).append(i)
        out: list[tuple[str, int, RunRecord | None]] = []
        homes: dict[str, int] = {}
        for _, uid, i, record in merged:
            held = holders[uid]
            if len(held) > 1 and (i != min(held) or uid in homes):
                continue
            homes[uid] = i
            out.append((uid, i, record))
        for uid, held in holders.items():
            if len(held) > 1:
                self._report(uid, held)
        with self._lock:
            self._home.update(homes)
        return out

    def count(self, query: Query | None) -> int:
        counts = self._ask_all(lambda s: s.count(query))
        total = sum(n for _, n in counts)
        if total <= self.exact_count:
            # few enough runs to list their uids: duplicates counted once, as search lists them
            return len(self.search(query))
        with self._lock:
            known = sorted(self.duplicates)
        if not known:
            return total
        # each reported duplicate matching the query was counted once per source holding it
        match = In("uid", known) if query is None else And(query, In("uid", known))
        held = sum(n for _, n in self._ask_all(lambda s: s.count(match)))
        return total - (held - len(self.search(match)))

    def get_run(self, uid: str) -> RunRecord | None:
        found = [(i, r) for i, r in self._ask_all(lambda s: s.get_run(uid)) if r is not None]
        if not found:
            with self._lock:
                home = self._home.get(uid)
            if home is not None and self.names[home] in self.unavailable:
                # read from a source now down: its error, not "no such run"
                return self.sources[home].get_run(uid)
            return None
        if len(found) > 1:
            self._report(uid, [i for i, _ in found])
        with self._lock:
            self._home[uid] = found[0][0]
        return found[0][1]

    # -- one run: the source that holds it

    def _source_of(self, run_uid: str) -> int:
        with self._lock:
            home = self._home.get(run_uid)
        if home is None:
            if self.get_run(run_uid) is None:
                raise run_not_found(self, run_uid)
            with self._lock:
                home = self._home[run_uid]
        return home

    def _holder(self, run_uid: str) -> Store:
        return self.sources[self._source_of(run_uid)]

    def descriptors(self, run_uid: str) -> list[dict]:
        return self._holder(run_uid).descriptors(run_uid)

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        return self._holder(run_uid).pages(run_uid, descriptor_uids)

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        return self._holder(run_uid).read_pages(run_uid, page_ids, columns)

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        yield from self._holder(run_uid).documents(run_uid, arrays=arrays, uids=uids)

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        return self._holder(run_uid).assets(run_uid)

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        return self._holder(run_uid).datums(run_uid, datum_ids)

    # -- detector data: the source catalog's filler (runbroker.filler.Fills)

    def filler(self) -> Filler:
        """The filler of a catalog over this store: each run's source catalog's filler."""
        if self.fillers is None:
            from .assets import LocalFiller

            return LocalFiller(self)
        return _RoutingFiller(self)


def _rebuild(sources: list[Store], fillers: list[Filler] | None, exact_count: int) -> Store:
    return FederatedStore(sources, fillers, exact_count=exact_count)


class _RoutingFiller:
    """A :class:`~runbroker.filler.Filler` handing each run to its source catalog's filler."""

    def __init__(self, store: FederatedStore) -> None:
        self.store = store

    def _of(self, events: FieldEvents) -> Filler:
        fillers = self.store.fillers
        assert fillers is not None  # made only for a store with fillers
        return fillers[self.store._source_of(events.run_uid)]

    def fill(self, events: FieldEvents) -> np.ndarray:
        return self._of(events).fill(events)

    def references(self, events: FieldEvents) -> np.ndarray:
        return self._of(events).references(events)

    def cuts(self, events: FieldEvents) -> list[int]:
        return self._of(events).cuts(events)
