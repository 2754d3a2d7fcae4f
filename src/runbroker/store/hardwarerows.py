"""The searchable rows of a descriptor's hardware facts (see :mod:`runbroker.hardware`).

They go into ``meta`` beside the run's start and stop rows, under keys starting with
``@device/``, ``@config/`` and ``@datakey/`` (or ``#`` for a hashed long key), which no user key
can take (those start with ``start.`` or ``stop.``). One row per fact and value: a descriptor of
a few devices and data keys gives some dozens of rows, written once per stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, insert

from ..hardware import facts
from .flatten import scalar_row
from .schema import meta

__all__ = ["PREFIXES", "fact_rows", "write"]

#: The ``meta`` key prefixes of hardware facts (for deleting a run's facts).
PREFIXES = tuple(f"@{kind}{sep}" for kind in ("device", "config", "datakey") for sep in "/#")

Row = tuple[str, bool, str, Any, Any]


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


def write(conn: Connection, run_id: int, descriptors: Iterable[Mapping[str, Any]]) -> None:
    """Insert the fact rows of ``descriptors`` (of run ``run_id``) in the caller's transaction.

    Example:
        >>> new = runbroker.temp()
        >>> with new.store._engine.begin() as conn:
        ...     write(conn, 1, [{"name": "primary", "object_keys": {"det": []}}])
        >>> len(new.store.distinct("@device/*", None, 10))  # not a user's key
        0
    """
    names = ("key", "elem", "typ", "num", "txt")
    rows = [{"run_id": run_id, **dict(zip(names, r, strict=True))} for r in fact_rows(descriptors)]
    if rows:
        conn.execute(insert(meta), rows)
