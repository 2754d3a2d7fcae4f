"""Per-stream, per-field summary statistics of a run, and the ``meta`` rows that hold them.

Statistics are kept for fields whose every stored page is a numeric (integer or float) array:
count (values, NaN included), nan (NaN values), and the sum, min, max and mean of the other
values. For a field holding an array per event (an image), the values are the per-frame sums.
Strings, datum ids of detector files and booleans get none.

They are accumulated page by page while a writer stores a run and written when it stops, as
one row per field of the ``field_stats`` table (a column per statistic), so that ``Field``
queries are index lookups like every metadata query.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..columns import DATA
from ..queries import STATS

__all__ = [
    "MARKER",
    "Accumulator",
    "column_summary",
    "combine",
    "field_id",
    "field_key",
    "marker_row",
    "numeric_fields",
    "row_values",
    "stats_from_rows",
    "stats_rows",
    "summarise_store",
    "summary_rows",
]

#: The ``field_stats`` key of the row marking statistics of no field, or computed with files read.
MARKER = ""

# Pages up to this many events are summarised on Python lists: for the few events of a
# small run that is ten times faster than numpy's reductions, which win on larger pages.
SMALL = 64


def field_key(stream: str, field: str) -> str:
    """The ``field_stats`` key of a stream's field (names may hold any character).

    Example:
        >>> field_key("primary", "theta")
        '["primary","theta"]'
    """
    return json.dumps([stream, field], separators=(",", ":"))


@functools.lru_cache(maxsize=4096)  # a beamline's few field names, every run
def field_id(stream: str, field: str) -> tuple[int, str]:
    """The ``field_stats`` id of a stream's field (a signed 64-bit hash of its key: the same
    in every catalog and process, so that writing needs no look-up) and its key.

    Example:
        >>> field_id("primary", "theta")[1]
        '["primary","theta"]'
    """
    key = field_key(stream, field)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) or 1, key


def column_summary(column: Any) -> tuple[int, int, float, Any, Any] | None:
    """(count, nan, sum, min, max) of a numeric column (frames summed), or None.

    Example:
        >>> column_summary(np.array([1.0, np.nan, 3.0]))
        (3, 1, 4.0, 1.0, 3.0)
    """
    if not isinstance(column, np.ndarray) or column.dtype.kind not in "iuf":
        return None
    # inf + -inf is a NaN sum, and huge frames overflow: values, not warnings to the writer
    with np.errstate(invalid="ignore", over="ignore"):
        return _reduce(column)


def _reduce(column: np.ndarray) -> tuple[int, int, float, Any, Any]:
    n = len(column)
    if column.ndim == 1 and n:
        # The common case, no NaN (then the sum is not NaN either), without copies.
        if n <= SMALL:
            values = column.tolist()
            total = sum(values)
            if total == total:
                return n, 0, float(total), min(values), max(values)
        else:
            total = np.add.reduce(column, dtype=np.float64)
            if total == total:
                low, high = np.minimum.reduce(column), np.maximum.reduce(column)
                return n, 0, float(total), low.item(), high.item()
    if column.ndim > 1:
        # (n, frame size), not (n, -1): a page of no frames has no -1 to work out
        column = column.reshape(n, math.prod(column.shape[1:])).sum(axis=1, dtype=np.float64)
    if column.dtype.kind == "f":
        bad = np.isnan(column)
        nan = int(bad.sum())
        if nan:
            column = column[~bad]
    else:
        nan = 0
    if len(column) == 0:
        return n, nan, 0.0, None, None
    total = float(column.sum(dtype=np.float64))
    return n, nan, total, column.min().item(), column.max().item()


class Accumulator:
    """Statistics of the fields of one stream, added to page by page.

    Example:
        >>> acc = Accumulator()
        >>> acc.add({"d:x": np.array([1.0, np.nan]), "d:s": ["a", "b"]})
        >>> acc.add({"d:x": np.array([3.0])})
        >>> acc.result()
        {'x': {'count': 3, 'nan': 1, 'sum': 4.0, 'min': 1.0, 'max': 3.0, 'mean': 2.0}}
    """

    __slots__ = ("_fields", "_first", "_other")

    def __init__(self) -> None:
        self._fields: dict[str, list] = {}  # field -> [count, nan, sum, min, max]
        self._other: set[str] = set()  # fields with a page that is not numeric
        # The first page, summarised only when asked: a small run's one page is summarised
        # with the pages of many other runs at once (runbroker.store.statsbatch).
        self._first: Mapping[str, Any] | None = None

    @property
    def fields(self) -> dict[str, list]:
        """``{field: [count, nan, sum, min, max]}`` of the numeric fields."""
        self._settle()
        return self._fields

    @property
    def other(self) -> set[str]:
        """The fields with a page that is not numeric (they have no statistics)."""
        self._settle()
        return self._other

    def lone_page(self) -> Mapping[str, Any] | None:
        """The one page added, not yet summarised (``{}`` if none was added), or None once
        more than one was added or they were summarised.

        Example:
            >>> acc = Accumulator()
            >>> acc.add({"d:x": np.arange(3)})
            >>> sorted(acc.lone_page())
            ['d:x']
        """
        if self._first is not None:
            return self._first
        return None if self._fields or self._other else {}

    def _settle(self) -> None:
        if self._first is not None:
            page, self._first = self._first, None
            self._add(page)

    def add(self, data: Mapping[str, Any]) -> None:
        """Add a page's decoded data columns (``d:<field>`` keys; others are ignored)."""
        if self._first is None and not self._fields and not self._other:
            self._first = data
            return
        self._settle()
        self._add(data)

    def _add(self, data: Mapping[str, Any]) -> None:
        fields, other, n = self._fields, self._other, len(DATA)
        for key, column in data.items():
            if key[:n] != DATA:
                continue
            field = key[n:]
            if field in other:
                continue
            # Inlined for a small page of plain numbers without NaN (see column_summary): the
            # usual page of a small run costs a few µs a field.
            if (
                type(column) is np.ndarray
                and column.ndim == 1
                and 0 < len(column) <= SMALL
                and column.dtype.kind in "iuf"
            ):
                values = column.tolist()
                total = sum(values)
                if total == total and field not in fields:
                    fields[field] = [len(values), 0, float(total), min(values), max(values)]
                    continue
            summary = column_summary(column)
            if summary is None:
                other.add(field)
                fields.pop(field, None)
            else:
                self._merge(field, list(summary))

    def add_event(self, data: Mapping[str, Any]) -> None:
        """Add one event's ``data`` (as :meth:`add` would its one-event page)."""
        self._settle()
        for field, value in data.items():
            if field in self._other:
                continue
            if type(value) is float:  # the usual event: one number, summarised as it is
                nan = value != value
                self._merge(field, [1, 1, 0.0, None, None] if nan else [1, 0, value] + [value] * 2)
                continue
            if isinstance(value, float | int) and not isinstance(value, bool):
                column: Any = np.array([value])
            elif isinstance(value, np.ndarray | list):
                column = np.asarray(value)[np.newaxis] if len(value) else None
            else:
                column = None
            self._add({DATA + field: column})

    def _merge(self, field: str, part: list) -> None:
        held = self._fields.get(field)
        if held is None:
            self._fields[field] = part
            return
        held[0] += part[0]
        held[1] += part[1]
        held[2] += part[2]
        for i, pick in ((3, min), (4, max)):
            if part[i] is not None:
                held[i] = part[i] if held[i] is None else pick(held[i], part[i])

    def merge(self, other: Accumulator) -> None:
        """Add another accumulator's pages (another descriptor of the same stream)."""
        self._settle()
        for field in other.other:
            self._other.add(field)
            self._fields.pop(field, None)
        for field, part in other.fields.items():
            if field not in self._other:
                self._merge(field, list(part))

    def declare(self, fields: Iterable[str]) -> None:
        """Give fields that no page held (an empty stream) a count of 0."""
        self._settle()
        for field in fields:
            if field not in self._other and field not in self._fields:
                self._fields[field] = [0, 0, 0.0, None, None]

    def result(self) -> dict[str, dict[str, Any]]:
        """``{field: {count, nan, sum, min, max, mean}}``; unknown values are None."""
        out = {}
        for field, (count, nan, total, low, high) in self.fields.items():
            seen = count - nan
            out[field] = {
                "count": count,
                "nan": nan,
                "sum": total,
                "min": low,
                "max": high,
                "mean": total / seen if seen else None,
            }
        return out


