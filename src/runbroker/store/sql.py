"""The SQL store: runs in SQLite (the embedded default) or PostgreSQL.

Writes go through one connection guarded by a lock. Single events are queued per descriptor
and written as column pages when a page fills up, when any other document arrives, or at the
latest ``flush_interval`` seconds after they were inserted (a background thread sees to it), so
another process sees an event within ``flush_interval`` + a few ms. A crash can lose only the
events still queued: never anything older than that. ``durability="event"`` commits every
event on its own, with ``synchronous=FULL`` on SQLite.

This module sets the store up and reads; writing is :mod:`runbroker.store.sqlwrite`, and what
differs between SQLite and PostgreSQL is :mod:`runbroker.store.dialects`.
"""

from __future__ import annotations

import atexit
import math
import time
import weakref
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

from event_model import unpack_datum_page
from sqlalchemy import (
    Connection,
    LargeBinary,
    Select,
    and_,
    bindparam,
    cast,
    exc,
    false,
    func,
    insert,
    literal_column,
    null,
    select,
    tuple_,
    union_all,
)

from ..columns import FILLED, TIME, TIMESTAMP, UID
from ..errors import ConflictError, NotACatalogError, ReadOnlyError, SchemaVersionError
from ..queries import And, Query
from . import jsoncodec, keyindex, migrations, tags
from . import notes as notestore
from . import pages as codec
from .base import PageGone, PageInfo, RunRecord, run_not_found
from .dialects import dialect_of
from .events import MAX_EVENTS_PER_PAGE, page_from_columns, rechunk
from .flatten import IN_RUN_COLUMNS
from .prepared import Prepared
from .schema import (
    SCHEMA_VERSION,
    datums,
    descriptors,
    documents,
    info,
    meta,
    metadata,
    pages,
    runs,
)
from .sqlquery import (
    compile_query,
    has_facts,
    has_stats,
    indexed,
    is_common,
    is_uid,
    uid_key_held,
)
from .sqlstats import SQLStatistics
from .sqlwrite import RUN_ID, SQLWriting
from .urls import redact

__all__ = ["SQLStore", "SchemaVersionError"]

# A metadata value held by at least this many runs (more in large catalogs, see
# SQLStore._common_threshold) is "common": a search for the newest hits then walks runs by
# time instead of collecting every hit first.
_COMMON = 2000
# How long, and for how many tests, SQLStore._is_common remembers its counts.
_COMMON_SECONDS = 10.0
_COMMON_REMEMBERED = 1000

# Reads behind stream.read(): one statement per descriptor or page, run on the cursor.
_DESCRIPTORS_OF_RUN = Prepared(
    select(descriptors.c.body)
    .join(runs, runs.c.id == descriptors.c.run_id)
    .where(runs.c.uid == bindparam("uid"))
    .order_by(descriptors.c.ord)
)
# Pages and datums are looked up within the named run: an id of another run is not found.
_RUN_ID = select(runs.c.id).where(runs.c.uid == bindparam("run_uid")).scalar_subquery()
_PAGES_OF_DESCRIPTOR = Prepared(
    select(pages.c.id, pages.c.n, pages.c.seq_min, pages.c.seq_max, pages.c.ordered)
    .join(descriptors, descriptors.c.id == pages.c.descriptor_id)
    .where(descriptors.c.uid == bindparam("uid"), descriptors.c.run_id == _RUN_ID)
    .order_by(pages.c.seq_min, pages.c.id)
)
_PAGE_DATA = Prepared(
    select(pages.c.data).where(pages.c.id == bindparam("id"), pages.c.run_id == _RUN_ID),
)
_PAGE_BLOBS = Prepared(
    select(pages.c.data, pages.c.extra).where(
        pages.c.id == bindparam("id"), pages.c.run_id == _RUN_ID
    ),
)
# Replaying a run (run.documents(), copies, packs): its documents in stored order.
_RUN_ROW = Prepared(
    select(runs.c.id, runs.c.start, runs.c.stop).where(runs.c.uid == bindparam("uid"))
)
# Every document of a run after its start, in stored order, from one statement: each part
# comes sorted by its (run_id, ord) index, so the database merges them without sorting blobs.
_RUN_BODIES = Prepared(
    union_all(
        select(
            descriptors.c.ord,
            literal_column("'descriptor'").label("kind"),
            descriptors.c.body,
            cast(null(), descriptors.c.uid.type).label("descriptor"),
            cast(null(), pages.c.extra.type).label("extra"),
        ).where(descriptors.c.run_id == bindparam("run_id")),
        select(
            documents.c.ord,
            documents.c.kind,
            documents.c.body,
            cast(null(), descriptors.c.uid.type),
            cast(null(), pages.c.extra.type),
        ).where(documents.c.run_id == bindparam("run_id")),
        select(
            pages.c.ord,
            literal_column("'event_page'"),
            pages.c.data,
            descriptors.c.uid,
            pages.c.extra,
        )
        .join(descriptors, descriptors.c.id == pages.c.descriptor_id)
        .where(pages.c.run_id == bindparam("run_id")),
    ).order_by("ord"),
)


