"""Fixed time bins over a stream: ``stream.resample(period, how)``.

Events are sorted by time (stable), numbered by bin with one floor division, and each field is
reduced with one ``ufunc.reduceat`` over the non-empty bins; empty bins are then put in place
with NaN. A dask input stays lazy: it is cut at bin boundaries so that each piece holds whole
bins, and each piece is reduced on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from .align import Match, gather

__all__ = ["resample"]

How = Literal["mean", "last", "first", "min", "max", "sum", "count"]
HOWS = ("mean", "last", "first", "min", "max", "sum", "count")
_ANY_DTYPE = ("first", "last", "count")


def _seconds(period: float | str) -> float:
    if isinstance(period, str):
        try:
            seconds = pd.to_timedelta(period).total_seconds()
        except ValueError as err:
            raise ValueError(
                f"resample(period={period!r}): a period is seconds or a fixed pandas offset "
                "such as '500ms', '1s', '2min' (months and years have no fixed length)"
            ) from err
    elif isinstance(period, bool) or not isinstance(period, int | float | np.number):
        raise TypeError(f"resample(period={period!r}): a period is seconds or a string like '1s'")
    else:
        seconds = float(period)
    if not seconds > 0 or not np.isfinite(seconds):
        raise ValueError(f"resample(period={period!r}): the period must be positive and finite")
    return seconds


def _valid(values: np.ndarray) -> np.ndarray:
    """True where a value is present (not NaN, not None), per event (any element counts)."""
    if values.dtype.kind in "fc":
        ok = ~np.isnan(values)
    elif values.dtype.kind == "O":
        ok = pd.notna(values)
    else:
        ok = np.ones(values.shape, dtype=bool)
    return ok


def _reduce(values: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    """One value per bin of ``values`` (sorted by bin); bins begin at ``starts`` (non-empty)."""
    if len(starts) == 0:
        return values[:0]
    if how == "first":
        return values[starts]
    if how == "last":
        return values[np.append(starts[1:], len(values)) - 1]
    ok = _valid(values)
    if how == "count":
        return np.add.reduceat(ok.astype(np.int64), starts, axis=0)
    v = values.astype(np.float64)
    if how == "min":
        return np.fmin.reduceat(v, starts, axis=0)  # fmin/fmax leave NaN out
    if how == "max":
        return np.fmax.reduceat(v, starts, axis=0)
    total = np.add.reduceat(np.where(ok, v, 0.0), starts, axis=0)
    n = np.add.reduceat(ok.astype(np.int64), starts, axis=0)
    if how == "sum":
        return np.where(n > 0, total, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n


def _reduce_lazy(values: Any, starts: np.ndarray, how: str) -> Any:
    """:func:`_reduce` of a dask array: pieces cut at bin starts, each reduced alone."""
    import dask
    import dask.array as da

    n = len(values)
    # Cut near the input's own chunk ends, moved forward to the next bin start.
    ends = np.cumsum(values.chunks[0])[:-1]
    cuts = np.unique(np.concatenate([[0], starts[np.searchsorted(starts, ends)
                                                  .clip(max=len(starts) - 1)], [n]]))  # fmt: skip
    sizes = tuple(int(b - a) for a, b in itertools.pairwise(cuts))
    pieces = values.rechunk({0: sizes, **{i: -1 for i in range(1, values.ndim)}})
    parts = []
    sample = _reduce(np.zeros((1, *values.shape[1:]), values.dtype), np.array([0]), how)
    for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        local = starts[(starts >= lo) & (starts < hi)] - lo
        task = dask.delayed(_reduce)(pieces.blocks[i], local, how)
        parts.append(
            da.from_delayed(task, shape=(len(local), *values.shape[1:]), dtype=sample.dtype)
        )
    return da.concatenate(parts)


def resample(
    ds: xr.Dataset,
    period: float | str,
    how: How = "mean",
    origin: float | None = None,
) -> xr.Dataset:
    """A stream's Dataset reduced to bins of ``period`` seconds (or ``"1s"``, ``"500ms"``).

    Bins are ``[start, start + period)`` from ``origin`` (default: the first event's time
    floored to a multiple of the period; events before ``origin`` are left out). The result
    is indexed by bin start (``time``) and has a ``count`` coordinate, the events in each bin.
    Empty bins are kept: NaN (None for strings) for every ``how``, ``count`` 0 (and 0 for
    ``how="count"``). ``mean``/``sum``/``min``/``max`` skip NaN readings and need numbers;
    ``first``/``last`` (by time) and ``count`` (non-missing readings) take any field.

    Example:
        >>> from runbroker.combine import resample
        >>> ds = xr.Dataset({"x": ("time", [1.0, 2.0, 4.0])}, coords={"time": [10.0, 10.5, 12.2]})
        >>> out = resample(ds, 1.0)
        >>> out["time"].values.tolist(), out["x"].values.tolist(), out["count"].values.tolist()
        ([10.0, 11.0, 12.0], [1.5, nan, 4.0], [2, 0, 1])
    """
    if how not in HOWS:
        raise ValueError(f"resample(how={how!r}): how is one of {list(HOWS)}")
    step = _seconds(period)
    time = np.asarray(ds["time"].values, dtype=np.float64)
    if origin is None:
        origin = float(np.floor(np.nanmin(time) / step) * step) if len(time) else 0.0
    lazy = any(not isinstance(v.data, np.ndarray) for v in ds.data_vars.values())
    for name, var in ds.data_vars.items():
        if how not in _ANY_DTYPE and np.dtype(var.dtype).kind not in "iufcb":
            raise TypeError(
                f"resample(how={how!r}): field {name!r} holds {var.dtype} values, which only "
                f"'first', 'last' and 'count' take; leave it out (read(fields=...)) or use those"
            )
    bins = np.floor((time - origin) / step)
    keep = np.flatnonzero(bins >= 0)
    order = keep[np.argsort(time[keep], kind="stable")]
    sorted_bins = bins[order].astype(np.int64)
    nbins = int(sorted_bins[-1]) + 1 if len(sorted_bins) else 0
    counts = np.bincount(sorted_bins, minlength=nbins)
    starts = np.flatnonzero(np.diff(sorted_bins, prepend=-1))  # first event of each non-empty bin
    full = counts > 0
    # Bin k of the result is non-empty bin rank[k] of the reduced values.
    placed = Match(index=np.maximum(np.cumsum(full) - 1, 0), found=full, time=np.empty(0))
    reduce: Callable[[Any, np.ndarray, str], Any] = _reduce_lazy if lazy else _reduce
    variables = {}
    for name, var in ds.data_vars.items():
        data = var.data
        if not np.array_equal(order, np.arange(len(time))):
            data = data[order]
        reduced = reduce(data, starts, how)
        out = gather(reduced, placed)
        if how == "count":  # an empty bin counts 0 readings (gather made it NaN)
            out = np.nan_to_num(out).astype(np.int64)
        variables[name] = xr.Variable(var.dims, out, attrs=var.attrs)
    coords = {
        "time": origin + np.arange(nbins) * step,
        "count": ("time", counts),
    }
    attrs = {**ds.attrs, "period": step, "how": how, "origin": origin}
    return xr.Dataset(variables, coords=coords, attrs=attrs)
