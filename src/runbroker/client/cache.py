"""The remote client's local cache: what was downloaded is kept on disk, and read offline.

:class:`CachedStore` wraps a server's store (an :class:`~runbroker.client.HTTPStore`) and is a
:class:`~runbroker.store.base.Store` itself, so a catalog over it is the whole user API. It
keeps the answers about *finished* runs -- those whose stop document is known, which no longer
change: the header (``get_run``), descriptors, the page list, the pages' columns, assets,
datums, document replays and the filled detector data (:class:`CachedFiller`). A run still
going on (no stop yet) is asked about again each time. Searches and counts change as runs are
added, so they always go to the server; their last answers are kept only to be given, with
an :class:`OfflineWarning`, while the server cannot be reached.

Everything lives in one folder per server URL below the cache root
(``platformdirs.user_cache_dir("runbroker")``, or ``$RUNBROKER_CACHE_DIR``), each a
``diskcache.Cache``: SQLite-backed, safe with several processes at once, bounded by a size
limit with the least-recently-used entries evicted first.

Example:
    >>> folder_for("http://127.0.0.1:8000/c/demo", "/tmp/rb").name
    '127.0.0.1_8000_c_demo-e95b6744b1'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import numpy as np
import platformdirs

from ..errors import PageGone, ServerUnreachableError
from ..filler import FieldEvents, Filler, Fills
from ..notes import Viewer
from ..queries import Query
from ..store.base import Columns, NewEvents, PageInfo, RunRecord, Store
from .store import HTTPStore

__all__ = [
    "DEFAULT_SIZE",
    "ENV_DIR",
    "CachedFiller",
    "CachedStore",
    "OfflineWarning",
    "ServerCache",
    "cache_root",
    "folder_for",
    "parse_size",
    "server_caches",
]

#: The environment variable naming the cache root (default: the user's cache folder).
ENV_DIR = "RUNBROKER_CACHE_DIR"
#: The size limit of one server's folder unless told otherwise: 2 GB.
DEFAULT_SIZE = 2 * 1000**3
# The file in a server's folder that names its URL (for `runbroker cache ls`).
_URL_FILE = "server-url.txt"
# Runs remembered as finished in memory, beyond those on disk (a bound, not a working set).
_MEMORY = 10_000
_MISSING = object()
T = TypeVar("T")


class OfflineWarning(UserWarning):
    """The server could not be reached and an answer came from the cache, as it was then."""


def cache_root() -> Path:
    """Where server folders are kept: ``$RUNBROKER_CACHE_DIR``, else the user's cache folder.

    Example:
        >>> os.environ[ENV_DIR] = "/tmp/rbcache"
        >>> str(cache_root())
        '/tmp/rbcache'
        >>> del os.environ[ENV_DIR]
    """
    return Path(os.environ.get(ENV_DIR) or platformdirs.user_cache_dir("runbroker"))


def folder_for(url: str, root: str | os.PathLike | None = None) -> Path:
    """The folder below ``root`` (default :func:`cache_root`) that keeps ``url``'s answers:
    a readable name and a hash of the whole URL (so that two URLs never share one).

    Example:
        >>> folder_for("https://data.example.org/", "/c").as_posix()
        '/c/data.example.org-cd5a4b40dc'
    """
    url = url.rstrip("/")
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")[:60]
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return Path(root if root is not None else cache_root()) / f"{readable}-{digest}"


def parse_size(size: int | str) -> int:
    """A size in bytes from an int or a text such as ``"500MB"``, ``"2 GB"``, ``"1.5GiB"``.

    Example:
        >>> parse_size("500MB"), parse_size("2 GiB"), parse_size(1024)
        (500000000, 2147483648, 1024)
        >>> parse_size("lots")
        Traceback (most recent call last):
        ...
        ValueError: cache size 'lots': give bytes (an int) or a number and a unit, e.g. '2GB'
    """
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"cache size {size}: give a positive number of bytes")
        return size
    units = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}
    units |= {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).lower() not in units or float(match.group(1)) <= 0:
        raise ValueError(
            f"cache size {size!r}: give bytes (an int) or a number and a unit, e.g. '2GB'"
        )
    return int(float(match.group(1)) * units[match.group(2).lower()])


def _open_cache(folder: Path, size_limit: int) -> diskcache.Cache:
    folder.mkdir(parents=True, exist_ok=True)
    return diskcache.Cache(
        str(folder),
        size_limit=size_limit,
        eviction_policy="least-recently-used",
        # Evicted by _trim, entry by entry, rather than ten at a time on each write: those
        # ten may be of runs used more recently than the oldest one.
        cull_limit=0,
        # A run's entries share its uid as tag: dropping a run is one indexed delete.
        tag_index=True,
    )


# The least recently used entries, with the bytes each takes (in its row, or its file).
_OLDEST = (
    "SELECT rowid, filename, CASE WHEN filename IS NULL THEN IFNULL(LENGTH(value), 0) "
    "ELSE size END FROM Cache ORDER BY access_time LIMIT 100"
)


def _trim(cache: diskcache.Cache) -> int:
    """Evict the least recently used entries until ``cache`` is within its size limit (as
    few as free enough); return how many. Safe beside other processes (one transaction
    per batch)."""
    evicted = 0
    while (excess := cache.volume() - cache.size_limit) > 0:
        with cache._transact(retry=True) as (sql, cleanup):
            rows = sql(_OLDEST).fetchall()
            chosen, freed = [], 0
            for rowid, filename, size in rows:
                chosen.append((rowid, filename))
                freed += size
                if freed >= excess:
                    break
            if not chosen:
                return evicted
            sql(
                f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(chosen))})",
                [rowid for rowid, _ in chosen],
            )
            for _, filename in chosen:
                cleanup(filename)
        evicted += len(chosen)
    return evicted


class CachedStore:
    """``inner`` (a server's store) with its answers about finished runs kept on disk.

    ``folder`` is this server's cache folder (default: :func:`folder_for` its URL below
    ``root``); ``size_limit`` bounds it in bytes (an int or ``"500MB"``), the least recently
    used answers going first. Anything the Store protocol does not name (``transport``, a
    capability of the inner store) is the inner store's.

    Example (no request is sent until the store is used):
        >>> store = CachedStore(HTTPStore("http://127.0.0.1:8000"), root=tmp_path,
        ...                     size_limit="500MB")
        >>> store.size_limit, store.folder.parent == tmp_path
        (500000000, True)
        >>> store.close()
    """

    def __init__(
        self,
        inner: HTTPStore,
        folder: str | os.PathLike | None = None,
        *,
        root: str | os.PathLike | None = None,
        size_limit: int | str = DEFAULT_SIZE,
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.folder = Path(folder) if folder is not None else folder_for(inner.uri, root)
        self.size_limit = parse_size(size_limit)
        self.cache = _open_cache(self.folder, self.size_limit)
        url_file = self.folder / _URL_FILE
        if not url_file.exists():
            url_file.write_text(self.uri + "\n")
        # Runs known finished (a stop is known: final), so most calls need no look-up first;
        # descriptor and resource uids -> their run, to forget a run a write touches.
        self._finished: dict[str, RunRecord] = {}
        self._run_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, folder={str(self.folder)!r})"

    @property
    def transport(self) -> Any:
        """The server's transport (its ``requests`` count: what the cache saved)."""
        return self.inner.transport

    def __reduce__(self) -> tuple:
        # dask workers reopen the inner store (read-only) and share this folder on disk
        return (_reader_for, (self.inner, str(self.folder), self.size_limit))

    # -- writing: passed on; a run written to is forgotten, so it is asked about again

    def insert(self, name: str, doc: dict) -> None:
        self.inner.insert(name, doc)
        self._written(name, doc)

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        seen: list[tuple[str, dict]] = []

        def watched() -> Iterator[tuple[str, dict]]:
            for name, doc in pairs:
                seen.append((name, doc))
                yield name, doc

        count = self.inner.ingest(watched())
        for name, doc in seen:
            self._written(name, doc)
        return count

    def _written(self, name: str, doc: dict) -> None:
        run = doc.get("run_start")
        if run is None:
            parent = doc.get("descriptor") or doc.get("resource") or doc.get("stream_resource")
            run = self._run_of.get(parent) if isinstance(parent, str) else None
            if run is None or run not in self._finished:
                return  # events of a run going on: nothing about it is kept
        if isinstance(run, str):
            self.forget(run)

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        # asked each time: `runbroker db stats` may compute them after the run stopped
        return self._online(lambda: self.inner.stats(run_uid))

    # -- notes: always the server's (they change at any time); a correction changes the run

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        return self._online(lambda: self.inner.notes(run_uid, history))

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        self._online(lambda: self.inner.add_notes(run_uid, notes))
        if any(n.get("kind") == "correction" for n in notes):
            self.forget(run_uid)

    def viewer(self) -> Viewer:
        return self._online(self.inner.viewer)

    def forget(self, run_uid: str) -> None:
        """Drop everything kept about the run (it changed, or its pages were laid out anew)."""
        with self._lock:
            self._finished.pop(run_uid, None)
        self.cache.evict(run_uid)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.cache.close()

    # -- finding runs: always asked, remembered for offline use

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        key = ("search", _query_key(query), offset, limit, before, oldest_first)
        found = self._asked(
            key,
            lambda: self.inner.search(
                query, offset=offset, limit=limit, before=before, oldest_first=oldest_first
            ),
        )
        self._keep_records(found)
        return found

    def count(self, query: Query | None) -> int:
        return self._asked(("count", _query_key(query)), lambda: self.inner.count(query))

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        ask = ("distinct", key, _query_key(query), limit)
        return self._asked(ask, lambda: self.inner.distinct(key, query, limit))

    def wait_events(
        self,
        run_uid: str,
        stream: str,
        after: int | None,
        fields: list[str] | None,
        timeout: float,
    ) -> NewEvents:
        # live data: never kept
        return self.inner.wait_events(run_uid, stream, after, fields, timeout)

    def _asked(self, key: tuple, ask: Callable[[], T]) -> T:
        """``ask()`` of the server, its answer kept; the kept one (with a warning) when the
        server cannot be reached."""
        try:
            answer = ask()
        except ServerUnreachableError as err:
            kept = self.cache.get(key, _MISSING)
            if kept is _MISSING:
                raise self._offline(err) from None
            when, answer = kept
            warnings.warn(
                OfflineWarning(
                    f"{self.uri} cannot be reached: this answer is the one it gave at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} (from the "
                    f"cache in {self.folder}); runs added since are not in it"
                ),
                stacklevel=4,
            )
            return answer
        self.cache.set(key, (time.time(), answer))
        _trim(self.cache)
        return answer

    def _keep_records(self, records: list[RunRecord]) -> None:
        # A record kept differs from the server's answer only when the run was corrected
        # since: the answer replaces it.
        finished = [r for r in records if r.stop is not None and self._finished.get(r.uid) != r]
        if not finished:
            return
        with self.cache.transact():
            for record in finished:
                self.cache.set(("run", record.uid), record, tag=record.uid)
        _trim(self.cache)
        self._remember(finished)

    def _remember(self, records: list[RunRecord]) -> None:
        with self._lock:
            if len(self._finished) > _MEMORY:
                self._finished.clear()
            for record in records:
                self._finished[record.uid] = record

    def get_run(self, uid: str) -> RunRecord | None:
        record = self._finished_record(uid)
        if record is not None:
            return record
        record = self._online(lambda: self.inner.get_run(uid))
        if record is not None:
            self._keep_records([record])
        return record

    def _finished_record(self, uid: str) -> RunRecord | None:
        """The run's header if it is known finished (in memory, else on disk), else None."""
        record = self._finished.get(uid)
        if record is None:
            record = self.cache.get(("run", uid))
            if record is not None:
                self._remember([record])
        return record

    # -- one run's contents: kept when the run is finished

    def _kept(self, run_uid: str, key: tuple, ask: Callable[[], T]) -> T:
        """The kept answer to ``key`` about a finished run, or ``ask()`` (kept if finished)."""
        if self._finished_record(run_uid) is None:
            return self._online(ask)
        answer = self.cache.get(key, _MISSING)
        if answer is _MISSING:
            answer = self._online(ask)
            self.cache.set(key, answer, tag=run_uid)
            _trim(self.cache)
        return answer

    def _online(self, ask: Callable[[], T]) -> T:
        try:
            return ask()
        except ServerUnreachableError as err:
            raise self._offline(err) from None

    def _offline(self, err: ServerUnreachableError) -> ServerUnreachableError:
        return ServerUnreachableError(
            f"{err} Only what is in the cache ({self.folder}) can be read while it is "
            "unreachable: finished runs already read, opened by their full uid."
        )

    def descriptors(self, run_uid: str) -> list[dict]:
        found = self._kept(
            run_uid, ("descriptors", run_uid), lambda: self.inner.descriptors(run_uid)
        )
        self._note_parents(run_uid, [d["uid"] for d in found])
        return found

    def _note_parents(self, run_uid: str, uids: list[str]) -> None:
        with self._lock:
            if len(self._run_of) > _MEMORY:
                self._run_of.clear()
            self._run_of.update(dict.fromkeys(uids, run_uid))

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        if self._finished_record(run_uid) is None:
            return self._online(lambda: self.inner.pages(run_uid, descriptor_uids))
        # One entry per run, so that a PageGone drops every listing of the run at once.
        wanted = tuple(descriptor_uids)
        listings = self.cache.get(("pages", run_uid), {})
        if wanted not in listings:
            listed = self._online(lambda: self.inner.pages(run_uid, descriptor_uids))
            listings = {**listings, wanted: listed}
            self.cache.set(("pages", run_uid), listings, tag=run_uid)
            _trim(self.cache)
        return listings[wanted]

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        if self._finished_record(run_uid) is None:
            return self._online(lambda: self.inner.read_pages(run_uid, page_ids, columns))
        wanted = None if columns is None else tuple(sorted(set(columns)))
        answers: list[Columns | None] = [self._page(run_uid, p, wanted) for p in page_ids]
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            ids = [page_ids[i] for i in missing]
            try:
                fetched = self._online(lambda: self.inner.read_pages(run_uid, ids, columns))
            except PageGone:
                # The pages were laid out anew: what was kept of the run names old pages.
                self.forget(run_uid)
                raise
            with self.cache.transact():
                for i, page in zip(missing, fetched, strict=True):
                    answers[i] = page
                    self.cache.set(("page", run_uid, page_ids[i], wanted), page, tag=run_uid)
            _trim(self.cache)
        return answers  # type: ignore[return-value]

    def _page(self, run_uid: str, page_id: int, wanted: tuple[str, ...] | None) -> Columns | None:
        page = self.cache.get(("page", run_uid, page_id, wanted))
        if page is None and wanted is not None:
            # Every column of the page was kept: any choice of them is in it.
            whole = self.cache.get(("page", run_uid, page_id, None))
            if whole is not None:
                page = {c: whole[c] for c in wanted if c in whole}
        return page

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        if self._finished_record(run_uid) is None:
            yield from self._replay(run_uid, arrays, uids)
            return
        key = ("documents", run_uid, arrays, uids)
        kept = self.cache.get(key)
        if kept is not None:
            yield from kept
            return
        got: list[tuple[str, Any]] = []
        for pair in self._replay(run_uid, arrays, uids):
            got.append(pair)
            yield pair
        # Kept only once replayed to its end: a replay stopped early is not the run.
        self.cache.set(key, got, tag=run_uid)
        _trim(self.cache)

    def _replay(self, run_uid: str, arrays: bool, uids: bool | str) -> Iterator[tuple[str, Any]]:
        try:
            yield from self.inner.documents(run_uid, arrays=arrays, uids=uids)
        except ServerUnreachableError as err:
            raise self._offline(err) from None

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        found = self._kept(run_uid, ("assets", run_uid), lambda: self.inner.assets(run_uid))
        self._note_parents(run_uid, [doc["uid"] for _, doc in found if "uid" in doc])
        return found

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        key = ("datums", run_uid, _digest(json.dumps(list(datum_ids)).encode()))
        return self._kept(run_uid, key, lambda: self.inner.datums(run_uid, datum_ids))

    # -- filling: the server's answers kept as the rest

    def filler(self) -> Filler:
        """The inner store's filler with its answers about finished runs kept."""
        if not isinstance(self.inner, Fills):
            raise TypeError(f"{self.inner!r} does not fill by itself: there is nothing to keep")
        return CachedFiller(self, self.inner.filler())


