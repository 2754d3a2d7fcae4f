"""unstack_events / stack_events: events holding waveforms as one row per point, and back.

The round trip is checked on random shapes and dtypes (hypothesis) and on runs of a real
RunEngine with array-valued ophyd.sim signals, regular and ragged, eager and lazy.
"""

from __future__ import annotations

import itertools

import dask.array
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import runbroker
from runbroker.combine import stack_events, unstack_events

DTYPES = ["float64", "float32", "int8", "int64", "uint16", "bool", "complex128", "<U3", "<M8[ns]"]


def _arrays(dtype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.dtype(dtype), shape, elements=_elements(dtype))


def _elements(dtype: str) -> st.SearchStrategy | None:
    if dtype == "<U3":
        return st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=3)
    if dtype.startswith("<M8"):
        return st.integers(0, 2**40).map(lambda n: np.datetime64(n, "ns"))
    return None


@st.composite
def regular(draw: st.DrawFn) -> tuple[xr.Dataset, list[str], str | None]:
    """A stream-like Dataset: N events, fields holding (L, ...) arrays, scalars, maybe a time
    array field."""
    n = draw(st.integers(0, 5))
    width = draw(st.integers(1, 4))
    extra = draw(st.lists(st.integers(1, 3), max_size=2))  # more axes per point (frames)
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    data: dict[str, object] = {}
    for i, name in enumerate(names):
        shape = (n, width, *extra) if i == 0 else (n, width)
        dims = ("time", f"{name}_dim_0", *(f"{name}_dim_{k + 1}" for k in range(len(shape) - 2)))
        arr = draw(_arrays(draw(st.sampled_from(DTYPES)), shape))
        data[name] = xr.Variable(dims, arr, attrs={"units": "mm", "source": f"sim:{name}"})
    data["motor"] = ("time", draw(_arrays(draw(st.sampled_from(DTYPES)), (n,))))
    data["image"] = (("time", "y"), draw(_arrays("int32", (n, 2))))  # an array left as it is
    time_field = None
    if draw(st.booleans()):
        time_field = "stamps"
        data["stamps"] = (("time", "stamps_dim_0"), draw(_arrays("float64", (n, width))))
    times = np.sort(draw(_arrays("float64", (n,)).filter(lambda t: not np.isnan(t).any())))
    ds = xr.Dataset(
        data,
        coords={"time": times, "seq_num": ("time", np.arange(1, n + 1))},
        attrs={"stream": "primary", "uid": "u1"},
    )
    return ds, names, time_field


@settings(max_examples=150, deadline=None)
@given(regular())
def test_round_trip_is_exact(case: tuple[xr.Dataset, list[str], str | None]) -> None:
    ds, fields, time_field = case
    rows = unstack_events(ds, fields, time_field=time_field)
    n, width = ds.sizes["time"], ds[fields[0]].shape[1]
    assert rows.sizes["time"] == n * width
    for f in fields:
        np.testing.assert_array_equal(
            rows[f].values, ds[f].values.reshape((n * width, *ds[f].shape[2:]))
        )
        assert rows[f].dtype == ds[f].dtype
    assert rows["event"].values.tolist() == np.repeat(np.arange(n), width).tolist()
    assert rows["point"].values.tolist() == np.tile(np.arange(width), n).tolist()
    np.testing.assert_array_equal(rows["motor"].values, np.repeat(ds["motor"].values, width))
    if time_field:
        np.testing.assert_array_equal(rows["time"].values, ds["stamps"].values.ravel())
        np.testing.assert_array_equal(rows["event_time"].values, np.repeat(ds.time, width))
    xr.testing.assert_identical(stack_events(rows), ds)


@st.composite
def ragged(draw: st.DrawFn) -> tuple[xr.Dataset, list[int]]:
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    dtype = draw(st.sampled_from(DTYPES))
    column = np.empty(len(lengths), dtype=object)
    column[:] = [draw(_arrays(dtype, (m,))) for m in lengths]
    n = len(lengths)
    ds = xr.Dataset(
        {"w": ("time", column), "motor": ("time", np.arange(n) * 0.5)},
        coords={"time": np.arange(n) + 100.0, "seq_num": ("time", np.arange(1, n + 1))},
    )
    return ds, lengths


