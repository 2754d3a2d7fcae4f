"""Events that each hold a series (a fly scan's waveform) as one row per point, and back.

:func:`unstack_events` turns N events holding length-L arrays into N*L rows along ``time``;
:func:`stack_events` is its exact inverse. The issue calls them "pivot" and "stack";
databroker's ``pivot_timeseries`` did the first half on event documents.

Ragged waveforms (a different length per event, read as an object column of arrays) are
supported without padding: event i gives its own L_i rows. Events with an empty waveform are
refused (they would give no row, and stacking could not bring them back).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["stack_events", "unstack_events"]

#: Attribute of an unstacked Dataset recording what stack_events needs to undo it (JSON text,
#: so that the Dataset can still be written to netCDF/Zarr).
RECORD = "unstacked_events"


def unstack_events(
    ds: xr.Dataset,
    fields: Sequence[str] | str | None = None,
    dim: str = "point",
    time_field: str | None = None,
) -> xr.Dataset:
    """One row per point of the array ``fields`` of each event (databroker's "pivot").

    ``ds`` is a stream as read (dimension ``time``). Each of ``fields`` holds, per event, an
    array whose first axis is the series (length L, the same for every field of one event;
    it may differ between events); the default is every field holding an array. The result
    has N*L rows along ``time``: the series' values, ``event`` (the event's position) and
    ``dim`` (the point's position in the series) as coordinates, and every other variable
    along ``time`` repeated on each row of its event. ``time_field`` names a field holding
    the time of each point: it becomes the rows' ``time`` (the event's time is kept as
    ``event_time``); without it each row has its event's time. Dask arrays stay lazy
    (ragged fields are object columns and are computed).

    Example:
        >>> ds = xr.Dataset(
        ...     {"wave": (("time", "wave_dim_0"), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        ...      "motor": ("time", [0.5, 1.5])},
        ...     coords={"time": [10.0, 20.0], "seq_num": ("time", [1, 2])})
        >>> rows = unstack_events(ds, ["wave"])
        >>> rows["wave"].values.tolist(), rows["motor"].values.tolist()
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 0.5, 0.5, 1.5, 1.5, 1.5])
        >>> rows["event"].values.tolist(), rows["point"].values.tolist()
        ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2])
        >>> stack_events(rows).identical(ds)
        True
    """
    if "time" not in ds.dims:
        raise ValueError("unstack_events: the Dataset has no 'time' dimension (read a stream)")
    if RECORD in ds.attrs:
        raise ValueError("unstack_events: this Dataset is unstacked already (stack_events undoes)")
    names = _fields(ds, fields, time_field)
    for name in (dim, "event", "event_time"):
        if name in ds.variables or name in ds.dims:
            raise ValueError(
                f"unstack_events: the Dataset already has {name!r}; pass dim= another name"
            )
    n = ds.sizes["time"]
    series = {f: _series(ds[f]) for f in names}
    lengths = _lengths(series, n)
    starts = np.cumsum(lengths) - lengths
    points = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    record: dict[str, Any] = {"dim": dim, "time_field": time_field, "fields": {}}
    out_vars: dict[str, xr.Variable] = {}
    for f, (data, ragged) in series.items():
        var = ds[f].variable
        width = None if ragged else int(data.shape[1])  # kept: zero events still have a width
        record["fields"][f] = {"dims": list(var.dims[1:]), "width": width}
        rest = var.dims[2:] if not ragged else _rest_dims(f, data)
        out_vars[f] = xr.Variable(("time", *rest), _flatten(data, ragged), attrs=var.attrs)
    coords: dict[str, Any] = {}
    for name, var in ds.variables.items():
        if name in names or name == "time":
            continue
        target = coords if name in ds.coords else out_vars
        target[name] = _repeat(var, lengths) if "time" in var.dims else var
    time = ds["time"].variable
    if time_field is None:
        coords["time"] = _repeat(time, lengths)
    else:
        row_time = out_vars.pop(time_field)
        coords["time"] = xr.Variable("time", np.asarray(row_time.data), attrs=row_time.attrs)
        coords["event_time"] = _repeat(time, lengths)
    coords["event"] = ("time", np.repeat(np.arange(n, dtype=np.int64), lengths))
    coords[dim] = ("time", points)
    attrs = {**ds.attrs, RECORD: json.dumps(record)}
    return xr.Dataset(out_vars, coords=coords, attrs=attrs)


def stack_events(ds: xr.Dataset) -> xr.Dataset:
    """The inverse of :func:`unstack_events`: one event per value of ``event`` again, each
    holding its points' values as an array (an object column of arrays if lengths differ).

    Rows must be as ``unstack_events`` made them: grouped by ``event`` in order, points
    0, 1, ... within each event (select whole events only). Other variables take their
    event's first row.

    Example:
        >>> ds = xr.Dataset(
        ...     {"w": (("time", "w_dim_0"), [[1, 2], [3, 4]])}, coords={"time": [1.0, 2.0]})
        >>> stack_events(unstack_events(ds))["w"].values.tolist()
        [[1, 2], [3, 4]]
    """
    if RECORD not in ds.attrs:
        raise ValueError(
            f"stack_events: the Dataset has no {RECORD!r} attribute; it undoes unstack_events "
            "(whose result keeps that attribute)"
        )
    record = json.loads(ds.attrs[RECORD])
    dim, time_field = record["dim"], record["time_field"]
    for name in ("event", dim):
        if name not in ds.coords:
            raise ValueError(f"stack_events: coordinate {name!r} of unstack_events is missing")
    lengths = _event_lengths(ds["event"].values, ds[dim].values)
    starts = np.cumsum(lengths) - lengths
    out_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    fields = dict(record["fields"])
    for name, var in ds.variables.items():
        if name in ("time", "event", "event_time", dim) or name in fields:
            continue
        target = coords if name in ds.coords else out_vars
        target[name] = var.isel(time=starts) if "time" in var.dims else var
    row_time = ds["time"].variable
    if time_field is not None:
        out_vars[time_field] = row_time
        time = ds["event_time"].variable
    else:
        time = row_time
    for f in fields:
        var = out_vars.pop(f) if f == time_field else ds[f].variable
        spec = fields[f]
        short = np.flatnonzero(lengths != spec["width"]) if spec["width"] is not None else []
        if len(short):
            i = int(short[0])
            raise ValueError(
                f"stack_events: event {i} has {lengths[i]} rows but each event of {f!r} held "
                f"{spec['width']} points; keep whole events"
            )
        data = _unflatten(var.data, lengths, spec["width"])
        dims = ("time", *spec["dims"])
        out_vars[f] = xr.Variable(dims, data, attrs=var.attrs)
    coords["time"] = xr.Variable("time", np.asarray(time.data)[starts], attrs=time.attrs)
    attrs = {k: v for k, v in ds.attrs.items() if k != RECORD}
    return xr.Dataset(out_vars, coords=coords, attrs=attrs)


def _fields(ds: xr.Dataset, fields: Sequence[str] | str | None, time_field: str | None) -> list:
    if isinstance(fields, str):
        fields = [fields]
    if fields is None:
        fields = [str(f) for f, v in ds.data_vars.items() if _holds_arrays(v) and f != time_field]
        if not fields:
            raise ValueError("unstack_events: no field of the Dataset holds an array per event")
    names = list(dict.fromkeys([*fields, *([time_field] if time_field else [])]))
    for f in names:
        if f not in ds.data_vars:
            raise KeyError(
                f"unstack_events: no field {f!r}; the fields are {list(map(str, ds.data_vars))}"
            )
        var = ds[f]
        if var.dims[:1] != ("time",) or not (var.ndim > 1 or var.dtype == object):
            raise ValueError(
                f"unstack_events: field {f!r} holds one value per event, not an array "
                f"(dims {var.dims})"
            )
    return names


def _holds_arrays(var: xr.DataArray) -> bool:
    """Whether a variable holds an array per event (a column of several dims, or of arrays)."""
    if var.dims[:1] != ("time",):
        return False
    if var.ndim > 1:
        return True
    return var.dtype == object and all(isinstance(x, np.ndarray) for x in np.asarray(var.data))


def _series(var: xr.DataArray) -> tuple[Any, bool]:
    """The field's data and whether it is ragged (an object column of arrays, one per event)."""
    if var.ndim > 1:
        return var.data, False
    data = np.asarray(var.data)  # ragged: Python objects, nothing to keep lazy
    for i, item in enumerate(data):
        if not isinstance(item, np.ndarray) or item.ndim < 1:
            raise ValueError(
                f"unstack_events: event {i} of field {var.name!r} holds "
                f"{type(item).__name__}, not an array"
            )
    return data, True


