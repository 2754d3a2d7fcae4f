"""The Store protocol: the one narrow interface the user API (``runbroker.catalog``) is
written against, with every rule a store must keep written out here.

SQLite, PostgreSQL and a folder of run files are each a :class:`Store`; so will be the HTTP
client, and a cache, an access guard or a federation will be Store *wrappers*. The catalog,
its runs and streams only ever call the methods below, so every rule that the user API relies
on is a rule of this page. :mod:`runbroker.testing.conformance` checks each one; a new store
(or wrapper) passes that suite before it is used.

Rules that hold for every method
--------------------------------

**Runs are named by uid.** Every per-run call (:meth:`Store.descriptors`,
:meth:`~Store.pages`, :meth:`~Store.read_pages`, :meth:`~Store.documents`,
:meth:`~Store.assets`, :meth:`~Store.datums`) takes the run's uid first, so a wrapper can
check that the caller may see the run, key a cache on it, or route the call to the store
that holds it.

**Not found.** :meth:`Store.get_run` is the existence check: ``None`` for a run the store does
not hold. Every per-run call raises :class:`~runbroker.errors.RunNotFoundError` (a
``KeyError``) naming the run and the store for such a run. A store may look the run up only
when its answer would be empty (a run with no descriptors yet is normal and gives ``[]``),
so reads of a run that exists cost nothing more. :meth:`Store.documents` is a generator:
it raises at the first ``next()`` at the latest.

**Order.** Runs come newest first, ordered by ``(time, uid)`` descending, in every store:
``cat[-1]`` is the latest run everywhere. A run's descriptors come in the order they were
stored; pages come grouped by descriptor in the order the descriptors were asked for, each
descriptor's pages by ``seq_min``. A replay (:meth:`Store.documents`) gives the documents
that are not events in the order they were stored and each descriptor's events in the order
they were stored; a store keeping events in pages may gather a descriptor's events into
fewer pages, which moves events later than other documents stored after them, never
earlier (an event always comes after every document stored before it).

**Column vocabulary.** A page holds the columns of some events of one descriptor:

==================  ===========================================================
``time``            event times (float64 array)
``seq_num``         event seq_nums (int64 array)
``uid``             event uids (a list of str, or a fixed-width bytes array)
``d:<field>``       the field's values: ``data[<field>]`` of each event
``t:<field>``       the field's timestamps: ``timestamps[<field>]`` of each event
``f:<field>``       the field's ``filled`` flags (only where events carried them)
==================  ===========================================================

A column is a numpy array when its values are homogeneous numbers (one row per event, the
event's shape after it), else a list. A page lacks the ``d:``/``t:`` columns of a field its
events did not carry (a stream whose fields changed); asked for, they are left out of its
dict, not an error. ``time`` and ``seq_num`` are in every page.

**Page ids are opaque tokens.** An id is only valid as given by :meth:`Store.pages`, for the
same run: a caller never makes one, does arithmetic on one or keeps one across a re-listing
(the folder store packs a file id, a page number and a length into it; the SQL store uses row
ids that merging pages retires).

**PageGone and the retry.** Writers may merge a run's small pages into big ones while it is
read, so a listed page can be gone by the time it is read. :meth:`Store.read_pages` then
raises :class:`PageGone`, and the caller lists the pages again and retries (``Stream``
retries 3 times). A page id that is not a page of the named run is treated the same way:
for that run there is no such page (``PageGone``), whether it was merged away, belongs to
another run or never existed. A wrapper hiding a run thus reveals nothing about its pages.

**Writes and visibility.** :meth:`Store.insert` makes a document visible to readers of the
same store at once, to stores opened on the catalog after :meth:`Store.flush`, and to stores
already open within 100 ms (a store may say it takes longer: an open folder store looks at
its folder again every ``refresh_interval``, 2 s).
:meth:`Store.ingest` is atomic: if one document of a batch is refused
(:class:`~runbroker.errors.DocumentError`), none of the batch is stored. Inserting a
document identical to a stored one is a no-op; a different document under a stored uid
raises :class:`~runbroker.errors.ConflictError`.

**Refusals come from the call that sent the document, or from the next flush.** A store
that sends events and datums in batches (the HTTP client: one request per batch, not per
event) learns that one was refused only when its batch is sent: the error is then raised by
the next ``insert`` or by ``flush`` (which always raises what is pending), the documents
before it in the batch are stored and those after it are not -- what a writer that stopped at
the refused document would have left. Every other document is refused by its own ``insert``.

**Threads and processes.** A store may be used from many threads at once. Pickled (to send
it to a dask worker), a store reduces to a function that reopens the same catalog read-only in
the receiving process, once per process (``__reduce__`` -> ``_reader_for(uri)``): it carries
no connection, lock or writing state. :meth:`Store.close` flushes, then releases connections;
closing twice is allowed.

Optional capabilities
---------------------

What only some stores can do is a small protocol of its own, checked with ``isinstance`` (all
are ``runtime_checkable``), never with ``hasattr``: :class:`Indexes` (indexes on chosen
metadata keys), :class:`LeavesOut` (sources left out, for clearer not-found messages),
:class:`runbroker.filler.Fills` (a store that fills detector data by itself, as a remote one
does; for any other store the catalog reads the files through a local filler),
:class:`Distinct` (the distinct values of a metadata key, counted inside the database; any
other store is scanned by :func:`distinct_values`) and :class:`Follows` (a store that can
wait for a run's new events where they are stored: the remote store waits on its server, one
request per batch; for any other store :meth:`runbroker.stream.Stream.follow` polls
:meth:`Store.pages`) and :class:`Annotates` (a store that keeps notes beside its runs:
annotations, tags and corrections, :mod:`runbroker.notes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import NotesUnsupportedError, PageGone, RunNotFoundError
from ..queries import Query

__all__ = [
    "Annotates",
    "Columns",
    "Distinct",
    "Follows",
    "Indexes",
    "KeepsStats",
    "LeavesOut",
    "NewEvents",
    "PageGone",
    "PageInfo",
    "RunRecord",
    "Store",
    "Summarises",
    "annotating",
    "distinct_values",
    "indexing",
    "run_not_found",
]

Columns = dict[str, "np.ndarray | list"]


def run_not_found(store: Any, run_uid: str) -> RunNotFoundError:
    """The error every per-run call of ``store`` raises for a run it does not hold.

    Example:
        >>> class Demo:
        ...     uri = "sqlite:///runs.db"
        >>> print(run_not_found(Demo(), "abc123"))
        no run 'abc123' in sqlite:///runs.db
    """
    return RunNotFoundError(f"no run {run_uid!r} in {store.uri}")


@dataclass(frozen=True)
class RunRecord:
    """A run's header: its uid, start document and stop document (``None`` while running).

    A corrected run (:func:`runbroker.notes.corrected`) has the corrected start in ``start``
    and the start document as it was stored in ``original``; ``original`` is None for a run
    never corrected.
    """

    uid: str
    start: dict
    stop: dict | None
    original: dict | None = None


@dataclass(frozen=True)
class PageInfo:
    """Where a block of a stream's events lives, without its data.

    ``n`` events of ``descriptor`` whose seq_nums lie in ``[seq_min, seq_max]``, stored in
    increasing seq_num order when ``ordered``. ``id`` is an opaque token for
    :meth:`Store.read_pages` of the same run.
    """

    id: int
    descriptor: str
    n: int
    seq_min: int
    seq_max: int
    ordered: bool = True


@runtime_checkable
class Store(Protocol):
    """What the catalog needs from storage (the module docstring gives the rules).

    ``uri`` names the catalog (without any password), in messages and for reopening it.
    """

    uri: str

    def insert(self, name: str, doc: dict) -> None:
        """Validate and store one document (``name`` is its kind: ``"start"``, ``"event"``
        ...). Readers of this store see it at once, other processes within 100 ms. Raises
        :class:`~runbroker.errors.DocumentError` for an invalid document, one whose run
        or descriptor is not stored, or (:class:`~runbroker.errors.ConflictError`) one
        whose uid is stored with different content; an identical repeat is a no-op."""

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many ``(name, document)`` pairs at once, atomically (a refused document
        stores none of them); return how many were given. The same checks as ``insert``."""

    def flush(self) -> None:
        """Make everything inserted so far visible to other processes now."""

    def close(self) -> None:
        """Flush and release connections; a second call does nothing."""

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        """Runs matching ``query`` (all when None), newest first by ``(time, uid)``
        descending (``oldest_first``: ascending), skipping ``offset``, at most ``limit``.

        ``before=(time, uid)`` starts after that run in this order, so paging with the
        last run of a page stays stable while runs are being added.
        """

    def count(self, query: Query | None) -> int:
        """How many runs match ``query``: the length of ``search(query)``."""

    def get_run(self, uid: str) -> RunRecord | None:
        """The run with exactly this uid, or None: the existence check (no prefixes)."""

    def descriptors(self, run_uid: str) -> list[dict]:
        """The run's descriptor documents in the order they were stored (``[]`` for a run
        with none yet). Raises ``RunNotFoundError`` for an unknown run."""

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        """The pages of these descriptors of the run: grouped by descriptor in the order
        given, each descriptor's by ``seq_min``. A uid that is not a descriptor of the run
        has no pages. Raises ``RunNotFoundError`` for an unknown run."""

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        """The columns (see the vocabulary above; all of them when ``columns`` is None) of
        each page, one dict per id in the order of ``page_ids``.

        Raises :class:`PageGone` for an id that is no page of the run now (the caller
        lists the pages again), ``RunNotFoundError`` for an unknown run.
        """

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        """Replay the run: ``(name, document)`` from its start to its stop (if any), in the
        order they were stored (events possibly later, see the module docstring). Events
        come as event pages, their columns as lists (or
        as the numpy arrays stored, with ``arrays=True``). ``uids=False`` leaves the event
        uids out of the pages (empty lists), for readers that do not need them: decoding
        them is much of a replay's time. With ``arrays=True``, ``uids="bytes"`` gives the
        uids of a page as a fixed-width bytes array (numpy ``S``) where the store keeps them
        so (ASCII uids), else as a list. A generator: ``RunNotFoundError`` for an unknown
        run comes at the first ``next()`` at the latest."""

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The run's ``resource``, ``stream_resource`` and ``stream_datum`` documents in
        stored order. Raises ``RunNotFoundError`` for an unknown run."""

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        """datum_id -> (resource uid, datum_kwargs) for those of ``datum_ids`` stored in the
        run (others are left out). Raises ``RunNotFoundError`` for an unknown run."""


@runtime_checkable
class Indexes(Protocol):
    """A store that can give chosen metadata keys an index of their own, so that searches
    on them stay fast in large catalogs."""

    def indexed_keys(self) -> list[str]:
        """The metadata keys (query keys: ``"sample"``, ``"sample.name"``) with an index."""
        ...

    def create_index(self, *keys: str) -> list[str]:
        """Index each key that lacks an index; return the keys indexed now, sorted."""
        ...


def indexing(store: object) -> Indexes:
    """``store`` as an :class:`Indexes`, or a ``TypeError`` naming it when it keeps none.

    Example:
        >>> from runbroker.store.sql import SQLStore
        >>> indexing(SQLStore("sqlite://")).indexed_keys()
        []
        >>> indexing(object())
        Traceback (most recent call last):
        ...
        TypeError: <object object at ...> keeps no indexes on metadata keys
    """
    if not isinstance(store, Indexes):
        raise TypeError(f"{store!r} keeps no indexes on metadata keys")
    return store


@runtime_checkable
class LeavesOut(Protocol):
    """A store that may leave some of its sources out (a folder's unreadable run files), so
    that a run looked for is missing from it without being absent from its files: the
    catalog names them in its not-found message."""

    def left_out(self) -> list[str]:
        """Names of the sources left out (empty when every one is read)."""
        ...


@runtime_checkable
class Distinct(Protocol):
    """A store that counts the distinct values of a metadata key by itself (in SQL, or by
    asking a server), instead of the catalog reading every matching run."""

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        """``(value, runs)`` for the scalar values ``key`` takes among the runs matching
        ``query``: most runs first, then by value; at most ``limit``. Lists and dicts are
        not values here; a run without the key counts for nothing."""
        ...


def distinct_values(
    store: object, key: str, query: Query | None, limit: int = 100
) -> list[tuple[Any, int]]:
    """The distinct scalar values of ``key`` among the runs matching ``query``, with how many
    runs hold each (see :class:`Distinct`): the store's own count where it has one, else a
    scan of the matching runs.

    Example:
        >>> from runbroker.store.sql import SQLStore
        >>> distinct_values(SQLStore("sqlite://"), "sample", None)
        []
    """
    from ..queries import MISSING, lookup, split_key
    from .flatten import scalar_row

    split_key(key)  # a malformed key is refused before any work
    if isinstance(store, Distinct):
        return store.distinct(key, query, limit)
    counts: dict[tuple[str, Any], list] = {}
    for run in store.search(query):  # type: ignore[attr-defined]
        value = lookup({"start": run.start, "stop": run.stop}, key)
        if value is MISSING or isinstance(value, dict | list):
            continue
        slot = counts.setdefault((type(value).__name__, value), [value, 0])
        slot[1] += 1

    def order(value_count: list) -> tuple:
        # as SQL orders meta rows: by type letter, then number, then text
        typ, num, txt = scalar_row(value_count[0])  # type: ignore[misc]
        return (-value_count[1], typ, num if num is not None else 0, txt or "")

    ranked = sorted(counts.values(), key=order)
    return [(v, n) for v, n in ranked[:limit]]


@runtime_checkable
class SearchesKeys(Protocol):
    """A store that can list the ``(time, uid)`` of a search's runs without their documents,
    so that a caller merging several stores' pages (a federation) decodes only the runs it
    keeps."""

    def search_keys(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[tuple[float, str]]:
        """``(start time, uid)`` of the runs ``search`` with the same arguments gives, in
        the same order."""
        ...

    def get_runs(self, uids: list[str]) -> list[RunRecord]:
        """The runs with these uids that it holds (in no particular order)."""
        ...


@runtime_checkable
class Locates(Protocol):
    """A store that tells which run holds a stored descriptor, resource or stream_resource, so
    that a document naming one (an event, a datum) can be checked against its run before it
    is written (the access guard's write rules)."""

    def run_of(self, kind: str, uid: str) -> str | None:
        """The uid of the run holding document ``uid`` of ``kind`` (``"descriptor"``,
        ``"resource"`` or ``"stream_resource"``), written or queued; None when there is none."""
        ...


@dataclass(frozen=True)
class NewEvents:
    """A stream's events after a seq_num, as :meth:`Follows.wait_events` finds them.

    ``columns``: ``time``, ``seq_num`` and the ``d:<field>`` columns of the new events, in
    seq_num order (no events: empty columns). ``descriptors``: the uids of the stream's
    descriptors now (a new one means new fields). ``stopped``: the run had stopped *before*
    the events were looked for, so no event of it is missing from ``columns``.
    """

    columns: Columns
    descriptors: list[str]
    stopped: bool

    def __len__(self) -> int:
        return len(self.columns.get("seq_num", ()))


@runtime_checkable
class Follows(Protocol):
    """A store that can wait for a run's new events where they are stored (the HTTP store
    waits on its server), instead of being polled by the caller."""

    def wait_events(
        self,
        run_uid: str,
        stream: str,
        after: int | None,
        fields: list[str] | None,
        timeout: float,
    ) -> NewEvents:
        """The events of ``stream`` with a seq_num above ``after`` (all when None), with the
        ``fields`` columns (all when None): at once when there are some or the run has
        stopped, else when some arrive, or empty after ``timeout`` seconds. Raises
        ``RunNotFoundError`` for an unknown run."""
        ...


@runtime_checkable
class Annotates(Protocol):
    """A store that keeps notes beside its runs (:mod:`runbroker.notes`): every revision of
    every annotation, tag and correction, never by rewriting the run's documents.

    The store keeps all notes; who may see one is decided by the caller
    (:func:`runbroker.notes.visible`: the catalog for its user, the access guard for its
    principal). Its searches answer the note queries (``Tag``, ``Annotation``) and see the
    corrected start of a corrected run, as its reads do (:attr:`RunRecord.original`).
    """

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        """The newest revision of each of the run's notes, deleted ones included, oldest
        note first (``history``: every revision, in the order stored). Raises
        ``RunNotFoundError`` for an unknown run."""
        ...

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        """Store revisions of the run's notes, atomically, each checked by
        :func:`runbroker.notes.check_note`. A revision must be numbered one above the note's
        newest stored one (else :class:`~runbroker.errors.ConflictError`: someone else
        edited it first); repeating a stored revision exactly is a no-op. Raises
        ``RunNotFoundError`` for an unknown run and ``DocumentError`` for a note of another
        run."""
        ...


def annotating(store: object) -> Annotates:
    """``store`` as an :class:`Annotates`, or a
    :class:`~runbroker.errors.NotesUnsupportedError` (a ``TypeError``) naming it.

    Example:
        >>> annotating(object())
        Traceback (most recent call last):
        ...
        runbroker.errors.NotesUnsupportedError: <object object at ...> keeps no notes ...
    """
    if not isinstance(store, Annotates):
        raise NotesUnsupportedError(
            f"{store!r} keeps no notes (annotations, tags, corrections): open the catalog "
            "from SQLite, PostgreSQL, a folder or a runbroker server"
        )
    return store


@runtime_checkable
class Summarises(Protocol):
    """A store that keeps per-stream, per-field statistics of its runs
    (:mod:`runbroker.store.stats`), written when a run stops, and answers ``Field`` queries
    from them."""

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        """``{stream: {field: {count, nan, sum, min, max, mean}}}``, or None if the run has
        none (running, or stored before statistics existed). Raises ``RunNotFoundError``
        for an unknown run."""
        ...


@runtime_checkable
class KeepsStats(Summarises, Protocol):
    """A :class:`Summarises` store whose statistics can be (re)computed where it lives
    (``runbroker db stats``): a database or folder, not a server's client."""

    def set_stats(
        self, run_uid: str, stats: dict[str, dict[str, dict[str, Any]]], filled: bool = False
    ) -> None:
        """Replace the run's statistics (``filled``: computed with detector files read)."""
        ...

    def unsummarised(self, filled: bool = False) -> list[str]:
        """The uids of stopped runs without statistics (``filled``: without statistics
        computed with detector files read), oldest first."""
        ...
