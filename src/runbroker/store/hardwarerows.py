"""The searchable rows of descriptors' hardware facts (see :mod:`runbroker.hardware`).

Facts are kept once per distinct set (tables ``fact_sets``, ``facts`` and ``run_facts`` in
:mod:`runbroker.store.schema`): a descriptor's facts, some dozens of rows, are hashed to a
64-bit set id; the set's rows are written by the first descriptor that has them, and a run
is linked to each of its sets by one row. The runs of one plan repeat their facts, so a
small run writes one row for them instead of dozens (writing each as a ``meta`` row halved
the rate of small-run ingest). A search finds the sets that hold a fact, then their runs.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from sqlalchemy import Connection, text

from ..hardware import facts
from .flatten import scalar_row
from .prepared import Prepared

__all__ = ["FactWriter", "fact_records", "fact_rows", "fact_set", "put_sqlite"]

Row = tuple[str, str, Any, Any]  # key, typ, num, txt
Set = tuple[int, tuple[Row, ...]]  # id, rows

_NEW_SET = "INSERT INTO fact_sets (id) VALUES (:id) ON CONFLICT (id) DO NOTHING RETURNING id"
_FACT = "INSERT INTO facts (set_id, key, typ, num, txt) VALUES (:set_id, :key, :typ, :num, :txt)"
_LINK = (
    "INSERT INTO run_facts (run_id, set_id) VALUES (:run_id, :set_id) "
    "ON CONFLICT (run_id, set_id) DO NOTHING"
)
_INSERT_SET = Prepared(text(_NEW_SET))
_INSERT_FACT = Prepared(text(_FACT), ["set_id", "key", "typ", "num", "txt"])
_INSERT_LINK = Prepared(text(_LINK), ["run_id", "set_id"])


def fact_rows(descriptors: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
    """``(key, typ, num, txt)`` rows of ``facts`` for these descriptors' facts.

    Example:
        >>> desc = {"name": "primary", "object_keys": {"det": ["det"]}, "data_keys": {}}
        >>> list(fact_rows([desc]))
        [('@device/*', 's', None, 'det'), ('@device/primary', 's', None, 'det')]
    """
    for key, values in facts(descriptors).items():
        for value in values:
            row = scalar_row(value)
            if row is not None:
                yield (key, *row)


def fact_records(set_id: int, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """The ``facts`` rows of set ``set_id``, as dicts of their columns.

    Example:
        >>> fact_records(7, [("@device/*", "s", None, "det")])[0]["txt"]
        'det'
    """
    return [{"set_id": set_id, "key": k, "typ": t, "num": n, "txt": x} for k, t, n, x in rows]


def _set_id(rows: tuple[Row, ...]) -> int:
    digest = hashlib.sha256(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_SEEN: dict[bytes, Set] = {}
_SEEN_MAX = 256


def fact_set(descriptor: Mapping[str, Any]) -> Set:
    """The id and rows of one descriptor's set of facts, the same for every descriptor alike
    but for its uid and times (a RunEngine's runs of one plan): those are most often found
    in memory rather than worked out again.

    Example:
        >>> a = {"uid": "a", "name": "primary", "object_keys": {"det": ["det"]}}
        >>> b = {"uid": "b", "name": "primary", "object_keys": {"det": ["det"]}}
        >>> fact_set(a) == fact_set(b), fact_set(a)[0] == fact_set({**a, "name": "dark"})[0]
        (True, False)
    """
    conf = descriptor.get("configuration") or {}
    try:
        key = orjson.dumps(
            [
                descriptor.get("name", "primary"),
                descriptor.get("object_keys"),
                descriptor.get("data_keys"),
                {d: c.get("data") if isinstance(c, Mapping) else c for d, c in conf.items()},
            ],
            option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        )
    except TypeError:  # a value JSON cannot hold: worked out each time
        rows = tuple(fact_rows([descriptor]))
        return _set_id(rows), rows
    found = _SEEN.get(key)
    if found is None:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        rows = tuple(fact_rows([descriptor]))
        found = _SEEN[key] = (_set_id(rows), rows)
    return found


class FactWriter:
    """Writes descriptors' facts for one writing connection, remembering which sets are
    stored (committed, or written in the open transaction) so that a run of a known set costs
    one row.

    Example:
        >>> new = runbroker.temp()
        >>> writer = FactWriter()
        >>> with new.store._engine.begin() as conn:
        ...     writer.write(conn, 1, {"name": "primary", "object_keys": {"det": []}})
        ...     writer.write(conn, 2, {"name": "primary", "object_keys": {"det": []}})
        ...     conn.exec_driver_sql("SELECT count(*) FROM run_facts").scalar()
        2
    """

    def __init__(self) -> None:
        self._stored: set[int] = set()
        self._pending: set[int] = set()  # written in the open transaction

    def write(self, conn: Connection, run_id: int, descriptor: Mapping[str, Any]) -> None:
        """Link run ``run_id`` to the facts of ``descriptor``, writing them if they are new,
        in the caller's transaction (on PostgreSQL the link goes with its next round trip)."""
        set_id, rows = fact_set(descriptor)
        if set_id not in self._stored and set_id not in self._pending:
            # The set's row decides who writes its facts: a writer that finds it stored
            # (by another process, perhaps at this moment) writes none.
            if _INSERT_SET.execute(conn, {"id": set_id}).fetchone() is not None:
                _INSERT_FACT.executemany(conn, [(set_id, *r) for r in rows], ordered=True)
            self._pending.add(set_id)
        _INSERT_LINK.executemany(conn, [(run_id, set_id)], ordered=True)

    def knows(self, descriptor: Mapping[str, Any]) -> bool:
        """Whether the set of ``descriptor``'s facts is stored (or written in the open
        transaction): :meth:`write` then writes only the run's link to it."""
        set_id = fact_set(descriptor)[0]
        return set_id in self._stored or set_id in self._pending

    def committed(self) -> None:
        """The open transaction was committed: its sets are stored."""
        self._stored |= self._pending
        self._pending.clear()

    def rolled_back(self) -> None:
        """Some writes of the open transaction were undone: its sets may not be stored."""
        self._pending.clear()


def put_sqlite(
    db: sqlite3.Connection, run_id: int, descriptors: Iterable[Mapping[str, Any]]
) -> None:
    """Link run ``run_id`` to the facts of ``descriptors`` on a plain ``sqlite3``
    connection (a folder's index), writing the sets not stored yet.

    Example:
        >>> new = runbroker.temp()
        >>> db = sqlite3.connect(new.store.uri.removeprefix("sqlite:///"))
        >>> put_sqlite(db, 1, [{"name": "primary", "object_keys": {"det": []}}])
        >>> db.execute("SELECT count(*) FROM facts").fetchone()
        (2,)
    """
    for descriptor in descriptors:
        set_id, rows = fact_set(descriptor)
        if db.execute(_NEW_SET, {"id": set_id}).fetchone() is not None:
            db.executemany(
                _FACT,
                [{"set_id": set_id, "key": k, "typ": t, "num": n, "txt": x} for k, t, n, x in rows],
            )
        db.execute(_LINK, {"run_id": run_id, "set_id": set_id})
