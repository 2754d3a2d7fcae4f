"""The searchable rows of a descriptor's hardware facts (see :mod:`runbroker.hardware`).

They go into ``meta`` beside the run's start and stop rows, under keys starting with
``@device/``, ``@config/`` and ``@datakey/`` (or ``#`` for a hashed long key), which no user key
can take (those start with ``start.`` or ``stop.``). One row per fact and value: a descriptor of
a few devices and data keys gives some dozens of rows, written once per stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from sqlalchemy import Connection, insert

from ..hardware import facts
from .flatten import scalar_row
from .prepared import Prepared
from .schema import meta

__all__ = ["PREFIXES", "fact_rows", "meta_rows", "write"]

#: The ``meta`` key prefixes of hardware facts (for deleting a run's facts).
PREFIXES = tuple(f"@{kind}{sep}" for kind in ("device", "config", "datakey") for sep in "/#")

Row = tuple[str, bool, str, Any, Any]
_NAMES = ("run_id", "key", "elem", "typ", "num", "txt")
_INSERT = Prepared(insert(meta), list(_NAMES))


def fact_rows(descriptors: Iterable[Mapping[str, Any]]) -> Iterator[Row]:
    """``(key, elem, typ, num, txt)`` rows of ``meta`` for these descriptors' facts.

    Example:
        >>> desc = {"name": "primary", "object_keys": {"det": ["det"]}, "data_keys": {}}
        >>> list(fact_rows([desc]))
        [('@device/*', False, 's', None, 'det'), ('@device/primary', False, 's', None, 'det')]
    """
    for key, values in facts(descriptors).items():
        for value in values:
            row = scalar_row(value)
            if row is not None:
                yield (key, False, *row)


def meta_rows(run_id: int, descriptors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``meta`` rows (as dicts) of the facts of ``descriptors`` of run ``run_id``.

    Example:
        >>> meta_rows(7, [{"name": "primary", "object_keys": {"det": []}}])[0]["key"]
        '@device/*'
    """
    return [dict(zip(_NAMES, (run_id, *r), strict=True)) for r in fact_rows(descriptors)]


def write(conn: Connection, run_id: int, descriptors: Iterable[Mapping[str, Any]]) -> None:
    """Insert the fact rows of ``descriptors`` (of run ``run_id``) in the caller's transaction
    (the store's writing connection: on PostgreSQL the rows go with its next round trip).

    Example:
        >>> new = runbroker.temp()
        >>> with new.store._engine.begin() as conn:
        ...     write(conn, 1, [{"name": "primary", "object_keys": {"det": []}}])
        >>> len(new.store.distinct("@device/*", None, 10))  # not a user's key
        0
    """
    rows = [(run_id, *row) for desc in descriptors for row in _rows_of(desc)]
    if rows:
        _INSERT.executemany(conn, rows, ordered=True)


_SEEN: dict[bytes, tuple[Row, ...]] = {}
_SEEN_MAX = 256


def _rows_of(descriptor: Mapping[str, Any]) -> tuple[Row, ...]:
    """The fact rows of one descriptor, remembered by what decides them: a RunEngine's runs
    of one plan have descriptors alike but for their uids and times, so the facts of each new
    run's descriptor are most often found here rather than worked out again."""
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
        return tuple(fact_rows([descriptor]))
    rows = _SEEN.get(key)
    if rows is None:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        rows = _SEEN[key] = tuple(fact_rows([descriptor]))
    return rows
