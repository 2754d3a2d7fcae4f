"""The statistics of a run in a SQL catalog: written at its stop, read, replaced.

At a run's stop the writer uses what it accumulated while writing each descriptor's pages
(:class:`~runbroker.store.stats.Accumulator`). When the run began in the writer's open
transaction, no other writer can have written to it and every descriptor of it is known:
the statistics come from memory with no query, and are written with those of every other
such run when the transaction commits (:func:`write_stopped`; every small run). Otherwise
a descriptor some other writer wrote to (several server workers), or that the writer
forgot meanwhile, is summarised from its stored pages, and the rows written at the stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select

from ..errors import SchemaVersionError
from . import jsoncodec
from . import pages as codec
from .base import run_not_found
from .events import DescriptorState
from .prepared import Prepared
from .schema import descriptors, field_stats, pages, runs
from .stats import Accumulator, stats_from_rows, stats_rows, summary_rows
from .statsbatch import stop_rows

__all__ = ["SQLStatistics", "read_stats", "stop_stats", "write_stats", "write_stopped"]

_COLUMNS = ["key", "count", "nan", "sum", "min", "max", "mean"]
_STATS_OF = Prepared(
    select(*(field_stats.c[c] for c in _COLUMNS)).where(field_stats.c.run_id == bindparam("rid"))
)
_NAMES = ("run_id", "field", *_COLUMNS)
# SQLite's OR FAIL spares the statement journal (see runbroker.store.dialects): a stop's
# rows are undone with the stop, by its savepoint or by the stop's own undo.
_INSERT = Prepared(insert(field_stats).prefix_with("OR FAIL", dialect="sqlite"), _NAMES)
_DESCRIPTORS = Prepared(
    select(descriptors.c.id, descriptors.c.uid).where(descriptors.c.run_id == bindparam("rid"))
)
_BODY = Prepared(select(descriptors.c.body).where(descriptors.c.id == bindparam("d")))
_RUN_ID = Prepared(select(runs.c.id).where(runs.c.uid == bindparam("uid")))
_COUNTS = Prepared(
    select(pages.c.descriptor_id, func.sum(pages.c.n))
    .where(pages.c.run_id == bindparam("rid"))
    .group_by(pages.c.descriptor_id)
)
_DATA_OF = Prepared(select(pages.c.data).where(pages.c.descriptor_id == bindparam("d")))


def _parts(
    conn: Connection, run_id: int, states: Mapping[str, DescriptorState]
) -> list[tuple[Mapping[str, Any], Accumulator]]:
    """(descriptor, accumulator) of each descriptor of the run: the writer's, where it saw
    every stored event, else one of the stored pages."""
    counts = dict(_COUNTS.execute(conn, {"rid": run_id}).fetchall())
    parts = []
    for desc_id, uid in _DESCRIPTORS.execute(conn, {"rid": run_id}).fetchall():
        state = states.get(uid)
        stored = int(counts.get(desc_id) or 0)
        if (
            state is not None
            and state.stats is not None
            and state.descriptor is not None
            and state.stats_events == stored
        ):
            parts.append((state.descriptor, state.stats))
            continue
        acc = Accumulator()
        for (blob,) in _DATA_OF.execute(conn, {"d": desc_id}).fetchall():
            acc.add(codec.decode(blob))
        (body,) = _BODY.execute(conn, {"d": desc_id}).fetchone()
        parts.append((jsoncodec.loads(body), acc))
    return parts


def write_stats(
    conn: Connection,
    run_id: int,
    stats: Mapping[str, Mapping[str, Mapping[str, Any]]],
    filled: bool = False,
    replace: bool = True,
) -> None:
    """Write the run's statistics rows, replacing any it has (``replace``); ``filled``:
    they include fields read from detector files."""
    if replace:
        conn.execute(delete(field_stats).where(field_stats.c.run_id == run_id))
    _insert(conn, run_id, stats_rows(stats, filled))


def _insert(conn: Connection, run_id: int, rows: list[tuple]) -> None:
    _INSERT.insert_rows(conn, [(run_id, *r) for r in rows])


def stop_stats(conn: Connection, run_id: int, states: Mapping[str, DescriptorState]) -> None:
    """Write the statistics of a run that just stopped (it has none yet), from the
    writer's accumulators where the run's stored pages show it saw every event."""
    _insert(conn, run_id, summary_rows(_parts(conn, run_id, states)))


def write_stopped(
    conn: Connection, stopped: Sequence[tuple[int, list[tuple[Mapping[str, Any], Accumulator]]]]
) -> None:
    """Write the statistics of runs that stopped (they have none yet), each given as (run
    id, its descriptors with the accumulators of all their events)."""
    _INSERT.insert_rows(conn, stop_rows(stopped))


def read_stats(conn: Connection, run_id: int) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The run's stored statistics, or None if it has none (not computed)."""
    rows = _STATS_OF.execute(conn, {"rid": run_id}).fetchall()
    return stats_from_rows(rows) if rows else None


class SQLStatistics:
    """The statistics capability of :class:`~runbroker.store.sql.SQLStore`
    (:class:`~runbroker.store.base.Summarises`)."""

    uri: str
    _summarises: bool  # the catalog has the table (migration 0006)

    def _require_stats_table(self) -> None:
        if not self._summarises:
            raise SchemaVersionError(
                f"{self.uri} keeps no statistics yet (catalog schema before revision 0006); "
                f"upgrade it in place (back it up first) with:  runbroker db upgrade {self.uri}"
            )

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        """The run's statistics ``{stream: {field: {stat: value}}}``, or None if they were
        not computed (a running run, or one stored before statistics existed).

        Example:
            >>> cat.store.stats(run.uid)["primary"]["motor"]["max"]
            1.0
        """
        self._flush_if_pending()
        with self._read() as conn:
            row = _RUN_ID.execute(conn, {"uid": run_uid}).fetchone()
            if row is None:
                raise run_not_found(self, run_uid)
            return read_stats(conn, row[0]) if self._summarises else None

    def set_stats(
        self,
        run_uid: str,
        stats: Mapping[str, Mapping[str, Mapping[str, Any]]],
        filled: bool = False,
    ) -> None:
        """Replace the run's statistics (``filled``: computed with detector files read)."""
        self._require_stats_table()
        with self._lock:
            # What is pending first: the run's own statistics may still wait for the commit.
            self._commit_locked()
            conn = self._conn()
            row = _RUN_ID.execute(conn, {"uid": run_uid}).fetchone()
            if row is None:
                raise run_not_found(self, run_uid)
            write_stats(conn, row[0], stats, filled)
            self._commit_locked()

    def unsummarised(self, filled: bool = False) -> list[str]:
        """The uids of stopped runs without statistics (``filled``: without statistics
        computed with detector files read), oldest first."""
        self._require_stats_table()
        self._flush_if_pending()
        # A run with statistics has rows; one computed with files read, a MARKER row
        # with count 1 (see runbroker.store.stats.stats_rows).
        done = select(field_stats.c.run_id)
        if filled:
            done = done.where(field_stats.c.field == 0, field_stats.c.count == 1)
        stmt = (
            select(runs.c.uid)
            .where(runs.c.stop.is_not(None), runs.c.id.not_in(done))
            .order_by(runs.c.time, runs.c.uid)
        )
        with self._read() as conn:
            return list(conn.execute(stmt).scalars())
