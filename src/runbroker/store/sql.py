"""The SQL store: runs in SQLite (the embedded default) or any SQLAlchemy database.

Writes go through one connection guarded by a lock. Single events are queued per descriptor
and written as column pages when a page fills up, when any other document arrives, or at the
latest ``flush_interval`` seconds after they were inserted (a background thread sees to it), so
another process sees an event within ``flush_interval`` + a few ms. A crash can lose only the
events still queued: never anything older than that. ``durability="event"`` commits every
event on its own, with ``synchronous=FULL`` on SQLite.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import math
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

import numpy as np
from event_model import pack_datum_page, unpack_datum_page, unpack_event_page
from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine

from ..documents import ConflictError, DocumentError, UnknownParentError, validate
from ..queries import Query
from . import jsoncodec, keyindex, migrations, pgsql
from . import pages as codec
from .base import PageGone, PageInfo, RunRecord
from .events import (
    MAX_EVENTS_PER_PAGE,
    DescriptorState,
    canonical,
    event_from_columns,
    merge_batches,
    page_from_columns,
    rechunk,
)
from .flatten import flatten, fulltext
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
from .sqlquery import SQLiteCompiler, compile_query, indexed, is_common

__all__ = ["SQLStore", "SchemaVersionError", "scan_id_column"]

# A descriptor's pages are merged once this many small ones have piled up (slow live runs).
_COMPACT_AFTER = 32
# A metadata value held by at least this many runs is "common": a search for the newest
# hits then walks runs by time instead of collecting every hit first.
_COMMON = 2000
# Runs whose writing state is kept in memory at most (beyond, idle ones are forgotten).
_MAX_CACHED = 256
# WAL sizes that start a background checkpoint, and a blocking one.
_WAL_BACKGROUND = 64 * 2**20
_WAL_BLOCKING = 512 * 2**20
# Documents per transaction at most: each has a savepoint, and PostgreSQL keeps the first 64
# subtransactions of a transaction where other sessions check them cheaply.
_MAX_SAVEPOINTS = 60
# Queued events are written at the latest when this many (or this many bytes) wait.
_FLUSH_EVENTS = 100_000
_FLUSH_BYTES = 64 * 2**20


_PAGE_KEYS = [
    "descriptor_id",
    "run_id",
    "ord",
    "n",
    "seq_min",
    "seq_max",
    "ordered",
    "data",
    "extra",
]
_MAX_SEQ = select(func.max(pages.c.seq_max)).where(pages.c.descriptor_id == bindparam("d"))
_INSERT_PAGE = Prepared(insert(pages), _PAGE_KEYS)
_START_OF = Prepared(select(runs.c.start).where(runs.c.uid == bindparam("uid")))
# "ON CONFLICT DO NOTHING" (same syntax in SQLite and PostgreSQL): when two writers store the
# same run at once (a retried RunEngine), the second finds the first's row -- after waiting for
# its commit -- and compares, instead of failing on the unique index.
_INSERT_RUN = Prepared(
    text(
        "INSERT INTO runs (uid, time, scan_id, start) VALUES (:uid, :time, :scan_id, :start) "
        "ON CONFLICT (uid) DO NOTHING RETURNING id"
    )
)
_INSERT_META = Prepared(insert(meta), ["run_id", "key", "elem", "typ", "num", "txt"])
_PG_INSERT_START = Prepared(text(pgsql.INSERT_START))
_PG_SET_STOP = Prepared(text(pgsql.SET_STOP))
_RUN_ID = Prepared(select(runs.c.id).where(runs.c.uid == bindparam("uid")))
_STOP_OF = Prepared(select(runs.c.stop).where(runs.c.id == bindparam("rid")))
_SET_STOP = Prepared(
    update(runs)
    .where(runs.c.id == bindparam("rid"), runs.c.stop.is_(None))
    .values(stop=bindparam("new_stop"), stop_time=bindparam("new_time"))
)
_DESCRIPTOR_OF = Prepared(select(descriptors.c.body).where(descriptors.c.uid == bindparam("uid")))
_INSERT_DESCRIPTOR = Prepared(
    text(
        "INSERT INTO descriptors (uid, run_id, ord, name, time, body) "
        "VALUES (:uid, :run_id, :ord, :name, :time, :body) "
        "ON CONFLICT (uid) DO NOTHING RETURNING id"
    )
)
_INSERT_DOCUMENT = Prepared(
    text(
        "INSERT INTO documents (uid, run_id, ord, kind, body) "
        "VALUES (:uid, :run_id, :ord, :kind, :body) ON CONFLICT (uid) DO NOTHING"
    )
)
_MAX_ORDS = [
    select(func.max(t.c.ord)).where(t.c.run_id == bindparam("run_id"))
    for t in (descriptors, pages, documents)
]


# Reads behind stream.read(): one statement per descriptor or page, run on the cursor.
_DESCRIPTORS_OF_RUN = Prepared(
    select(descriptors.c.body)
    .join(runs, runs.c.id == descriptors.c.run_id)
    .where(runs.c.uid == bindparam("uid"))
    .order_by(descriptors.c.ord)
)
_PAGES_OF_DESCRIPTOR = Prepared(
    select(pages.c.id, pages.c.n, pages.c.seq_min, pages.c.seq_max, pages.c.ordered)
    .join(descriptors, descriptors.c.id == pages.c.descriptor_id)
    .where(descriptors.c.uid == bindparam("uid"))
    .order_by(pages.c.seq_min, pages.c.id)
)
_PAGE_DATA = Prepared(select(pages.c.data).where(pages.c.id == bindparam("id")), binary=True)
_PAGE_BLOBS = Prepared(
    select(pages.c.data, pages.c.extra).where(pages.c.id == bindparam("id")), binary=True
)


# Full-text search: SQLite's FTS5, PostgreSQL's text search over the same word list.
_FULLTEXT_DDL = {
    "sqlite": [
        "CREATE VIRTUAL TABLE IF NOT EXISTS runs_fts USING fts5("
        "content, tokenize='unicode61 remove_diacritics 0')"
    ],
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS runs_fts (run_id INTEGER PRIMARY KEY, content TEXT)",
        "CREATE INDEX IF NOT EXISTS ix_runs_fts ON runs_fts "
        "USING GIN (to_tsvector('simple', content))",
        # Page blobs are numbers that do not compress: spare PostgreSQL from trying.
        "ALTER TABLE pages ALTER COLUMN data SET STORAGE EXTERNAL, "
        "ALTER COLUMN extra SET STORAGE EXTERNAL",
    ],
}
_INSERT_FULLTEXT = {
    "sqlite": Prepared(text("INSERT INTO runs_fts(rowid, content) VALUES (:run_id, :content)")),
    "postgresql": Prepared(
        text("INSERT INTO runs_fts(run_id, content) VALUES (:run_id, :content)")
    ),
}


class SchemaVersionError(RuntimeError):
    """The catalog was written by a different schema version than this runbroker uses."""


_dumps = jsoncodec.dumps
_loads = jsoncodec.loads


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _regexp(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and _regex(pattern).search(value) is not None


class SQLStore:
    """Runs in a SQL database. Use :func:`runbroker.open` rather than this class directly.

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
        self.uri = uri
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.durability = durability
        self.flush_interval = flush_interval
        self.readonly = readonly
        self.dialect = uri.split(":", 1)[0].split("+", 1)[0]
        self._lock = threading.RLock()
        self._states: dict[str, DescriptorState] = {}
        self._run_ids: dict[str, int] = {}
        self._closed = False
        self._flush_error: Exception | None = None
        self._deferred_error: Exception | None = None
        self._last_queued: DescriptorState | None = None
        self._arrivals = itertools.count(1)
        self._txn_descriptors: set[int] = set()  # descriptors inserted in the open transaction
        self._savepoints = 0  # documents written (each under a savepoint) in the open one
        self._ords: dict[int, int] = {}
        # When the oldest write of the open transaction happened (None: nothing pending).
        self._dirty_since: float | None = None
        self._engine = self._make_engine(uri, writer=False)
        self._wengine = self._engine if uri == "sqlite://" else self._make_engine(uri, writer=True)
        self._wconn: Connection | None = None
        self._init_schema()
        with self._engine.connect() as conn:
            self._indexed = frozenset(keyindex.recorded(conn))
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._wal = (
            Path(uri.removeprefix("sqlite:///") + "-wal") if uri.startswith("sqlite:///") else None
        )
        self._checkpoint_due = False
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s.close())

    # -- setup -------------------------------------------------------------------------------

    def _make_engine(self, uri: str, writer: bool) -> Engine:
        if self.dialect == "postgresql":
            # Each process keeps a small pool: many stateless processes share one server.
            return pgsql.make_engine(
                uri, writer=writer, pool_size=self.pool_size, max_overflow=self.max_overflow
            )
        if self.dialect != "sqlite":
            pool = {"pool_size": self.pool_size, "max_overflow": self.max_overflow}
            return create_engine(uri, pool_pre_ping=True, **pool)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 60}}
        if uri == "sqlite://":
            from sqlalchemy.pool import StaticPool

            kwargs["poolclass"] = StaticPool
        if not writer:
            # Reads run in autocommit, so a returned connection has nothing to roll back.
            kwargs["pool_reset_on_return"] = None
        engine = create_engine(uri, **kwargs)
        engine.dialect.statement_compiler = SQLiteCompiler  # renders INDEXED BY
        sync = "FULL" if self.durability == "event" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin hook (below) decide how transactions start.
            dbapi_conn.isolation_level = None
            dbapi_conn.create_function("regexp", 2, _regexp, deterministic=True)
            cur = dbapi_conn.cursor()
            if uri != "sqlite://":
                # Only takes effect when the file is created: 16 KiB pages read page blobs
                # several times faster than the 4 KiB default (shorter overflow chains).
                cur.execute("PRAGMA page_size=16384")
                cur.execute("PRAGMA journal_mode=WAL")
            for pragma in (
                f"synchronous={sync}",
                "busy_timeout=60000",
                "cache_size=-65536",
                "mmap_size=1073741824",
                "temp_store=MEMORY",
                # Checkpoints (copying the WAL into the database, with fsync) are run by
                # the committer thread, beside ingest, instead of inside a commit.
                "wal_autocheckpoint=0",
            ):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock up front so two writers never deadlock on upgrade;
            # readers run each statement in autocommit (a single SELECT is consistent).
            if writer or uri == "sqlite://":
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _init_schema(self) -> None:
        if self.readonly:
            # A reader (a dask worker, a second process) only checks what it finds.
            with self._engine.connect() as conn:
                self._check_version(conn, None)
            return
        if self.dialect == "sqlite" and self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if self.uri != "sqlite://":
            # An existing catalog opens without waiting for a writer's transaction.
            with self._engine.connect() as conn:
                if conn.dialect.has_table(conn, "runbroker_info"):
                    self._check_version(conn, None)
                    return
        with self._wengine.begin() as conn:
            if self.dialect == "postgresql":
                # Processes creating one catalog at once take turns (the check comes after).
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7250104)")
            version = None
            if conn.dialect.has_table(conn, "runbroker_info"):
                version = conn.execute(
                    select(info.c.value).where(info.c.key == "schema_version")
                ).scalar()
            if version is None:
                metadata.create_all(conn)
                for ddl in _FULLTEXT_DDL.get(self.dialect, ()):
                    conn.exec_driver_sql(ddl)
                conn.execute(insert(info).values(key="schema_version", value=str(SCHEMA_VERSION)))
                if self.uri != "sqlite://":
                    migrations.stamp_head(conn)
            else:
                self._check_version(conn, version)

    def _check_version(self, conn: Connection, version: Any) -> None:
        if version is None:
            if not conn.dialect.has_table(conn, "runbroker_info"):
                raise SchemaVersionError(f"{self.uri} is not a runbroker catalog")
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
        return (_reader_for, (self.uri,))

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
        missing = sorted({keyindex.meta_key(k) for k in keys} - self._indexed)
        if not missing:
            return []
        if self.readonly:
            names = " ".join(repr(keyindex.user_key(k)) for k in missing)
            raise PermissionError(
                f"{self.uri} is opened read-only and has no index on {names}; create it with:  "
                f"runbroker db index {self.uri} {names}"
            )
        with self._lock:
            self._commit_locked()
            conn = self._conn()
            try:
                now = keyindex.create(conn, missing)
                conn.commit()
            except BaseException:
                if conn.in_transaction():
                    conn.rollback()
                raise
            finally:
                self._dirty_since = None
            self._indexed = frozenset(now)
        return sorted(keyindex.user_key(k) for k in missing)

    def _compile(self, query: Query | None) -> Any:
        """``query`` as a condition on ``runs``, using this catalog's per-key indexes."""
        token = indexed.set(self._indexed)
        try:
            return compile_query(query, self.dialect)
        finally:
            indexed.reset(token)

    # -- writing -------------------------------------------------------------------------------

    def insert(self, name: str, doc: dict) -> None:
        """Validate and store one document. See the module docstring for visibility."""
        doc = validate(name, doc)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.uri} is closed: open the catalog again to insert")
            if self._flush_error is not None:
                err, self._flush_error = self._flush_error, None
                raise RuntimeError(f"queued documents could not be written to {self.uri}") from err
            conn = self._conn()
            if name in ("event", "event_page"):
                self._queue(conn, name, doc)
            else:
                self._flush_states(conn)
                raw = conn.connection.driver_connection  # type: ignore[union-attr]
                self._savepoint(raw)
                try:
                    self._write(conn, name, doc)
                except BaseException:
                    # Undo this document only; earlier ones in the open transaction stay.
                    self._undo_document(raw)
                    self._ords.clear()
                    raise
                if self.dialect != "postgresql":
                    raw.execute("RELEASE rb_document")
            # The committer thread (woken when the transaction began) commits on time; commit
            # here if it is held up, if durability asks, or if the queue has grown large.
            if (
                self.durability == "event"
                or self._queue_full()
                or time.monotonic() - self._dirty_since >= self.flush_interval / 4
                or (self._savepoints >= _MAX_SAVEPOINTS and self.dialect == "postgresql")
            ):
                self._commit_locked()

    def _savepoint(self, raw: Any) -> None:
        """Mark where the next document's writes begin, so that a refusal undoes only them.

        On PostgreSQL each statement is a round trip, so the savepoint (and the release of
        the previous document's) goes with the document's first statement, in the same
        round trip (see :class:`~runbroker.store.pgsql.Session`); COMMIT releases the last.
        """
        if self.dialect == "postgresql":
            pgsql.session(raw).savepoint()
        else:
            raw.execute("SAVEPOINT rb_document")
        self._savepoints += 1

    def _undo_document(self, raw: Any) -> None:
        """Roll back what the document being written wrote, after it was refused."""
        if self.dialect != "postgresql":
            raw.execute("ROLLBACK TO rb_document")
            raw.execute("RELEASE rb_document")
            return
        session = pgsql.session(raw)
        if session.savepoint_pending:
            # Nothing of this document reached the server (refused before its first write).
            session.savepoint_pending = False
        elif session.savepoint_exists:
            raw.execute("ROLLBACK TO SAVEPOINT rb_document")
        # Otherwise the savepoint itself failed: the transaction is lost, and the error says so
        # at the next commit, as for any failed write outside a document.

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many documents at once: all of them, or none if one is refused.

        The documents are committed before ``ingest`` returns.
        """
        count = 0
        with self._lock:
            conn = self._conn()
            self._flush_states(conn)
            savepoint = conn.begin_nested()
            try:
                for name, doc in pairs:
                    doc = validate(name, doc)
                    if name in ("event", "event_page"):
                        self._queue(conn, name, doc)
                        if self._queue_full():
                            self._flush_states(conn)
                    else:
                        self._flush_states(conn)
                        self._write(conn, name, doc)
                    count += 1
                self._flush_states(conn)
            except BaseException:
                savepoint.rollback()
                # Cached states may describe what was just rolled back: reload them later.
                self._states.clear()
                self._run_ids.clear()
                self._ords.clear()
                raise
            savepoint.commit()
            self._commit_locked()
        return count

    def flush(self) -> None:
        """Commit everything inserted so far, making it visible to other processes."""
        with self._lock:
            self._commit_locked()

    def close(self) -> None:
        """Commit what is pending and release the database."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._wake.set()
        if self._wal is not None and not self.readonly:
            self._checkpoint("PASSIVE")
        with self._lock:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
        self._engine.dispose()
        self._wengine.dispose()

    def _conn(self) -> Connection:
        """The write connection, inside the open (group-commit) transaction."""
        if self.readonly:
            raise PermissionError(f"{self.uri} is opened read-only")
        if self._wconn is None:
            self._wconn = self._wengine.connect()
        if not self._wconn.in_transaction():
            self._wconn.begin()
            self._savepoints = 0
            if self.dialect == "postgresql":
                pgsql.session(self._wconn.connection.driver_connection).new_transaction()
            # Even a transaction that ends up empty (a refused document) holds the write
            # lock: commit it on the usual schedule.
            self._dirty_since = time.monotonic()
            self._ensure_flusher()
        return self._wconn

    def _pending(self) -> bool:
        return (self._wconn is not None and self._wconn.in_transaction()) or any(
            s.queued for s in self._states.values()
        )

    def _commit_locked(self) -> None:
        if not self._pending():
            return
        conn = self._conn()
        try:
            self._flush_states(conn)
            conn.commit()
            self._txn_descriptors.clear()
            self._after_commit()
            self._prune()
            if self._deferred_error is not None:
                error, self._deferred_error = self._deferred_error, None
                raise error
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            self._txn_descriptors.clear()
            self._states.clear()
            self._run_ids.clear()
            self._ords.clear()
            raise
        finally:
            self._dirty_since = None

    def _queue_full(self) -> bool:
        # Checked against the descriptor last queued to (cheap on every insert); a few
        # descriptors filling at once stay bounded by a small multiple of the limits.
        state = self._last_queued
        return state is not None and (
            state.queued >= _FLUSH_EVENTS or state.queued_bytes >= _FLUSH_BYTES
        )

    def _queue(self, conn: Connection, name: str, doc: dict) -> None:
        """Check an event or event page against its descriptor and queue it for writing."""
        uid = doc["uid"]
        state = self._states.get(doc["descriptor"]) or self._state(
            conn, doc["descriptor"], name, uid
        )
        state.check_keys(name, uid, doc)
        self._last_queued = state
        state.arrival = next(self._arrivals)
        if name == "event":
            seq = doc["seq_num"]
            if seq > state.seq_max or seq in state.pending_seqs or self._is_new(conn, state, doc):
                state.add(doc)
            return
        batch = state.page_batch(doc)
        if batch is None:
            return  # an empty page: nothing to store
        if batch.seq_min > state.seq_max:
            state.add_batch(batch)
            return
        # The page overlaps events seen before: keep the new ones, refuse changed ones.
        events = list(unpack_event_page(doc))
        fresh = [e for e in events if self._is_new(conn, state, e, page=doc)]
        if len(fresh) == len(events):
            state.add_batch(batch)
        else:
            state.add_from_page(doc, fresh)

    def _is_new(
        self, conn: Connection, state: DescriptorState, doc: dict, page: Any = None
    ) -> bool:
        """False if ``doc`` repeats a stored event; raise if it contradicts one.

        ``page`` is the event_page the event came in, named in the error if there is one.
        """
        # Everything queued must be in the database before we can compare with it.
        self._flush_states(conn)
        seq = doc["seq_num"]
        stored = self._stored_event(conn, state, seq)
        if stored is None:
            return True
        if canonical(stored) == canonical(doc):
            return False
        raise ConflictError(
            "event" if page is None else "event_page",
            doc["uid"] if page is None else page["uid"],
            "seq_num",
            f"descriptor {state.uid!r} already has an event with seq_num {seq} "
            f"(uid {stored['uid']!r}) with different content"
            + ("" if page is None else f" than event {doc['uid']!r} of this page"),
        )

    def _stored_event(self, conn: Connection, state: DescriptorState, seq: int) -> Any:
        rows = conn.execute(
            select(pages.c.data, pages.c.extra).where(
                pages.c.descriptor_id == state.id,
                pages.c.seq_min <= seq,
                pages.c.seq_max >= seq,
            )
        ).all()
        for data_blob, extra_blob in rows:
            data, extra = codec.decode(data_blob), codec.decode(extra_blob)
            hits = (data["seq_num"] == seq).nonzero()[0]
            if len(hits):
                return event_from_columns(state.uid, data, extra, int(hits[0]))
        return None

    def _state(self, conn: Connection, uid: str, name: str, child: Any) -> DescriptorState:
        state = self._states.get(uid)
        if state is not None:
            return state
        row = conn.execute(
            select(descriptors.c.id, descriptors.c.run_id, descriptors.c.body, runs.c.uid)
            .join(runs, runs.c.id == descriptors.c.run_id)
            .where(descriptors.c.uid == uid)
        ).first()
        if row is None:
            raise UnknownParentError(
                name,
                child,
                "descriptor",
                f"refers to descriptor {uid!r}, which is not in this catalog "
                "(insert the descriptor before its events)",
            )
        seq_max = conn.execute(
            select(func.max(pages.c.seq_max)).where(pages.c.descriptor_id == row.id)
        ).scalar()
        state = DescriptorState.from_descriptor(
            row.id, row.run_id, row.uid, _loads(row.body), seq_max or 0
        )
        self._states[uid] = state
        return state

    def _flush_states(self, conn: Connection) -> None:
        """Write every queued event into the open transaction, as column pages."""
        taken = []
        # Descriptors in id order: writers that lock several of them never wait in a circle.
        for state in sorted(self._states.values(), key=lambda s: s.id):
            if not state.queued:
                continue
            batches = state.take()
            # A descriptor inserted in this transaction is unknown to every other writer.
            foreign = state.id not in self._txn_descriptors
            if foreign and self.dialect == "postgresql":
                # Writers of one descriptor take turns, so the check below sees every page.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (state.id,))
            stored_max = (conn.execute(_MAX_SEQ, {"d": state.id}).scalar() or 0) if foreign else 0
            if stored_max > state.flushed_max:
                # Another writer (process or catalog object) wrote this descriptor meanwhile.
                batches = self._drop_repeats(conn, state, batches, stored_max)
            taken.append((state, batches))
        rows = []
        # Replay positions follow arrival (the descriptor whose events came last goes last),
        # not flush timing: a run copied from its replay replays identically.
        for state, batches in sorted(taken, key=lambda t: t[0].arrival):
            for batch in batches:
                state.flushed_max = max(state.flushed_max, batch.seq_max)
                rows.append(
                    {
                        "descriptor_id": state.id,
                        "run_id": state.run_id,
                        "ord": self._next_ord(conn, state.run_id),
                        "n": batch.n,
                        "seq_min": batch.seq_min,
                        "seq_max": batch.seq_max,
                        "ordered": batch.ordered,
                        "data": codec.encode(batch.data),
                        "extra": codec.encode(batch.extra),
                    }
                )
                state.pages_written += 1
                if batch.n < state.max_events // 8:
                    state.small_pages += 1
        if rows:
            _INSERT_PAGE.executemany(conn, rows)
        for state in self._states.values():
            if state.small_pages >= _COMPACT_AFTER:
                self._compact(conn, state)

    def _drop_repeats(
        self, conn: Connection, state: DescriptorState, batches: list, stored_max: int
    ) -> list:
        """Leave out queued events another writer already stored; keep refusals for later.

        An identical event is a repeat (a retried RunEngine). A different one with a stored
        seq_num cannot be refused by ``insert`` any more (it returned): it is not stored,
        and the ConflictError is raised by the next ``flush``/``insert``.
        """
        kept = []
        for batch in batches:
            seqs = np.asarray(batch.data["seq_num"])
            mask = np.ones(batch.n, dtype=bool)
            for i in np.nonzero(seqs <= stored_max)[0]:
                stored = self._stored_event(conn, state, int(seqs[i]))
                if stored is None:
                    continue
                mask[i] = False
                mine = event_from_columns(state.uid, batch.data, batch.extra, int(i))
                if canonical(stored) != canonical(mine) and self._deferred_error is None:
                    self._deferred_error = ConflictError(
                        "event",
                        mine["uid"],
                        "seq_num",
                        f"another writer stored seq_num {int(seqs[i])} of descriptor "
                        f"{state.uid!r} (uid {stored['uid']!r}) with different content; "
                        "this event was not stored",
                    )
            kept_batch = batch if mask.all() else batch.keep(mask)
            if kept_batch is not None:
                kept.append(kept_batch)
        return kept

    def _next_ord(self, conn: Connection, run_id: int) -> int:
        """The next position in the run's replay order (kept in memory while writing)."""
        last = self._ords.get(run_id)
        if last is None:
            last = max(conn.execute(q, {"run_id": run_id}).scalar() or 0 for q in _MAX_ORDS)
        self._ords[run_id] = last + 1
        return last + 1

    def _compact(self, conn: Connection, state: DescriptorState, below: int | None = None) -> None:
        """Merge runs of consecutive pages smaller than ``below`` events into bigger pages.

        Live runs write a small page per flush; merging them keeps reads to a few blobs.
        """
        below = state.max_events // 8 if below is None else below
        listing = conn.execute(
            select(pages.c.id, pages.c.n)
            .where(pages.c.descriptor_id == state.id)
            .order_by(pages.c.seq_min, pages.c.id)
        ).all()
        groups: list[list[Any]] = [[]]
        for row in listing:
            fits = sum(r.n for r in groups[-1]) + row.n <= state.max_events
            if row.n >= below or not fits:
                groups.append([])
            if row.n < below:
                groups[-1].append(row)
        for group in groups:
            if len(group) > 1:
                self._merge_pages(conn, state, [r.id for r in group])
        state.small_pages = 0

    def _merge_pages(self, conn: Connection, state: DescriptorState, ids: list[int]) -> None:
        rows = conn.execute(
            select(pages.c.ord, pages.c.n, pages.c.data, pages.c.extra)
            .where(pages.c.id.in_(ids))
            .order_by(pages.c.seq_min, pages.c.id)
        ).all()
        data, extra = merge_batches(
            [(codec.decode(r.data), codec.decode(r.extra), r.n) for r in rows]
        )
        seqs = np.asarray(data["seq_num"])
        conn.execute(delete(pages).where(pages.c.id.in_(ids)))
        conn.execute(
            insert(pages).values(
                descriptor_id=state.id,
                run_id=state.run_id,
                # The last position of the group: every datum the events need comes before.
                ord=max(r.ord for r in rows),
                n=len(seqs),
                seq_min=int(seqs.min()),
                seq_max=int(seqs.max()),
                ordered=bool((np.diff(seqs) > 0).all()),
                data=codec.encode(data),
                extra=codec.encode(extra),
            )
        )

    def _prune(self) -> None:
        """Bound what is kept in memory for runs that never stop (crashes, late events)."""
        if len(self._states) > _MAX_CACHED:
            idle = [u for u, s in self._states.items() if not s.queued]
            for uid in idle[: len(self._states) - _MAX_CACHED // 2]:
                del self._states[uid]
        if len(self._run_ids) > _MAX_CACHED:
            self._run_ids.clear()
        if len(self._ords) > _MAX_CACHED:
            live = {s.run_id for s in self._states.values()}
            self._ords = {r: o for r, o in self._ords.items() if r in live}

    def _after_commit(self) -> None:
        """Keep the WAL bounded: checkpoint beside ingest, or right now if it grew large."""
        if self._wal is None:
            return
        try:
            size = self._wal.stat().st_size
        except FileNotFoundError:
            return
        if size >= _WAL_BLOCKING:
            # Ingest outran the background checkpoints: catch up before writing more.
            self._checkpoint("RESTART")
        elif size >= _WAL_BACKGROUND:
            self._checkpoint_due = True
            self._ensure_flusher()

    def _checkpoint(self, mode: str) -> None:
        with self._engine.connect() as conn:
            conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(
                target=_flush_loop, args=(weakref.ref(self),), name="runbroker-flush", daemon=True
            )
            self._flusher.start()
        self._wake.set()

    def _run_id(self, conn: Connection, uid: str, name: str, child: Any) -> int:
        run_id = self._run_ids.get(uid)
        if run_id is None:
            row = _RUN_ID.execute(conn, {"uid": uid}).fetchone()
            run_id = row[0] if row else None
            if run_id is None:
                raise UnknownParentError(
                    name,
                    child,
                    "run_start",
                    f"refers to run {uid!r}, which is not in this catalog "
                    "(insert its start document first)",
                )
            self._run_ids[uid] = run_id
        return run_id

    def _write(self, conn: Connection, name: str, doc: dict) -> None:
        """Store one non-event document inside the caller's transaction."""
        if name == "start":
            self._write_start(conn, doc)
        elif name == "stop":
            self._write_stop(conn, doc)
        elif name == "descriptor":
            self._write_descriptor(conn, doc)
        elif name in ("datum", "datum_page"):
            self._write_datums(conn, name, doc)
        else:
            self._write_document(conn, name, doc)

    def _insert_new(
        self,
        conn: Connection,
        name: str,
        doc: dict,
        insert_new: Prepared,
        params: dict,
        stored_body: Prepared,
    ) -> int | None:
        """Insert (ON CONFLICT DO NOTHING) and return the new row id, or None if a copy was
        stored before -- a repeat, or another writer at the same time -- after checking that
        it is the same document (ConflictError otherwise)."""
        row = insert_new.execute(conn, params).fetchone()
        if row is not None:
            return row[0]
        stored = stored_body.execute(conn, {"uid": doc["uid"]}).fetchone()
        self._same_or_conflict(name, doc, stored[0], "uid")
        return None

    def _same_or_conflict(self, name: str, doc: dict, stored: bytes | None, key: str) -> bool:
        """True if ``doc`` repeats the stored one; raise if it differs from it."""
        if stored is None:
            return False
        if canonical(_loads(stored)) == canonical(doc):
            return True
        raise ConflictError(
            name, doc.get(key), key, "a different document with this uid is already stored"
        )

    def _write_start(self, conn: Connection, doc: dict) -> None:
        # No look-up first: the insert itself finds a stored copy (ON CONFLICT), see below.
        params = {
            "uid": doc["uid"],
            "time": doc["time"],
            "scan_id": scan_id_column(doc),
            "start": _dumps(doc),
        }
        if self.dialect == "postgresql":
            # Run, metadata and full-text rows in one round trip.
            params.update(pgsql.meta_arrays(flatten("start", doc)), fulltext=fulltext(doc))
            run_id = self._insert_new(conn, "start", doc, _PG_INSERT_START, params, _START_OF)
            if run_id is None:
                return
        else:
            run_id = self._insert_new(conn, "start", doc, _INSERT_RUN, params, _START_OF)
            if run_id is None:
                return
            self._index(conn, run_id, "start", doc)
            content = fulltext(doc)
            _INSERT_FULLTEXT[self.dialect].execute(conn, {"run_id": run_id, "content": content})
        self._run_ids[doc["uid"]] = run_id
        self._ords[run_id] = 0  # a new run: nothing to look up

    def _index(self, conn: Connection, run_id: int, prefix: str, doc: dict) -> None:
        rows = [
            {"run_id": run_id, "key": k, "elem": e, "typ": t, "num": n, "txt": s}
            for k, e, t, n, s in flatten(prefix, doc)
        ]
        if rows:
            _INSERT_META.executemany(conn, rows)

    def _write_stop(self, conn: Connection, doc: dict) -> None:
        run_id = self._run_id(conn, doc["run_start"], "stop", doc["uid"])
        if self.dialect == "postgresql":
            # Stop and metadata rows in one round trip; a stop stored before (a repeat, or
            # another writer) leaves the run as it is, and is compared below.
            params = {"run_id": run_id, "stop": _dumps(doc), "time": doc["time"]}
            params.update(pgsql.meta_arrays(flatten("stop", doc)))
            if _PG_SET_STOP.execute(conn, params).fetchone() is None:
                stored = _STOP_OF.execute(conn, {"rid": run_id}).fetchone()
                self._same_or_conflict("stop", doc, stored and stored[0], "uid")
                return
        else:
            stored = _STOP_OF.execute(conn, {"rid": run_id}).fetchone()
            if self._same_or_conflict("stop", doc, stored and stored[0], "uid"):
                return
            params = {"rid": run_id, "new_stop": _dumps(doc), "new_time": doc["time"]}
            if _SET_STOP.execute(conn, params).rowcount == 0:
                # Another writer stored a stop meanwhile.
                stored = _STOP_OF.execute(conn, {"rid": run_id}).fetchone()
                self._same_or_conflict("stop", doc, stored[0], "uid")
                return
            self._index(conn, run_id, "stop", doc)
        # The run is complete: lay each stream it wrote out in as few pages as possible for
        # reading, and forget what was kept in memory to write it.
        for uid, state in list(self._states.items()):
            if state.run_id == run_id:
                if state.pages_written > 1:
                    self._compact(conn, state, below=state.max_events)
                del self._states[uid]
        self._run_ids.pop(doc["run_start"], None)
        self._ords.pop(run_id, None)

    def _write_descriptor(self, conn: Connection, doc: dict) -> None:
        run_id = self._run_id(conn, doc["run_start"], "descriptor", doc["uid"])
        params = {
            "uid": doc["uid"],
            "run_id": run_id,
            "ord": self._next_ord(conn, run_id),
            "name": doc.get("name", "primary"),
            "time": doc["time"],
            "body": _dumps(doc),
        }
        descriptor_id = self._insert_new(
            conn, "descriptor", doc, _INSERT_DESCRIPTOR, params, _DESCRIPTOR_OF
        )
        if descriptor_id is None:
            return
        self._txn_descriptors.add(descriptor_id)
        # Its events come next: know the descriptor without reading it back.
        self._states[doc["uid"]] = DescriptorState.from_descriptor(
            descriptor_id, run_id, doc["run_start"], doc, 0
        )

    def _write_datums(self, conn: Connection, name: str, doc: dict) -> None:
        page = doc if name == "datum_page" else pack_datum_page(doc)
        resource = conn.execute(
            select(documents.c.run_id).where(
                documents.c.uid == page["resource"], documents.c.kind == "resource"
            )
        ).scalar()
        if resource is None:
            raise UnknownParentError(
                name,
                doc["datum_id"],
                "resource",
                f"refers to resource {page['resource']!r}, which is not in this catalog",
            )
        ids = page["datum_id"]
        if len(set(ids)) != len(ids):
            repeated = next(i for i in ids if ids.count(i) > 1)
            raise DocumentError(
                name, ids, "datum_id", f"datum_id {repeated!r} appears twice in the page"
            )
        existing = dict(
            conn.execute(
                select(datums.c.datum_id, documents.c.body)
                .join(documents, documents.c.id == datums.c.document_id)
                .where(datums.c.datum_id.in_(ids))
            ).all()
        )
        if existing:
            singles = list(unpack_datum_page(page))
            for d in singles:
                if d["datum_id"] in existing:
                    old = next(
                        x
                        for x in unpack_datum_page(_loads(existing[d["datum_id"]]))
                        if x["datum_id"] == d["datum_id"]
                    )
                    if canonical(old) != canonical(d):
                        raise ConflictError(
                            name, d["datum_id"], "datum_id", "a different datum is stored"
                        )
            fresh = [d for d in singles if d["datum_id"] not in existing]
            if not fresh:
                return
            page = {
                "resource": page["resource"],
                "datum_id": [d["datum_id"] for d in fresh],
                "datum_kwargs": {
                    k: [d["datum_kwargs"][k] for d in fresh] for k in page["datum_kwargs"]
                },
            }
        doc_id = conn.execute(
            insert(documents)
            .values(
                uid=None,
                run_id=resource,
                ord=self._next_ord(conn, resource),
                kind="datum_page",
                body=_dumps(page),
            )
            .returning(documents.c.id)
        ).scalar_one()
        conn.execute(
            insert(datums),
            [
                {"datum_id": i, "document_id": doc_id, "resource": page["resource"]}
                for i in page["datum_id"]
            ],
        )

    def _write_document(self, conn: Connection, name: str, doc: dict) -> None:
        """resource, stream_resource and stream_datum: stored whole."""
        stored = conn.execute(
            select(documents.c.body).where(documents.c.uid == doc["uid"])
        ).scalar()
        if self._same_or_conflict(name, doc, stored, "uid"):
            return
        if name == "stream_datum":
            run_id = conn.execute(
                select(documents.c.run_id).where(
                    documents.c.uid == doc["stream_resource"],
                    documents.c.kind == "stream_resource",
                )
            ).scalar()
            if run_id is None:
                raise UnknownParentError(
                    name,
                    doc["uid"],
                    "stream_resource",
                    f"refers to stream_resource {doc['stream_resource']!r}, "
                    "which is not in this catalog",
                )
            if doc.get("descriptor"):
                self._state(conn, doc["descriptor"], name, doc["uid"])
        else:
            if "run_start" not in doc:
                raise DocumentError(
                    name, doc["uid"], "run_start", "is required to attach it to a run"
                )
            run_id = self._run_id(conn, doc["run_start"], name, doc["uid"])
        params = {
            "uid": doc["uid"],
            "run_id": run_id,
            "ord": self._next_ord(conn, run_id),
            "kind": name,
            "body": _dumps(doc),
        }
        if _INSERT_DOCUMENT.execute(conn, params).rowcount == 0:  # another writer was first
            stored = conn.execute(
                select(documents.c.body).where(documents.c.uid == doc["uid"])
            ).scalar()
            self._same_or_conflict(name, doc, stored, "uid")

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
    ) -> list[RunRecord]:
        """Runs matching ``query``, newest first."""
        self._flush_if_pending()
        with self._read() as conn:

            def common(rows: Any) -> bool:
                probe = select(func.count()).select_from(rows.limit(_COMMON).subquery())
                return conn.execute(probe).scalar_one() >= _COMMON

            token = is_common.set(common if limit is not None and limit <= _COMMON else None)
            try:
                where = self._compile(query)
            finally:
                is_common.reset(token)
        # Order and cut on (time, uid, id) alone, then fetch the documents of the survivors:
        # sorting thousands of hits never drags their start documents along.
        if before is not None:
            where = and_(where, tuple_(runs.c.time, runs.c.uid) < tuple_(*before))
        ids = (
            select(runs.c.id)
            .where(where)
            .order_by(runs.c.time.desc(), runs.c.uid.desc())
            .offset(offset)
        )
        if limit is not None:
            ids = ids.limit(limit)
        stmt = (
            select(runs.c.uid, runs.c.start, runs.c.stop)
            .where(runs.c.id.in_(ids))
            .order_by(runs.c.time.desc(), runs.c.uid.desc())
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [
            RunRecord(uid, _loads(start), _loads(stop) if stop else None)
            for uid, start, stop in rows
        ]

    def count(self, query: Query | None) -> int:
        """How many runs match ``query``."""
        self._flush_if_pending()
        stmt = select(func.count()).select_from(runs).where(self._compile(query))
        with self._read() as conn:
            return conn.execute(stmt).scalar_one()

    def get_run(self, uid: str) -> RunRecord | None:
        """The run with exactly this uid."""
        self._flush_if_pending()
        with self._read() as conn:
            row = conn.execute(select(runs.c.start, runs.c.stop).where(runs.c.uid == uid)).first()
        if row is None:
            return None
        return RunRecord(uid, _loads(row.start), _loads(row.stop) if row.stop else None)

    def descriptors(self, run_uid: str) -> list[dict]:
        """The run's descriptors in stored order."""
        self._flush_if_pending()
        with self._read() as conn:
            rows = _DESCRIPTORS_OF_RUN.execute(conn, {"uid": run_uid}).fetchall()
        return [_loads(b) for (b,) in rows]

    def pages(self, descriptor_uids: list[str]) -> list[PageInfo]:
        """Pages of these descriptors, in descriptor order then seq order."""
        self._flush_if_pending()
        out = []
        with self._read() as conn:
            for uid in descriptor_uids:
                rows = _PAGES_OF_DESCRIPTOR.execute(conn, {"uid": uid}).fetchall()
                out.extend(PageInfo(i, uid, n, lo, hi, bool(o)) for i, n, lo, hi, o in rows)
        return out

    def read_pages(self, page_ids: list[int], columns: list[str] | None) -> list[dict]:
        """Decoded data columns of each page, in the order of ``page_ids``."""
        extra = columns is None or any(c == "uid" or c[:2] in ("t:", "f:") for c in columns)
        statement = _PAGE_BLOBS if extra else _PAGE_DATA
        out = []
        with self._read() as conn:
            # A server: a few pages per round trip. SQLite: one cheap statement per page.
            pg = self.dialect == "postgresql"
            found = pgsql.page_blobs(conn, page_ids, extra) if pg else None
            for page_id in page_ids:
                if found is not None:
                    blobs = found.get(page_id)
                else:
                    blobs = statement.execute(conn, {"id": page_id}).fetchone()
                if blobs is None:
                    raise PageGone(f"page {page_id} of {self.uri} was merged; list pages again")
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
            row = conn.execute(
                select(runs.c.id, runs.c.start, runs.c.stop).where(runs.c.uid == run_uid)
            ).first()
            if row is None:
                raise KeyError(run_uid)
            run_id = row.id
            yield "start", _loads(row.start)
            desc = conn.execute(
                select(descriptors.c.ord, descriptors.c.uid, descriptors.c.body)
                .where(descriptors.c.run_id == run_id)
                .order_by(descriptors.c.ord)
            ).all()
            streams = [(o, "descriptor", body) for o, _uid, body in desc]
            docs = conn.execute(
                select(documents.c.ord, documents.c.kind, documents.c.body)
                .where(documents.c.run_id == run_id)
                .order_by(documents.c.ord)
            ).all()
            page_rows = conn.execute(
                select(pages.c.ord, descriptors.c.uid, pages.c.data, pages.c.extra)
                .join(descriptors, descriptors.c.id == pages.c.descriptor_id)
                .where(pages.c.run_id == run_id)
                .order_by(pages.c.ord)
            )
            events = ((o, "event_page", (d, data, extra)) for o, d, data, extra in page_rows)
            merged = heapq.merge(
                ((o, k, b) for o, k, b in streams),
                ((o, k, b) for o, k, b in docs),
                events,
                key=lambda item: item[0],
            )
            for (kind, descriptor), items in groupby(merged, key=_replay_key):
                if kind != "event_page":
                    for _, _, body in items:
                        yield kind, _loads(body)
                    continue
                # Consecutive pages of one descriptor replay as evenly cut pages.
                parts = (_decoded_page(body[1], body[2], uids) for _, _, body in items)
                for data, extra in rechunk(parts, MAX_EVENTS_PER_PAGE):
                    yield kind, page_from_columns(descriptor, data, extra, arrays, uids)
            if row.stop:
                yield "stop", _loads(row.stop)

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
        return [(kind, _loads(body)) for kind, body in rows]

    def datums(self, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        """datum_id -> (resource uid, datum_kwargs), one query per thousand ids."""
        self._flush_if_pending()
        wanted = set(datum_ids)
        out: dict[str, tuple[str, dict]] = {}
        with self._read() as conn:
            for i in range(0, len(datum_ids), 1000):
                bodies = conn.execute(
                    select(documents.c.body).where(
                        documents.c.id.in_(
                            select(datums.c.document_id)
                            .where(datums.c.datum_id.in_(datum_ids[i : i + 1000]))
                            .distinct()
                        )
                    )
                ).scalars()
                for body in bodies:
                    page = _loads(body)
                    for datum in unpack_datum_page(page):
                        if datum["datum_id"] in wanted:
                            out[datum["datum_id"]] = (datum["resource"], datum["datum_kwargs"])
        return out

    def _flush_if_pending(self) -> None:
        # Reads in the writing process see its own pending writes.
        if self._dirty_since is not None:
            self.flush()

    def __repr__(self) -> str:
        return f"SQLStore({self.uri!r})"


def scan_id_column(start: dict) -> int | float | None:
    """What ``runs.scan_id`` holds for a start document: its scan_id if it is a finite number
    (integers beyond 64 bits as floats), else None.

    Example:
        >>> scan_id_column({"scan_id": 7}), scan_id_column({"scan_id": "7"}), scan_id_column({})
        (7, None, None)
    """
    scan_id = start.get("scan_id")
    if isinstance(scan_id, np.generic):
        scan_id = scan_id.item()
    usable = isinstance(scan_id, (int, float)) and not isinstance(scan_id, bool)
    if not usable or (isinstance(scan_id, float) and not math.isfinite(scan_id)):
        return None
    if isinstance(scan_id, int) and not -(2**63) <= scan_id < 2**63:
        return float(scan_id)
    return scan_id


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
    return data, codec.decode(extra_blob, skip=() if uids else ("uid",)), len(data["time"])


def _replay_key(item: tuple[int, str, Any]) -> tuple[str, str | None]:
    kind = item[1]
    return (kind, item[2][0]) if kind == "event_page" else (kind, None)


def _flush_loop(ref: weakref.ref) -> None:
    """Background committer: commit pending writes once they are half a flush interval old.

    Committing at half the interval leaves room for a busy GIL, so that other processes see
    every document within ``flush_interval`` plus the commit itself.
    """
    while True:
        store = ref()
        if store is None or store._closed:
            return
        wake, half = store._wake, store.flush_interval / 4
        with store._lock:
            since = store._dirty_since
            now = time.monotonic()
            if since is not None and now - since >= half:
                try:
                    store._commit_locked()
                except Exception as exc:  # keep the committer alive; the next insert re-raises
                    store._flush_error = exc
                since = None
        if store._checkpoint_due:
            # Outside the lock: inserts and commits go on while the WAL is copied.
            store._checkpoint_due = False
            store._checkpoint("PASSIVE")
        del store
        if since is None:
            wake.wait(half)
            wake.clear()
        else:
            time.sleep(max(0.0, half - (now - since)) + 0.001)
