"""Real bluesky plans into the catalog, read back and compared with what the devices produced.

Every test drives a real ``RunEngine`` (the ``RE`` fixture, subscribed to ``catalog.insert``)
with ``ophyd.sim`` devices. A second subscriber keeps a copy of every document, and the values
read back from the catalog are checked against those copies.
"""

from __future__ import annotations

import copy
import threading
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from bluesky.utils import RunEngineInterrupted
from event_model import unpack_event_page
from ophyd.sim import MockFlyer, SynAxis, SynGauss, SynPeriodicSignal, SynSignal

from runbroker.queries import (
    Contains,
    FullText,
    In,
    Key,
    KeyPresent,
    PartialUID,
    Regex,
    ScanID,
    ScanIDRange,
    TimeRange,
)

# ---------------------------------------------------------------- helpers


class SynSignalWithUnits(SynSignal):
    """An ``ophyd.sim.SynSignal`` whose data key declares units (like an EPICS PV would)."""

    def __init__(self, *args, units: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._units = units

    def describe(self):
        desc = super().describe()
        desc[self.name]["units"] = self._units
        return desc


@pytest.fixture
def docs(RE):
    """Every document the RunEngine emits, copied as it went out."""
    out: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: out.append((name, copy.deepcopy(doc))))
    return out


@pytest.fixture
def motor():
    return SynAxis(name="motor")


@pytest.fixture
def det(motor):
    return SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)


def _run_docs(docs, run_uid):
    """The documents of one run from a collected list."""
    out, inside = [], False
    for name, doc in docs:
        if name == "start":
            inside = doc["uid"] == run_uid
        if inside:
            out.append((name, doc))
        if name == "stop" and doc["run_start"] == run_uid:
            inside = False
    return out


def _events(docs, run_uid, stream):
    """The events of one stream of a run, as single events sorted by (descriptor, seq_num)."""
    run_docs = _run_docs(docs, run_uid)
    descs = [d["uid"] for n, d in run_docs if n == "descriptor" and d.get("name") == stream]
    events = []
    for name, doc in run_docs:
        if name == "event" and doc["descriptor"] in descs:
            events.append(doc)
        elif name == "event_page" and doc["descriptor"] in descs:
            events.extend(unpack_event_page(doc))
    events.sort(key=lambda e: (descs.index(e["descriptor"]), e["seq_num"]))
    return events


def _descriptors(docs, run_uid, stream=None):
    return [
        d
        for n, d in _run_docs(docs, run_uid)
        if n == "descriptor" and (stream is None or d.get("name") == stream)
    ]


def _assert_stream_matches(stream, events):
    """The stream read back holds exactly these events' data and times, in order."""
    ds = stream.read()
    assert ds.sizes["time"] == len(events)
    np.testing.assert_array_equal(ds["time"].values, [e["time"] for e in events])
    assert set(ds.data_vars) == set(events[0]["data"])
    for field in events[0]["data"]:
        expected = np.asarray([e["data"][field] for e in events])
        np.testing.assert_array_equal(ds[field].values, expected, err_msg=field)
    return ds


def _stop(docs, run_uid):
    return next(d for n, d in docs if n == "stop" and d["run_start"] == run_uid)


