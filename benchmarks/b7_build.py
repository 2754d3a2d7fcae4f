"""B7's large PostgreSQL catalogs, loaded with COPY from the rows the store itself writes.

``cat.ingest`` stores a few hundred to a thousand of B3's small runs per second on
PostgreSQL (one round trip per document), so a 1,000,000-run catalog would take the better
part of an hour. The search figures need the catalog, not that hour: this module computes
every row with the store's own code -- :func:`runbroker.documents.validate`,
:func:`runbroker.store.jsoncodec.dumps`, :func:`~runbroker.store.flatten.flatten`,
:func:`~runbroker.store.flatten.fulltext`, :class:`~runbroker.store.events.DescriptorState`
(which cuts event pages into page batches) and :func:`runbroker.store.pages.encode` -- and
loads the rows with binary ``COPY``, the catalog's secondary indexes dropped meanwhile and
built again afterwards from their own definitions.

:func:`check_same_rows` proves the two ways agree: it stores the same runs through
``cat.ingest`` into one schema and through :func:`load` into another and compares every
table row by row (ids mapped through uids). What it cannot show is the physical layout:
``ingest`` writes a run's row at its start and rewrites it at its stop, leaving a dead tuple
behind (reclaimed by VACUUM as free space), where COPY writes each row once.

Only runs shaped like B3's are loaded: start, one descriptor, event pages, stop.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

import runbroker
from runbroker.documents import validate
from runbroker.store import jsoncodec, schema
from runbroker.store import pages as codec
from runbroker.store.events import DescriptorState
from runbroker.store.flatten import flatten, fulltext
from runbroker.store.sqlwrite import scan_id_column

__all__ = ["build_sqlite", "check_same_rows", "load"]

# Table -> (columns, PostgreSQL types for binary COPY); the columns in the schema's order.
_TYPES = {
    "runs": ("int4", "text", "float8", "numeric", "bytea", "bytea", "float8"),
    "meta": ("int4", "text", "bool", "text", "numeric", "text"),
    "descriptors": ("int4", "text", "int4", "int8", "text", "float8", "bytea"),
    "pages": ("int4", "int4", "int4", "int8", "int4", "int8", "int8", "bool", "bytea", "bytea"),
}
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    table.name: (tuple(c.name for c in table.columns), _TYPES[table.name])
    for table in (schema.runs, schema.meta, schema.descriptors, schema.pages)
}
# The full-text table is PostgreSQL's own (not in the shared schema).
COLUMNS["runs_fts"] = (("run_id", "content"), ("int4", "text"))
SEQUENCES = {"runs": "runs_id_seq", "descriptors": "descriptors_id_seq", "pages": "pages_id_seq"}


def _num(value: Any) -> Any:
    """``meta.num`` as the store's INSERT makes it: integers exactly, floats through
    PostgreSQL's float8 -> numeric cast (15 significant digits, ``%.15g``)."""
    if value is None or isinstance(value, int):
        return value
    if value != value or value in (float("inf"), float("-inf")):
        return Decimal(value)
    return Decimal(format(value, ".15g"))


def _meta(run_id: int, prefix: str, doc: dict) -> Iterator[tuple]:
    for key, elem, typ, num, txt in flatten(prefix, doc):
        yield (run_id, key, elem, typ, _num(num), txt)


def run_rows(docs: list[tuple[str, dict]], ids: dict[str, int]) -> dict[str, list[tuple]]:
    """The rows ``cat.ingest(docs)`` writes for one run into an empty PostgreSQL catalog
    whose last ids are ``ids`` (table -> id; updated)."""
    names = [name for name, _ in docs]
    if names[0] != "start" or names[-1] != "stop" or "descriptor" not in names[1:2]:
        raise ValueError(f"not a B3-shaped run (start, descriptor, event pages, stop): {names}")
    if set(names[2:-1]) - {"event_page"}:
        raise ValueError(f"not a B3-shaped run (start, descriptor, event pages, stop): {names}")
    docs = [(name, validate(name, doc)) for name, doc in docs]
    start, desc, stop = docs[0][1], docs[1][1], docs[-1][1]
    run_id = ids["runs"] = ids["runs"] + 1
    desc_id = ids["descriptors"] = ids["descriptors"] + 1
    state = DescriptorState.from_descriptor(desc_id, run_id, start["uid"], desc, 0)
    for _, page in docs[2:-1]:
        batch = state.page_batch(page)
        if batch is not None:
            state.add_batch(batch)
    pages = []
    ord_ = 1  # the descriptor's place in the replay; its pages follow (written at the stop)
    for batch in state.take():
        ord_ += 1
        page_id = ids["pages"] = ids["pages"] + 1
        data, extra = codec.encode(batch.data), codec.encode(batch.extra)
        numbers = (page_id, desc_id, run_id, ord_, batch.n, batch.seq_min, batch.seq_max)
        pages.append((*numbers, batch.ordered, data, extra))
    return {
        "runs": [
            (
                *(run_id, start["uid"], start["time"], _num(scan_id_column(start))),
                *(jsoncodec.dumps(start), jsoncodec.dumps(stop), stop["time"]),
            )
        ],
        "meta": [*_meta(run_id, "start", start), *_meta(run_id, "stop", stop)],
        "runs_fts": [(run_id, fulltext(start))],
        "descriptors": [
            (
                *(desc_id, desc["uid"], run_id, 1, desc.get("name", "primary"), desc["time"]),
                jsoncodec.dumps(desc),
            )
        ],
        "pages": pages,
    }


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def load(url: str, runs: Iterable[list[tuple[str, dict]]]) -> tuple[int, float]:
    """COPY ``runs`` into the empty catalog at ``url`` (created here if needed); return how
    many runs and the seconds it took, indexes rebuilt and statistics gathered included."""
    runbroker.open(url).close()  # the schema, as the store creates it
    t0 = time.perf_counter()
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        found = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.schemaname = current_schema() AND i.tablename = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname "
            "AND c.connamespace = current_schema()::regnamespace)",
            (list(COLUMNS),),
        ).fetchall()
        for name, _ in found:
            conn.execute(f'DROP INDEX "{name}"')
    ids = dict.fromkeys(COLUMNS, 0)
    n = 0
    with ExitStack() as stack:
        copies = {}
        for table, (columns, types) in COLUMNS.items():
            conn = stack.enter_context(psycopg.connect(_plain(url)))
            try:
                # The rows are consistent by construction: skip the per-row foreign-key
                # triggers (needs a superuser; the throwaway cluster's user is one).
                conn.execute("SET session_replication_role = replica")
            except psycopg.Error:
                conn.rollback()
            copy = stack.enter_context(
                conn.cursor().copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
                )
            )
            copy.set_types(list(types))
            copies[table] = copy
        for docs in runs:
            for table, rows in run_rows(docs, ids).items():
                write = copies[table].write_row
                for row in rows:
                    write(row)
            n += 1
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        for table, sequence in SEQUENCES.items():
            if ids[table]:
                conn.execute("SELECT setval(%s, %s)", (sequence, ids[table]))
        for _, definition in found:
            conn.execute(definition)
        for table in COLUMNS:
            conn.execute(f"ANALYZE {table}")
    return n, time.perf_counter() - t0


