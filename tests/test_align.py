"""runbroker.align against hand-computed values: runs written with compose_run at exact times.

Each stream is given as times (in seq_num order) and columns; docs/align.md states the rules
the expected values below follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from event_model import compose_run

import runbroker
from runbroker.stream import Stream

T0 = 1_700_000_000.0
nan = np.nan


def _data_key(values: Sequence[Any]) -> dict[str, Any]:
    first = values[0]
    if isinstance(first, str):
        return {"dtype": "string", "shape": [], "source": "test"}
    if isinstance(first, bool):
        return {"dtype": "boolean", "shape": [], "source": "test"}
    if isinstance(first, int):
        return {"dtype": "integer", "shape": [], "source": "test"}
    if isinstance(first, list):
        shape = list(np.shape(first))
        return {"dtype": "array", "shape": shape, "dtype_numpy": "<f8", "source": "test"}
    return {"dtype": "number", "shape": [], "source": "test", "units": "mm"}


def record(
    catalog: runbroker.Catalog, streams: Mapping[str, tuple[Sequence[float], dict[str, list]]]
) -> runbroker.Run:
    """A run whose streams hold these events: name -> (times relative to T0, {field: values}).

    Events are written in the order given (seq_num 1, 2, ...), whatever their times."""
    run = compose_run(metadata={"plan_name": "hand"}, time=T0 - 10)
    docs: list[tuple[str, dict]] = [("start", run.start_doc)]
    for name, (times, columns) in streams.items():
        keys = {f: _data_key(v) for f, v in columns.items()}
        desc = run.compose_descriptor(name=name, data_keys=keys, object_keys={"dev": list(keys)})
        docs.append(("descriptor", desc.descriptor_doc))
        for i, t in enumerate(times):
            data = {f: v[i] for f, v in columns.items()}
            event = desc.compose_event(
                data=data, timestamps=dict.fromkeys(data, T0 + t), seq_num=i + 1, time=T0 + t
            )
            docs.append(("event", event))
    docs.append(("stop", run.compose_stop(time=T0 + 1000)))
    catalog.ingest(docs)
    return catalog[run.start_doc["uid"]]


@pytest.fixture
def cat(tmp_path: Any) -> runbroker.Catalog:
    with runbroker.open(tmp_path / "runs.db") as c:
        yield c


def rel(values: Any) -> list[float]:
    """Times relative to T0 (NaN stays NaN), rounded away from float noise."""
    return np.round(np.asarray(values, dtype=float) - T0, 9).tolist()


def same(got: Any, expected: list) -> bool:
    """Equal lists where NaN equals NaN."""
    got = list(np.asarray(got, dtype=object))
    return len(got) == len(expected) and all(
        (pd.isna(a) and pd.isna(b)) if pd.isna(b) else a == b
        for a, b in zip(got, expected, strict=True)
    )


PRIMARY = ([1.0, 2.0, 3.0, 4.0, 5.0], {"det": [10.0, 20.0, 30.0, 40.0, 50.0]})


def test_asof_fast_and_slow_monitors_and_a_late_one(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": PRIMARY,
            "fast": ([0.5, 1.0, 1.5, 2.5, 3.25, 3.5, 4.75], {"I0": [1.0, 2.0, 3, 4, 5, 6, 7.0]}),
            "slow": ([0.0, 3.5], {"T": [100.0, 200.0]}),
            "late": ([2.5, 4.0], {"ring": [7.0, 8.0]}),
        },
    )
    ds = runbroker.align(run, ["primary", "fast", "slow", "late"], on="primary")
    assert rel(ds["time"]) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ds["det"].values.tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    # A sample at exactly t counts ("at or before").
    assert ds["I0"].values.tolist() == [2.0, 3.0, 4.0, 6.0, 7.0]
    assert rel(ds["fast_time"]) == [1.0, 1.5, 2.5, 3.5, 4.75]
    assert ds["T"].values.tolist() == [100.0, 100.0, 100.0, 200.0, 200.0]
    assert rel(ds["slow_time"]) == [0.0, 0.0, 0.0, 3.5, 3.5]
    # Before the first sample of a monitor: missing, and no source time.
    assert same(ds["ring"].values, [nan, nan, 7.0, 8.0, 8.0])
    assert same(rel(ds["late_time"]), [nan, nan, 2.5, 4.0, 4.0])
    assert ds["ring"].attrs["stream"] == "late" and ds["det"].attrs["units"] == "mm"
    assert ds["seq_num"].values.tolist() == [1, 2, 3, 4, 5]
    assert ds.attrs["on"] == "primary" and ds.attrs["method"] == "asof"


def test_asof_matches_pandas_merge_asof_on_random_times() -> None:
    rng = np.random.default_rng(5)
    # Rounded times make exact ties and duplicate source times frequent.
    src = np.round(np.sort(rng.uniform(0, 100, 300)), 0)
    tgt = np.round(rng.uniform(-5, 105, 200), 0)
    vals = rng.standard_normal(300)
    source = {
        "primary": xr.Dataset({"x": ("time", np.arange(200.0))}, coords={"time": tgt}),
        "m": xr.Dataset({"v": ("time", vals)}, coords={"time": src}),
    }
    for tolerance in (None, 0.5, 3.0):
        ds = runbroker.align(source, on="primary", tolerance=tolerance)
        left = pd.DataFrame({"t": tgt, "i": np.arange(200)}).sort_values("t", kind="stable")
        right = pd.DataFrame({"t": src, "v": vals, "st": src})
        merged = pd.merge_asof(left, right, on="t", tolerance=tolerance).sort_values("i")
        assert same(ds["v"].values, merged["v"].tolist())
        assert same(ds["m_time"].values, merged["st"].tolist())


def test_nearest_ties_go_to_the_earlier_sample(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": ([0.0, 1.0, 2.0, 2.4, 3.0, 10.0], {"det": [0, 1, 2, 3, 4, 5.0]}),
            "m": ([1.0, 3.0, 4.0], {"v": [1.0, 3.0, 4.0]}),
        },
    )
    ds = runbroker.align(run, ["m"], method="nearest")
    # 0 -> 1 (only later), 2 is equidistant from 1 and 3 -> 1, 2.4 -> 3, 10 -> 4
    assert ds["v"].values.tolist() == [1.0, 1.0, 1.0, 3.0, 3.0, 4.0]
    assert rel(ds["m_time"]) == [1.0, 1.0, 1.0, 3.0, 3.0, 4.0]
    ds = runbroker.align(run, ["m"], method="nearest", tolerance=1.0)
    assert same(ds["v"].values, [1.0, 1.0, 1.0, 3.0, 3.0, nan])
    ds = runbroker.align(run, ["m"], method="nearest", tolerance=0.5)
    assert same(ds["v"].values, [nan, 1.0, nan, nan, 3.0, nan])


def test_duplicate_source_times_take_the_last_event(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": ([1.0, 2.5, 3.0], {"det": [0, 1, 2.0]}),
            "m": ([2.0, 2.0, 3.0, 3.0], {"v": [1.0, 2.0, 3.0, 4.0]}),
        },
    )
    assert same(runbroker.align(run, ["m"])["v"].values, [nan, 2.0, 4.0])
    # 2.5 is equidistant from 2 and 3: the earlier time, and of its two samples the last.
    assert runbroker.align(run, ["m"], method="nearest")["v"].values.tolist() == [2.0, 2.0, 4.0]


def test_interpolate_linear_inside_missing_outside(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": ([0.0, 1.0, 1.5, 2.0, 5.0, 9.0, 12.0], {"det": [0] * 7}),
            "m": (
                [1.0, 2.0, 6.0, 10.0],
                {"v": [10.0, 20.0, 60.0, 0.0], "n": [1, 2, 6, 10], "s": ["a", "b", "c", "d"]},
            ),
        },
    )
    ds = runbroker.align(run, ["m"], method="interpolate")
    assert same(ds["v"].values, [nan, 10.0, 15.0, 20.0, 50.0, 15.0, nan])
    assert ds["n"].dtype == np.float64  # integers are interpolated as floats
    assert same(ds["n"].values, [nan, 1.0, 1.5, 2.0, 5.0, 9.0, nan])
    # Strings are not interpolated: the earlier neighbour's value, where the numbers are.
    assert same(ds["s"].values, [nan, "a", "a", "b", "b", "c", nan])
    assert same(rel(ds["m_time"]), [nan, 1.0, 1.0, 2.0, 2.0, 6.0, nan])
    assert same(rel(ds["m_time_after"]), [nan, 1.0, 2.0, 2.0, 6.0, 10.0, nan])
    # A gap between neighbours longer than the tolerance: missing (an exact hit is kept).
    ds = runbroker.align(run, ["m"], method="interpolate", tolerance=1.0)
    assert same(ds["v"].values, [nan, 10.0, 15.0, 20.0, nan, nan, nan])
    assert same(ds["s"].values, [nan, "a", "a", "b", nan, nan, nan])


def test_missing_values_by_dtype(cat: runbroker.Catalog) -> None:
    cols = {"i": [1, 2], "b": [True, False], "s": ["x", "y"], "f": [1.5, 2.5]}
    run = record(cat, {"primary": ([1.0, 2.0, 3.0], {"det": [0.0] * 3}), "m": ([1.5, 2.5], cols)})
    ds = runbroker.align(run, ["m"])
    assert ds["i"].dtype == np.float64 and same(ds["i"].values, [nan, 1.0, 2.0])
    assert ds["b"].dtype == np.float64 and same(ds["b"].values, [nan, 1.0, 0.0])
    assert same(ds["s"].values, [nan, "x", "y"])
    assert same(ds["f"].values, [nan, 1.5, 2.5])
    # Nothing missing: dtypes stay as read.
    ds = runbroker.align(run, ["m"], on="m")
    assert ds["i"].dtype.kind == "i" and ds["b"].dtype == bool
    later = runbroker.align(record(cat, {"primary": ([3.0], {"d": [1.0]}), "m": ([1.5], cols)}))
    assert later["i"].dtype.kind == "i" and later["b"].values.tolist() == [True]


def test_names_prefix_only_on_collision(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": ([1.0, 2.0], {"det": [1.0, 2.0], "I0": [5.0, 6.0]}),
            "a": ([0.0], {"I0": [7.0], "T": [300.0]}),
            "b": ([0.0], {"I0": [8.0], "P": [1.0]}),
        },
    )
    ds = runbroker.align(run, ["a", "b"])
    names = ["I0", "P", "T", "a_I0", "a_time", "b_I0", "b_time", "det"]
    assert sorted(ds.data_vars) == names
    assert ds["I0"].values.tolist() == [5.0, 6.0] and ds["a_I0"].values.tolist() == [7.0, 7.0]
    # The rule looks at the fields selected: without primary's I0, a and b still collide.
    ds = runbroker.align(run, ["a", "b"], fields={"primary": ["det"]})
    assert {"a_I0", "b_I0", "det"} <= set(ds.data_vars) and "I0" not in ds
    ds = runbroker.align(run, ["a"], fields=["T", "det"])
    assert sorted(ds.data_vars) == ["T", "a_time", "det"]


def test_non_monotonic_source_is_sorted_and_on_keeps_its_order(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "primary": ([3.0, 1.0, 2.0], {"det": [30.0, 10.0, 20.0]}),
            "m": ([2.5, 0.5, 1.5, 1.5], {"v": [25.0, 5.0, 15.0, 16.0]}),
        },
    )
    ds = runbroker.align(run, ["m"])
    assert rel(ds["time"]) == [3.0, 1.0, 2.0]
    assert ds["det"].values.tolist() == [30.0, 10.0, 20.0]
    # Sorted by time, equal times in seq_num order: 0.5, 1.5 (15), 1.5 (16), 2.5.
    assert ds["v"].values.tolist() == [25.0, 5.0, 16.0]
    ds = runbroker.align(run, ["m"], method="interpolate")
    assert same(ds["v"].values, [nan, 10.0, 20.5])  # 3.0 is after the last sample


def test_baseline_before_until_after(cat: runbroker.Catalog) -> None:
    run = record(
        cat,
        {
            "baseline": ([0.5, 5.5], {"motor1": [1.0, 2.0], "mode": ["in", "out"]}),
            "primary": PRIMARY,
        },
    )
    ds = runbroker.align(run, ["primary", "baseline"])
    assert ds["motor1"].values.tolist() == [1.0] * 5
    assert ds["mode"].values.tolist() == ["in"] * 5
    after = runbroker.align(run, on="baseline")  # on the baseline's own two times
    assert same(after["det"].values, [nan, 50.0]) and after["mode"].values.tolist() == ["in", "out"]


def test_images_are_picked_whole_and_not_interpolated(cat: runbroker.Catalog) -> None:
    frames = [[[float(k)] * 3] * 2 for k in range(3)]
    run = record(
        cat,
        {
            "primary": ([0.0, 1.0, 2.6], {"det": [0.0] * 3}),
            "cam": ([0.5, 1.5, 2.5], {"img": frames}),
        },
    )
    ds = runbroker.align(run, ["cam"])
    assert ds["img"].shape == (3, 2, 3)
    assert np.isnan(ds["img"].values[0]).all()
    assert (ds["img"].values[1] == 0.0).all() and (ds["img"].values[2] == 2.0).all()
    near = runbroker.align(run, ["cam"], method="nearest")
    assert [float(f[0, 0]) for f in near["img"].values] == [0.0, 0.0, 2.0]
    with pytest.raises(ValueError, match=r"'img' of stream 'cam' has 2-dimensional readings"):
        runbroker.align(run, ["cam"], method="interpolate")


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every data read a lazy Dataset makes when computed (the stream of each)."""
    calls: list[str] = []
    real = Stream._read_chunks

    def counting(self: Stream, *args: Any, **kwargs: Any) -> Any:
        calls.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Stream, "_read_chunks", counting)
    return calls


