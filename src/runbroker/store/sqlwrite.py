"""Writing runs into a SQL catalog: documents, queued events, group commit, compaction.

:class:`SQLWriting` is the writing half of :class:`~runbroker.store.sql.SQLStore` (see that
module for the guarantees). Writes go through one connection guarded by a lock, inside a
transaction that a background thread commits every quarter ``flush_interval``. A refused
document written by ``insert`` undoes only itself: its writes are rolled back to a savepoint
of its own, or, for those the dialect writes without one (SQLite's starts and stops),
deleted by the run they belong to. Events
are checked against their descriptor, queued per descriptor and written as column pages
(leaving out events another writer stored meanwhile); the small pages a slow live run leaves
are merged into few large ones, so that reading a stream stays a handful of blob reads.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from event_model import pack_datum_page, unpack_datum_page
from sqlalchemy import Connection, bindparam, func, insert, select, text
from sqlalchemy.engine import Engine

from ..columns import SEQ_NUM
from ..documents import ConflictError, validate
from ..errors import ReadOnlyError
from . import hardwarerows, intake, jsoncodec
from . import pages as codec
from .dialects import MAX_SEQ, Dialect
from .events import Batch, DescriptorState, canonical, event_from_columns, merge_batches
from .pagerows import insert_pages
from .prepared import Prepared
from .schema import datums, descriptors, documents, pages, runs
from .sqlstats import stop_stats, write_stopped
from .stats import Accumulator

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
# A long ingest() writes the statistics of the runs it stopped this many at a time (each
# holds its small pages until then).
_STOPPED_AT_ONCE = 2048
# A descriptor's pages are merged once this many small ones have piled up (slow live runs).
_COMPACT_AFTER = 32
# At a run's stop, only pages below this fraction of a full page are merged: the tiny pages
# a slow live run leaves since the last compaction (at most _COMPACT_AFTER of them), so the
# stop costs the same however large the run. Bigger pages cost a read little more than one.
_TINY_AT_STOP = 128


_START_OF = Prepared(select(runs.c.start).where(runs.c.uid == bindparam("uid")))
RUN_ID = Prepared(select(runs.c.id).where(runs.c.uid == bindparam("uid")))
_STOP_OF = Prepared(select(runs.c.stop).where(runs.c.id == bindparam("rid")))
# Descriptors and documents are stored ON CONFLICT DO NOTHING, as runs are (see dialects).
_DESCRIPTOR_OF = Prepared(select(descriptors.c.body).where(descriptors.c.uid == bindparam("uid")))
# By database: SQLite's OR FAIL spares the statement journal (see runbroker.store.dialects).
_INSERT_DESCRIPTOR = {
    name: Prepared(
        text(
            f"INSERT {fail}INTO descriptors (uid, run_id, ord, name, time, body) "
            "VALUES (:uid, :run_id, :ord, :name, :time, :body) "
            "ON CONFLICT (uid) DO NOTHING RETURNING id"
        )
    )
    for name, fail in (("sqlite", "OR FAIL "), ("postgresql", ""))
}
_INSERT_DOCUMENT = Prepared(
    text(
        "INSERT INTO documents (uid, run_id, ord, kind, body) "
        "VALUES (:uid, :run_id, :ord, :kind, :body) ON CONFLICT (uid) DO NOTHING"
    )
)
_MAX_ORDS = [
    Prepared(select(func.max(t.c.ord)).where(t.c.run_id == bindparam("run_id")))
    for t in (descriptors, pages, documents)
]
_DESCRIPTOR_STATE = Prepared(
    select(descriptors.c.id, descriptors.c.run_id, descriptors.c.body, runs.c.uid)
    .join(runs, runs.c.id == descriptors.c.run_id)
    .where(descriptors.c.uid == bindparam("uid"))
)


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


class SQLWriting:
    """The writing half of :class:`~runbroker.store.sql.SQLStore` (which sets up its
    settings, dialect and engines, then calls ``_init_writing``).

    It is the :class:`~runbroker.store.intake.Sink` of its documents, writing into the open
    transaction of the write connection (``_wconn``)."""

    uri: str
    _db: Dialect
    durability: str
    flush_interval: float
    readonly: bool
    _engine: Engine
    _wengine: Engine

    def _init_writing(self, uri: str) -> None:
        # Whether a run's statistics are written at its stop (a folder's index holds headers
        # only: its folder writes them, see runbroker.store.folderwrite).
        self.stats_at_stop = True
        self._lock = threading.RLock()
        self._wconn: Connection | None = None
        self._states: dict[str, DescriptorState] = {}
        self._run_ids: dict[str, int] = {}
        self._ords: dict[int, int] = {}  # run id -> its last position in replay order
        self._closed = False
        self._flush_error: Exception | None = None
        self._deferred_error: Exception | None = None
        self._last_queued: DescriptorState | None = None
        self._arrivals = itertools.count(1)
        self._txn_descriptors: set[int] = set()  # descriptors inserted in the open transaction
        # Runs begun in the open transaction: no other writer can add to them before it ends,
        # so this writer knows every descriptor and event of each (see sqlstats.stop_stats).
        self._txn_runs: set[int] = set()
        # (run id, its descriptors and accumulators) of runs begun and stopped in the open
        # transaction: their statistics are written together before it commits.
        self._stopped: list[tuple[int, list]] = []
        # Hardware facts (None: a catalog from before migration 0007 keeps none).
        self._facts: hardwarerows.FactWriter | None = hardwarerows.FactWriter()
        self._savepoints = 0  # documents written (each under a savepoint) in the open one
        # What the document being written wrote, to undo it without a savepoint: the id of
        # its run (a start, a stop), or (run id, descriptor id, descriptor) for a descriptor.
        self._written: Any = None
        # When the oldest write of the open transaction happened (None: nothing pending).
        self._dirty_since: float | None = None
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        wal = uri.removeprefix("sqlite:///") + "-wal"
        self._wal = Path(wal) if uri.startswith("sqlite:///") else None
        self._checkpoint_due = False

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
                undo = self._undo_for(name, doc)
                if undo is None:
                    # Where this document's writes begin, so that a refusal undoes only them.
                    self._db.savepoint(raw)
                    self._savepoints += 1
                self._written = None
                try:
                    intake.apply(self, name, doc)
                except BaseException:
                    # Undo this document only; earlier ones in the open transaction stay.
                    if undo is None:
                        self._db.undo(raw)
                    elif self._written is not None:
                        undo(conn, self._written)
                        if name == "descriptor":  # a new one, whose state may be kept
                            self._txn_descriptors.discard(self._written[1])
                            self._states.pop(doc["uid"], None)
                    self._run_ids.clear()  # may name a run just undone
                    self._ords.clear()
                    self._txn_runs.clear()
                    self._facts_undone()
                    raise
                if undo is None:
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

    def _undo_for(self, name: str, doc: dict) -> Callable[[Connection, Any], None] | None:
        """How to undo document ``doc`` by deleting what it wrote, or None: it needs a
        savepoint (see the dialect's ``unguarded``)."""
        undo = self._db.unguarded.get(name)
        if undo is None or name == "start":
            return undo
        if name == "descriptor":
            # A new set of facts is many rows, which only a savepoint undoes whole; a known
            # one costs the descriptor one link row.
            return undo if self._facts is None or self._facts.knows(doc) else None
        # A stop's statistics are its own, and so deleted with it, if its run began in the
        # open transaction: no other writer, nor a note, can have written any. A stop that
        # merges pages cannot restore them.
        run_id = self._run_ids.get(doc.get("run_start"))  # type: ignore[arg-type]
        if run_id not in self._txn_runs:
            return None
        if any(s.run_id == run_id and _merges_at_stop(s) for s in self._states.values()):
            return None
        return undo

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many documents at once: all of them, or none if one is refused.

        The documents are committed before ``ingest`` returns.
        """
        count = 0
        with self._lock:
            conn = self._conn()
            self._flush_states(conn)
            self._write_stopped(conn)  # what is queued now is not this call's to roll back
            savepoint = conn.begin_nested()
            try:
                for name, doc in pairs:
                    if name not in ("event", "event_page"):
                        self._flush_states(conn)
                    intake.take(self, name, doc)
                    if self._queue_full():
                        self._flush_states(conn)
                    if len(self._stopped) >= _STOPPED_AT_ONCE:
                        self._write_stopped(conn)
                    count += 1
                self._flush_states(conn)
            except BaseException:
                savepoint.rollback()
                self._stopped.clear()  # every stop queued was this call's
                # Cached states may describe what was just rolled back: reload them later.
                self._states.clear()
                self._run_ids.clear()
                self._ords.clear()
                self._txn_runs.clear()
                self._facts_undone()
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

    def _facts_undone(self) -> None:
        if self._facts is not None:
            self._facts.rolled_back()

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
            self._write_stopped(conn)
            self._db.commit(conn.connection.driver_connection)
            conn.commit()
            self._txn_descriptors.clear()
            self._txn_runs.clear()
            if self._facts is not None:
                self._facts.committed()
            self._after_commit()
            self._prune()
            if self._deferred_error is not None:
                error, self._deferred_error = self._deferred_error, None
                raise error
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            self._txn_descriptors.clear()
            self._txn_runs.clear()
            self._stopped.clear()
            self._facts_undone()
            self._states.clear()
            self._run_ids.clear()
            self._ords.clear()
            raise
        finally:
            self._dirty_since = None

    def _write_stopped(self, conn: Connection) -> None:
        """Write the statistics of the runs queued by their stops."""
        if self._stopped:
            stopped, self._stopped = self._stopped, []
            write_stopped(conn, stopped)

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
            params = {"run_id": run_id}
            last = max(q.execute(conn, params).fetchone()[0] or 0 for q in _MAX_ORDS)
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
            row = RUN_ID.execute(self._wconn, {"uid": uid}).fetchone()
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

    # -- events and their pages (the rest of the intake sink) ------------------------------

    def descriptor(self, uid: str) -> DescriptorState | None:
        state = self._states.get(uid)
        if state is not None:
            return state
        conn = self._wconn
        row = _DESCRIPTOR_STATE.execute(conn, {"uid": uid}).fetchone()
        if row is None:
            return None
        descriptor_id, run_id, body, run_uid = row
        seq_max = MAX_SEQ.execute(conn, {"d": descriptor_id}).fetchone()[0]
        state = DescriptorState.from_descriptor(
            descriptor_id, run_id, run_uid, _loads(body), seq_max or 0
        )
        self._states[uid] = state
        return state

    def stored_event(self, state: DescriptorState, seq_num: int) -> dict | None:
        queued = state.queued_event(seq_num)
        if queued is not None:
            return queued
        # Everything queued must be in the database before we can compare with it.
        conn = self._wconn
        self._flush_states(conn)
        return self._stored_event(conn, state, seq_num)

    def add_event(self, state: DescriptorState, doc: dict) -> None:
        self._last_queued = state
        state.arrival = next(self._arrivals)
        state.add(doc)

    def add_page(self, state: DescriptorState, doc: dict, batch: Batch) -> None:
        self._last_queued = state
        state.arrival = next(self._arrivals)
        state.add_batch(batch)

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
            hits = (data[SEQ_NUM] == seq).nonzero()[0]
            if len(hits):
                return event_from_columns(state.uid, data, extra, int(hits[0]))
        return None

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
            stored_max = self._db.stored_max(conn, state.id) if foreign else 0
            if stored_max > state.flushed_max:
                state.stats = None  # the stop summarises the stored pages instead
                # Another writer (process or catalog object) wrote this descriptor meanwhile:
                # its pages took replay positions this writer has not counted, so the next
                # one is read again (else two pages share one, and replay may swap them).
                batches = self._drop_repeats(conn, state, batches, stored_max)
                self._ords.pop(state.run_id, None)
            taken.append((state, batches))
        rows = []
        # Replay positions follow arrival (the descriptor whose events came last goes last),
        # not flush timing: a run copied from its replay replays identically.
        for state, batches in sorted(taken, key=lambda t: t[0].arrival):
            for batch in batches:
                state.flushed_max = max(state.flushed_max, batch.seq_max)
                rows.append(_page_row(state, self._next_ord(conn, state.run_id), batch))
                if state.stats is not None:
                    state.stats.add(batch.data)
                    state.stats_events += batch.n
                state.pages_written += 1
                if batch.n < state.max_events // 8:
                    state.small_pages += 1
        if rows:
            insert_pages(conn, rows)
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
            seqs = np.asarray(batch.data[SEQ_NUM])
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

    def _compact(self, conn: Connection, state: DescriptorState, below: int | None = None) -> None:
        """Merge runs of consecutive pages smaller than ``below`` events into bigger pages.

        Live runs write a small page per flush; merging them keeps reads to a few blobs.
        """
        below = state.max_events // 8 if below is None else below
        listing, blobs = self._db.pages_to_merge(conn, state.id, below)
        groups: list[list[tuple[int, int]]] = [[]]
        for page_id, n in listing:
            fits = sum(m for _, m in groups[-1]) + n <= state.max_events
            if n >= below or not fits:
                groups.append([])
            if n < below:
                groups[-1].append((page_id, n))
        for group in groups:
            if len(group) > 1:
                ids = [i for i, _ in group]
                self._merge_pages(conn, state, ids, [blobs[i] for i in ids] if blobs else None)
        state.small_pages = 0

    def _merge_pages(
        self, conn: Connection, state: DescriptorState, ids: list[int], rows: Any = None
    ) -> None:
        """Replace pages ``ids`` by one (``rows``: their ord, n, data, extra if known)."""
        if rows is None:
            rows = conn.execute(
                select(pages.c.ord, pages.c.n, pages.c.data, pages.c.extra)
                .where(pages.c.id.in_(ids))
                .order_by(pages.c.seq_min, pages.c.id)
            ).all()
        data, extra = merge_batches([(codec.decode(d), codec.decode(e), n) for _, n, d, e in rows])
        seqs = np.asarray(data[SEQ_NUM])
        merged = Batch(len(seqs), int(seqs.min()), int(seqs.max()), data, extra)
        # The merged page first: SQLite numbers a new row after the largest id left, and a
        # page id must never come back with other events (a reader may hold the old list).
        # Its position is the group's last: every datum the events need comes before.
        insert_pages(conn, [_page_row(state, max(r[0] for r in rows), merged)])
        self._db.delete_pages(conn, ids)

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
        self._written = run_id
        self._run_ids[doc["uid"]] = run_id
        self._ords[run_id] = 0  # a new run: nothing to look up
        self._txn_runs.add(run_id)
        return None

    def _write_stop(self, conn: Connection, run_id: int, doc: dict) -> dict | None:
        if not self._db.set_stop(conn, run_id, doc):  # a repeat, or another writer's
            row = _STOP_OF.execute(conn, {"rid": run_id}).fetchone()
            return _loads(row[0]) if row and row[0] is not None else None
        self._written = run_id
        known = self._known_descriptors(run_id) if self.stats_at_stop else None
        if self.stats_at_stop and known is None:
            stop_stats(conn, run_id, self._states)
        # The run is complete: merge the tiny pages a slow live run leaves (never the run's
        # big pages: rewriting them made the stop as slow as the whole run's ingest), and
        # forget what was kept in memory to write it.
        for uid, state in list(self._states.items()):
            if state.run_id == run_id:
                if _merges_at_stop(state):
                    self._compact(conn, state, below=max(2, state.max_events // _TINY_AT_STOP))
                del self._states[uid]
        self._run_ids.pop(doc["run_start"], None)
        self._ords.pop(run_id, None)
        if known is not None:  # last: nothing after it can fail and leave it queued
            self._stopped.append((run_id, [(state.descriptor, state.stats) for state in known]))
        return None

    def _known_descriptors(self, run_id: int) -> list[DescriptorState] | None:
        """Every descriptor state of run ``run_id`` with its statistics, if this writer
        began the run in the open transaction (so wrote each descriptor and event of it)."""
        if run_id not in self._txn_runs:
            return None
        known = [s for s in self._states.values() if s.run_id == run_id]
        if any(s.stats is None or s.id not in self._txn_descriptors for s in known):
            return None
        return known

    def _write_descriptor(self, conn: Connection, run_id: int, doc: dict) -> dict | None:
        params = {
            "uid": doc["uid"],
            "run_id": run_id,
            "ord": self._next_ord(conn, run_id),
            "name": doc.get("name", "primary"),
            "time": doc["time"],
            "body": _dumps(doc),
        }
        row = _INSERT_DESCRIPTOR[self._db.name].execute(conn, params).fetchone()
        if row is None:  # stored before
            return _loads(_DESCRIPTOR_OF.execute(conn, {"uid": doc["uid"]}).fetchone()[0])
        descriptor_id = row[0]
        self._written = (run_id, descriptor_id, doc if self._facts is not None else None)
        self._txn_descriptors.add(descriptor_id)
        if self._facts is not None:  # its devices, configuration and data keys
            self._facts.write(conn, run_id, doc)
        # Its events come next: know the descriptor without reading it back.
        state = DescriptorState.from_descriptor(descriptor_id, run_id, doc["run_start"], doc, 0)
        if self.stats_at_stop:  # a new descriptor: this writer sees its events first
            state.stats = Accumulator()
            # What the statistics need of it, held apart from the caller's dicts.
            state.descriptor = {
                "name": doc.get("name", "primary"),
                "data_keys": dict(doc["data_keys"]),
            }
        self._states[doc["uid"]] = state
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


def _merges_at_stop(state: DescriptorState) -> bool:
    """Whether the run's stop merges the descriptor's small pages (it has several)."""
    return state.pages_written > 1


def _page_row(state: DescriptorState, ord: int, batch: Batch) -> tuple:
    """The ``pages`` row of ``batch``, events of ``state``'s descriptor (see
    :func:`~runbroker.store.pagerows.insert_pages`)."""
    return (
        state.id,
        state.run_id,
        ord,
        batch.n,
        batch.seq_min,
        batch.seq_max,
        batch.ordered,
        codec.encode_parts(batch.data),
        codec.encode_parts(batch.extra),
    )


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
