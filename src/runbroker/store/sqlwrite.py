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
from sqlalchemy import Connection, bindparam, func, insert, select, text
from sqlalchemy.engine import Engine

from ..documents import validate
from ..errors import ReadOnlyError
from . import intake, jsoncodec
from .dialects import Dialect
from .events import DescriptorState, canonical
from .prepared import Prepared
from .schema import datums, descriptors, documents, pages, runs
from .sqlevents import SQLEvents

__all__ = ["SQLWriting", "scan_id_column"]

_dumps = jsoncodec.dumps
_loads = jsoncodec.loads

# Runs whose writing state is kept in memory at most (beyond, idle ones are forgotten).
_MAX_CACHED = 256
# WAL sizes that start a background checkpoint, and a blocking one.
_WAL_BACKGROUND = 64 * 2**20
_WAL_BLOCKING = 512 * 2**20
# Queued events are written at the latest when this many (or this many bytes) wait.
_FLUSH_EVENTS = 100_000
_FLUSH_BYTES = 64 * 2**20


_START_OF = Prepared(select(runs.c.start).where(runs.c.uid == bindparam("uid")))
_RUN_ID = Prepared(select(runs.c.id).where(runs.c.uid == bindparam("uid")))
_STOP_OF = Prepared(select(runs.c.stop).where(runs.c.id == bindparam("rid")))
# Descriptors and documents are stored ON CONFLICT DO NOTHING, as runs are (see dialects).
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
    used here: engines, the lock, the caches of descriptor states, run ids and positions).

    It is the :class:`~runbroker.store.intake.Sink` of its documents, writing into the open
    transaction of the write connection (``_wconn``)."""

    uri: str
    _db: Dialect
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
                intake.apply(self, name, doc)
            else:
                self._flush_states(conn)
                raw = conn.connection.driver_connection  # type: ignore[union-attr]
                # Where this document's writes begin, so that a refusal undoes only them.
                self._db.savepoint(raw)
                self._savepoints += 1
                try:
                    intake.apply(self, name, doc)
                except BaseException:
                    # Undo this document only; earlier ones in the open transaction stay.
                    self._db.undo(raw)
                    self._ords.clear()
                    raise
                self._db.release(raw)
            # The committer thread (woken when the transaction began) commits on time; commit
            # here if it is held up, if durability asks, or if the queue has grown large.
            if (
                self.durability == "event"
                or self._queue_full()
                or time.monotonic() - self._dirty_since >= self.flush_interval / 4
                or self._savepoints >= self._db.max_savepoints
            ):
                self._commit_locked()

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
                    if name not in ("event", "event_page"):
                        self._flush_states(conn)
                    intake.take(self, name, doc)
                    if self._queue_full():
                        self._flush_states(conn)
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
            self._db.begun(self._wconn.connection.driver_connection)
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
            self._db.commit(conn.connection.driver_connection)
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

    # -- the intake sink (see runbroker.store.intake.Sink) ---------------------------------

    def same(self, name: str, stored: dict, doc: dict) -> bool:
        return canonical(stored) == canonical(doc)

    def run(self, uid: str) -> int | None:
        run_id = self._run_ids.get(uid)
        if run_id is None:
            row = _RUN_ID.execute(self._wconn, {"uid": uid}).fetchone()
            if row is None:
                return None
            run_id = self._run_ids[uid] = row[0]
        return run_id

    def add(self, name: str, run: Any, doc: dict) -> dict | None:
        conn = self._wconn
        if name == "start":
            return self._write_start(conn, doc)
        if name == "stop":
            return self._write_stop(conn, run, doc)
        if name == "descriptor":
            return self._write_descriptor(conn, run, doc)
        return self._write_document(conn, run, name, doc)

    def parent(self, uid: str, kind: str) -> int | None:
        return self._wconn.execute(
            select(documents.c.run_id).where(documents.c.uid == uid, documents.c.kind == kind)
        ).scalar()

    def stored_datums(self, run: int, ids: list[str]) -> dict[str, dict]:
        rows = self._wconn.execute(
            select(datums.c.datum_id, documents.c.body)
            .join(documents, documents.c.id == datums.c.document_id)
            .where(datums.c.datum_id.in_(ids))
        ).all()
        pages = {body: unpack_datum_page(_loads(body)) for _, body in rows}
        singles = {d["datum_id"]: d for found in pages.values() for d in found}
        return {i: singles[i] for i, _ in rows}

    def add_datums(self, run: int, name: str, doc: dict) -> None:
        conn = self._wconn
        page = doc if name == "datum_page" else pack_datum_page(doc)
        doc_id = conn.execute(
            insert(documents)
            .values(
                uid=None,
                run_id=run,
                ord=self._next_ord(conn, run),
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

    # -- writing documents ------------------------------------------------------------------

    def _write_start(self, conn: Connection, doc: dict) -> dict | None:
        # No look-up first: the insert itself finds a stored copy (ON CONFLICT).
        params = {
            "uid": doc["uid"],
            "time": doc["time"],
            "scan_id": scan_id_column(doc),
            "start": _dumps(doc),
        }
        run_id = self._db.insert_start(conn, params, doc)
        if run_id is None:  # stored before (a repeat, or another writer at the same time)
            return _loads(_START_OF.execute(conn, {"uid": doc["uid"]}).fetchone()[0])
        self._run_ids[doc["uid"]] = run_id
        self._ords[run_id] = 0  # a new run: nothing to look up
        return None

    def _write_stop(self, conn: Connection, run_id: int, doc: dict) -> dict | None:
        if not self._db.set_stop(conn, run_id, doc):  # a repeat, or another writer's
            row = _STOP_OF.execute(conn, {"rid": run_id}).fetchone()
            return _loads(row[0]) if row and row[0] is not None else None
        # The run is complete: lay each stream it wrote out in as few pages as possible for
        # reading, and forget what was kept in memory to write it.
        for uid, state in list(self._states.items()):
            if state.run_id == run_id:
                if state.pages_written > 1:
                    self._compact(conn, state, below=state.max_events)
                del self._states[uid]
        self._run_ids.pop(doc["run_start"], None)
        self._ords.pop(run_id, None)
        return None

    def _write_descriptor(self, conn: Connection, run_id: int, doc: dict) -> dict | None:
        params = {
            "uid": doc["uid"],
            "run_id": run_id,
            "ord": self._next_ord(conn, run_id),
            "name": doc.get("name", "primary"),
            "time": doc["time"],
            "body": _dumps(doc),
        }
        row = _INSERT_DESCRIPTOR.execute(conn, params).fetchone()
        if row is None:  # stored before
            return _loads(_DESCRIPTOR_OF.execute(conn, {"uid": doc["uid"]}).fetchone()[0])
        descriptor_id = row[0]
        self._txn_descriptors.add(descriptor_id)
        # Its events come next: know the descriptor without reading it back.
        self._states[doc["uid"]] = DescriptorState.from_descriptor(
            descriptor_id, run_id, doc["run_start"], doc, 0
        )
        return None

    def _write_document(self, conn: Connection, run_id: int, name: str, doc: dict) -> dict | None:
        """resource, stream_resource and stream_datum: stored whole."""
        params = {
            "uid": doc["uid"],
            "run_id": run_id,
            "ord": self._next_ord(conn, run_id),
            "kind": name,
            "body": _dumps(doc),
        }
        if _INSERT_DOCUMENT.execute(conn, params).rowcount:
            return None
        stored = select(documents.c.body).where(documents.c.uid == doc["uid"])
        return _loads(conn.execute(stored).scalar_one())


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
