"""Put several streams of a run on one time axis: ``runbroker.align``.

The index work is a few ``numpy.searchsorted`` calls on the float64 time arrays (small even for
long runs); gathering the values is one fancy index per field, so no Python loop runs per event.
With ``lazy=True`` the gathering stays a dask graph: a run larger than memory aligns without
being read. docs/align.md states every rule; the tests check them against hand-computed values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import xarray as xr

from ..errors import NoStreamError, NotFoundError

__all__ = ["align"]

Method = Literal["asof", "nearest", "interpolate"]
METHODS = ("asof", "nearest", "interpolate")


class Readable(Protocol):
    """What align reads a stream through (:class:`runbroker.Stream` is one; naming it here
    would make runbroker.stream, whose ``resample`` uses this package, a cycle)."""

    @property
    def fields(self) -> list[str]: ...

    def read(self, fields: Sequence[str] | None = None) -> xr.Dataset: ...

    def to_dask(self, fields: Sequence[str] | None = None) -> xr.Dataset: ...


Source = Mapping[str, "Readable | xr.Dataset"]


@dataclass(frozen=True)
class Match:
    """Where each target time finds its value in one source stream.

    ``index`` and ``after`` are positions in the source as read (seq_num order); ``found`` is
    False where the value is missing (then ``index`` is 0, a placeholder). ``after`` and
    ``weight`` are only set for interpolation: value = v[index] + weight * (v[after] - v[index]).
    """

    index: np.ndarray
    found: np.ndarray
    time: np.ndarray  # source time of the value (the earlier neighbour when interpolating)
    after: np.ndarray | None = None
    weight: np.ndarray | None = None
    time_after: np.ndarray | None = None


def match(
    source_time: np.ndarray,
    target_time: np.ndarray,
    method: Method = "asof",
    tolerance: float | None = None,
) -> Match:
    """Match each target time to samples of one source: the index computation of :func:`align`.

    The source may be in any order: it is sorted by time first (stable, so samples with equal
    times keep their seq_num order); the target keeps its order.

    Example:
        >>> m = match(np.array([1.0, 2.0, 4.0]), np.array([0.5, 2.0, 3.0, 5.0]))
        >>> m.index.tolist(), m.found.tolist(), m.time.tolist()
        ([0, 1, 1, 2], [False, True, True, True], [nan, 2.0, 2.0, 4.0])
        >>> match(np.array([1.0, 2.0, 4.0]), np.array([3.0]), "nearest").index.tolist()
        [1]
        >>> m = match(np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0]), "interpolate")
        >>> m.found.tolist(), m.weight.tolist(), m.time.tolist(), m.time_after.tolist()
        ([True, False], [0.5, 0.0], [2.0, nan], [4.0, nan])
    """
    if method not in METHODS:
        raise ValueError(f"align(method={method!r}): the method is one of {list(METHODS)}")
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"align(tolerance={tolerance!r}): a tolerance is seconds >= 0, or None")
    src = np.asarray(source_time, dtype=np.float64)
    t = np.asarray(target_time, dtype=np.float64)
    n = len(src)
    order = None
    if n > 1 and not bool(np.all(src[1:] >= src[:-1])):
        order = np.argsort(src, kind="stable")  # equal times keep their seq_num order
        src = src[order]
    missing = np.zeros(len(t), dtype=bool)
    if n == 0:
        zero = np.zeros(len(t), dtype=np.intp)
        nan = np.full(len(t), np.nan)
        interp = method == "interpolate"
        return Match(
            zero, missing, nan, zero if interp else None, nan if interp else None,
            nan if interp else None,
        )  # fmt: skip
    right = np.searchsorted(src, t, side="right")
    has_before = right > 0  # a sample at or before t
    has_after = right < n  # a sample after t
    before = np.maximum(right - 1, 0)
    later = np.minimum(right, n - 1)
    t_before, t_later = src[before], src[later]
    after = weight = None
    if method == "asof":
        index, found = before, has_before
        distance = t - t_before
    elif method == "nearest":
        # Of several samples sharing the later time, the last one (as asof takes at a tie).
        later_last = np.searchsorted(src, t_later, side="right") - 1
        take_later = has_after & (~has_before | (t_later - t < t - t_before))
        index = np.where(take_later, later_last, before)
        found = has_before | has_after
        distance = np.abs(src[index] - t)
    else:
        exact = has_before & (t_before == t)
        found = exact | (has_before & has_after)
        if tolerance is not None:
            found &= exact | (t_later - t_before <= tolerance)
        index = before
        after = np.where(exact, before, later)
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(exact | ~found, 0.0, (t - t_before) / (t_later - t_before))
        distance = None
    if tolerance is not None and distance is not None:
        found &= distance <= tolerance
    time = np.where(found, src[index], np.nan)
    time_after = None if after is None else np.where(found, src[after], np.nan)
    if order is not None:  # positions in the source as read
        index = order[index]
        after = None if after is None else order[after]
    index = np.where(found, index, 0)
    if after is not None:
        after = np.where(found, after, 0)
    return Match(index, found, time, after, weight, time_after)


def _is_dask(values: Any) -> bool:
    return not isinstance(values, np.ndarray)


def _missing_fill(dtype: np.dtype) -> tuple[np.dtype, Any]:
    """The dtype a column takes when some of its values are missing, and the missing value."""
    if dtype.kind in "fc":
        return dtype, np.nan
    if dtype.kind in "iub":
        return np.dtype(np.float64), np.nan
    # Strings and objects: NaN, as xarray makes of None anyway (pandas.isna finds it).
    return np.dtype(object), np.nan


def _fill_block(block: np.ndarray, found: np.ndarray, dtype: np.dtype, fill: Any) -> np.ndarray:
    out = block.astype(dtype, copy=True)
    out[~found.reshape(len(found))] = fill
    return out


def _interpolate(values: Any, m: Match) -> Any:
    assert m.after is not None and m.weight is not None
    v0 = values[m.index].astype(np.float64)
    v1 = values[m.after].astype(np.float64)
    w = m.weight
    if _is_dask(values):
        import dask.array as da

        return da.where(w == 0, v0, v0 + w * (v1 - v0))
    with np.errstate(invalid="ignore"):
        return np.where(w == 0, v0, v0 + w * (v1 - v0))


def gather(values: Any, m: Match, interpolate: bool = False) -> Any:
    """The values of one source column at the matched positions (numpy or dask, as given).

    Example:
        >>> m = match(np.array([1.0, 2.0]), np.array([0.0, 1.5]))
        >>> gather(np.array([10, 20]), m).tolist()
        [nan, 10.0]
    """
    dask = _is_dask(values)
    if len(values) == 0:
        dtype, fill = _missing_fill(np.dtype(values.dtype))
        out = np.full((len(m.found), *values.shape[1:]), fill, dtype=dtype)
        if dask:
            import dask.array as da

            return da.from_array(out)
        return out
    taken = _interpolate(values, m) if interpolate else values[m.index]
    if m.found.all():
        return taken
    dtype, fill = _missing_fill(np.dtype(taken.dtype))
    if not dask:
        return _fill_block(taken, m.found, dtype, fill)
    import dask.array as da

    found = da.from_array(m.found, chunks=(taken.chunks[0],))
    found = found.reshape((len(m.found),) + (1,) * (taken.ndim - 1)).rechunk(
        (taken.chunks[0],) + (1,) * (taken.ndim - 1)
    )
    return da.map_blocks(_fill_block, taken, found, dtype, fill, dtype=dtype)


def _read(
    source: Source, name: str, fields: list[str] | None, lazy: bool
) -> tuple[xr.Dataset, list[str]]:
    item = source[name]
    if isinstance(item, xr.Dataset):
        if fields is None:
            return item, [str(k) for k in item.data_vars]
        return item[fields].assign_coords(item.coords), fields
    names = item.fields if fields is None else fields
    return (item.to_dask(names) if lazy else item.read(names)), names


def _available(source: Source, name: str) -> list[str]:
    item = source[name]
    return [str(k) for k in item.data_vars] if isinstance(item, xr.Dataset) else item.fields


def _pick_fields(
    source: Source, names: list[str], fields: Sequence[str] | Mapping[str, Sequence[str]] | None
) -> dict[str, list[str] | None]:
    """Stream name -> the fields to read (None: all), checking every name given."""
    if fields is None:
        return dict.fromkeys(names)
    available = {s: _available(source, s) for s in names}
    if isinstance(fields, Mapping):
        unknown_streams = [s for s in fields if s not in names]
        if unknown_streams:
            raise NoStreamError(
                f"align(fields=...) names streams {unknown_streams} that are not aligned; "
                f"the aligned streams are {names}"
            )
        picked: dict[str, list[str] | None] = {
            s: list(fields[s]) if s in fields else None for s in names
        }
        bad = {
            s: [f for f in fs if f not in available[s]]
            for s, fs in picked.items()
            if fs is not None
        }
        bad = {s: fs for s, fs in bad.items() if fs}
        if bad:
            s, fs = next(iter(bad.items()))
            raise NotFoundError(
                f"align(fields=...): stream {s!r} has no field {', '.join(map(repr, fs))}; "
                f"its fields are {available[s]}"
            )
        return picked
    if isinstance(fields, str):
        fields = [fields]
    unknown = [f for f in fields if not any(f in available[s] for s in names)]
    if unknown:
        listing = "; ".join(f"{s}: {available[s]}" for s in names)
        raise NotFoundError(
            f"align(fields=...): no aligned stream has field {', '.join(map(repr, unknown))}; "
            f"the fields are {listing}"
        )
    return {s: [f for f in fields if f in available[s]] for s in names}


def output_names(fields: Mapping[str, Sequence[str]], on: str) -> dict[tuple[str, str], str]:
    """(stream, field) -> its name in the aligned Dataset.

    The ``on`` stream's fields keep their names; a field of another stream becomes
    ``<stream>_<field>`` when any other aligned stream also has a field of that name.

    Example:
        >>> names = output_names({"primary": ["det", "I0"], "mon": ["I0", "T"]}, "primary")
        >>> [names[key] for key in [("primary", "I0"), ("mon", "I0"), ("mon", "T")]]
        ['I0', 'mon_I0', 'T']
    """
    counts = Counter(f for fs in fields.values() for f in fs)
    out = {}
    for s, fs in fields.items():
        for f in fs:
            out[s, f] = f if s == on or counts[f] == 1 else f"{s}_{f}"
    return out


def align(
    run: Source,
    streams: Sequence[str] | None = None,
    on: str = "primary",
    method: Method = "asof",
    tolerance: float | None = None,
    fields: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    lazy: bool = False,
) -> xr.Dataset:
    """Several streams of a run as one ``xarray.Dataset`` on the time axis of stream ``on``.

    ``run`` is a :class:`~runbroker.Run` (or any mapping of stream name to ``Stream`` or to
    ``xarray.Dataset``). ``streams``: the streams to align (default: all; ``on`` is added if
    missing). ``method``: ``"asof"`` (last sample at or before each time), ``"nearest"`` (ties
    go to the earlier sample) or ``"interpolate"`` (linear, numbers only; strings and booleans
    take the earlier neighbour's value). ``tolerance`` (seconds): a match further away, or an
    interpolation gap longer, is missing. ``fields``: names (each read from the streams that
    have it) or ``{stream: [names]}``. Each aligned stream adds ``<stream>_time``, the source
    time of its values (NaN where missing). ``lazy=True`` keeps the data a dask graph.

    docs/align.md states the rules (missing values, names, ties, non-monotonic times).

    Example:
        >>> ds = runbroker.align(other_run, ["primary", "baseline"])
        >>> ds.sizes["time"], ds["motor1"].values.tolist() == [ds["motor1"].values[0]] * 3
        (3, True)
        >>> bool((ds["baseline_time"] <= ds["time"]).all())
        True
    """
    names = list(run) if streams is None else list(streams)
    if isinstance(streams, str):
        names = [streams]
    if on not in names:
        names.insert(0, on)
    known = list(run)
    unknown = [s for s in names if s not in known]
    if unknown:
        raise NoStreamError(
            f"align: no stream {', '.join(map(repr, unknown))} in this run; its streams are {known}"
        )
    names = list(dict.fromkeys(names))
    if method not in METHODS:
        raise ValueError(f"align(method={method!r}): the method is one of {list(METHODS)}")
    wanted = _pick_fields(run, names, fields)
    datasets: dict[str, xr.Dataset] = {}
    chosen: dict[str, list[str]] = {}
    for s in names:
        datasets[s], chosen[s] = _read(run, s, wanted[s], lazy)
    renamed = output_names(chosen, on)
    base = datasets[on]
    target = np.asarray(base["time"].values, dtype=np.float64)
    variables: dict[str, Any] = {}
    for f in chosen[on]:
        var = base[f].variable
        variables[renamed[on, f]] = var.copy(deep=False)
    for s in names:
        if s == on:
            continue
        ds = datasets[s]
        m = match(np.asarray(ds["time"].values, dtype=np.float64), target, method, tolerance)
        for f in chosen[s]:
            var = ds[f].variable
            interp = method == "interpolate"
            if interp:
                _check_interpolable(s, f, var)
            numeric = np.dtype(var.dtype).kind in "iufc"
            data = gather(var.data, m, interpolate=interp and numeric)
            attrs = {**var.attrs, "stream": s}
            variables[renamed[s, f]] = xr.Variable(var.dims, data, attrs=attrs)
        variables[f"{s}_time"] = xr.Variable("time", m.time, attrs={"stream": s})
        if m.time_after is not None:
            variables[f"{s}_time_after"] = xr.Variable("time", m.time_after, attrs={"stream": s})
    _check_clashes(names, renamed, variables, on)
    coords: dict[str, Any] = {"time": target}
    if "seq_num" in base.coords:
        coords["seq_num"] = ("time", np.asarray(base["seq_num"].values))
    attrs = {
        "on": on,
        "streams": names,
        "method": method,
        "tolerance": "none" if tolerance is None else float(tolerance),
    }
    uid = base.attrs.get("uid")
    if uid is not None:
        attrs["uid"] = uid
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _check_interpolable(stream: str, field: str, var: xr.Variable) -> None:
    if var.ndim > 1:
        raise ValueError(
            f"align(method='interpolate'): field {field!r} of stream {stream!r} has "
            f"{var.ndim - 1}-dimensional readings {tuple(var.shape[1:])}, which are not "
            "interpolated; align them with method='asof' or 'nearest' (frames are picked), or "
            "leave them out with fields=..."
        )


def _check_clashes(
    names: list[str], renamed: dict[tuple[str, str], str], variables: dict[str, Any], on: str
) -> None:
    """A made-up name (``<stream>_time``, ``<stream>_<field>``) equal to a field's name."""
    made = [f"{s}_time" for s in names if s != on]
    made += [f"{s}_time_after" for s in names if s != on]
    seen = Counter([*renamed.values(), *[n for n in made if n in variables], "time", "seq_num"])
    clashes = sorted(n for n, k in seen.items() if k > 1)
    if clashes:
        raise ValueError(
            f"align: the aligned Dataset would hold two variables named {clashes[0]!r} (a field "
            "and a name align makes, <stream>_<field> or <stream>_time); leave one out with "
            "fields=..."
        )
