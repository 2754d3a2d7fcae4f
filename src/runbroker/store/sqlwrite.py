"""Writing runs into a SQL catalog: documents, queued events, group commit, compaction.

:class:`SQLWriting` is the writing half of :class:`~runbroker.store.sql.SQLStore` (see that
module for the guarantees). Writes go through one connection guarded by a lock, inside a
transaction that a background thread commits every quarter ``flush_interval``. Every document
written by ``insert`` has a savepoint of its own, so a refused one undoes only itself; single
events are queued per descriptor and written as column pages.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from event_model import pack_datum_page, unpack_datum_page
from sqlalchemy import Connection, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Engine

from ..documents import ConflictError, DocumentError, UnknownParentError, validate
from ..errors import ReadOnlyError
from . import jsoncodec, pgsql
from .events import DescriptorState, canonical, check_datum_ids
from .flatten import flatten, fulltext
from .prepared import Prepared
from .schema import datums, descriptors, documents, meta, pages, runs
from .sqlevents import SQLEvents

__all__ = ["SQLWriting", "scan_id_column"]

_dumps = jsoncodec.dumps
_loads = jsoncodec.loads

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


_INSERT_FULLTEXT = {
    "sqlite": Prepared(text("INSERT INTO runs_fts(rowid, content) VALUES (:run_id, :content)")),
    "postgresql": Prepared(
        text("INSERT INTO runs_fts(run_id, content) VALUES (:run_id, :content)")
    ),
}


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


class SQLWriting(SQLEvents):
    """The writing half of :class:`~runbroker.store.sql.SQLStore` (which sets up the state
    used here: engines, the lock, the caches of descriptor states, run ids and positions)."""

    uri: str
    dialect: str
    durability: str
    flush_interval: float
    readonly: bool
    _lock: threading.RLock
    _states: dict[str, DescriptorState]
    _run_ids: dict[str, int]
    _ords: dict[int, int]
    _closed: bool
    _flush_error: Exception | None
    _deferred_error: Exception | None
    _last_queued: DescriptorState | None
    _arrivals: Iterator[int]
    _txn_descriptors: set[int]
    _savepoints: int
    _dirty_since: float | None
    _engine: Engine
    _wengine: Engine
    _wconn: Connection | None
    _wake: threading.Event
    _flusher: threading.Thread | None
    _wal: Path | None
    _checkpoint_due: bool

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
        round trip (see :class:`~runbroker.store.pgwire.Session`); COMMIT releases the last.
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

    def _conn(self) -> Connection:
        """The write connection, inside the open (group-commit) transaction."""
        if self.readonly:
            raise ReadOnlyError(f"{self.uri} is opened read-only")
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
            if self.dialect == "postgresql":
                # The last pages and COMMIT in one round trip (SQLAlchemy's commit then
                # finds the transaction over and only closes its own books).
                pgsql.session(conn.connection.driver_connection).commit()
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

    def _next_ord(self, conn: Connection, run_id: int) -> int:
        """The next position in the run's replay order (kept in memory while writing)."""
        last = self._ords.get(run_id)
        if last is None:
            last = max(conn.execute(q, {"run_id": run_id}).scalar() or 0 for q in _MAX_ORDS)
        self._ords[run_id] = last + 1
        return last + 1

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
                raise UnknownParentError.missing(name, child, "run_start", uid)
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
            params = {"rid": run_id, "new_stop": _dumps(doc), "new_time": doc["time"]}
            if _SET_STOP.execute(conn, params).rowcount == 0:
                # A stop was stored before (a repeat, or another writer): the same one?
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
            raise UnknownParentError.missing(name, doc["datum_id"], "resource", page["resource"])
        ids = page["datum_id"]
        check_datum_ids(name, ids)
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
                raise UnknownParentError.missing(
                    name, doc["uid"], "stream_resource", doc["stream_resource"]
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