_loads = jsoncodec.loads


class SQLStore(SQLWriting, SQLStatistics):
    """Runs in a SQL database. Use :func:`runbroker.open` rather than this class directly.

    ``durability`` sets what a commit promises, the same on SQLite and PostgreSQL:
    ``"batch"`` (the default) commits without waiting for the disk (SQLite's
    ``synchronous=NORMAL`` in WAL mode, PostgreSQL's ``synchronous_commit=off``): a crash of
    the machine, or of the PostgreSQL server, may lose the last commits (on PostgreSQL those
    of the last ~0.6 s), never corrupts the catalog, and a crash of the writing process loses
    nothing committed. ``"event"`` commits every document and waits for the disk
    (``synchronous=FULL``, ``synchronous_commit=on``).

    Example:
        >>> store = SQLStore("sqlite://")          # in memory
        >>> store.count(None)
        0
    """

    def __init__(
        self,
        uri: str,
        *,
        durability: Literal["batch", "event"] = "batch",
        flush_interval: float = 0.05,
        readonly: bool = False,
        pool_size: int = 5,
        max_overflow: int = 10,
    ) -> None:
        # What reprs and messages show: the URL without its password.
        self.uri = redact(uri)
        self._url = uri
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.durability = durability
        self.flush_interval = flush_interval
        self.readonly = readonly
        # What differs between databases, chosen once; ``dialect`` is its name.
        self._db = dialect_of(uri)
        self.dialect = self._db.name
        self._engine = self._db.engine(uri, False, self)
        self._wengine = self._engine if uri == "sqlite://" else self._db.engine(uri, True, self)
        self._init_writing(uri)
        self._init_schema()
        with self._engine.connect() as conn:
            self._indexed = frozenset(keyindex.recorded(conn))
            self._tagged = tags.tagged(conn)
            # A catalog from before migration 0005 keeps no notes: its runs read uncorrected.
            self._annotates = conn.dialect.has_table(conn, "notes")
            # A catalog from before migration 0006 keeps no statistics: none are written,
            # and Field queries match no run.
            self._summarises = conn.dialect.has_table(conn, "field_stats")
            # One from before migration 0007 keeps no hardware facts: Device, Config and
            # DataKey match no run.
            self._knows_hardware = conn.dialect.has_table(conn, "run_facts")
        if not self._summarises:
            self.stats_at_stop = False
        if not self._knows_hardware:
            self._facts = None
        self._corrected = (
            runs.c.corrected if self._annotates else cast(null(), LargeBinary).label("corrected")
        )
        self._runs_estimated = (0, -1e9)  # (largest run id, when it was read)
        # Whether a metadata test matched many runs, as last counted: (answer, when).
        self._common_seen: dict[Any, tuple[bool, float]] = {}
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s.close())

    # -- setup -------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        if self.readonly:
            # A reader (a dask worker, a second process) only checks what it finds.
            with self._engine.connect() as conn:
                self._check_version(conn, None)
            return
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if self.uri != "sqlite://":
            # An existing catalog opens without waiting for a writer's transaction.
            with self._engine.connect() as conn:
                if conn.dialect.has_table(conn, "runbroker_info"):
                    self._check_version(conn, None)
                    return
                if self._db.owns_database and conn.dialect.get_table_names(conn):
                    # Another program's database: adding the catalog's tables would mix.
                    raise NotACatalogError(
                        f"{self.uri} is not a runbroker catalog (an SQLite database of "
                        "something else); runbroker adds no tables to it"
                    )
        with self._wengine.begin() as conn:
            # Processes creating one catalog at once take turns (the check comes after).
            self._db.lock(conn, 7250104)
            version = None
            if conn.dialect.has_table(conn, "runbroker_info"):
                version = conn.execute(
                    select(info.c.value).where(info.c.key == "schema_version")
                ).scalar()
            if version is None:
                metadata.create_all(conn)
                for ddl in self._db.schema_ddl:
                    conn.exec_driver_sql(ddl)
                conn.execute(insert(info).values(key="schema_version", value=str(SCHEMA_VERSION)))
                if self.uri != "sqlite://":
                    migrations.stamp_head(conn)
            else:
                self._check_version(conn, version)

    def _check_version(self, conn: Connection, version: Any) -> None:
        if version is None:
            if not conn.dialect.has_table(conn, "runbroker_info"):
                raise NotACatalogError(f"{self.uri} is not a runbroker catalog")
            version = conn.execute(
                select(info.c.value).where(info.c.key == "schema_version")
            ).scalar()
        if int(version) < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.uri} has catalog schema version {version}, older than the version "
                f"{SCHEMA_VERSION} this runbroker uses. Upgrade it in place (back it up first) "
                f"with:  runbroker db upgrade {self.uri}"
            )
        if int(version) > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.uri} has catalog schema version {version}, newer than the version "
                f"{SCHEMA_VERSION} this runbroker understands: upgrade runbroker."
            )

    def __reduce__(self) -> tuple:
        # Sent to another process (a dask worker): it opens the same catalog to read.
        return (_reader_for, (self._url,))

    # -- indexes on chosen metadata keys ---------------------------------------------------

    def indexed_keys(self) -> list[str]:
        """The metadata keys that have an index of their own (see :meth:`create_index`).

        Example:
            >>> SQLStore("sqlite://").indexed_keys()
            []
        """
        return sorted(keyindex.user_key(k) for k in self._indexed)

    def create_index(self, *keys: str) -> list[str]:
        """Give each metadata key (a query key: ``"sample"``, ``"sample.name"``) an index of
        its own, unless it has one; return the keys indexed now that were not before.

        Building an index holds up writers to the catalog until it is done. A catalog
        opened read-only raises :class:`PermissionError` if a key lacks its index.

        Example:
            >>> store = SQLStore("sqlite://")
            >>> store.create_index("sample", "proposal_id"), store.create_index("sample")
            (['proposal_id', 'sample'], [])
            >>> store.indexed_keys()
            ['proposal_id', 'sample']
        """
        wanted = {keyindex.meta_key(k) for k in keys}
        missing = sorted(wanted - self._indexed)
        if not missing and (self.readonly or wanted <= self._tagged):
            return []
        if missing and self.readonly:
            names = " ".join(repr(keyindex.user_key(k)) for k in missing)
            raise ReadOnlyError(
                f"{self.uri} is opened read-only and has no index on {names}; create it with:  "
                f"runbroker db index {self.uri} {names}"
            )
        with self._lock:
            self._commit_locked()
            conn = self._conn()
            try:
                self._db.lock(conn, 7250105)  # see keyindex.create
                now = keyindex.create(conn, missing) if missing else sorted(self._indexed)
                # Indexed keys are kept in time order too (an index made before the tags
                # table existed gets its rows now).
                tags.enable(conn, wanted)
                tagged = tags.tagged(conn)
                conn.commit()
            except BaseException:
                if conn.in_transaction():
                    conn.rollback()
                raise
            finally:
                self._dirty_since = None
            self._indexed = frozenset(now)
            self._tagged = tagged
        return sorted(keyindex.user_key(k) for k in missing)

    def _compile(self, query: Query | None) -> Any:
        """``query`` as a condition on ``runs``, using this catalog's per-key indexes."""
        token = indexed.set(self._indexed)
        summarised = has_stats.set(self._summarises)
        hardware = has_facts.set(self._knows_hardware)
        try:
            return compile_query(query, self._db)
        finally:
            indexed.reset(token)
            has_stats.reset(summarised)
            has_facts.reset(hardware)

    def close(self) -> None:
        """Commit what is pending and release the database."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._wake.set()
        # The checkpoint only spares the next open some of the WAL (which keeps every commit):
        # not worth re-creating a database file removed meanwhile (a temporary folder deleted
        # before the interpreter exits, which closes every catalog), nor an error then.
        database = None if self._wal is None else self._wal.with_name(self._wal.name[:-4])
        if database is not None and not self.readonly and database.exists():
            self._checkpoint("PASSIVE")
        with self._lock:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
        self._engine.dispose()
        self._wengine.dispose()

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> Any:
        return self._engine.connect()

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        """Runs matching ``query``, newest first (or oldest first)."""
        ids = self._ordered(query, offset, limit, before, oldest_first, runs.c.id)
        stmt = (
            select(runs.c.uid, runs.c.start, runs.c.stop, self._corrected)
            .where(runs.c.id.in_(ids))
            .order_by(*_order(oldest_first))
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [_record(*row) for row in rows]

    def search_keys(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[tuple[float, str]]:
        """``(time, uid)`` of the runs :meth:`search` gives, without their documents (see
        :class:`~runbroker.store.base.SearchesKeys`).

        Example:
            >>> SQLStore("sqlite://").search_keys(None, limit=10)
            []
        """
        stmt = self._ordered(query, offset, limit, before, oldest_first, runs.c.time, runs.c.uid)
        with self._read() as conn:
            return [(t, u) for t, u in conn.execute(stmt).all()]

    def get_runs(self, uids: list[str]) -> list[RunRecord]:
        """The runs with these uids (one statement; those not held are left out).

        Example:
            >>> SQLStore("sqlite://").get_runs(["no-such-run"])
            []
        """
        self._flush_if_pending()
        stmt = select(runs.c.uid, runs.c.start, runs.c.stop, self._corrected).where(
            runs.c.uid.in_(bindparam("uids", expanding=True))
        )
        with self._read() as conn:
            rows = conn.execute(stmt, {"uids": list(uids)}).all()
        return [_record(*row) for row in rows]

    def _ordered(
        self,
        query: Query | None,
        offset: int,
        limit: int | None,
        before: tuple[float, str] | None,
        oldest_first: bool,
        *columns: Any,
    ) -> Select:
        """``columns`` of the runs matching ``query``, in search order, cut to the page."""
        self._flush_if_pending()
        if limit is not None and self._tagged and query is not None:
            paged = self._tagged_page(query, offset, limit, before, oldest_first)
            if paged is not None:
                return select(*columns).where(runs.c.id.in_(paged)).order_by(*_order(oldest_first))
        with self._read() as conn:
            wanted = None if limit is None else offset + limit
            threshold = self._common_threshold(conn, wanted) if wanted is not None else 0

            def common(rows: Any) -> bool:
                return self._is_common(conn, rows, threshold)

            token = is_common.set(common if wanted is not None and wanted <= _COMMON else None)
            try:
                where = self._compile(query)
            finally:
                is_common.reset(token)
        # Order and cut on (time, uid, id) alone, then fetch the documents of the survivors:
        # sorting thousands of hits never drags their start documents along.
        key = tuple_(runs.c.time, runs.c.uid)
        if before is not None:
            after = key > tuple_(*before) if oldest_first else key < tuple_(*before)
            where = and_(where, after)
        stmt = select(*columns).where(where).order_by(*_order(oldest_first)).offset(offset)
        return stmt if limit is None else stmt.limit(limit)

    def _tagged_page(
        self,
        query: Query,
        offset: int,
        limit: int,
        before: tuple[float, str] | None,
        oldest_first: bool,
    ) -> Any:
        """The ids of the page's runs read from ``tags`` (see :mod:`runbroker.store.tags`)
        when ``query`` requires one of a few values of a key kept there -- a caller's scope
        -- else None. The rest of the query is tested run by run as each value's runs are
        read newest first."""
        parts = _conjuncts(query)
        if any(is_uid(p) for p in parts):
            return None  # one run, found by its uid's own index
        found = ((i, tags.taggable(p, self._tagged)) for i, p in enumerate(parts))
        i, tests = next(((i, t) for i, t in found if t is not None), (-1, None))
        if tests is None:
            return None
        if not tests:  # In(key, []): nothing
            return select(runs.c.id).where(false())
        others = parts[:i] + parts[i + 1 :]
        if not others:
            return tags.scope_page(tests, offset, limit, before, oldest_first)
        # Each test a correlated probe of this run's rows: no list of every match.
        token = is_common.set(lambda rows: True)
        try:
            rest = self._compile(others[0] if len(others) == 1 else And(*others))
        finally:
            is_common.reset(token)
        merged, run_id, time_, uid = tags.page(tests, rest, offset + limit, before, oldest_first)
        order = (time_.asc(), uid.asc()) if oldest_first else (time_.desc(), uid.desc())
        return select(run_id).select_from(merged).order_by(*order).offset(offset).limit(limit)

    def _common_threshold(self, conn: Connection, wanted: int) -> int:
        """How many runs must share a value for a search of its newest ``wanted`` hits to
        walk the runs by time, testing each, rather than read every hit from the index.

        Walking costs about (runs / hits) * wanted tests, reading costs one fetch per hit:
        the two meet near sqrt(2 * runs * wanted) hits (10,000 in 1,000,000 runs, for 100).
        """
        now = time.monotonic()
        if now - self._runs_estimated[1] > 10.0:  # the largest run id: one index probe
            estimate = conn.execute(select(func.max(runs.c.id))).scalar() or 0
            self._runs_estimated = (estimate, now)
        return max(_COMMON, int(math.sqrt(2 * self._runs_estimated[0] * wanted)))

    def _is_common(self, conn: Connection, rows: Select, threshold: int) -> bool:
        """Whether at least ``threshold`` runs pass the metadata test ``rows``: counted, and
        remembered for some seconds, since a caller's scope (or a user's favourite query)
        comes back with every page they ask for. The answer only picks between two forms of
        one query (see sqlquery._any_rows): an old one costs speed, never results."""
        cache_key = rows._generate_cache_key()
        params = tuple(repr(b.effective_value) for b in cache_key.bindparams)
        key = (cache_key.key, params, threshold)
        now = time.monotonic()
        seen = self._common_seen.get(key)
        if seen is not None and now - seen[1] < _COMMON_SECONDS:
            return seen[0]
        probe = select(func.count()).select_from(rows.limit(threshold).subquery())
        answer = conn.execute(probe).scalar_one() >= threshold
        if len(self._common_seen) >= _COMMON_REMEMBERED:
            self._common_seen.clear()
        self._common_seen[key] = (answer, now)
        return answer

    def count(self, query: Query | None) -> int:
        """How many runs match ``query``."""
        self._flush_if_pending()
        stmt = select(func.count()).select_from(runs).where(self._compile(query))
        with self._read() as conn:
            return conn.execute(stmt).scalar_one()

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        """The distinct scalar values of ``key`` among the runs matching ``query``, counted
        in SQL (see :class:`~runbroker.store.base.Distinct`).

        Example:
            >>> store = SQLStore("sqlite://")
            >>> store.distinct("sample", None, 10)
            []
        """
        self._flush_if_pending()
        n = func.count().label("n")
        stored = keyindex.meta_key(key)
        if stored in IN_RUN_COLUMNS:  # the run's uid, in its column (no meta row)
            by_uid = (
                select(runs.c.uid, n)
                .where(self._compile(query), *uid_key_held(stored))
                .group_by(runs.c.uid)
                .order_by(n.desc(), runs.c.uid)
                .limit(limit)
            )
            with self._read() as conn:
                return [(uid, count) for uid, count in conn.execute(by_uid).all()]
        matching = select(runs.c.id).where(self._compile(query))
        stmt = (
            select(meta.c.typ, meta.c.num, meta.c.txt, n)
            .where(
                meta.c.key == stored,
                meta.c.elem.is_(False),
                meta.c.typ.in_(("s", "n", "b", "z")),
                meta.c.run_id.in_(matching),
            )
            .group_by(meta.c.typ, meta.c.num, meta.c.txt)
            .order_by(n.desc(), meta.c.typ, meta.c.num, meta.c.txt)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [(_scalar_value(r.typ, r.num, r.txt), r.n) for r in rows]

    def run_of(self, kind: str, uid: str) -> str | None:
        """The uid of the run holding descriptor, resource or stream_resource ``uid``
        (see :class:`~runbroker.store.base.Locates`).

        Example:
            >>> SQLStore("sqlite://").run_of("descriptor", "d1") is None
            True
        """
        state = self._states.get(uid) if kind == "descriptor" else None
        if state is not None:  # written by this process, perhaps not committed yet
            return state.run_uid
        self._flush_if_pending()
        table = descriptors if kind == "descriptor" else documents
        where = [table.c.uid == uid] + ([] if kind == "descriptor" else [table.c.kind == kind])
        stmt = select(runs.c.uid).join(table, table.c.run_id == runs.c.id).where(*where)
        with self._read() as conn:
            return conn.execute(stmt).scalar()

    def get_run(self, uid: str) -> RunRecord | None:
        """The run with exactly this uid."""
        self._flush_if_pending()
        stmt = select(runs.c.uid, runs.c.start, runs.c.stop, self._corrected)
        with self._read() as conn:
            row = conn.execute(stmt.where(runs.c.uid == uid)).first()
        return None if row is None else _record(*row)

    # -- notes (runbroker.notes; see runbroker.store.notes) ------------------------------------

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        """The run's notes: the newest revision of each, deleted ones included, oldest
        first (``history``: every revision as stored). See
        :class:`~runbroker.store.base.Annotates`.

        Example:
            >>> store = SQLStore("sqlite://")
            >>> store.insert("start", {"uid": "r1", "time": 0.0})
            >>> store.notes("r1")
            []
        """
        self._flush_if_pending()
        with self._read() as conn:
            found = RUN_ID.execute(conn, {"uid": run_uid}).fetchone()
            if found is None:
                raise run_not_found(self, run_uid)
            revisions = notestore.history(conn, found[0]) if self._annotates else []
        return revisions if history else notestore.newest(revisions)

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        """Store revisions of the run's notes, atomically, and what searches and reads derive
        from them (see :class:`~runbroker.store.base.Annotates`).

        Example:
            >>> from runbroker.notes import new_note
            >>> store = SQLStore("sqlite://")
            >>> store.insert("start", {"uid": "r1", "time": 0.0})
            >>> store.add_notes("r1", [new_note("r1", "tag", author="ada", tags=["x"])])
            >>> [n["tags"] for n in store.notes("r1")]
            [['x']]
        """
        self._write_notes(
            run_uid, lambda conn, run_id: self._add_notes(conn, run_id, run_uid, notes)
        )

    def replace_notes(self, run_uid: str, revisions: list[dict]) -> None:
        """Make ``revisions`` the run's notes, whatever was stored: a folder's index reading
        a notes file again (the file is what holds them)."""
        self._write_notes(
            run_uid, lambda conn, run_id: notestore.replace(conn, self._db, run_id, revisions)
        )

    def _add_notes(self, conn: Connection, run_id: int, run_uid: str, notes: list[dict]) -> None:
        fresh = notestore.check(conn, run_id, run_uid, notes)
        if fresh:
            notestore.write(conn, run_id, fresh)
            notestore.refresh(conn, self._db, run_id)

    def _write_notes(self, run_uid: str, change: Any) -> None:
        """Run ``change(conn, run id)`` in a transaction of its own, committed at once."""
        if not self._annotates:
            raise SchemaVersionError(
                f"{self.uri} keeps no notes yet (catalog schema before revision 0005); "
                f"upgrade it in place (back it up first) with:  runbroker db upgrade {self.uri}"
            )
        with self._lock:
            conn = self._conn()
            self._flush_states(conn)
            savepoint = conn.begin_nested()
            try:
                # Writers of notes take turns: each derives a run's rows from all its notes.
                self._db.lock(conn, 7250106)
                found = RUN_ID.execute(conn, {"uid": run_uid}).fetchone()
                if found is None:
                    raise run_not_found(self, run_uid)
                change(conn, found[0])
            except exc.IntegrityError as err:
                savepoint.rollback()
                raise ConflictError(
                    "note", None, "revision", "another writer stored the same revision first"
                ) from err
            except BaseException:
                savepoint.rollback()
                raise
            savepoint.commit()
            self._commit_locked()

    def descriptors(self, run_uid: str) -> list[dict]:
        """The run's descriptors in stored order."""
        self._flush_if_pending()
        with self._read() as conn:
            rows = _DESCRIPTORS_OF_RUN.execute(conn, {"uid": run_uid}).fetchall()
            if not rows:
                self._check_run(conn, run_uid)
        return [_loads(b) for (b,) in rows]

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        """Pages of these descriptors of the run, in descriptor order then seq order."""
        self._flush_if_pending()
        out = []
        with self._read() as conn:
            for uid in descriptor_uids:
                params = {"uid": uid, "run_uid": run_uid}
                rows = _PAGES_OF_DESCRIPTOR.execute(conn, params).fetchall()
                out.extend(PageInfo(i, uid, n, lo, hi, bool(o)) for i, n, lo, hi, o in rows)
            if not out:
                self._check_run(conn, run_uid)
        return out

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[dict]:
        """Decoded data columns of each page of the run, in the order of ``page_ids``."""
        extra = columns is None or any(c == UID or c[:2] in (TIMESTAMP, FILLED) for c in columns)
        statement = _PAGE_BLOBS if extra else _PAGE_DATA
        out = []
        with self._read() as conn:
            if not page_ids:
                self._check_run(conn, run_uid)
            # A server: a few pages per round trip. SQLite: one cheap statement per page.
            found = self._db.page_blobs(conn, run_uid, page_ids, extra)
            for page_id in page_ids:
                if found is not None:
                    blobs = found.get(page_id)
                else:
                    blobs = statement.execute(conn, {"id": page_id, "run_uid": run_uid}).fetchone()
                if blobs is None:
                    self._check_run(conn, run_uid)
                    raise PageGone(
                        f"page {page_id} is no page of run {run_uid} in {self.uri} (merged, "
                        "or of another run); list pages again"
                    )
                decoded = codec.decode(blobs[0], columns)
                if extra:
                    decoded.update(codec.decode(blobs[1], columns))
                out.append(decoded)
        return out

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        """Stored documents of a run in insertion order (events as event_page)."""
        self._flush_if_pending()
        with self._read() as conn:
            row = _RUN_ROW.execute(conn, {"uid": run_uid}).fetchone()
            if row is None:
                raise run_not_found(self, run_uid)
            run_id, start, stop = row
            yield "start", _loads(start)
            # SQLite's cursor hands documents over one by one: a run of many large pages is
            # never held whole (PostgreSQL's rows come fetched).
            rows = _RUN_BODIES.execute(conn, {"run_id": run_id})
            for (kind, descriptor), items in groupby(rows, key=_replay_key):
                if kind != "event_page":
                    for _, _, body, _, _ in items:
                        yield kind, _loads(body)
                    continue
                # Consecutive pages of one descriptor replay as evenly cut pages.
                parts = (_decoded_page(data, extra, uids) for _, _, data, _, extra in items)
                for data, extra in rechunk(parts, MAX_EVENTS_PER_PAGE):
                    yield kind, page_from_columns(descriptor, data, extra, arrays, uids)
            if stop:
                yield "stop", _loads(stop)

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The run's resource, stream_resource and stream_datum documents, in stored order."""
        self._flush_if_pending()
        with self._read() as conn:
            rows = conn.execute(
                select(documents.c.kind, documents.c.body)
                .join(runs, runs.c.id == documents.c.run_id)
                .where(runs.c.uid == run_uid, documents.c.kind.in_(_ASSET_KINDS))
                .order_by(documents.c.ord)
            ).all()
            if not rows:
                self._check_run(conn, run_uid)
        return [(kind, _loads(body)) for kind, body in rows]

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        """datum_id -> (resource uid, datum_kwargs) of the run, one query per thousand ids."""
        self._flush_if_pending()
        wanted = set(datum_ids)
        out: dict[str, tuple[str, dict]] = {}
        with self._read() as conn:
            for i in range(0, len(datum_ids), 1000):
                bodies = conn.execute(
                    select(documents.c.body)
                    .join(runs, runs.c.id == documents.c.run_id)
                    .where(
                        runs.c.uid == run_uid,
                        documents.c.id.in_(
                            select(datums.c.document_id)
                            .where(datums.c.datum_id.in_(datum_ids[i : i + 1000]))
                            .distinct()
                        ),
                    )
                ).scalars()
                for body in bodies:
                    page = _loads(body)
                    for datum in unpack_datum_page(page):
                        if datum["datum_id"] in wanted:
                            out[datum["datum_id"]] = (datum["resource"], datum["datum_kwargs"])
            if not out:
                self._check_run(conn, run_uid)
        return out

    def _check_run(self, conn: Connection, run_uid: str) -> None:
        """Raise RunNotFoundError unless the run is stored: asked only of empty answers."""
        if RUN_ID.execute(conn, {"uid": run_uid}).fetchone() is None:
            raise run_not_found(self, run_uid)

    def _flush_if_pending(self) -> None:
        # Reads in the writing process see its own pending writes.
        if self._dirty_since is not None:
            self.flush()

    def __repr__(self) -> str:
        return f"SQLStore({self.uri!r})"