# Every table's rows with ids replaced by the uids they stand for, in a fixed order.
_DUMP = {
    "runs": "SELECT uid, time, scan_id::text, start, stop, stop_time FROM runs ORDER BY uid",
    "meta": "SELECT r.uid, m.key, m.elem, m.typ, m.num::text, m.txt FROM meta m "
    "JOIN runs r ON r.id = m.run_id ORDER BY 1, 2, 3, 4, 5, 6",
    "runs_fts": "SELECT r.uid, f.content FROM runs_fts f JOIN runs r ON r.id = f.run_id ORDER BY 1",
    "descriptors": "SELECT d.uid, r.uid, d.ord, d.name, d.time, d.body FROM descriptors d "
    "JOIN runs r ON r.id = d.run_id ORDER BY 1",
    "pages": "SELECT d.uid, r.uid, p.ord, p.n, p.seq_min, p.seq_max, p.ordered, p.data, p.extra "
    "FROM pages p JOIN descriptors d ON d.id = p.descriptor_id JOIN runs r ON r.id = p.run_id "
    "ORDER BY 1, 3",
    "documents": "SELECT count(*) FROM documents",
    "datums": "SELECT count(*) FROM datums",
}


def check_same_rows(ingest_url: str, load_url: str, runs: list[list[tuple[str, dict]]]) -> float:
    """Store ``runs`` with ``cat.ingest`` at ``ingest_url`` and with :func:`load` at
    ``load_url``; raise AssertionError unless every table holds the same rows. Returns the
    runs/s of ``ingest``."""
    with runbroker.open(ingest_url) as cat:
        t0 = time.perf_counter()
        cat.ingest(pair for docs in runs for pair in docs)
        rate = len(runs) / (time.perf_counter() - t0)
    load(load_url, runs)
    with (
        psycopg.connect(_plain(ingest_url)) as a,
        psycopg.connect(_plain(load_url)) as b,
    ):
        for table, sql in _DUMP.items():
            left, right = a.execute(sql).fetchall(), b.execute(sql).fetchall()
            if left != right:
                diff = (
                    next(
                        (i, x, y)
                        for i, (x, y) in enumerate(zip(left, right, strict=False))
                        if x != y
                    )
                    if len(left) == len(right)
                    else (len(left), len(right))
                )
                raise AssertionError(f"{table}: COPY and ingest() rows differ: {diff}")
    return rate


def build_sqlite(db: Path, runs: Iterable[list[tuple[str, dict]]], batch: int) -> float:
    """Store ``runs`` into a new SQLite catalog at ``db`` with ``cat.ingest``, ``batch`` runs
    per call, its secondary indexes dropped meanwhile and created again at the end (the rows
    are the store's own; only the order the index entries arrive in differs). Returns the
    seconds it took."""
    t0 = time.perf_counter()
    # The schema (and the 16 KiB pages) as the store makes them; the name is a scratch one.
    runbroker.open(db, create=True).close()
    with sqlite3.connect(db) as con:
        found = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in found:
            con.execute(f'DROP INDEX "{name}"')
    runs = iter(runs)
    while chunk := list(itertools.islice(runs, batch)):
        # A fresh catalog object per call, as separate import jobs would have.
        with runbroker.open(db) as cat:
            cat.ingest(pair for docs in chunk for pair in docs)
    con = sqlite3.connect(db)
    try:
        for _, sql in found:
            con.execute(sql)
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return time.perf_counter() - t0