@settings(max_examples=100, deadline=None)
@given(ragged())
def test_ragged_round_trip(case: tuple[xr.Dataset, list[int]]) -> None:
    ds, lengths = case
    rows = unstack_events(ds)  # the default: every field holding arrays
    assert rows.sizes["time"] == sum(lengths)
    np.testing.assert_array_equal(rows["w"].values, np.concatenate(list(ds["w"].values)))
    assert rows["motor"].values.tolist() == np.repeat(ds["motor"].values, lengths).tolist()
    back = stack_events(rows)
    assert back["w"].dtype == object
    for got, want in zip(back["w"].values, ds["w"].values, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    xr.testing.assert_identical(back.drop_vars("w"), ds.drop_vars("w"))


def test_runengine_waveforms(catalog: runbroker.Catalog, RE) -> None:
    from bluesky.plans import scan
    from ophyd.sim import SynSignal, motor

    points = np.arange(5.0)
    wave = SynSignal(func=lambda: points**2, name="wave")
    # The time of each point of the waveform: 10 ms apart, after the event's reading.
    clock = itertools.count()
    stamps = SynSignal(func=lambda: 1e9 + next(clock) + points / 100, name="stamps")
    RE(scan([wave, stamps], motor, 0, 2, 3))
    run = catalog[-1]
    ds = run.primary.read()
    rows = unstack_events(ds, ["wave"], time_field="stamps")
    assert rows.sizes["time"] == 15
    assert rows["wave"].values.tolist() == [0.0, 1.0, 4.0, 9.0, 16.0] * 3
    assert rows["motor"].values.tolist() == [0.0] * 5 + [1.0] * 5 + [2.0] * 5
    np.testing.assert_allclose(rows["time"].values, ds["stamps"].values.ravel())
    assert bool((np.diff(rows["time"].values) > 0).all())
    assert rows["seq_num"].values.tolist() == [1] * 5 + [2] * 5 + [3] * 5
    xr.testing.assert_identical(stack_events(rows), ds)
    # Lazily: the waveform stays a dask array, and computes to what the eager rows hold.
    lazy = unstack_events(run.primary.to_dask(), ["wave"], time_field="stamps")
    assert isinstance(lazy["wave"].data, dask.array.Array)
    xr.testing.assert_identical(lazy.compute(), rows)
    xr.testing.assert_identical(stack_events(lazy).compute(), ds)


def test_runengine_ragged_waveforms(catalog: runbroker.Catalog, RE) -> None:
    from bluesky.plans import count
    from ophyd.sim import SynSignal

    sizes = itertools.count(2)
    wave = SynSignal(func=lambda: np.arange(float(next(sizes))), name="wave")
    RE(count([wave], 3))
    ds = catalog[-1].primary.read()
    # (The signal is also read to describe it, so the first event's length is not 2.)
    lengths = [len(x) for x in ds["wave"].values]
    assert ds["wave"].dtype == object and len(set(lengths)) == 3
    rows = unstack_events(ds, "wave")
    assert rows["wave"].values.tolist() == [float(i) for m in lengths for i in range(m)]
    assert rows["event"].values.tolist() == [e for e, m in enumerate(lengths) for _ in range(m)]
    back = stack_events(rows)
    assert [x.tolist() for x in back["wave"].values] == [list(range(m)) for m in lengths]
    xr.testing.assert_identical(back.drop_vars("wave"), ds.drop_vars("wave"))


def _waves() -> xr.Dataset:
    return xr.Dataset(
        {
            "w": (("time", "w_dim_0"), np.arange(6.0).reshape(2, 3)),
            "v": (("time", "v_dim_0"), np.arange(4.0).reshape(2, 2)),
            "m": ("time", [1.0, 2.0]),
        },
        coords={"time": [1.0, 2.0]},
    )


def test_refusals() -> None:
    ds = _waves()
    with pytest.raises(ValueError, match="event 0 holds 3 points of 'w' but 2 of 'v'"):
        unstack_events(ds)
    with pytest.raises(ValueError, match="field 'm' holds one value per event"):
        unstack_events(ds, ["m"])
    with pytest.raises(KeyError, match="no field 'nope'"):
        unstack_events(ds, ["nope"])
    with pytest.raises(ValueError, match="already has 'm'"):
        unstack_events(ds, ["w"], dim="m")
    rows = unstack_events(ds, ["w"])
    with pytest.raises(ValueError, match="unstacked already"):
        unstack_events(rows, ["w"])
    with pytest.raises(ValueError, match="rows are not whole events in order"):
        stack_events(rows.isel(time=[1, 0, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="event 0 has 2 rows but each event of 'w' held 3"):
        stack_events(rows.isel(time=[0, 1, 3, 4, 5]))
    with pytest.raises(ValueError, match="rows are not whole events in order"):
        stack_events(rows.isel(time=[1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="has no 'unstacked_events' attribute"):
        stack_events(ds)
    empty = np.empty(2, dtype=object)
    empty[:] = [np.arange(2.0), np.arange(0.0)]
    with pytest.raises(ValueError, match="event 1 holds an empty series"):
        unstack_events(xr.Dataset({"w": ("time", empty)}, coords={"time": [1.0, 2.0]}))
    texts = np.array(["a", "b"], dtype=object)
    with pytest.raises(ValueError, match="no field of the Dataset holds an array per event"):
        unstack_events(xr.Dataset({"s": ("time", texts)}, coords={"time": [1.0, 2.0]}))
