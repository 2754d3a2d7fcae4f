"""One Dataset from a stream of several runs: side by side (``how="pad"``) or one after the other
(``how="stack"``), with each run's start-document metadata as coordinates.

Missing values follow one rule everywhere: a field a run lacks, and the padding after a shorter
run, are NaN in numeric fields (integer and boolean fields become float64 where a value is
missing), None in string and object fields, NaT in datetime fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from ..catalog import Catalog, Run
from ..errors import NoStreamError, NotFoundError

__all__ = ["concat"]

#: Names concat gives its own coordinates and variables; a field or metadata key cannot take them.
RESERVED = ("run", "event", "time", "seq_num", "mask", "uid")
# Values per lazy piece of padding (dask cannot size object pieces by itself).
_FILL_CHUNK = 2**22


def concat(
    runs: Iterable[Run] | Catalog,
    stream: str = "primary",
    fields: Sequence[str] | str | None = None,
    how: Literal["pad", "stack"] = "pad",
    metadata: Sequence[str] = ("scan_id", "plan_name"),
    lazy: bool = False,
) -> xr.Dataset:
    """One ``xarray.Dataset`` of ``stream`` over several runs.

    ``runs``: Runs in the order wanted, or a Catalog / search result (taken oldest first, so
    that time goes forward). ``fields``: the fields to read (default: every field of the
    stream in any run). A field some runs lack is all-missing for those runs; a field no run
    has is an error, as is a run without the stream.

    ``how="pad"``: dimensions ``run`` x ``event`` (the position in the run's stream); shorter
    runs are padded, ``mask`` is True where an event exists, and ``time`` / ``seq_num`` are
    coordinates over (run, event). ``how="stack"``: every event along one ``time`` dimension,
    ordered by run then event, with a ``run`` coordinate (the run's uid) per event.

    The ``run`` coordinate holds the runs' uids (also given as ``uid``); each start-document key
    in ``metadata`` (dotted for nested keys: ``"sample.name"``) is a coordinate along ``run``
    (pad) or along ``time`` (stack), missing values as NaN (numbers) or None.

    ``lazy=True`` reads each run with ``to_dask()``: the result holds dask arrays and reads
    nothing until ``.compute()``, so it works on runs larger than memory.

    Example:
        >>> ds = runbroker.concat([other_run, run], fields=["det"])
        >>> dict(ds.sizes), ds["mask"].sum().item()
        ({'run': 2, 'event': 5}, 8)
        >>> ds["scan_id"].values.tolist() == [other_run.start["scan_id"], run.start["scan_id"]]
        True
        >>> stacked = runbroker.concat([other_run, run], fields=["det"], how="stack")
        >>> stacked.sizes["time"], stacked["plan_name"].values.tolist()[2:4]
        (8, ['count', 'scan'])
    """
    if how not in ("pad", "stack"):
        raise ValueError(f"concat(how={how!r}): how is 'pad' (a run x event grid) or 'stack'")
    if isinstance(fields, str):
        fields = [fields]
    if isinstance(metadata, str):
        metadata = [metadata]
    picked = _runs(runs)
    _check_names(metadata, "metadata key")
    parts = [_read(run, stream, fields, lazy) for run in picked]
    names = _field_names(parts, fields, stream)
    _check_names(names, "field")
    lengths = [part.sizes.get("time", 0) for part in parts]
    ragged = how == "pad" and len(set(lengths)) > 1
    data_vars = {
        f: _combine(f, [p[f] if f in p.data_vars else None for p in parts], lengths, how, ragged)
        for f in names
    }
    uids = [run.uid for run in picked]
    meta = {key: _metadata(key, picked) for key in metadata}
    layout = _grid_coords if how == "pad" else _line_coords
    coords, extra = layout(parts, lengths, uids, meta)
    return xr.Dataset({**data_vars, **extra}, coords=coords, attrs={"stream": stream, "how": how})


def _runs(runs: Iterable[Run] | Catalog) -> list[Run]:
    if isinstance(runs, Catalog):
        picked = list(runs.values())[::-1]  # a catalog lists newest first
    elif isinstance(runs, Run):
        raise TypeError("concat takes several runs (a list of Run, or a Catalog), not one Run")
    else:
        picked = list(runs)
    for i, run in enumerate(picked):
        if not isinstance(run, Run):
            raise TypeError(f"concat: runs[{i}] is a {type(run).__name__}, not a Run")
    if not picked:
        raise ValueError("concat: no runs given (an empty list or search result)")
    return picked


def _check_names(names: Iterable[str], what: str) -> None:
    taken = [n for n in names if n in RESERVED]
    if taken:
        raise ValueError(
            f"concat: {what} {taken[0]!r} has the name of one of concat's own coordinates "
            f"{list(RESERVED)}; read it with Stream.read or run.start instead"
        )


def _read(run: Run, stream: str, fields: Sequence[str] | None, lazy: bool) -> xr.Dataset:
    try:
        s = run[stream]
    except NoStreamError:
        raise NoStreamError(
            f"concat: run {run.uid[:8]} has no stream {stream!r}; its streams are {list(run)}"
        ) from None
    known = s.fields
    present = known if fields is None else [f for f in fields if f in known]
    return s.to_dask(present) if lazy else s.read(present)


def _field_names(parts: list[xr.Dataset], fields: Sequence[str] | None, stream: str) -> list[str]:
    seen = list(dict.fromkeys(str(f) for p in parts for f in p.data_vars))
    if fields is None:
        return seen
    unknown = [f for f in fields if f not in seen]
    if unknown:
        raise NotFoundError(
            f"concat: no run has field {unknown[0]!r} in stream {stream!r}; "
            f"the fields there are {seen}"
        )
    return list(dict.fromkeys(fields))


def _fill(dtype: np.dtype) -> Any:
    """The missing value of a column of this dtype."""
    if dtype.kind == "O":
        return None
    if dtype.kind in "mM":
        return np.array("NaT", dtype=dtype)
    return np.nan


def _target(field: str, pieces: list[xr.DataArray], missing: bool) -> np.dtype:
    dtype = np.result_type(*(p.dtype for p in pieces))
    if dtype.kind in "USO":
        # Strings of several widths, or padded with None: one object column.
        return np.dtype(object) if missing or len({p.dtype for p in pieces}) > 1 else dtype
    if missing and dtype.kind in "iub":
        return np.dtype("float64")  # NaN marks what is missing
    if dtype.kind not in "iubfcmM":
        raise TypeError(f"concat: field {field!r} has dtype {dtype}, which cannot be combined")
    return dtype


def _combine(
    field: str,
    arrays: list[xr.DataArray | None],
    lengths: list[int],
    how: str,
    ragged: bool,
) -> xr.Variable:
    given = [a for a in arrays if a is not None]
    missing = any(a is None and n for a, n in zip(arrays, lengths, strict=True))
    # A run without events adds nothing (and its empty column may not know the shape), unless
    # no run with the field has events: then its empty column gives dtype and shape.
    pieces = [a for a in given if a.shape[0]] or given[:1]
    first = pieces[0]
    inner = {a.shape[1:] for a in pieces}
    if len(inner) > 1:
        raise ValueError(
            f"concat: field {field!r} has per-event shapes {sorted(inner)} in different runs; "
            "concat needs one shape (read the runs separately, or select a common part)"
        )
    shape = inner.pop()
    dtype = _target(field, pieces, ragged or missing)
    fill = _fill(dtype)
    xp = _dask() if any(_is_dask(a.data) for a in pieces) else np
    longest = max(lengths)
    out = []
    for arr, n in zip(arrays, lengths, strict=True):
        if arr is None or not n:
            data = _full(xp, n, shape, fill, dtype)
        else:
            data = arr.data.astype(dtype, copy=False)
        if how == "pad" and n < longest:
            data = xp.concatenate([data, _full(xp, longest - n, shape, fill, dtype)])
        out.append(data)
    dims = ("run", "event", *first.dims[1:]) if how == "pad" else ("time", *first.dims[1:])
    data = xp.stack(out) if how == "pad" else xp.concatenate(out)
    return _kept(dims, data, first.attrs)


def _full(xp: Any, n: int, shape: tuple[int, ...], fill: Any, dtype: np.dtype) -> Any:
    """``n`` missing events; lazily in pieces of about ``_FILL_CHUNK`` values."""
    if xp is np:
        return np.full((n, *shape), fill, dtype=dtype)
    rows = max(1, _FILL_CHUNK // max(1, int(np.prod(shape))))
    return xp.full((n, *shape), fill, dtype=dtype, chunks=(rows, *shape))


def _kept(dims: tuple[str, ...], data: Any, attrs: dict | None = None) -> xr.Variable:
    """A variable of exactly ``data``: xarray (with pandas >= 3) would otherwise turn the None
    of a string column into NaN."""
    return xr.Variable(dims, data, attrs=attrs, fastpath=True)


def _is_dask(data: Any) -> bool:
    return type(data).__module__.startswith("dask.")


def _dask() -> Any:
    import dask.array

    return dask.array


def _metadata(key: str, runs: list[Run]) -> np.ndarray:
    """A start-document key of each run as one column: numbers (NaN where missing) or objects."""
    values = [_lookup(run.start, key) for run in runs]
    present = [v for v in values if v is not None]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    if present and numbers:
        if len(present) == len(values) and all(isinstance(v, int) for v in values):
            return np.array(values, dtype=np.int64)
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _lookup(doc: dict, key: str) -> Any:
    value: Any = doc
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _grid_coords(
    parts: list[xr.Dataset], lengths: list[int], uids: list[str], meta: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Coordinates of the run x event grid, and its mask."""
    longest = max(lengths)
    mask = np.arange(longest) < np.array(lengths)[:, None]
    time = np.full(mask.shape, np.nan)
    seq = np.full(mask.shape, np.nan)
    for i, part in enumerate(parts):
        time[i, : lengths[i]] = part["time"].values
        seq[i, : lengths[i]] = part["seq_num"].values
    if mask.all():
        seq = seq.astype(np.int64)  # nothing padded: seq_num stays a whole number
    coords = {
        "run": ("run", np.array(uids, dtype=object)),
        "event": np.arange(longest),
        "uid": ("run", np.array(uids, dtype=object)),
        "time": (("run", "event"), time),
        "seq_num": (("run", "event"), seq),
        **{key: _kept(("run",), values) for key, values in meta.items()},
    }
    return coords, {"mask": (("run", "event"), mask)}


def _line_coords(
    parts: list[xr.Dataset], lengths: list[int], uids: list[str], meta: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Coordinates of every event along one time dimension (nothing to mask)."""
    per_event = np.repeat(np.array(uids, dtype=object), lengths)
    coords = {
        "time": np.concatenate([p["time"].values for p in parts]).astype("float64"),
        "seq_num": ("time", np.concatenate([p["seq_num"].values for p in parts]).astype(np.int64)),
        "run": ("time", per_event),
        "uid": ("time", per_event),
        **{key: _kept(("time",), np.repeat(values, lengths)) for key, values in meta.items()},
    }
    return coords, {}
