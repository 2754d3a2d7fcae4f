"""databroker v1's API (Broker / Header) over every store, with runs from a real RunEngine."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pandas as pd
import pytest
from bluesky.preprocessors import SupplementalData
from event_model import compose_run
from ophyd.sim import SynAxis, SynGauss

import runbroker
from runbroker.testing.detectors import ADHDF5Detector
from runbroker.v1 import Broker, Header


@pytest.fixture
def devices():
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    return motor, det


@pytest.fixture
def runs(catalog, RE, devices):
    """A count of det with a baseline of motor (sample Ni), then a scan of det over motor."""
    motor, det = devices
    RE.preprocessors.append(SupplementalData(baseline=[motor]))
    RE(bp.count([det], 3), sample="Ni")
    RE.preprocessors.clear()
    RE(bp.scan([det], motor, -1, 1, 5), sample="Cu")
    return catalog[-2], catalog[-1]


def test_lookups_give_headers_as_v1_did(catalog, runs):
    count, scan = runs
    db = runbroker.v1(catalog)
    assert isinstance(db, Broker) and isinstance(catalog.v1, Broker)
    assert db.v2 is catalog
    assert db[-1] == Header(scan) and db[-2].uid == count.uid
    assert db[1].start["plan_name"] == "count"  # a non-negative int is a scan_id
    assert db[scan.uid[:8]].uid == scan.uid
    assert [h.uid for h in db[-2:]] == [scan.uid, count.uid]
    h = db[-1]
    assert h["start"] is h.start and h.stop["exit_status"] == "success"
    assert h.v2 == scan and scan.v1 == h
    with pytest.raises(KeyError, match="h\\['start'\\]\\['sample'\\]"):
        h["sample"]


def test_search_keywords_time_and_text(catalog, runs):
    count, scan = runs
    db = catalog.v1
    assert [h.uid for h in db(plan_name="scan")] == [scan.uid]
    assert [h.uid for h in db(sample="Ni", plan_name="count")] == [count.uid]
    assert len(db(sample="Ni", plan_name="scan")) == 0
    assert [h.uid for h in db("Cu")] == [scan.uid]
    # since/until bound the start time; newest first, as v1 listed headers
    t0, t1 = count.start["time"], scan.start["time"]
    assert [h.uid for h in db(since=t0 - 1)] == [scan.uid, count.uid]
    assert [h.uid for h in db(since=t0 - 1, until=t1)] == [count.uid]
    assert [h.uid for h in db(start_time=t1)] == [scan.uid]
    assert len(db(until="2000-01-01", timezone="UTC")) == 0
    with pytest.raises(ValueError, match="data_key"):
        db(data_key="det")


def test_keywords_search_as_dict_queries_do(catalog, runs):
    # db(detectors="det") is an everyday v1 search: a list holding the value matches, as
    # in cat.search({"detectors": "det"}) and in databroker.
    count, scan = runs
    db = catalog.v1
    assert [h.uid for h in db(detectors="det")] == [scan.uid, count.uid]
    assert [h.uid for h in db(motors="motor")] == [scan.uid]
    assert len(db(detectors="det")) == len(catalog.search({"detectors": "det"})) == 2
    assert [h.uid for h in db(scan_id={"$gt": count.start["scan_id"]})] == [scan.uid]
    # Both names of a time bound: neither is taken for a metadata key.
    t1 = scan.start["time"]
    assert [h.uid for h in db(since=t1, start_time=t1)] == [scan.uid]
    assert [h.uid for h in db(until=t1, stop_time=t1)] == [count.uid]
    with pytest.raises(ValueError, match="start_time is another name for since"):
        db(since=t1, start_time="2000")


def test_empty_search_warning_points_at_the_search(catalog, runs):
    # The warning names the line of the user's code, not a line of runbroker's v1 layer.
    hits = catalog.v1(plan_nam="scan")
    with pytest.warns(runbroker.queries.EmptySearchWarning, match="plan_nam") as caught:
        assert len(hits) == 0
    assert [w.filename for w in caught] == [__file__]
    # Each unknown key is warned about once per catalog: another misspelling.
    with pytest.warns(runbroker.queries.EmptySearchWarning, match="plan_nme") as caught:
        assert list(catalog.v1(plan_nme="count")) == []
    assert [w.filename for w in caught] == [__file__]


def test_table_is_indexed_by_seq_num_with_datetimes(catalog, runs):
    _, scan = runs
    h = catalog.v1[-1]
    table = h.table()
    assert table.index.name == "seq_num" and table.index.tolist() == [1, 2, 3, 4, 5]
    assert list(table.columns) == ["time", "det", "motor", "motor_setpoint"]
    times = scan.primary.read()["time"].values
    # v1 gave naive datetimes in the local zone; timezone= names another zone
    utc = h.table(timezone="UTC")["time"]
    assert utc.dt.tz is None
    assert (utc - pd.Timestamp(0)).dt.total_seconds().to_numpy() == pytest.approx(times)
    paris = h.table(timezone="Europe/Paris")["time"]
    assert (paris - utc).iloc[0] in (pd.Timedelta(hours=1), pd.Timedelta(hours=2))
    assert str(h.table(localize_times=False)["time"].dt.tz) == "UTC"
    assert h.table(convert_times=False)["time"].to_numpy() == pytest.approx(times)
    assert h.table("primary", ["motor"])["motor"].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert list(h.table(fields=["det"]).columns) == ["time", "det"]
    assert catalog.v1[-2].table("baseline")["motor"].tolist() == [0.0, 0.0]


def test_get_table_stacks_runs_each_from_seq_num_1(catalog, runs):
    db = catalog.v1
    both = db.get_table(db[-2:], fields=["det"])
    assert both.index.tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    assert db.get_table([]).empty
    with pytest.raises(KeyError, match="no field 'nope'"):
        db.get_table(db[-1], fields=["nope"])
    with pytest.raises(TypeError, match=r"run\.v1"):
        db.get_table([runs[0]])


def test_events_documents_fields_and_configuration(catalog, runs):
    _, scan = runs
    db = catalog.v1
    h = db[-1]
    events = list(h.events())
    assert [ev["seq_num"] for ev in events] == [1, 2, 3, 4, 5]
    assert [ev["data"]["motor"] for ev in events] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert set(next(h.events(fields=["det"]))["data"]) == {"det"}
    assert list(db.get_events([db[-2], h], fields=["det"]))[2]["data"]["det"] == 1.0
    with pytest.raises(KeyError, match=r"no field 'motor' in stream 'primary'.*\['det'\]"):
        next(db.get_events(db[-2], fields=["motor"]))
    names = [name for name, _ in db[-2].documents()]
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("descriptor") == 2 and names.count("event") == 5
    baseline = list(db[-2].documents("baseline"))
    assert [d["name"] for n, d in baseline if n == "descriptor"] == ["baseline"]
    seen: list[str] = []
    db.process(h, lambda name, doc: seen.append(name))
    assert seen == [name for name, _ in db.restream(h)]
    assert h.fields() == {"det", "motor", "motor_setpoint"}
    assert db[-2].fields("baseline") == {"motor", "motor_setpoint"}
    assert db.get_fields(db[-2], "primary") == {"det"}
    assert h.devices() == {"det", "motor"} and sorted(db[-2].stream_names) == [
        "baseline",
        "primary",
    ]
    assert h.config_data("det")["primary"][0]["det_sigma"] == 1
    assert list(h.data("motor")) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert h.xarray().identical(scan.primary.read())


def test_a_running_run_has_an_empty_stop(catalog):
    bundle = compose_run(metadata={"scan_id": 3})
    catalog.insert("start", bundle.start_doc)
    h = catalog.v1[-1]
    assert h.stop == {} and h["stop"] == {}
    # v1 gave an empty table for a missing stream; runbroker says which streams there are
    with pytest.raises(KeyError, match="no stream 'primary'; its streams are \\[\\]"):
        h.table()
    keys = {"x": {"source": "sim", "dtype": "number", "shape": []}}
    catalog.insert(
        "descriptor", bundle.compose_descriptor(name="primary", data_keys=keys).descriptor_doc
    )
    assert h.table().empty and list(h.table().columns) == ["time", "x"]


def test_images_and_fields_in_files(catalog, RE, devices, tmp_path):
    motor, _ = devices
    cam = ADHDF5Detector("cam", tmp_path / "frames", shape=(4, 6))
    RE(bp.scan([cam], motor, 0, 1, 3))
    run = catalog[-1]
    h = catalog.v1[-1]
    # as in v1, a table leaves detector data in files out unless it is filled
    assert "cam_image" not in h.table().columns
    with pytest.raises(ValueError, match=r"\['cam_image'\].*fill=True"):
        h.table(fields=["cam_image"])
    pixels = run.primary.read(["cam_image"])["cam_image"].values
    filled = h.table(fields=["cam_image"], fill=True)["cam_image"]
    assert all(np.array_equal(a, b) for a, b in zip(filled, pixels, strict=True))
    images = catalog.v1.get_images(h, "cam_image")
    assert images.shape == pixels.shape
    assert np.array_equal(np.asarray(images[2]), pixels[2])
    both = catalog.v1.get_images([h, h], "cam_image")
    assert both.shape[0] == 2 * pixels.shape[0]
    assert all(np.array_equal(a, b) for a, b in zip(h.data("cam_image"), pixels, strict=True))
    filled_events = list(h.events(fill=True))
    assert np.array_equal(filled_events[1]["data"]["cam_image"], pixels[1])


def test_to_pandas_indexed_by_seq_num(catalog, runs):
    _, scan = runs
    stream = scan.primary
    table = stream.to_pandas(index="seq_num")
    assert table.index.name == "seq_num" and table.index.tolist() == [1, 2, 3, 4, 5]
    assert str(table["time"].dt.tz) == "UTC"
    seconds = (table["time"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    assert seconds == pytest.approx(stream.read()["time"].values)
    assert (
        table.drop(columns="time")
        .reset_index(drop=True)
        .equals(stream.to_pandas().reset_index(drop=True))
    )
    with pytest.raises(ValueError, match=r"'time'.*'seq_num'"):
        stream.to_pandas(index="event")