@pytest.mark.parametrize("method", ["asof", "nearest", "interpolate"])
def test_lazy_keeps_a_graph_and_computes_the_eager_result(
    cat: runbroker.Catalog, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    m_times = np.sort(rng.uniform(0, 20, 50)).tolist()
    run = record(
        cat,
        {
            "primary": ([float(t) for t in range(2, 22, 2)], {"det": list(np.arange(10.0))}),
            "m": (m_times, {"v": rng.standard_normal(50).tolist(), "k": list(range(50))}),
        },
    )
    eager = runbroker.align(run, ["m"], method=method, tolerance=1.0)
    calls = _reads(monkeypatch)
    lazy = runbroker.align(run, ["m"], method=method, tolerance=1.0, lazy=True)
    assert calls == []  # nothing computed: only the time index was read
    for name in ("det", "v", "k"):
        assert isinstance(lazy[name].data, da.Array), name
    computed = lazy.compute()
    assert calls  # computing reads the data
    xr.testing.assert_identical(computed, eager)


def test_lazy_with_dask_datasets_given() -> None:
    times = np.arange(0.0, 1000.0)
    source = {
        "primary": xr.Dataset(coords={"time": np.arange(0.5, 1000.0, 10.0)}),
        "m": xr.Dataset({"v": ("time", da.arange(1000.0, chunks=100))}, coords={"time": times}),
    }
    ds = runbroker.align(source, on="primary", lazy=True)
    assert isinstance(ds["v"].data, da.Array)
    assert ds["v"].values.tolist() == np.arange(0.0, 1000.0, 10.0).tolist()
    picked = runbroker.align(source, on="primary", fields={"m": ["v"]}, method="nearest")
    assert picked["v"].values.tolist() == np.arange(0.0, 1000.0, 10.0).tolist()  # ties: earlier


def test_unknown_names_are_named_with_what_exists(cat: runbroker.Catalog) -> None:
    run = record(cat, {"primary": PRIMARY, "m": ([1.0], {"v": [1.0]})})
    with pytest.raises(KeyError, match=r"no stream 'nope'.*streams are \['primary', 'm'\]"):
        runbroker.align(run, ["m", "nope"])
    with pytest.raises(KeyError, match=r"no stream 'x'.*streams are"):
        runbroker.align(run, ["m"], on="x")
    with pytest.raises(KeyError, match=r"no aligned stream has field 'w'.*m: \['v'\]"):
        runbroker.align(run, ["m"], fields=["v", "w"])
    with pytest.raises(KeyError, match=r"stream 'm' has no field 'w'; its fields are \['v'\]"):
        runbroker.align(run, ["m"], fields={"m": ["w"]})
    with pytest.raises(KeyError, match=r"names streams \['zz'\]"):
        runbroker.align(run, ["m"], fields={"zz": ["w"]})
    with pytest.raises(ValueError, match="method is one of"):
        runbroker.align(run, ["m"], method="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        runbroker.align(run, ["m"], tolerance=-1)


def test_a_field_named_like_a_made_name_is_refused(cat: runbroker.Catalog) -> None:
    run = record(cat, {"primary": ([1.0], {"m_time": [1.0]}), "m": ([1.0], {"v": [1.0]})})
    with pytest.raises(ValueError, match="two variables named 'm_time'"):
        runbroker.align(run, ["m"])


def test_real_runengine_monitor(catalog: runbroker.Catalog, RE: Any) -> None:
    """A monitored signal recorded by a real RunEngine, on every kind of store."""
    from bluesky.plans import count
    from bluesky.preprocessors import monitor_during_wrapper
    from ophyd.sim import SynPeriodicSignal, det

    signal = SynPeriodicSignal(name="ring", period=0.02, period_jitter=0)
    signal.start_simulation()
    try:
        RE(monitor_during_wrapper(count([det], 5, delay=0.05), [signal]))
    finally:
        signal._period = 1e9  # the simulation thread goes quiet after this test
    run = catalog[-1]
    assert "ring_monitor" in list(run)
    ds = runbroker.align(run, ["primary", "ring_monitor"], on="primary")
    mon = run["ring_monitor"].read()
    t = ds["time"].values
    # Each value is the monitor's last reading at or before the event, by hand:
    pos = np.searchsorted(mon["time"].values, t, side="right") - 1
    ok = pos >= 0
    assert ok[1:].all()  # the monitor runs from before the second event
    assert np.array_equal(ds["ring"].values[ok], mon["ring"].values[pos[ok]])
    assert np.array_equal(ds["ring_monitor_time"].values[ok], mon["time"].values[pos[ok]])
    assert (ds["ring_monitor_time"].values[ok] <= t[ok]).all()