def _plain(value):
    """A document as JSON gives it back: tuples become lists, numpy becomes Python."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


# ---------------------------------------------------------------- plans


def test_count_values_dims_dtypes_and_attrs(catalog, RE, docs):
    rng = np.random.default_rng(1)
    noisy = SynSignalWithUnits(func=lambda: float(rng.normal()), name="noisy", units="mm")
    counter = SynSignal(func=lambda: int(rng.integers(0, 1000)), name="counter")
    noisy.trigger()
    counter.trigger()
    RE(bp.count([noisy, counter], num=7))

    run = catalog[-1]
    uid = run.uid
    events = _events(docs, uid, "primary")
    assert len(events) == 7
    ds = _assert_stream_matches(run.primary, events)

    assert ds["noisy"].dims == ("time",)
    assert ds["noisy"].dtype == np.float64
    assert ds["counter"].dtype == np.int64
    assert ds["noisy"].attrs["units"] == "mm"
    assert ds["noisy"].attrs["source"] == "SIM:noisy"
    assert ds["noisy"].attrs["object_name"] == "noisy"
    assert "units" not in ds["counter"].attrs  # never invent units
    assert ds["counter"].attrs["object_name"] == "counter"
    assert ds.attrs["stream"] == "primary"
    assert ds.attrs["uid"] == uid

    assert run.metadata["start"] == _plain(docs[0][1])
    assert run.metadata["stop"] == _plain(_stop(docs, uid))
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run.metadata["stop"]["num_events"] == {"primary": 7}


def test_scan_motor_positions_and_detector_readings(catalog, RE, docs, motor, det):
    RE(bp.scan([det], motor, -1, 1, 5), purpose="scan test")
    run = catalog[-1]
    events = _events(docs, run.uid, "primary")
    ds = _assert_stream_matches(run.primary, events)
    np.testing.assert_allclose(ds["motor"].values, np.linspace(-1, 1, 5))
    np.testing.assert_allclose(ds["det"].values, np.exp(-(np.linspace(-1, 1, 5) ** 2) / 2))
    assert set(ds.data_vars) == {"det", "motor", "motor_setpoint"}
    assert ds["motor"].attrs["object_name"] == "motor"
    assert ds["motor_setpoint"].attrs["object_name"] == "motor"
    assert ds["det"].attrs["object_name"] == "det"
    assert run.start["plan_name"] == "scan"
    assert run.start["motors"] == ["motor"]
    assert run.start["purpose"] == "scan test"
    assert run.start["num_points"] == 5
    assert list(catalog.search(Key("plan_name") == "scan")) == [run.uid]


def test_rel_scan_is_relative_to_the_starting_position(catalog, RE, docs, motor, det):
    motor.set(3.0).wait()
    RE(bp.rel_scan([det], motor, -1, 1, 3))
    run = catalog[-1]
    ds = _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))
    np.testing.assert_allclose(ds["motor"].values, [2.0, 3.0, 4.0])
    assert run.start["plan_name"] == "rel_scan"
    assert motor.position == pytest.approx(3.0)  # rel_scan went back where it started


def test_grid_scan_covers_the_outer_product(catalog, RE, docs):
    m1, m2 = SynAxis(name="m1"), SynAxis(name="m2")
    det2d = SynSignal(func=lambda: m1.position * 10 + m2.position, name="det2d")
    RE(bp.grid_scan([det2d], m1, 0, 2, 3, m2, 0, 3, 4, snake_axes=False))
    run = catalog[-1]
    ds = _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))
    assert ds.sizes["time"] == 12
    pairs = list(zip(ds["m1"].values.tolist(), ds["m2"].values.tolist(), strict=True))
    assert pairs == [(a, b) for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0, 2.0, 3.0)]
    np.testing.assert_allclose(ds["det2d"].values, ds["m1"].values * 10 + ds["m2"].values)
    assert run.start["shape"] == [3, 4]
    assert run.start["plan_name"] == "grid_scan"


def test_list_scan_visits_the_given_points(catalog, RE, docs, motor, det):
    points = [0.5, -2.0, 1.25, 0.0]
    RE(bp.list_scan([det], motor, points))
    run = catalog[-1]
    ds = _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))
    np.testing.assert_allclose(ds["motor"].values, points)
    np.testing.assert_allclose(ds["motor_setpoint"].values, points)


def test_baseline_stream_from_supplemental_data(catalog, RE, docs, motor, det):
    sample_x, sample_y = SynAxis(name="sample_x"), SynAxis(name="sample_y")
    sample_x.set(1.5).wait()
    sample_y.set(-0.25).wait()
    RE.preprocessors.append(bpp.SupplementalData(baseline=[sample_x, sample_y]))

    def plan():
        yield from bp.scan([det], motor, 0, 1, 3)

    RE(plan())
    run = catalog[-1]
    assert set(run) == {"primary", "baseline"}
    baseline = _assert_stream_matches(run.baseline, _events(docs, run.uid, "baseline"))
    assert baseline.sizes["time"] == 2  # before and after the scan
    np.testing.assert_allclose(baseline["sample_x"].values, [1.5, 1.5])
    np.testing.assert_allclose(baseline["sample_y"].values, [-0.25, -0.25])
    assert baseline.attrs["stream"] == "baseline"
    assert run["baseline"].read().identical(baseline)
    _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))
    assert run.metadata["stop"]["num_events"] == {"primary": 3, "baseline": 2}


def test_monitored_periodic_signal(catalog, RE, docs, det):
    sig = SynPeriodicSignal(name="sig", period=0.01, period_jitter=0.0)
    sig.start_simulation()
    try:
        RE(bpp.monitor_during_wrapper(bp.count([det], num=4, delay=0.05), [sig]))
    finally:
        sig._period = 1e9  # let the simulation thread go quiet after this test
    run = catalog[-1]
    assert set(run) == {"primary", "sig_monitor"}
    events = _events(docs, run.uid, "sig_monitor")
    assert len(events) >= 3  # ~0.15 s of a 10 ms signal, plus the initial reading
    ds = _assert_stream_matches(run["sig_monitor"], events)
    assert ds["sig"].dtype == np.float64
    # Monitor events carry the signal's own timestamps.
    ts = run["sig_monitor"].timestamps()
    np.testing.assert_array_equal(ts["sig"].values, [e["timestamps"]["sig"] for e in events])
    _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))


def test_monitor_from_supplemental_data(catalog, RE, docs, det):
    setpoint = SynSignal(name="setpoint")  # changed by the plan, watched by the monitor
    setpoint.put(0.0)
    RE.preprocessors.append(bpp.SupplementalData(monitors=[setpoint]))

    @bpp.run_decorator(md={"plan_name": "ramp"})
    def ramp():
        for value in (1.0, 2.0, 4.0, 8.0):
            yield from bps.mv(setpoint, value)
            yield from bps.trigger_and_read([det])

    RE(ramp())
    run = catalog[-1]
    events = _events(docs, run.uid, "setpoint_monitor")
    ds = _assert_stream_matches(run["setpoint_monitor"], events)
    assert ds["setpoint"].values.tolist()[-4:] == [1.0, 2.0, 4.0, 8.0]
    assert len(run.primary.read()["det"]) == 4


def test_fly_scan_event_pages(catalog, RE, docs, motor, det):
    flyer = MockFlyer("flyer", det, motor, -1, 1, 9)
    RE(bp.fly([flyer]))
    run = catalog[-1]
    names = [n for n, _ in _run_docs(docs, run.uid)]
    assert "event_page" in names  # the RunEngine sent pages, not single events
    assert list(run) == ["flyer"]
    events = _events(docs, run.uid, "flyer")
    assert len(events) == 9
    ds = _assert_stream_matches(run["flyer"], events)
    np.testing.assert_allclose(ds["motor"].values, np.linspace(-1, 1, 9))
    np.testing.assert_allclose(ds["det"].values, np.exp(-(np.linspace(-1, 1, 9) ** 2) / 2))
    assert len(run["flyer"]) == 9


def test_failed_run_records_fail_and_keeps_data(catalog, RE, docs, det):
    @bpp.run_decorator(md={"purpose": "will fail"})
    def failing():
        yield from bps.trigger_and_read([det])
        yield from bps.trigger_and_read([det])
        raise ValueError("sample holder jammed")

    with pytest.raises(ValueError, match="jammed"):
        RE(failing())
    run = catalog[-1]
    assert run.stop is not None
    assert run.stop["exit_status"] == "fail"
    assert "jammed" in run.stop["reason"]
    assert run.summary["exit_status"] == "fail"
    assert "fail" in repr(run)
    _assert_stream_matches(run.primary, _events(docs, run.uid, "primary"))
    assert list(catalog.search(Key("stop.exit_status") == "fail")) == [run.uid]


def test_aborted_run_records_abort(catalog, RE, docs, det):
    @bpp.run_decorator(md={"purpose": "will abort"})
    def pausing():
        yield from bps.trigger_and_read([det])
        yield from bps.checkpoint()
        yield from bps.pause()
        yield from bps.trigger_and_read([det])

    with pytest.raises(RunEngineInterrupted):
        RE(pausing())
    assert RE.state == "paused"
    RE.abort(reason="operator abort")
    assert RE.state == "idle"
    run = catalog[-1]
    assert run.stop["exit_status"] == "abort"
    assert run.stop == _plain(_stop(docs, run.uid))
    assert run.primary.read()["det"].values.tolist() == [1.0]
    RE(bp.count([det]))
    hits = catalog.search(Key("stop.exit_status") == "abort")
    assert list(hits) == [run.uid]
    assert len(catalog.search(Key("stop.exit_status") == "success")) == 1


def test_rich_nested_metadata_round_trips_and_is_searchable(catalog, RE, docs, det):
    md = {
        "sample": {
            "name": "Ni\u2013foil \u00dc",
            "composition": {"Ni": 0.9, "Cu": 0.1},
            "temperature": {"value": 300.5, "units": "K"},
            "holder": {"slot": 3, "ok": True, "notes": None},
        },
        "tags": ["alpha", "βeta", "γάμμα"],
        "operators": [{"name": "a"}, {"name": "b"}],
        "matrix": [[1, 2], [3, 4]],
        "emoji": "🧪 test",
        "proposal": "PR-0042",
    }
    RE(bp.count([det], num=2), **md)
    RE(bp.count([det], num=1), sample={"name": "Cu", "temperature": {"value": 10.0}})
    ni = catalog[-2]
    cu = catalog[-1]
    start = ni.metadata["start"]
    for key, value in md.items():
        assert start[key] == value
    assert start == _plain(_run_docs(docs, ni.uid)[0][1])

    def found(query):
        return list(catalog.search(query))

    assert found(Key("sample.name") == "Ni\u2013foil \u00dc") == [ni.uid]
    assert found(Key("sample.composition.Ni") > 0.5) == [ni.uid]
    assert found(Key("sample.temperature.value") < 100) == [cu.uid]
    assert found(Key("sample.holder.ok") == True) == [ni.uid]  # noqa: E712
    assert found(Key("sample.holder.notes") == None) == [ni.uid]  # noqa: E711
    assert found(KeyPresent("sample.holder.notes")) == [ni.uid]
    assert found(Contains("tags", "βeta")) == [ni.uid]
    assert found(In("sample.name", ["Cu", "Fe"])) == [cu.uid]
    assert found(Regex("sample.name", "^ni", case_sensitive=False)) == [ni.uid]
    assert found(FullText("γάμμα")) == [ni.uid]
    assert found(FullText("foil")) == [ni.uid]
    assert found(Key("emoji") == "🧪 test") == [ni.uid]
    assert found(Key("sample.temperature.value") >= 10) == [cu.uid, ni.uid]
    # Lists of dicts are not walked by keys (reference semantics): "operators.name" is missing.
    assert found(KeyPresent("operators.name")) == []
    chained = catalog.search(Key("plan_name") == "count").search(Key("proposal") == "PR-0042")
    assert list(chained) == [ni.uid]


def test_chained_full_text_searches(catalog, RE, det):
    RE(bp.count([det]), sample={"name": "Ni foil"}, operator="beamline staff")
    RE(bp.count([det]), sample={"name": "Cu powder"}, operator="beamline staff")
    ni, cu = catalog[-2].uid, catalog[-1].uid
    assert list(catalog.search(FullText("foil"))) == [ni]
    assert list(catalog.search(FullText("cu")).search(FullText("staff"))) == [cu]
    assert list(catalog.search(FullText("cu")).search(FullText("foil"))) == []
    assert list(catalog.search(FullText("foil") & FullText("beamline"))) == [ni]


# ---------------------------------------------------------------- lookups


@pytest.fixture
def five_runs(catalog, RE, det):
    """Five count runs with scan_ids 1..5 (the RunEngine numbers them)."""
    uids = []
    for i in range(5):
        RE(bp.count([det], num=1), index=i, kind="even" if i % 2 == 0 else "odd")
        uids.append(catalog[-1].uid)
    return uids  # oldest first


def test_lookup_by_scan_id_recency_uid_and_prefix(catalog, five_runs):
    uids = five_runs
    for i, uid in enumerate(uids):
        run = catalog[i + 1]
        assert run.uid == uid
        assert run.start["scan_id"] == i + 1
        assert run.start["index"] == i
        assert catalog[-(5 - i)].uid == uid
        assert catalog[uid].uid == uid
        assert catalog[uid[:8]].uid == uid
        assert uid in catalog
    assert catalog[-1].uid == uids[-1]
    assert len(catalog) == 5
    assert list(catalog) == uids[::-1]  # newest first
    assert [r.uid for r in catalog.values()] == uids[::-1]
    assert [u for u, _ in catalog.items()] == uids[::-1]
    assert list(catalog.keys()) == uids[::-1]


def test_recency_slices(catalog, five_runs):
    uids = five_runs
    newest_first = uids[::-1]
    assert [r.uid for r in catalog[-3:]] == newest_first[:3]
    assert [r.uid for r in catalog[-5:-2]] == newest_first[2:5]
    assert [r.uid for r in catalog[:-3]] == newest_first[3:]
    assert [r.uid for r in catalog[-100:]] == newest_first
    assert catalog[-2:-4] == []


def test_search_chains_and_lengths(catalog, five_runs):
    uids = five_runs
    even = catalog.search(Key("kind") == "even")
    assert len(even) == 3
    assert list(even) == [uids[4], uids[2], uids[0]]
    assert even[-1].uid == uids[4]
    assert even[1].uid == uids[0]  # scan_id lookup inside the search
    with pytest.raises(KeyError):
        even[2]  # scan_id 2 exists, but it is odd
    narrowed = even.search(Key("index") >= 2)
    assert list(narrowed) == [uids[4], uids[2]]
    assert list(narrowed.search(ScanIDRange(1, 4))) == [uids[2]]
    assert list(catalog.search(ScanID(2, 4))) == [uids[3], uids[1]]
    assert list(catalog.search(PartialUID(uids[0][:10]))) == [uids[0]]
    assert list(catalog.search(TimeRange(since=f"@{time.time() + 3600}"))) == []
    assert len(catalog.search(TimeRange(until=f"@{time.time() + 3600}"))) == 5
    either = catalog.search((Key("index") == 0) | (Key("index") == 3))
    assert list(either) == [uids[3], uids[0]]
    assert list(catalog.search(~(Key("kind") == "even"))) == [uids[3], uids[1]]


def test_duplicate_scan_id_gives_newest(catalog, RE, det):
    RE(bp.count([det]), note="first")
    first = catalog[-1].uid
    RE.md["scan_id"] = 0  # the next run is scan 1 again
    RE(bp.count([det]), note="second")
    second = catalog[-1].uid
    assert catalog[-1].start["scan_id"] == catalog[-2].start["scan_id"] == 1
    assert catalog[1].uid == second
    assert catalog[1].uid != first
    assert catalog.search(Key("note") == "first")[1].uid == first


# ---------------------------------------------------------------- reading


@pytest.fixture
def slow_count(catalog, RE, docs, det):
    """A count whose events arrive slower than the flush interval (so in several pages)."""
    rng = np.random.default_rng(7)
    det.noise.put("uniform")
    det.random_state = rng
    cam = SynSignal(func=lambda: rng.random((3, 4)), name="cam")
    label = SynSignal(func=lambda: f"frame-{int(rng.integers(100))}", name="label")
    RE(bp.count([det, cam, label], num=6, delay=0.07))
    run = catalog[-1]
    return run, _events(docs, run.uid, "primary"), docs


def test_read_subset_slices_and_chunks(slow_count):
    run, events, _ = slow_count
    stream = run.primary
    full = _assert_stream_matches(stream, events)
    assert full["cam"].dims == ("time", "cam_dim_0", "cam_dim_1")
    assert full["cam"].shape == (6, 3, 4)
    assert full["label"].dtype.kind == "U"
    assert full["label"].values.tolist() == [e["data"]["label"] for e in events]

    sub = stream.read(["det", "label"])
    assert set(sub.data_vars) == {"det", "label"}
    assert sub.identical(full[["det", "label"]])
    assert stream.read("det").identical(full[["det"]])

    for a, b in [(0, 6), (1, 4), (2, 3), (4, 100), (3, 3), (-2, None)]:
        part = stream.read(events=slice(a, b))
        assert part.identical(full.isel(time=slice(a, b))), (a, b)

    chunks = list(stream.iter_chunks(size=2))
    assert all(c.sizes["time"] >= 1 for c in chunks)
    joined = xr.concat(chunks, dim="time")
    assert joined.identical(full)
    with pytest.raises(KeyError, match="nosuch"):
        stream.read(["nosuch"])


def test_to_pandas_to_dask_and_timestamps(slow_count):
    run, events, _ = slow_count
    stream = run.primary
    ds = stream.read()

    df = stream.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 6
    np.testing.assert_array_equal(df.index.values, [e["time"] for e in events])
    np.testing.assert_array_equal(df["det"].values, [e["data"]["det"] for e in events])
    assert list(df["label"]) == [e["data"]["label"] for e in events]
    for got, e in zip(df["cam"], events, strict=True):
        np.testing.assert_array_equal(got, e["data"]["cam"])

    lazy = stream.to_dask()
    assert lazy["det"].chunks is not None  # really dask-backed
    computed = lazy.compute()
    assert computed.identical(ds)
    assert stream.to_dask(["cam"]).compute().identical(ds[["cam"]])

    ts = stream.timestamps()
    for field in ("det", "cam", "label"):
        np.testing.assert_array_equal(
            ts[field].values, [e["timestamps"][field] for e in events], err_msg=field
        )
    np.testing.assert_array_equal(ts["time"].values, ds["time"].values)


def test_config_and_descriptors(catalog, RE, docs, det):
    det.sigma.put(2)
    det.noise.put("uniform")
    label = SynSignal(func=lambda: "x", name="label")
    RE(bp.count([det, label], num=4))
    run = catalog[-1]
    stream = run.primary
    descriptors = _descriptors(docs, run.uid, "primary")
    assert len(descriptors) == 1
    assert stream.descriptors == _plain(descriptors)
    config = stream.config
    assert set(config) == {"det", "label"}
    det_conf = config["det"]
    expected = descriptors[0]["configuration"]["det"]["data"]
    assert set(det_conf.data_vars) == set(expected)
    for key, value in expected.items():
        assert det_conf[key].values.tolist() == [value] * 4, key
    assert det_conf["det_sigma"].values.tolist() == [2] * 4
    assert det_conf["det_noise"].values.tolist() == ["uniform"] * 4
    np.testing.assert_array_equal(det_conf["time"].values, stream.read()["time"].values)
    assert stream.data_keys["det"] == _plain(descriptors[0]["data_keys"]["det"])
    assert stream.fields == list(descriptors[0]["data_keys"])
    assert len(stream) == 4


def test_config_of_an_array_valued_signal(slow_count):
    """A plain Signal's configuration is its own reading; for a camera that is an image."""
    run, _, docs = slow_count
    descriptor = _descriptors(docs, run.uid, "primary")[0]
    conf = run.primary.config["cam"]
    expected = np.asarray(descriptor["configuration"]["cam"]["data"]["cam"])
    assert expected.shape == (3, 4)
    assert conf["cam"].shape == (6, 3, 4)
    np.testing.assert_array_equal(conf["cam"].values, np.stack([expected] * 6))


