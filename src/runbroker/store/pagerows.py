"""Rows of the ``pages`` table: a page's columns encoded into its two blobs and inserted.

A page's blobs come from :func:`~runbroker.store.pages.encode_parts` as pieces (a header,
then each column's buffer). On SQLite a large blob is not joined and bound: binding hands
SQLite a copy, which it copies again into a record before copying that into the file's
pages, each a fresh allocation of the whole blob (4,600 page faults for a 10 MB page). The
row is inserted with ``zeroblob`` placeholders and the pieces are written straight into the
blob's pages (incremental blob I/O): 10 MB in ~2 ms instead of ~15. Small blobs (a small
run's page) are bound as they are, many rows to one statement.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, func, insert

from .prepared import Prepared
from .schema import pages

__all__ = ["INPLACE_MIN_BYTES", "PAGE_KEYS", "insert_pages"]

PAGE_KEYS = [
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
#: Blobs from this size on are written in place on SQLite (below, binding costs less than
#: the blob handle's opening).
INPLACE_MIN_BYTES = 256 * 1024

# SQLite's OR FAIL spares the statement journal (see runbroker.store.dialects).
_INSERT = Prepared(insert(pages).prefix_with("OR FAIL", dialect="sqlite"), PAGE_KEYS)
_SIZES = ("data_bytes", "extra_bytes")
_INSERT_ZEROS = Prepared(
    insert(pages)
    .prefix_with("OR FAIL", dialect="sqlite")
    .values(
        data=func.zeroblob(bindparam("data_bytes")), extra=func.zeroblob(bindparam("extra_bytes"))
    ),
    [*PAGE_KEYS[:7], *_SIZES],
)


def insert_pages(conn: Connection, rows: Sequence[tuple]) -> None:
    """Insert ``pages`` rows: tuples of the values of :data:`PAGE_KEYS`, ``data`` and
    ``extra`` each given as the pieces of its blob.

    Example:
        >>> import numpy as np
        >>> from sqlalchemy import create_engine, select
        >>> from runbroker.store.pages import decode, encode_parts
        >>> from runbroker.store.schema import metadata
        >>> engine = create_engine("sqlite://")
        >>> metadata.create_all(engine)
        >>> data = encode_parts({"x": np.arange(100_000.0)})
        >>> with engine.begin() as conn:
        ...     insert_pages(conn, [(1, 1, 1, 100_000, 1, 100_000, True, data, encode_parts({}))])
        ...     blob = conn.execute(select(pages.c.data)).scalar_one()
        >>> decode(blob)["x"][-1].item()
        99999.0
    """
    small = []
    for row in rows:
        data, extra = row[7], row[8]
        sizes = sum(map(len, data)), sum(map(len, extra))
        if conn.dialect.name != "sqlite" or max(sizes) < INPLACE_MIN_BYTES:
            small.append((*row[:7], b"".join(data), b"".join(extra)))
            continue
        params = dict(zip((*PAGE_KEYS[:7], *_SIZES), (*row[:7], *sizes), strict=True))
        page_id = _INSERT_ZEROS.execute(conn, params).lastrowid
        raw = conn.connection.driver_connection
        for column, parts in (("data", data), ("extra", extra)):
            with raw.blobopen("pages", column, page_id) as blob:  # type: ignore[union-attr]
                for part in parts:
                    blob.write(part)
    if small:
        _INSERT.executemany(conn, small, ordered=True)