class CachedFiller:
    """A :class:`~runbroker.filler.Filler` whose answers about finished runs are kept in
    ``store``'s cache (the same events of the same field ask the server once)."""

    def __init__(self, store: CachedStore, inner: Filler) -> None:
        self.store = store
        self.inner = inner

    def _kept(self, op: str, events: FieldEvents, ask: Callable[[FieldEvents], T]) -> T:
        seq = np.ascontiguousarray(events.seq_nums, dtype=np.int64).tobytes()
        key = (op, events.run_uid, tuple(events.descriptors), events.field, _digest(seq))
        return self.store._kept(events.run_uid, key, lambda: ask(events))

    def fill(self, events: FieldEvents) -> np.ndarray:
        return self._kept("fill", events, self.inner.fill)

    def references(self, events: FieldEvents) -> np.ndarray:
        return self._kept("references", events, self.inner.references)

    def cuts(self, events: FieldEvents) -> list[int]:
        return self._kept("cuts", events, self.inner.cuts)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _query_key(query: Query | None) -> str:
    return "" if query is None else json.dumps(query.to_dict(), sort_keys=True, default=str)


_readers: dict[tuple, CachedStore] = {}
_readers_lock = threading.Lock()


def _reader_for(inner: Store, folder: str, size_limit: int) -> CachedStore:
    """The cached store over ``inner`` in ``folder``, once per process (dask workers)."""
    with _readers_lock:
        key = (id(inner), folder)
        if key not in _readers:
            _readers[key] = CachedStore(inner, folder, size_limit=size_limit)
        return _readers[key]