_ASSET_KINDS = ("resource", "stream_resource", "stream_datum")
_readers: dict[str, SQLStore] = {}


def _reader_for(uri: str) -> SQLStore:
    """One read-only store per catalog per process, shared by the tasks that need it."""
    store = _readers.get(uri)
    if store is None or store._closed:
        store = _readers[uri] = SQLStore(uri, readonly=True)
    return store


def _decoded_page(data_blob: bytes, extra_blob: bytes, uids: bool = True) -> tuple[dict, dict, int]:
    data = codec.decode(data_blob)
    return data, codec.decode(extra_blob, skip=() if uids else (UID,)), len(data[TIME])


def _replay_key(row: tuple) -> tuple[str, str | None]:
    return row[1], row[3]


def _scalar_value(typ: str, num: Any, txt: str | None) -> Any:
    """The JSON scalar a ``meta`` row holds."""
    if typ == "s":
        return txt
    if typ == "b":
        return bool(num)
    if typ == "z" or num is None:
        return None
    return int(num) if num == int(num) and not isinstance(num, float) else float(num)


def _order(oldest_first: bool) -> tuple[Any, Any]:
    if oldest_first:
        return (runs.c.time.asc(), runs.c.uid.asc())
    return (runs.c.time.desc(), runs.c.uid.desc())


def _conjuncts(query: Query) -> list[Query]:
    """The parts of an ``And`` (of nested ones too), or the query itself."""
    if isinstance(query, And):
        return [part for sub in query.queries for part in _conjuncts(sub)]
    return [query]


def _record(uid: str, start: bytes, stop: bytes | None, corrected: bytes | None) -> RunRecord:
    """A run's record from its row: the corrected start, if any, with the stored one kept."""
    stored = _loads(start)
    if corrected is None:
        return RunRecord(uid, stored, _loads(stop) if stop else None)
    return RunRecord(uid, _loads(corrected), _loads(stop) if stop else None, original=stored)
