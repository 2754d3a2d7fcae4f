"""runbroker.concat: a stream of several runs in one Dataset, padded (run x event) or stacked.

Ragged runs are built with event_model's compose_run (exact times and values, so expected
results are written out by hand) and recorded by a real RunEngine; every store kind reads them.
"""

from __future__ import annotations

import dask.array
import numpy as np
import pytest
import xarray as xr
from event_model import compose_run

import runbroker
from runbroker.errors import NoStreamError, NotFoundError

KEYS = {
    "x": {"source": "sim", "dtype": "number", "shape": []},
    "n": {"source": "sim", "dtype": "integer", "shape": []},
    "label": {"source": "sim", "dtype": "string", "shape": []},
}


def _run(
    catalog: runbroker.Catalog,
    t0: float,
    rows: list[dict],
    keys: dict,
    **md: object,
) -> str:
    """A run whose primary stream holds ``rows`` (event i at time t0 + i), inserted into catalog."""
    bundle = compose_run(metadata=md, time=t0 - 1)
    catalog.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    catalog.insert("descriptor", desc.descriptor_doc)
    for i, row in enumerate(rows):
        event = desc.compose_event(
            data=row, timestamps={k: t0 + i for k in row}, seq_num=i + 1, time=t0 + i
        )
        catalog.insert("event", event)
    catalog.insert("stop", bundle.compose_stop(time=t0 + len(rows)))
    return bundle.start_doc["uid"]


@pytest.fixture
def ragged(catalog: runbroker.Catalog) -> tuple[runbroker.Catalog, list[str]]:
    """Three runs: A (2 events), B (3 events, and a field ``y`` only it has), C (no events)."""
    a = _run(
        catalog,
        100.0,
        [{"x": 1.5, "n": 1, "label": "a1"}, {"x": 2.5, "n": 2, "label": "a2"}],
        KEYS,
        scan_id=1,
        plan_name="count",
        sample={"name": "Ni"},
    )
    keys_b = {**KEYS, "y": {"source": "sim", "dtype": "number", "shape": []}}
    b = _run(
        catalog,
        200.0,
        [{"x": 10.0 * i, "n": 10 + i, "label": f"b{i}", "y": -i} for i in range(3)],
        keys_b,
        scan_id=2,
        plan_name="scan",
        temperature=300,
    )
    c = _run(catalog, 300.0, [], KEYS, scan_id=3, plan_name="count", temperature=3.5)
    return catalog, [a, b, c]


def test_pad_ragged_runs(ragged: tuple[runbroker.Catalog, list[str]]) -> None:
    cat, uids = ragged
    ds = runbroker.concat(
        [cat[u] for u in uids], metadata=("scan_id", "plan_name", "sample.name", "temperature")
    )
    assert dict(ds.sizes) == {"run": 3, "event": 3}
    assert ds["mask"].values.tolist() == [
        [True, True, False],
        [True, True, True],
        [False, False, False],
    ]
    nan = np.nan
    np.testing.assert_array_equal(ds["x"].values, [[1.5, 2.5, nan], [0, 10, 20], [nan] * 3])
    # Integers are padded with NaN, so they become float64.
    assert ds["n"].dtype == np.float64
    np.testing.assert_array_equal(ds["n"].values, [[1, 2, nan], [10, 11, 12], [nan] * 3])
    # Strings are padded with None.
    assert ds["label"].values.tolist() == [["a1", "a2", None], ["b0", "b1", "b2"], [None] * 3]
    # A field only run B has is all-missing for the others.
    np.testing.assert_array_equal(ds["y"].values, [[nan] * 3, [0, -1, -2], [nan] * 3])
    np.testing.assert_array_equal(ds["time"].values, [[100, 101, nan], [200, 201, 202], [nan] * 3])
    np.testing.assert_array_equal(ds["seq_num"].values, [[1, 2, nan], [1, 2, 3], [nan] * 3])
    assert ds["run"].values.tolist() == uids == ds["uid"].values.tolist()
    assert ds["event"].values.tolist() == [0, 1, 2]
    assert ds["scan_id"].dtype == np.int64 and ds["scan_id"].values.tolist() == [1, 2, 3]
    # A number missing from a start document is NaN.
    np.testing.assert_array_equal(ds["temperature"].values, [nan, 300.0, 3.5])
    assert ds["plan_name"].values.tolist() == ["count", "scan", "count"]
    assert ds["sample.name"].values.tolist() == ["Ni", None, None]
    assert ds["x"].dims == ("run", "event") and ds.attrs["how"] == "pad"
    # Selecting a run by uid gives its events back (padding dropped through the mask).
    b = ds.sel(run=uids[1])
    assert b["x"].where(b["mask"], drop=True).values.tolist() == [0.0, 10.0, 20.0]