# -- what `runbroker cache` shows and clears ------------------------------------------------


@dataclass(frozen=True)
class CachedRun:
    """One run kept in a server's folder: its uid, scan_id, plan and bytes kept."""

    uid: str
    scan_id: Any
    plan_name: Any
    size: int


class ServerCache:
    """One server's cache folder, for listing and clearing (opens nothing on the server).

    Example:
        >>> import tempfile
        >>> folder = folder_for("http://h:1", tempfile.mkdtemp())
        >>> ServerCache(folder).runs()
        []
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @property
    def url(self) -> str:
        """The server URL the folder keeps answers of (``?`` if it was not written)."""
        try:
            return (self.folder / _URL_FILE).read_text().strip()
        except OSError:
            return "?"

    def size(self) -> int:
        """Bytes the folder takes on disk."""
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def runs(self) -> list[CachedRun]:
        """The runs with something kept, most bytes first."""
        db = self.folder / "cache.db"
        if not db.exists():
            return []
        sizes: dict[str, int] = {}
        # diskcache's table: a value is in the row (its bytes) or in a file (``size``).
        sql = (
            "SELECT tag, SUM(CASE WHEN filename IS NULL THEN IFNULL(LENGTH(value), 0) "
            "ELSE size END) FROM Cache WHERE tag IS NOT NULL GROUP BY tag"
        )
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            for tag, size in con.execute(sql):
                sizes[str(tag)] = int(size or 0)
        with diskcache.Cache(str(self.folder)) as cache:
            records = {uid: cache.get(("run", uid)) for uid in sizes}
        runs = []
        for uid, size in sizes.items():
            start = records[uid].start if records[uid] is not None else {}
            runs.append(CachedRun(uid, start.get("scan_id"), start.get("plan_name"), size))
        return sorted(runs, key=lambda r: (-r.size, r.uid))

    def clear(self) -> None:
        """Remove everything kept for this server (other processes' use stays safe)."""
        with diskcache.Cache(str(self.folder)) as cache:
            cache.clear()


def server_caches(root: str | os.PathLike | None = None) -> list[ServerCache]:
    """The server folders below ``root`` (default :func:`cache_root`), by URL.

    Example:
        >>> import tempfile
        >>> server_caches(tempfile.mkdtemp())
        []
    """
    base = Path(root) if root is not None else cache_root()
    if not base.is_dir():
        return []
    found = [ServerCache(p) for p in base.iterdir() if (p / _URL_FILE).exists()]
    return sorted(found, key=lambda s: s.url)