def numeric_fields(descriptor: Mapping[str, Any]) -> list[str]:
    """The fields a descriptor declares as numbers held in its events (not in files).

    Example:
        >>> numeric_fields({"data_keys": {"x": {"dtype": "number"}, "s": {"dtype": "string"}}})
        ['x']
    """
    return [
        name
        for name, key in descriptor.get("data_keys", {}).items()
        if key.get("dtype") in ("number", "integer", "array") and not key.get("external")
    ]


def _finite(value: Any) -> Any:
    return value if value is not None and math.isfinite(value) else None


def marker_row(filled: bool = False) -> tuple:
    """The MARKER row: statistics computed for a run with no field, or (``filled``)
    computed with detector files read.

    Example:
        >>> marker_row()[:3]
        (0, '', 0)
    """
    return (0, MARKER, int(filled), None, None, None, None, None)


def _with_marker(rows: list[tuple], filled: bool) -> list[tuple]:
    """``rows`` and, when they alone cannot tell the statistics were computed (no field) or
    how (``filled``), the MARKER row first."""
    if filled or not rows:
        rows.insert(0, marker_row(filled))
    return rows


def stats_rows(
    stats: Mapping[str, Mapping[str, Mapping[str, Any]]], filled: bool = False
) -> list[tuple]:
    """``field_stats`` rows ``(field, key, count, nan, sum, min, max, mean)`` of ``{stream: {field:
    {stat: value}}}``, after a MARKER row when there is no field or ``filled`` (computed with
    detector files read); values that are None or not finite are NULL (no comparison
    matches them).

    Example:
        >>> stats_rows({"primary": {"x": {"count": 2, "min": None}}})[0][1:]
        ('["primary","x"]', 2, None, None, None, None, None)
    """
    rows = [
        (*field_id(stream, field), *(_finite(values.get(stat)) for stat in _COLUMNS))
        for stream, by_field in stats.items()
        for field, values in by_field.items()
    ]
    return _with_marker(rows, filled)


