"""Flatten start/stop documents into indexable (key, value) rows.

The rows follow the reference semantics of :mod:`runbroker.queries`: nested dicts give dotted
keys, every value gets a row at its own key (``elem`` false), and each scalar element of a list
gets one more row at the list's key (``elem`` true) so that ``Contains`` is an index lookup too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["IN_RUN_COLUMNS", "flatten", "fulltext", "meta_rows", "scalar_row"]

Row = tuple[str, bool, str, int | float | None, str | None]

#: Keys whose value every run has in a column of ``runs`` (its uid, a start's and its stop's
#: ``run_start``): searched there (runbroker.store.sqlquery), and not written as ``meta``
#: rows, where each was a leaf at a random place of the value index rewritten by every
#: commit (a small run's ingest was 17% slower with them in a catalog of 30,000 runs).
IN_RUN_COLUMNS = frozenset({"start.uid", "stop.run_start"})


def scalar_row(value: Any) -> tuple[str, int | float | None, str | None] | None:
    """``(typ, num, txt)`` for a JSON scalar, or None for containers.

    Example:
        >>> scalar_row(True), scalar_row(2), scalar_row("a"), scalar_row(None)
        (('b', 1, None), ('n', 2, None), ('s', None, 'a'), ('z', None, None))
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ("z", None, None)
    if isinstance(value, bool):
        return ("b", int(value), None)
    if isinstance(value, int):
        # Databases hold 64-bit integers; beyond that, compare as a float.
        return ("n", value if -(2**63) <= value < 2**63 else float(value), None)
    if isinstance(value, float):
        # NaN never compares equal; storing NULL keeps SQL and Python in agreement.
        return ("n", None if math.isnan(value) else value, None)
    if isinstance(value, str):
        return ("s", None, value)
    return None


def flatten(prefix: str, doc: dict) -> Iterator[Row]:
    """Rows for every nested key of ``doc``, keys prefixed by ``prefix`` (``"start"``/``"stop"``).

    Example:
        >>> list(flatten("start", {"a": {"b": [1, "x"]}}))[-2:]
        [('start.a.b', True, 'n', 1, None), ('start.a.b', True, 's', None, 'x')]
    """
    for key, value in doc.items():
        if "." in str(key):
            continue  # a dotted field name cannot be addressed by a query key (see queries)
        path = f"{prefix}.{key}"
        if isinstance(value, np.ndarray):
            value = value.tolist()
        row = scalar_row(value)
        if row is not None:
            yield (path, False, *row)
        elif isinstance(value, dict):
            yield (path, False, "d", None, None)
            yield from flatten(path, value)
        elif isinstance(value, (list, tuple)):
            yield (path, False, "l", None, None)
            for item in value:
                item_row = scalar_row(item)
                if item_row is not None:
                    yield (path, True, *item_row)
        else:
            yield (path, False, "s", None, str(value))


def meta_rows(prefix: str, doc: dict) -> list[Row]:
    """The ``meta`` rows of a start or stop document: :func:`flatten`'s, but those of
    :data:`IN_RUN_COLUMNS`.

    Example:
        >>> [row[0] for row in meta_rows("stop", {"uid": "s", "run_start": "r"})]
        ['stop.uid']
    """
    return [row for row in flatten(prefix, doc) if row[0] not in IN_RUN_COLUMNS]


_TOKEN = re.compile(r"[^\W_]+")


def fulltext(doc: Any) -> str:
    """All string values of ``doc`` (recursively), lower-cased and tokenised, space-joined.

    Example:
        >>> fulltext({"plan_name": "rel_scan", "sample": {"name": "Ni-foil"}})
        'rel scan ni foil'
    """
    words: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            words.extend(_TOKEN.findall(value.lower()))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(doc)
    return " ".join(words)