def _lengths(series: dict[str, tuple[Any, bool]], n: int) -> np.ndarray:
    found: np.ndarray | None = None
    first = ""
    for f, (data, ragged) in series.items():
        lengths = (
            np.array([len(x) for x in data], dtype=np.int64)
            if ragged
            else np.full(n, data.shape[1], dtype=np.int64)
        )
        if found is None:
            found, first = lengths, f
        elif not np.array_equal(found, lengths):
            i = int(np.flatnonzero(found != lengths)[0])
            raise ValueError(
                f"unstack_events: event {i} holds {found[i]} points of {first!r} but "
                f"{lengths[i]} of {f!r}; fields unstacked together need one length per event"
            )
    assert found is not None
    if n and not found.all():
        i = int(np.flatnonzero(found == 0)[0])
        raise ValueError(
            f"unstack_events: event {i} holds an empty series; it would leave no row "
            "(select the events with points first)"
        )
    return found


def _rest_dims(field: str, data: np.ndarray) -> tuple[str, ...]:
    rest = {x.shape[1:] for x in data}
    if len(rest) > 1:
        raise ValueError(
            f"unstack_events: the points of field {field!r} have shapes {sorted(rest)} in "
            "different events; they must agree beyond the series axis"
        )
    return tuple(f"{field}_dim_{k}" for k in range(1, 1 + len(rest.pop() if rest else ())))