def summary_rows(parts: Iterable[tuple[Mapping[str, Any], Accumulator]]) -> list[tuple]:
    """The rows :func:`stats_rows` gives for ``combine(parts)``, straight from the
    accumulators when each stream has one descriptor (what a run's stop writes).

    Example:
        >>> acc = Accumulator()
        >>> acc.add({"d:x": np.arange(3)})
        >>> summary_rows([({"name": "primary", "data_keys": {}}, acc)])[0][1:]
        ('["primary","x"]', 3, 0, 3.0, 0, 2, 1.0)
    """
    parts = list(parts)
    names = {descriptor.get("name", "primary") for descriptor, _ in parts}
    if len(names) < len(parts):
        return stats_rows(combine(parts))
    rows = []
    for descriptor, acc in parts:
        name = descriptor.get("name", "primary")
        acc.declare(numeric_fields(descriptor))
        for field, summary in acc.fields.items():
            rows.append((*field_id(name, field), *row_values(*summary)))
    return _with_marker(rows, False)


def row_values(count: int, nan: int, total: float, low: Any, high: Any) -> tuple:
    """The statistics columns ``(count, nan, sum, min, max, mean)`` of a field's summary;
    what is not finite is NULL.

    Example:
        >>> row_values(2, 0, 3.0, 1.0, 2.0)
        (2, 0, 3.0, 1.0, 2.0, 1.5)
    """
    seen = count - nan
    if seen and total - total == 0:  # a finite sum: every value is finite too
        return count, nan, total, low, high, total / seen
    # no value, or an infinite one
    return count, nan, *map(_finite, (total, low, high, total / seen if seen else None))


# The statistics in the order of the ``field_stats`` columns after ``field`` and ``key``.
_COLUMNS = ("count", "nan", "sum", "min", "max", "mean")
assert set(_COLUMNS) == set(STATS)


def stats_from_rows(rows: Iterable[tuple]) -> dict[str, dict[str, dict[str, Any]]]:
    """The inverse of :func:`stats_rows`; a statistic that is NULL is None; count and nan
    are ints, the others floats.

    Example:
        >>> stats_from_rows([('["primary","x"]', 2, 0, 1, 1, 1, 0.5)])["primary"]["x"]["count"]
        2
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, *nums in rows:
        if key == MARKER:
            continue
        stream, field = json.loads(key)
        values = out.setdefault(stream, {})[field] = {}
        for stat, num in zip(_COLUMNS, nums, strict=True):
            # Floats whatever the database gave back (SQLite keeps 1.0 as 1, PostgreSQL
            # gives Decimal), so that every store answers alike.
            if num is not None:
                num = int(num) if stat in ("count", "nan") else float(num)
            values[stat] = num
    return out


def combine(parts: Iterable[tuple[Mapping[str, Any], Accumulator]]) -> dict[str, dict]:
    """The statistics ``{stream: {field: {stat: value}}}`` of a run from ``(descriptor,
    accumulator of its pages)`` pairs; descriptors of one stream name are merged.

    Example:
        >>> acc = Accumulator()
        >>> acc.add({"d:x": np.arange(3)})
        >>> combine([({"name": "primary", "data_keys": {}}, acc)])["primary"]["x"]["max"]
        2
    """
    streams: dict[str, Accumulator] = {}
    for descriptor, acc in parts:
        acc.declare(numeric_fields(descriptor))
        streams.setdefault(descriptor.get("name", "primary"), Accumulator()).merge(acc)
    return {name: acc.result() for name, acc in streams.items()}


def summarise_store(store: Any, run_uid: str, batch: int = 16) -> dict[str, dict]:
    """The statistics of run ``run_uid`` of any :class:`~runbroker.store.base.Store`,
    computed from its stored pages (a few at a time).

    Example:
        >>> summarise_store(cat.store, run.uid)["primary"]["motor"]["count"]
        5
    """
    parts = []
    for descriptor in store.descriptors(run_uid):
        acc = Accumulator()
        ids = [p.id for p in store.pages(run_uid, [descriptor["uid"]])]
        columns = [DATA + f for f in descriptor.get("data_keys", {})]
        for i in range(0, len(ids), batch):
            for page in store.read_pages(run_uid, ids[i : i + batch], columns):
                acc.add(page)
        parts.append((descriptor, acc))
    return combine(parts)
