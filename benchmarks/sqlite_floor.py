"""The least any SQLite catalog pays to keep the same documents: B20's third column.

A catalog that keeps event pages as column blobs in SQLite has to turn each page's columns into
bytes and write them, and commit. These functions do only that, in bare ``sqlite3`` with a
runbroker catalog's settings (16 KiB pages, WAL, ``synchronous=NORMAL``) and the smallest
schema that can still find a run, a descriptor or a page again (a uid index on runs and
descriptors, a (descriptor, seq_num) index on pages): no validation, no metadata or full-text
index, no statistics, no check against what is stored, and no Python between the caller and
``sqlite3`` but the conversion.

When this floor is slower than a file appender, no SQLite catalog can match the appender on
that workload, whatever it does in Python; when it is faster, the gap to runbroker is
runbroker's own work.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from benchmarks.common import compose_pages, new_run
    >>> run, desc = new_run()
    >>> pages = list(compose_pages(desc, 10, 5))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     seconds = floor_pages(Path(tmp), run.start_doc, desc.descriptor_doc, pages)
    >>> seconds > 0
    True
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["floor_pages", "floor_small_runs", "page_bytes"]

_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, start BLOB, stop BLOB);
CREATE TABLE descriptors (
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, run_id INTEGER, body BLOB
);
CREATE TABLE pages (
    id INTEGER PRIMARY KEY, descriptor_id INTEGER, seq_min INTEGER, seq_max INTEGER, data BLOB
);
CREATE INDEX pages_seq ON pages (descriptor_id, seq_min);
"""
_RUN = "INSERT INTO runs (uid, start) VALUES (?, ?)"
_DESCRIPTOR = "INSERT INTO descriptors (uid, run_id, body) VALUES (?, ?, ?)"
_PAGE = "INSERT INTO pages (descriptor_id, seq_min, seq_max, data) VALUES (?, ?, ?, ?)"
_STOP = "UPDATE runs SET stop = ? WHERE id = ?"


def _connect(folder: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(folder / f"floor{time.monotonic_ns()}.db", isolation_level=None)
    for pragma in ("page_size=16384", "journal_mode=WAL", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.executescript(_SCHEMA)
    return conn


def _column_bytes(column: Any) -> bytes:
    if isinstance(column, np.ndarray):
        return column.tobytes()
    if column and type(column[0]) is int:
        return struct.pack(f"<{len(column)}q", *column)
    return struct.pack(f"<{len(column)}d", *column)


def page_bytes(data: dict, timestamps: dict, time_: Any, seq_num: Any, uids: Any) -> bytes:
    """A page's columns as one blob: each distinct column once (event-model's pages share one
    list among ``time`` and the timestamps), floats and ints as 8-byte values, uids as one
    ASCII block.

    Example:
        >>> t = [0.5, 0.6]
        >>> len(page_bytes({"x": [1.0, 2.0]}, {"x": t}, t, [1, 2], ["a", "b"]))
        50
    """
    seen: set[int] = set()
    parts = []
    for column in (*data.values(), *timestamps.values(), time_, seq_num):
        if id(column) not in seen:
            seen.add(id(column))
            parts.append(_column_bytes(column))
    parts.append("".join(uids).encode("ascii"))
    return b"".join(parts)


def floor_pages(folder: Path, start: dict, descriptor: dict, pages: Sequence[dict]) -> float:
    """Seconds to store ``pages`` (``event_page`` documents) and commit, the run's start and
    descriptor written before the clock starts (as B20 does for runbroker)."""
    conn = _connect(folder)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_RUN, (start["uid"], orjson.dumps(start)))
        conn.execute(_DESCRIPTOR, (descriptor["uid"], 1, orjson.dumps(descriptor)))
        conn.execute("COMMIT")
        execute = conn.execute
        t0 = time.perf_counter()
        execute("BEGIN IMMEDIATE")
        for page in pages:
            seq = page["seq_num"]
            blob = page_bytes(page["data"], page["timestamps"], page["time"], seq, page["uid"])
            execute(_PAGE, (1, int(seq[0]), int(seq[-1]), blob))
        execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        conn.close()


def floor_small_runs(
    folder: Path, runs: Sequence[Sequence[tuple[str, dict]]], per_commit: int = 25
) -> float:
    """Seconds to store whole runs of (name, document) pairs (a start, one descriptor, events,
    a stop), the events of a run as one page, committing every ``per_commit`` runs (about
    what runbroker's group commit does at B20's rate)."""
    conn = _connect(folder)
    try:
        execute = conn.execute
        t0 = time.perf_counter()
        execute("BEGIN IMMEDIATE")
        for i, docs in enumerate(runs, 1):
            events = [doc for name, doc in docs if name == "event"]
            for name, doc in docs:
                if name == "start":
                    run_id = execute(_RUN, (doc["uid"], orjson.dumps(doc))).lastrowid
                elif name == "descriptor":
                    body = orjson.dumps(doc)
                    desc_id = execute(_DESCRIPTOR, (doc["uid"], run_id, body)).lastrowid
                elif name == "stop":
                    if events:
                        _events_page(execute, desc_id, events)
                    execute(_STOP, (orjson.dumps(doc), run_id))
            if i % per_commit == 0:
                execute("COMMIT")
                execute("BEGIN IMMEDIATE")
        execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        conn.close()


def _events_page(execute: Any, desc_id: int, events: list[dict]) -> None:
    keys = list(events[0]["data"])
    seq = [e["seq_num"] for e in events]
    blob = page_bytes(
        {k: [e["data"][k] for e in events] for k in keys},
        {k: [e["timestamps"][k] for e in events] for k in keys},
        [e["time"] for e in events],
        seq,
        [e["uid"] for e in events],
    )
    execute(_PAGE, (desc_id, seq[0], seq[-1], blob))