def _flatten(data: Any, ragged: bool) -> Any:
    if ragged:
        return np.concatenate(list(data)) if len(data) else np.empty(0)
    return data.reshape((-1, *data.shape[2:]))


def _unflatten(data: Any, lengths: np.ndarray, width: int | None) -> Any:
    if width is not None:
        return data.reshape((len(lengths), width, *data.shape[1:]))
    data = np.asarray(data)
    out = np.empty(len(lengths), dtype=object)
    out[:] = np.split(data, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return out


def _repeat(var: xr.Variable, lengths: np.ndarray) -> xr.Variable:
    """A variable along ``time`` with each event's value on each of its rows."""
    axis = var.dims.index("time")
    same = len(set(lengths.tolist())) <= 1
    if same:
        # A constant count keeps dask arrays lazy (dask repeats only by one count).
        data = var.data.repeat(int(lengths[0]) if len(lengths) else 0, axis=axis)
    else:
        data = np.repeat(np.asarray(var.data), lengths, axis=axis)
    return xr.Variable(var.dims, data, attrs=var.attrs)


def _event_lengths(event: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Points per event, checking that rows are whole events in order."""
    if not len(event):
        return np.zeros(0, dtype=np.int64)
    n = int(event.max()) + 1
    lengths = np.bincount(event, minlength=n).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    expected = np.arange(len(event)) - np.repeat(starts, lengths)
    if not (np.array_equal(event, np.repeat(np.arange(n), lengths)) and lengths.all()) or (
        not np.array_equal(point, expected)
    ):
        raise ValueError(
            "stack_events: rows are not whole events in order (event 0, 1, ... each with "
            "points 0, 1, ...); sort by event and point and keep whole events"
        )
    return lengths