def test_documents_replay_equals_what_the_run_engine_sent(slow_count, make_catalog):
    run, events, docs = slow_count
    sent = _run_docs(docs, run.uid)
    stored = list(run.documents())
    assert stored[0] == ("start", _plain(sent[0][1]))
    assert stored[-1] == ("stop", _plain(sent[-1][1]))
    assert [d for n, d in stored if n == "descriptor"] == _plain(_descriptors(docs, run.uid))
    replayed = []
    for name, doc in run.documents(pages=False):
        if name == "event":
            replayed.append(doc)
    assert [e["uid"] for e in replayed] == [e["uid"] for e in events]
    for got, want in zip(replayed, events, strict=True):
        assert got["seq_num"] == want["seq_num"]
        assert got["time"] == want["time"]
        assert got["timestamps"] == want["timestamps"]
        assert got["data"]["det"] == want["data"]["det"]
        np.testing.assert_array_equal(got["data"]["cam"], want["data"]["cam"])

    other = make_catalog()
    other.ingest(run.documents())
    again = other[run.uid]
    assert again.metadata["start"] == run.metadata["start"]
    assert again.metadata["stop"] == run.metadata["stop"]
    assert again.primary.read().identical(run.primary.read())


def test_live_reading_while_a_plan_runs(catalog, RE, det):
    """A reader in another thread sees the run grow while the RunEngine is still going."""
    seen: list[int] = []
    done, partial = threading.Event(), threading.Event()
    shots: list[int] = []

    def watch():
        while not done.is_set():
            if len(catalog):
                run = catalog[-1]
                if "primary" in run:
                    seen.append(run.primary.read().sizes["time"])
                    if 0 < seen[-1] < 5:
                        partial.set()
            time.sleep(0.01)

    def shot(detectors, take_reading=None):
        yield from bps.one_shot(detectors, take_reading)
        shots.append(1)
        # Under load the reader can start or read too late for a short run: wait for its look
        deadline = time.monotonic() + 20
        while len(shots) == 2 and not partial.is_set() and time.monotonic() < deadline:
            yield from bps.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        RE(bp.count([det], num=5, delay=0.05, per_shot=shot))
    finally:
        done.set()
        watcher.join()
    assert seen, "the reader never saw the primary stream"
    assert seen == sorted(seen)
    assert any(0 < n < 5 for n in seen), seen  # saw a partial run
    assert catalog[-1].primary.read().sizes["time"] == 5
