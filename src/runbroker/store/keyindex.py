"""Indexes on metadata keys that users choose: partial indexes of ``meta`` for one key each.

Every key is searchable through ``meta``'s covering indexes on (key, value). An index of one
key holds only that key's rows, without the key in each entry, so a facility catalog keeps
the keys its users search most (``sample``, ``proposal_id``) in small indexes that stay in
memory. The keys indexed are recorded in ``runbroker_info`` (no schema change: older
runbroker versions simply do not use them).
"""

from __future__ import annotations

import hashlib
import json
import re

from sqlalchemy import Connection, Index, MetaData, delete, insert, select
from sqlalchemy.schema import CreateIndex

from .. import queries as q
from .schema import info, meta

__all__ = ["create", "index_name", "meta_key", "recorded", "user_key"]

# The runbroker_info row that lists the indexed keys (as stored in meta.key), in JSON.
_INFO_KEY = "indexed_keys"


def meta_key(key: str) -> str:
    """The key as ``meta`` stores it: query keys address the start document by default.

    Example:
        >>> meta_key("sample.name"), meta_key("stop.exit_status")
        ('start.sample.name', 'stop.exit_status')
    """
    doc, path = q.split_key(key)
    return ".".join((doc, *path))


def user_key(stored: str) -> str:
    """The shortest query key for a ``meta`` key (the inverse of :func:`meta_key`).

    Example:
        >>> user_key("start.sample"), user_key("start.stop.x"), user_key("stop.exit_status")
        ('sample', 'start.stop.x', 'stop.exit_status')
    """
    short = stored.removeprefix("start.")
    return short if meta_key(short) == stored else stored


def index_name(stored: str, column: str) -> str:
    """The name of the index of ``meta`` key ``stored`` on ``column`` (``txt`` or ``num``).

    Names stay within PostgreSQL's 63 characters for any key; the hash keeps keys that
    differ only in punctuation or length apart.

    Example:
        >>> index_name("start.sample", "txt")
        'ix_meta_k_start_sample_1df54a12_txt'
    """
    slug = re.sub(r"[^a-z0-9]+", "_", stored.lower()).strip("_")[:32]
    digest = hashlib.sha1(stored.encode()).hexdigest()[:8]
    return f"ix_meta_k_{slug}_{digest}_{column}"


def _indexes(stored: str) -> list[Index]:
    # Built on a copy of the table: an Index joins its table's schema, and the shared
    # schema must not grow per catalog.
    table = meta.to_metadata(MetaData())
    where = table.c.key == stored  # rendered as an escaped literal in the DDL
    return [
        Index(
            index_name(stored, column),
            table.c[column],
            table.c.typ,
            table.c.elem,
            table.c.run_id,
            sqlite_where=where,
            postgresql_where=where,
        )
        for column in ("txt", "num")
    ]


def recorded(conn: Connection) -> list[str]:
    """The ``meta`` keys indexed in the catalog ``conn`` is connected to, sorted.

    Example:
        >>> with cat.store._engine.connect() as conn:
        ...     recorded(conn)
        []
    """
    value = conn.execute(select(info.c.value).where(info.c.key == _INFO_KEY)).scalar()
    return json.loads(value) if value else []


def create(conn: Connection, stored_keys: list[str]) -> list[str]:
    """Create the indexes of these ``meta`` keys (inside the caller's write transaction)
    and record them; return all the keys indexed now. The caller makes other writers
    wait (two that run CREATE INDEX IF NOT EXISTS at once can collide on the name).
    """
    keys = set(recorded(conn))
    for stored in stored_keys:
        for index in _indexes(stored):
            conn.execute(CreateIndex(index, if_not_exists=True))
        keys.add(stored)
    conn.execute(delete(info).where(info.c.key == _INFO_KEY))
    conn.execute(insert(info).values(key=_INFO_KEY, value=json.dumps(sorted(keys))))
    return sorted(keys)
