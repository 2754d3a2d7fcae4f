"""The statistics rows of many stopped runs, computed together at the commit that stores them.

A group commit stores hundreds of small runs at once, each a page of a few events per
stream. Summarising every field of every run on its own cost about as much Python as the
rest of the run's statistics together; here the pages of one field of all those runs are
joined and reduced by numpy in a few calls, and their rows written with one statement.

A run whose statistics are not that simple (several pages of a descriptor, several
descriptors of one stream, NaN or infinite values, per-event arrays) is summarised as
:func:`~runbroker.store.stats.summary_rows` does, with the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from ..columns import DATA
from .stats import (
    Accumulator,
    column_summary,
    field_id,
    marker_row,
    numeric_fields,
    row_values,
    summary_rows,
)

__all__ = ["stop_rows"]

Parts = list[tuple[Mapping[str, Any], Accumulator]]


def stop_rows(stops: Sequence[tuple[int, Parts]]) -> list[tuple]:
    """``field_stats`` rows ``(run_id, field, key, count, nan, sum, min, max, mean)`` of
    runs that stopped, each given as ``(run id, [(descriptor, accumulator of its pages)])``.

    Example:
        >>> acc = Accumulator()
        >>> acc.add({"d:x": np.array([1.0, 2.0])})
        >>> stop_rows([(7, [({"name": "primary", "data_keys": {}}, acc)])])[0][2:]
        ('["primary","x"]', 2, 0, 3.0, 1.0, 2.0, 1.5)
    """
    rows: list[tuple] = []
    # The one page of each stream of each run, by stream and page layout (the runs of a
    # plan share theirs): (run ids, pages, descriptors).
    layouts: dict[tuple, tuple[list[int], list[Mapping], list[Mapping]]] = {}
    counted: set[int] = set()  # runs given a row of a field
    for run_id, parts in stops:
        if len(parts) == 1:  # the usual run: one stream
            pages = [parts[0][1].lone_page()]
            distinct = True
        else:
            pages = [acc.lone_page() for _, acc in parts]
            distinct = len({d.get("name", "primary") for d, _ in parts}) == len(parts)
        if None in pages or not distinct:
            # a descriptor of several pages, or a stream of several descriptors
            rows.extend((run_id, *row) for row in summary_rows(parts))
            counted.add(run_id)
            continue
        for (descriptor, _), page in zip(parts, pages, strict=True):
            layout = (descriptor.get("name", "primary"), *page)  # type: ignore[misc]
            found = layouts.get(layout)
            if found is None:
                found = layouts[layout] = ([], [], [])
            found[0].append(run_id)
            found[1].append(page)
            found[2].append(descriptor)
    for (name, *keys), (ids, pages, descriptors) in layouts.items():
        names = [key for key in keys if key[:_N] == DATA]
        held = {key[_N:] for key in names}
        for run_id, descriptor in zip(ids, descriptors, strict=True):
            if not descriptor["data_keys"].keys() <= held:
                # declared numbers no event held
                for field in numeric_fields(descriptor):
                    if field not in held:
                        rows.append((run_id, *field_id(name, field), 0, 0, 0.0, None, None, None))
                        counted.add(run_id)
        # The fields whose every page is a non-empty 1-D column of one numeric dtype are
        # joined and reduced together, by dtype (integers stay exact); the others are
        # summarised page by page. Fields are grouped by their first page's column.
        by_dtype: dict[np.dtype | None, list[tuple[int, str, str]]] = {}
        for column in names:
            by_dtype.setdefault(_numeric(pages[0][column]), []).append(
                (*field_id(name, column[_N:]), column)
            )
        for dtype, fields in by_dtype.items():
            fields.sort()  # rows in the table's order: by field id within a run
            columns = [page[column] for page in pages for _, _, column in fields]
            if dtype is not None and _joinable(columns, dtype):
                rows.extend(_joined_rows(ids, columns, fields))
                counted.update(ids)
                continue
            for i, (fid, key, _) in enumerate(fields):
                for run_id, column in zip(ids, columns[i :: len(fields)], strict=True):
                    summary = column_summary(column)
                    if summary is not None:  # else not numeric: no statistics
                        rows.append((run_id, fid, key, *row_values(*summary)))
                        counted.add(run_id)
    for run_id, _ in stops:
        if run_id not in counted:
            rows.append((run_id, *marker_row()))
    return rows


_N = len(DATA)


def _numeric(column: Any) -> np.dtype | None:
    """The dtype of ``column`` if it is a 1-D array of numbers."""
    if type(column) is np.ndarray and column.ndim == 1 and column.dtype.kind in "iuf":
        return column.dtype
    return None


def _joinable(columns: list[Any], dtype: np.dtype) -> bool:
    """Whether each of ``columns`` is a non-empty 1-D array of ``dtype``."""
    kinds = {(type(c), getattr(c, "dtype", None), getattr(c, "ndim", None)) for c in columns}
    return kinds == {(np.ndarray, dtype, 1)} and all(map(len, columns))


def _joined_rows(
    ids: list[int], columns: list[np.ndarray], fields: list[tuple[int, str, str]]
) -> list[tuple]:
    """The rows of fields of the pages of many runs (``ids``), each field given as its id,
    key and page column; ``columns`` holds, run after run, each field's column, which is
    non-empty, 1-D and of one numeric dtype.

    The rows come in the table's order (run, then field id), which SQLite inserts fastest.
    """
    counts = np.fromiter(map(len, columns), dtype=np.int64, count=len(columns))
    starts = np.zeros(len(columns), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    values = np.concatenate(columns)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(values, starts, dtype=np.float64)
    lows = np.minimum.reduceat(values, starts)
    highs = np.maximum.reduceat(values, starts)
    run_ids = [run_id for run_id in ids for _ in fields]
    fids = [fid for fid, _, _ in fields] * len(ids)
    keys = [key for _, key, _ in fields] * len(ids)
    rows: list[tuple] = []
    finite = np.isfinite(sums)
    if not finite.all():  # a NaN or an infinite value (a finite sum has none): one by one
        for i in np.flatnonzero(~finite).tolist():
            summary = column_summary(columns[i])
            rows.append((run_ids[i], fids[i], keys[i], *row_values(*summary)))  # type: ignore[misc]
        keep = np.flatnonzero(finite).tolist()
        run_ids, fids, keys = ([seq[i] for i in keep] for seq in (run_ids, fids, keys))
        counts, sums, lows, highs = counts[keep], sums[keep], lows[keep], highs[keep]
    means = sums / counts
    rows.extend(
        zip(
            run_ids,
            fids,
            keys,
            counts.tolist(),
            repeat(0),
            sums.tolist(),
            lows.tolist(),
            highs.tolist(),
            means.tolist(),
            strict=False,
        )
    )
    return rows
