"""Catalog lookup semantics, errors, reprs and run metadata."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import compose_run
from ophyd.sim import SynAxis, SynGauss

import runbroker
from runbroker.queries import Key, KeyPresent, ScanIDRange


@pytest.fixture
def det():
    motor = SynAxis(name="motor")
    return SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)


def add_run(cat, *, uid=None, time=None, scan_id=None, events=2, stop=True, **md):
    """Insert a small run made with event_model.compose_run; return its start document."""
    metadata = dict(md)
    if scan_id is not None:
        metadata["scan_id"] = scan_id
    bundle = compose_run(uid=uid, time=time, metadata=metadata)
    cat.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}},
    )
    cat.insert("descriptor", desc.descriptor_doc)
    for i in range(events):
        cat.insert("event", desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0}))
    if stop:
        cat.insert("stop", bundle.compose_stop())
    return bundle.start_doc


@pytest.fixture
def three(catalog):
    """Three runs at known times: scan_ids 7, 8, 7 (the last one re-uses 7)."""
    a = add_run(catalog, time=1000.0, scan_id=7, label="a")
    b = add_run(catalog, time=2000.0, scan_id=8, label="b")
    c = add_run(catalog, time=3000.0, scan_id=7, label="c")
    return a, b, c


# ---------------------------------------------------------------- ints


def test_positive_int_is_scan_id_newest_of_duplicates(catalog, three):
    a, b, c = three
    assert catalog[7].uid == c["uid"]
    assert catalog[8].uid == b["uid"]
    assert catalog.search(Key("label") == "a")[7].uid == a["uid"]


def test_negative_int_is_recency(catalog, three):
    a, b, c = three
    assert [catalog[-1].uid, catalog[-2].uid, catalog[-3].uid] == [c["uid"], b["uid"], a["uid"]]


def test_missing_scan_id_message(catalog, three):
    with pytest.raises(KeyError) as info:
        catalog[99]
    text = str(info.value)
    assert "99" in text
    assert "scan_id" in text
    assert "cat[-1]" in text  # tells the user how to ask for recency instead


def test_recency_out_of_range_message(catalog, three):
    with pytest.raises(KeyError) as info:
        catalog[-4]
    text = str(info.value)
    assert "-4" in text
    assert "3 runs" in text
    hits = catalog.search(Key("label") == "a")
    with pytest.raises(KeyError) as info:
        hits[-2]
    assert "1 runs" in str(info.value) or "1 run" in str(info.value)
    assert "label" in str(info.value)  # says which search it looked in


def test_empty_catalog_lookups(catalog):
    assert len(catalog) == 0
    assert list(catalog) == []
    for key in (-1, 0, 1, "abc"):
        with pytest.raises(KeyError):
            catalog[key]
    assert catalog[-3:] == []


# ---------------------------------------------------------------- uids


def test_uid_and_prefix_lookup(catalog):
    one = add_run(catalog, uid="aaa111-0000", time=1.0)
    two = add_run(catalog, uid="aaa222-0000", time=2.0)
    assert catalog["aaa111-0000"].uid == one["uid"]
    assert catalog["aaa1"].uid == one["uid"]
    assert catalog["aaa2"].uid == two["uid"]
    assert "aaa111-0000" in catalog
    assert "aaa1" not in catalog  # ``in`` wants a full uid
    assert 5 not in catalog


def test_ambiguous_prefix_lists_candidates(catalog):
    one = add_run(catalog, uid="abcd-1111", time=1.0)
    two = add_run(catalog, uid="abcd-2222", time=2.0)
    add_run(catalog, uid="zzzz-3333", time=3.0)
    with pytest.raises(runbroker.AmbiguousUIDError) as info:
        catalog["abcd"]
    err = info.value
    assert isinstance(err, KeyError)
    assert sorted(err.candidates) == sorted([one["uid"], two["uid"]])
    text = str(err)
    assert "abcd" in text
    assert one["uid"] in text and two["uid"] in text
    assert "zzzz-3333" not in text


def test_prefix_is_anchored_and_case_sensitive(catalog):
    add_run(catalog, uid="xyz-abc-1", time=1.0)
    with pytest.raises(KeyError):
        catalog["abc"]  # not a prefix: a substring only
    with pytest.raises(KeyError):
        catalog["XYZ"]


def test_exact_uid_wins_over_longer_uids_sharing_it(catalog):
    add_run(catalog, uid="run-1", time=1.0)
    add_run(catalog, uid="run-1b", time=2.0)
    assert catalog["run-1"].uid == "run-1"


def test_exact_uid_found_in_a_search_despite_many_similar_uids(catalog):
    """A full uid is never ambiguous, even when >10 newer runs start with it."""
    add_run(catalog, uid="run-1", time=1.0, group="g")
    for i in range(11):
        add_run(catalog, uid=f"run-1{i:02d}", time=10.0 + i, group="g")
    hits = catalog.search(Key("group") == "g")
    assert len(hits) == 12
    assert hits["run-1"].uid == "run-1"
    assert "run-1" in hits


def test_unknown_uid_message(catalog, three):
    with pytest.raises(KeyError) as info:
        catalog["deadbeef"]
    assert "deadbeef" in str(info.value)
    assert "uid" in str(info.value)


def test_empty_string_is_not_a_uid(catalog, three):
    with pytest.raises(KeyError, match="empty"):
        catalog[""]


# ---------------------------------------------------------------- slices and bad keys


def test_positive_slices_are_refused_with_advice(catalog, three):
    for key in (slice(0, 2), slice(1, None), slice(None, 3), slice(2, 5)):
        with pytest.raises(TypeError) as info:
            catalog[key]
        text = str(info.value)
        assert "negative" in text
        assert "ScanIDRange" in text
    with pytest.raises(TypeError, match="step"):
        catalog[-3::2]


def test_negative_slices(catalog, three):
    a, b, c = three
    assert [r.uid for r in catalog[-2:]] == [c["uid"], b["uid"]]
    assert [r.uid for r in catalog[-3:-1]] == [b["uid"], a["uid"]]
    assert [r.uid for r in catalog[:-1]] == [b["uid"], a["uid"]]
    assert [r.uid for r in catalog[-10:]] == [c["uid"], b["uid"], a["uid"]]
    assert catalog[-1:-1] == []


def test_bad_key_types(catalog, three):
    for key in (True, 1.5, None, (1, 2)):
        with pytest.raises(TypeError):
            catalog[key]
    with pytest.raises(TypeError, match="query"):
        catalog.search("plan_name == 'scan'")  # a dict query is taken: see test_mongoquery


def test_order_is_time_then_uid(catalog):
    add_run(catalog, uid="b-run", time=5.0)
    add_run(catalog, uid="a-run", time=5.0)
    add_run(catalog, uid="c-run", time=4.0)
    add_run(catalog, uid="d-run", time=6.0)
    assert list(catalog) == ["d-run", "b-run", "a-run", "c-run"]
    assert catalog[-1].uid == "d-run"
    assert catalog[-2].uid == "b-run"
    assert [r.uid for r in catalog[-4:]] == ["d-run", "b-run", "a-run", "c-run"]


def test_many_runs_iterate_in_order_past_one_batch(catalog):
    """Iteration pages through the store; nothing is skipped or repeated at page borders."""
    bundles = []
    with_times = [(float(i), f"u{i:04d}") for i in range(1203)]
    for t, uid in with_times:
        bundle = compose_run(uid=uid, time=t, metadata={"scan_id": int(t)})
        bundles.append(("start", bundle.start_doc))
    catalog.ingest(bundles)
    uids = list(catalog)
    assert uids == [u for _, u in reversed(with_times)]
    assert len(catalog) == 1203
    assert catalog[-1203].uid == "u0000"
    assert len(catalog.search(ScanIDRange(100, 700))) == 600


# ---------------------------------------------------------------- reprs


def test_run_repr(catalog, RE, det):
    RE(bp.count([det], num=2))
    run = catalog[-1]
    text = repr(run)
    assert run.uid in text
    assert "success" in text
    assert "scan_id=1" in text
    assert "count" in text
    assert "primary" in text
    assert " -- " in text
    html = run._repr_html_()
    assert "<table>" in html
    assert run.uid in html
    assert "success" in html
    assert "primary" in html


def test_catalog_repr_and_html(catalog, three):
    text = repr(catalog)
    assert "3 runs" in text
    assert catalog.store.uri in text
    hits = catalog.search(Key("label") == "b")
    assert "1 runs" in repr(hits) or "1 run" in repr(hits)
    assert "label" in repr(hits)
    html = catalog._repr_html_()
    for start in three:
        assert start["uid"][:8] in html
    assert "<table>" in html
    assert "success" in html


def test_html_reprs_escape_metadata(catalog):
    add_run(catalog, time=1.0, plan_name="<script>alert(1)</script>")
    html = catalog._repr_html_() + catalog[-1]._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_empty_catalog_reprs(catalog):
    assert "0 runs" in repr(catalog)
    assert "<table>" in catalog._repr_html_()


def test_reprs_count_in_words(catalog):
    add_run(catalog, time=1000.0, events=1)
    assert "<Catalog 1 run in" in repr(catalog)
    assert "1 event, 1 field: x>" in repr(catalog[-1].primary)


def test_catalog_html_says_how_many_runs_it_leaves_out(catalog):
    for i in range(11):
        add_run(catalog, time=1000.0 + i, scan_id=i)
    html = catalog._repr_html_()
    assert "<td>10</td>" in html and "<td>1</td>" in html and "<td>0</td>" not in html
    assert "The 10 most recent are shown; 1 more run not shown" in html
    add_run(catalog, time=2000.0)
    assert "2 more runs not shown" in catalog._repr_html_()
    assert "not shown" not in catalog.search(Key("scan_id") == 3)._repr_html_()


def test_durations_have_units(catalog):
    bundle = compose_run(time=1000.0, metadata={"scan_id": 4})
    catalog.insert("start", bundle.start_doc)
    catalog.insert("stop", bundle.compose_stop(time=1125.0))
    run = catalog[-1]
    assert "(2 min 05 s)" in repr(run)
    assert "<th>duration</th><td>2 min 05 s</td>" in run._repr_html_()
    assert "<td>2 min 05 s</td>" in catalog._repr_html_()
    assert run.summary["duration"] == 125.0  # the data stays a number of seconds


def test_stream_reprs_list_fields_and_events(catalog, RE, det):
    RE(bp.count([det], num=3))
    stream = catalog[-1].primary
    assert repr(stream) == f"<Stream 'primary' of run {stream.run_uid[:8]}: 3 events, 1 field: det>"
    html = stream._repr_html_()
    assert "3 events, 1 field" in html
    assert "<td>det</td><td>number</td><td>scalar</td><td></td><td>SIM:det</td>" in html


def test_stream_reprs_show_array_shapes_and_files(catalog, RE, tmp_path):
    from runbroker.testing.detectors import ADHDF5Detector

    cam = ADHDF5Detector("cam", tmp_path / "frames", shape=(4, 6))
    RE(bp.count([cam], num=2))
    stream = catalog[-1].primary
    assert "2 fields: cam_stats_total, cam_image[4, 6]>" in repr(stream)
    assert "<td>cam_image</td>" in stream._repr_html_()
    assert "<td>[4, 6]</td>" in stream._repr_html_()
    assert "<td>yes</td>" in stream._repr_html_()


# ---------------------------------------------------------------- metadata, live and crashed runs


def test_run_metadata_keys(catalog, RE, det):
    RE(bp.count([det], num=3), sample="Ni")
    run = catalog[-1]
    md = run.metadata
    assert set(md) == {"start", "stop", "summary"}
    assert md["start"]["sample"] == "Ni"
    assert md["start"]["uid"] == run.uid
    assert md["stop"]["run_start"] == run.uid
    assert md["stop"]["exit_status"] == "success"
    summary = md["summary"]
    assert summary["uid"] == run.uid
    assert summary["scan_id"] == 1
    assert summary["plan_name"] == "count"
    assert summary["exit_status"] == "success"
    assert summary["stream_names"] == ["primary"]
    assert summary["timestamp"] == md["start"]["time"]
    assert summary["duration"] == pytest.approx(md["stop"]["time"] - md["start"]["time"])
    assert summary["duration"] >= 0
    assert list(run) == ["primary"]
    assert len(run) == 1
    assert run == catalog[run.uid]
    assert hash(run) == hash(catalog[run.uid])
    with pytest.raises(KeyError, match="primary"):
        run["baseline"]  # the message lists the streams that exist


def test_live_run_has_no_stop_and_is_readable(catalog):
    bundle = compose_run(metadata={"scan_id": 3})
    catalog.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
    )
    catalog.insert("descriptor", desc.descriptor_doc)
    for i in range(3):
        catalog.insert("event", desc.compose_event(data={"x": i * 1.5}, timestamps={"x": 0.0}))
    run = catalog[-1]
    assert run.stop is None
    assert run.metadata["stop"] is None
    assert run.summary["exit_status"] is None
    assert run.summary["duration"] is None
    assert "running" in repr(run)
    assert run.primary.read()["x"].values.tolist() == [0.0, 1.5, 3.0]
    assert len(catalog.search(KeyPresent("stop.exit_status"))) == 0

    catalog.insert("event", desc.compose_event(data={"x": 4.5}, timestamps={"x": 0.0}))
    assert run.primary.read()["x"].values.tolist() == [0.0, 1.5, 3.0, 4.5]
    catalog.insert("stop", bundle.compose_stop())
    assert run.stop is not None  # the same Run object notices the stop
    assert run.stop["exit_status"] == "success"
    assert "success" in repr(run)
    assert len(catalog.search(KeyPresent("stop.exit_status"))) == 1


def test_crashed_run_without_stop_is_readable_after_reopening(catalog, det):
    """The RunEngine's process died before the stop document: the run is still usable."""
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=False)

    def lose_the_stop(name, doc):
        if name != "stop":
            catalog.insert(name, doc)

    engine.subscribe(lose_the_stop)
    engine(bp.count([det], num=4), purpose="crash")
    uid = catalog[-1].uid
    uri = catalog.store.uri
    catalog.close()

    with runbroker.open(uri) as again:
        run = again[uid]
        assert run.stop is None
        assert run.start["purpose"] == "crash"
        ds = run.primary.read()
        assert ds.sizes["time"] == 4
        np.testing.assert_array_equal(ds["det"].values, [1.0] * 4)
        assert [n for n, _ in run.documents()][-1] != "stop"
        assert len(again.search(~KeyPresent("stop.uid"))) == 1


def test_readonly_catalog_reads_but_refuses_writes(catalog, three):
    uri = catalog.store.uri
    catalog.close()
    ro = runbroker.open(uri.removeprefix("sqlite:///"), readonly=True)
    try:
        assert len(ro) == 3
        assert ro[-1].primary.read()["x"].values.tolist() == [0.0, 1.0]
        with pytest.raises(PermissionError):
            ro.insert("start", compose_run().start_doc)
        assert len(ro) == 3
    finally:
        ro.close()