def test_stack_ragged_runs(ragged: tuple[runbroker.Catalog, list[str]]) -> None:
    cat, uids = ragged
    ds = runbroker.concat([cat[u] for u in uids], how="stack")
    assert dict(ds.sizes) == {"time": 5}
    assert ds["time"].values.tolist() == [100, 101, 200, 201, 202]
    assert ds["seq_num"].values.tolist() == [1, 2, 1, 2, 3]
    assert ds["run"].values.tolist() == [uids[0]] * 2 + [uids[1]] * 3
    assert ds["x"].values.tolist() == [1.5, 2.5, 0.0, 10.0, 20.0]
    # Every run has n: nothing is missing, so it stays an integer column.
    assert ds["n"].dtype == np.int64 and ds["n"].values.tolist() == [1, 2, 10, 11, 12]
    assert ds["label"].values.tolist() == ["a1", "a2", "b0", "b1", "b2"]
    np.testing.assert_array_equal(ds["y"].values, [np.nan, np.nan, 0, -1, -2])
    assert ds["plan_name"].values.tolist() == ["count"] * 2 + ["scan"] * 3
    assert ds["scan_id"].values.tolist() == [1, 1, 2, 2, 2]


def test_fields_and_errors(ragged: tuple[runbroker.Catalog, list[str]]) -> None:
    cat, uids = ragged
    runs = [cat[u] for u in uids]
    ds = runbroker.concat(runs, fields="y")
    assert list(ds.data_vars) == ["y", "mask"]
    with pytest.raises(NotFoundError, match="no run has field 'nope' in stream 'primary'"):
        runbroker.concat(runs, fields=["x", "nope"])
    with pytest.raises(KeyError):
        runbroker.concat(runs, fields=["nope"])
    with pytest.raises(NoStreamError, match=f"run {uids[0][:8]} has no stream 'baseline'"):
        runbroker.concat(runs, stream="baseline")
    with pytest.raises(ValueError, match="how is 'pad'"):
        runbroker.concat(runs, how="zip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no runs given"):
        runbroker.concat([])
    with pytest.raises(TypeError, match=r"runs\[1\] is a str, not a Run"):
        runbroker.concat([runs[0], uids[1]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one Run"):
        runbroker.concat(runs[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata key 'time'"):
        runbroker.concat(runs, metadata=["time"])


def test_lazy_equals_eager(
    ragged: tuple[runbroker.Catalog, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cat, uids = ragged
    runs = [cat[u] for u in uids]
    asked: list[str] = []
    read_pages = cat.store.read_pages

    def noting(run_uid: str, ids: list, columns: list[str]) -> list:
        asked.extend(columns)
        return read_pages(run_uid, ids, columns)

    monkeypatch.setattr(cat.store, "read_pages", noting)
    for how in ("pad", "stack"):
        asked.clear()
        lazy = runbroker.concat(runs, how=how, lazy=True)
        # Only the index (times, seq_nums) and the small integer/string columns whose dtype
        # depends on their values are read before compute(): never the float data.
        assert "d:x" not in asked and "d:y" not in asked, asked
        for name in ("x", "n", "label", "y"):
            assert isinstance(lazy[name].data, dask.array.Array), (how, name)
        xr.testing.assert_identical(lazy.compute(), runbroker.concat(runs, how=how))


def test_catalog_is_taken_oldest_first(catalog: runbroker.Catalog, RE) -> None:
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    RE(scan([det], motor, 0, 1, 3))
    RE(scan([det], motor, -2, 2, 5))
    RE(scan([det], motor, 0, 3, 4))
    ds = runbroker.concat(catalog, fields=["motor", "det"])
    assert ds["mask"].sum("event").values.tolist() == [3, 5, 4]
    assert ds["run"].values.tolist() == [catalog[-3].uid, catalog[-2].uid, catalog[-1].uid]
    assert ds["scan_id"].values.tolist() == [1, 2, 3]
    middle = catalog[-2].primary.read()
    np.testing.assert_array_equal(ds["motor"].values[1], middle["motor"].values)
    np.testing.assert_array_equal(ds["time"].values[1], middle["time"].values)
    # A search result is a catalog too; lazily, nothing is read before compute().
    hits = catalog.search(runbroker.queries.Key("scan_id") >= 2)
    lazy = runbroker.concat(hits, how="stack", lazy=True)
    assert isinstance(lazy["det"].data, dask.array.Array)
    assert lazy["motor"].compute().values.tolist() == [-2, -1, 0, 1, 2, 0, 1, 2, 3]


def test_array_fields_need_one_shape(catalog: runbroker.Catalog) -> None:
    wave = {"w": {"source": "sim", "dtype": "array", "shape": [3], "dtype_numpy": "<f8"}}
    a = _run(catalog, 10.0, [{"w": [1.0, 2.0, 3.0]}], wave)
    b = _run(catalog, 20.0, [{"w": [4.0, 5.0, 6.0]}, {"w": [7.0, 8.0, 9.0]}], wave)
    ds = runbroker.concat([catalog[a], catalog[b]])
    assert ds["w"].dims == ("run", "event", "w_dim_0")
    np.testing.assert_array_equal(ds["w"].values[0, 1], [np.nan] * 3)
    np.testing.assert_array_equal(ds["w"].values[1, 1], [7.0, 8.0, 9.0])
    long = {"w": {**wave["w"], "shape": [2]}}
    c = _run(catalog, 30.0, [{"w": [1.0, 2.0]}], long)
    with pytest.raises(ValueError, match=r"field 'w' has per-event shapes \[\(2,\), \(3,\)\]"):
        runbroker.concat([catalog[a], catalog[c]])
