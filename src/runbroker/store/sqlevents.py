"""Events in a SQL catalog: queued per descriptor, written as column pages, merged.

:class:`SQLEvents` is the part of :class:`~runbroker.store.sqlwrite.SQLWriting` that handles
``event`` and ``event_page`` documents: checking them against their descriptor, queueing
them, writing the queue as pages (leaving out events another writer stored meanwhile), and
merging the small pages a slow live run leaves into few large ones, so that reading a stream
stays a handful of blob reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Connection, func, insert, select

from ..columns import SEQ_NUM
from ..documents import ConflictError
from . import jsoncodec
from . import pages as codec
from .dialects import Dialect
from .events import Batch, DescriptorState, canonical, event_from_columns, merge_batches
from .prepared import Prepared
from .schema import descriptors, pages, runs

__all__ = ["SQLEvents"]

# A descriptor's pages are merged once this many small ones have piled up (slow live runs).
_COMPACT_AFTER = 32

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
_INSERT_PAGE = Prepared(insert(pages), _PAGE_KEYS)


class SQLEvents:
    """Queued events and their pages (state and connection handling: see SQLWriting)."""

    _db: Dialect
    _wconn: Connection | None
    _states: dict[str, DescriptorState]
    _txn_descriptors: set[int]
    _deferred_error: Exception | None
    _last_queued: DescriptorState | None

    # -- the intake sink for events (see runbroker.store.intake.Sink) -----------------------

    def descriptor(self, uid: str) -> DescriptorState | None:
        state = self._states.get(uid)
        if state is not None:
            return state
        conn = self._wconn
        row = conn.execute(
            select(descriptors.c.id, descriptors.c.run_id, descriptors.c.body, runs.c.uid)
            .join(runs, runs.c.id == descriptors.c.run_id)
            .where(descriptors.c.uid == uid)
        ).first()
        if row is None:
            return None
        seq_max = conn.execute(
            select(func.max(pages.c.seq_max)).where(pages.c.descriptor_id == row.id)
        ).scalar()
        state = DescriptorState.from_descriptor(
            row.id, row.run_id, row.uid, jsoncodec.loads(row.body), seq_max or 0
        )
        self._states[uid] = state
        return state

    def stored_event(self, state: DescriptorState, seq_num: int) -> dict | None:
        queued = state.pending_seqs.get(seq_num)
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
        groups: list[list[Any]] = [[]]
        for row in listing:
            fits = sum(r.n for r in groups[-1]) + row.n <= state.max_events
            if row.n >= below or not fits:
                groups.append([])
            if row.n < below:
                groups[-1].append(row)
        for group in groups:
            if len(group) > 1:
                ids = [r.id for r in group]
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
        data, extra = merge_batches(
            [(codec.decode(r.data), codec.decode(r.extra), r.n) for r in rows]
        )
        seqs = np.asarray(data[SEQ_NUM])
        merged = {
            "descriptor_id": state.id,
            "run_id": state.run_id,
            # The last position of the group: every datum the events need comes before.
            "ord": max(r.ord for r in rows),
            "n": len(seqs),
            "seq_min": int(seqs.min()),
            "seq_max": int(seqs.max()),
            "ordered": bool((np.diff(seqs) > 0).all()),
            "data": codec.encode(data),
            "extra": codec.encode(extra),
        }
        # The merged page first: SQLite numbers a new row after the largest id left, and a
        # page id must never come back with other events (a reader may hold the old list).
        _INSERT_PAGE.executemany(conn, [merged])
        self._db.delete_pages(conn, ids)
