"""Stream.resample and runbroker.combine.resample against hand-computed bins."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import runbroker
from runbroker.combine import resample
from test_align import T0, cat, nan, record, rel, same  # noqa: F401 (cat is a fixture)

# Times relative to T0 (a multiple of 1 s and of 0.5 s): bins of 1 s are [0,1) [1,2) [2,3) [3,4)
TIMES = [0.0, 0.25, 0.5, 1.0, 3.0, 3.75]
VALUES = [1.0, 2.0, nan, 4.0, 5.0, 7.0]


@pytest.fixture
def run(cat: runbroker.Catalog) -> runbroker.Run:  # noqa: F811
    cols = {"x": VALUES, "n": [1, 2, 3, 4, 5, 6], "s": ["a", "b", "c", "d", "e", "f"]}
    return record(cat, {"primary": (TIMES, cols)})


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("mean", [1.5, 4.0, nan, 6.0]),  # NaN readings are left out
        ("sum", [3.0, 4.0, nan, 12.0]),  # an empty bin is NaN, not 0
        ("min", [1.0, 4.0, nan, 5.0]),
        ("max", [2.0, 4.0, nan, 7.0]),
        ("first", [1.0, 4.0, nan, 5.0]),
        ("last", [nan, 4.0, nan, 7.0]),  # the last event's reading, NaN or not
        ("count", [2, 1, 0, 2]),  # readings that are present
    ],
)
def test_each_how_by_hand(run: runbroker.Run, how: str, expected: list) -> None:
    out = run.primary.resample(1.0, how=how, fields=["x"])
    assert rel(out["time"]) == [0.0, 1.0, 2.0, 3.0]
    assert out["count"].values.tolist() == [3, 1, 0, 2]  # events per bin, empty bins kept
    assert same(out["x"].values, expected)
    assert out.attrs["how"] == how and out.attrs["period"] == 1.0
    assert out["x"].attrs["units"] == "mm"


def test_integers_and_strings(run: runbroker.Run) -> None:
    out = run.primary.resample("1s", how="mean", fields=["n"])
    assert same(out["n"].values, [2.0, 4.0, nan, 5.5])
    last = run.primary.resample("1s", how="last")
    assert same(last["s"].values, ["c", "d", nan, "f"])
    assert same(last["n"].values, [3.0, 4.0, nan, 6.0])  # an empty bin makes them float
    count = run.primary.resample("1s", how="count", fields=["s"])
    assert count["s"].values.tolist() == [3, 1, 0, 2] and count["s"].dtype.kind == "i"
    with pytest.raises(TypeError, match=r"field 's' holds .* only 'first', 'last' and 'count'"):
        run.primary.resample(1.0, how="mean")


def test_periods_origin_and_order() -> None:
    time = T0 + np.array([3.0, 0.5, 1.75, 1.25])  # not in time order
    ds = xr.Dataset({"x": ("time", [30.0, 5.0, 17.5, 12.5])}, coords={"time": time})
    out = resample(ds, "500ms", how="first")
    assert rel(out["time"]) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert same(out["x"].values, [5.0, 12.5, 17.5, nan, nan, 30.0])  # first by time
    assert out["count"].values.tolist() == [1, 1, 1, 0, 0, 1]
    # An origin after some events: those are left out; bins start at the origin.
    out = resample(ds, 2.0, how="max", origin=T0 + 1.0)
    assert rel(out["time"]) == [1.0, 3.0] and out["x"].values.tolist() == [17.5, 30.0]
    assert out.attrs["origin"] == T0 + 1.0
    empty = resample(ds.isel(time=slice(0, 0)), 1.0)
    assert empty.sizes["time"] == 0


def test_multidimensional_fields_reduce_per_element() -> None:
    frames = np.arange(12.0).reshape(4, 3)
    ds = xr.Dataset({"img": (("time", "x"), frames)}, coords={"time": [0.0, 0.5, 2.0, 2.5]})
    out = resample(ds, 1.0, how="sum")
    assert same(out["img"].values[:, 0], [3.0, nan, 15.0])
    assert out["img"].values[2].tolist() == [15.0, 17.0, 19.0]


@pytest.mark.parametrize("how", ["mean", "sum", "min", "max", "first", "last", "count"])
def test_lazy_equals_eager(how: str) -> None:
    rng = np.random.default_rng(3)
    time = np.sort(rng.uniform(0, 100, 1000))
    values = rng.standard_normal(1000)
    values[::7] = nan
    eager = xr.Dataset({"v": ("time", values)}, coords={"time": time})
    lazy = xr.Dataset({"v": ("time", da.from_array(values, chunks=97))}, coords={"time": time})
    got = resample(lazy, 1.5, how=how)
    assert isinstance(got["v"].data, da.Array)  # still a graph
    xr.testing.assert_identical(got.compute(), resample(eager, 1.5, how=how))


def test_lazy_stream(run: runbroker.Run) -> None:
    out = run.primary.resample(1.0, how="max", fields=["x"], lazy=True)
    assert isinstance(out["x"].data, da.Array)
    assert same(out["x"].values, [2.0, 4.0, nan, 7.0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"period": 0}, ValueError, "positive"),
        ({"period": "1M"}, ValueError, "fixed pandas offset"),
        ({"period": [1]}, TypeError, "seconds or a string"),
        ({"period": 1.0, "how": "median"}, ValueError, r"how is one of \['mean'"),
    ],
)
def test_bad_arguments(
    run: runbroker.Run, kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        run.primary.resample(fields=["x"], **kwargs)
