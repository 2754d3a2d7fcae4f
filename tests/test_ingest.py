"""Ingest: refused documents (with precise errors and an unchanged store), idempotent
re-inserts, conflicts, atomic ``ingest``, ordering, multi-descriptor streams, odd fields,
durability modes and replay into a fresh catalog."""

from __future__ import annotations

import copy
import uuid

import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
import xarray as xr
from event_model import compose_run, pack_event_page
from ophyd.sim import SynAxis, SynGauss, SynSignal

import runbroker
from runbroker import ConflictError, DocumentError, UnknownParentError

DATA_KEYS = {
    "x": {"source": "sim:x", "dtype": "number", "shape": [], "units": "mm"},
    "n": {"source": "sim:n", "dtype": "integer", "shape": []},
    "s": {"source": "sim:s", "dtype": "string", "shape": []},
}


def snapshot(cat):
    """Everything a user can see of the store: run count and every run's documents."""
    return len(cat), [(uid, list(run.documents())) for uid, run in cat.items()]


class Run:
    """A hand-made run built with event_model.compose_run, documents kept in order."""

    def __init__(self, metadata=None, data_keys=DATA_KEYS, configuration=None):
        self.bundle = compose_run(metadata=metadata or {"scan_id": 1})
        self.start = self.bundle.start_doc
        self.docs = [("start", self.start)]
        self.desc_bundle = self.descriptor(data_keys, configuration=configuration)
        self.desc = self.desc_bundle.descriptor_doc

    def descriptor(self, data_keys, name="primary", configuration=None):
        bundle = self.bundle.compose_descriptor(
            name=name, data_keys=data_keys, configuration=configuration or {}
        )
        self.docs.append(("descriptor", bundle.descriptor_doc))
        return bundle

    def event(self, i, bundle=None):
        bundle = bundle or self.desc_bundle
        data = {"x": i * 0.5, "n": i, "s": f"s{i}"}
        ev = bundle.compose_event(
            data={k: data[k] for k in bundle.descriptor_doc["data_keys"]},
            timestamps={k: 100.0 + i for k in bundle.descriptor_doc["data_keys"]},
        )
        self.docs.append(("event", ev))
        return ev

    def stop(self, **kwargs):
        doc = self.bundle.compose_stop(**kwargs)
        self.docs.append(("stop", doc))
        return doc


@pytest.fixture
def stored(catalog):
    """A catalog holding one finished run and one live run (no stop) with 3 events each."""
    done = Run(metadata={"scan_id": 1, "sample": "Ni"})
    for i in range(3):
        done.event(i)
    done.stop()
    catalog.ingest(done.docs)
    live = Run(metadata={"scan_id": 2})
    for name, doc in live.docs:
        catalog.insert(name, doc)
    for i in range(3):
        catalog.insert("event", live.event(i))
    return catalog, done, live


def _check_refused(cat, name, doc, error, key, uid_text=None):
    """Insert must raise ``error`` naming the type, uid and key, and change nothing."""
    before = snapshot(cat)
    with pytest.raises(error) as info:
        cat.insert(name, doc)
    err = info.value
    text = str(err)
    assert name in text, text
    if uid_text is None:
        uid_text = doc.get("uid", doc.get("datum_id")) if isinstance(doc, dict) else None
    if uid_text is not None:
        assert str(uid_text) in text, text
    if key is not None:
        assert key in text, text
        assert err.key == key
    assert err.name == name
    assert snapshot(cat) == before
    # The store still works after the refusal.
    probe = Run(metadata={"scan_id": 99})
    cat.insert("start", probe.start)
    assert probe.start["uid"] in cat
    return err


# ---------------------------------------------------------------- refused documents


def test_missing_required_key(stored):
    cat, _, live = stored
    desc = dict(live.desc, uid=str(uuid.uuid4()))
    del desc["data_keys"]
    _check_refused(cat, "descriptor", desc, DocumentError, "data_keys")


def test_missing_seq_num(stored):
    cat, _, live = stored
    ev = copy.deepcopy(live.event(3))
    del ev["seq_num"]
    _check_refused(cat, "event", ev, DocumentError, "seq_num")


def test_stop_missing_exit_status(stored):
    cat, _, live = stored
    stop = dict(live.bundle.compose_stop())
    del stop["exit_status"]
    _check_refused(cat, "stop", stop, DocumentError, "exit_status")
    assert cat[live.start["uid"]].stop is None


def test_wrong_type(stored):
    cat, _, live = stored
    desc = dict(live.desc, uid=str(uuid.uuid4()), time="yesterday")
    _check_refused(cat, "descriptor", desc, DocumentError, "time")


def test_wrong_type_in_event(stored):
    cat, _, live = stored
    ev = dict(live.event(3), seq_num="four")
    _check_refused(cat, "event", ev, DocumentError, "seq_num")


def test_unknown_extra_key_in_event(stored):
    cat, _, live = stored
    ev = dict(live.event(3), colour="blue")
    _check_refused(cat, "event", ev, DocumentError, "colour")


def test_dotted_metadata_key_in_start(stored):
    cat, _, _ = stored
    start = dict(compose_run().start_doc)
    start["sample.name"] = "Ni"  # dots would make keys ambiguous for queries
    _check_refused(cat, "start", start, DocumentError, "sample.name")


def test_non_dict_document(stored):
    cat, _, _ = stored
    err = _check_refused(cat, "event", ["not", "a", "dict"], DocumentError, None)
    assert "dict" in str(err)
    assert "list" in str(err)


def test_unknown_document_name(stored):
    cat, _, live = stored
    err = _check_refused(cat, "evnt", live.event(3), DocumentError, None, uid_text="")
    assert "evnt" in str(err)
    assert "descriptor" in str(err)  # lists the known names


def test_unknown_document_name_names_the_uid(stored):
    cat, _, live = stored
    ev = live.event(3)
    _check_refused(cat, "evnt", ev, DocumentError, None, uid_text=ev["uid"])


def test_event_for_unknown_descriptor(stored):
    cat, _, live = stored
    ev = dict(live.event(3), descriptor="no-such-descriptor")
    err = _check_refused(cat, "event", ev, UnknownParentError, "descriptor")
    assert "no-such-descriptor" in str(err)
    assert isinstance(err, DocumentError)


def test_event_page_for_unknown_descriptor(stored):
    cat, _, live = stored
    page = pack_event_page(live.event(3), live.event(4))
    page["descriptor"] = "no-such-descriptor"
    _check_refused(cat, "event_page", page, UnknownParentError, "descriptor", page["uid"][0])


def test_descriptor_for_unknown_run(stored):
    cat, _, live = stored
    desc = dict(live.desc, uid=str(uuid.uuid4()), run_start="no-such-run")
    err = _check_refused(cat, "descriptor", desc, UnknownParentError, "run_start")
    assert "no-such-run" in str(err)


def test_stop_for_unknown_start(stored):
    cat, _, live = stored
    stop = dict(live.bundle.compose_stop(), run_start="no-such-run")
    err = _check_refused(cat, "stop", stop, UnknownParentError, "run_start")
    assert "no-such-run" in str(err)


def test_datum_for_unknown_resource(stored):
    cat, _, _ = stored
    datum = {"datum_id": "no-such-resource/0", "resource": "no-such-resource", "datum_kwargs": {}}
    err = _check_refused(cat, "datum", datum, UnknownParentError, "resource")
    assert err.uid == "no-such-resource/0"


def test_event_with_undeclared_data_key(stored):
    cat, _, live = stored
    ev = copy.deepcopy(live.event(3))
    ev["data"]["y"] = 1.0
    ev["timestamps"]["y"] = 1.0
    err = _check_refused(cat, "event", ev, DocumentError, "data.y")
    assert live.desc["uid"] in str(err)


def test_event_page_with_undeclared_data_key(stored):
    cat, _, live = stored
    page = pack_event_page(live.event(3), live.event(4))
    page["data"]["y"] = [1.0, 2.0]
    page["timestamps"]["y"] = [1.0, 2.0]
    _check_refused(cat, "event_page", page, DocumentError, "data.y", page["uid"][0])


def test_event_page_with_mismatched_column_lengths(stored):
    cat, _, live = stored
    page = pack_event_page(live.event(3), live.event(4), live.event(5))
    page["data"]["x"] = page["data"]["x"][:2]
    err = _check_refused(cat, "event_page", page, DocumentError, "data.x", page["uid"][0])
    assert page["uid"][-1] in str(err)


def test_event_page_with_short_time_column(stored):
    cat, _, live = stored
    page = pack_event_page(live.event(3), live.event(4))
    page["time"] = page["time"][:1]
    _check_refused(cat, "event_page", page, DocumentError, "time", page["uid"][0])


def test_refusals_in_ingest_have_the_same_errors(stored):
    cat, _, live = stored
    ev = copy.deepcopy(live.event(3))
    ev["data"]["y"] = 1.0
    ev["timestamps"]["y"] = 1.0
    before = snapshot(cat)
    with pytest.raises(DocumentError, match=r"data\.y") as info:
        cat.ingest([("event", ev)])
    assert ev["uid"] in str(info.value)
    assert snapshot(cat) == before


# ---------------------------------------------------------------- repeats and conflicts


def test_reinserting_identical_documents_is_a_no_op(catalog):
    run = Run()
    for i in range(4):
        run.event(i)
    run.stop()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    page = pack_event_page(*[d for n, d in run.docs if n == "event"])
    before = snapshot(catalog)
    assert len(before[1][0][1]) == 4  # start, descriptor, one page, stop

    for name, doc in run.docs:  # every document again, one by one
        catalog.insert(name, copy.deepcopy(doc))
    catalog.insert("event_page", page)
    catalog.flush()
    assert snapshot(catalog) == before

    catalog.ingest(copy.deepcopy(run.docs))  # and all at once
    catalog.ingest([("event_page", page)])
    assert snapshot(catalog) == before
    assert catalog[-1].primary.read()["n"].values.tolist() == [0, 1, 2, 3]


def test_repeated_event_before_it_is_flushed_is_a_no_op(catalog):
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    ev = run.event(0)
    catalog.insert("event", ev)
    catalog.insert("event", copy.deepcopy(ev))  # still queued
    catalog.flush()
    catalog.insert("event", copy.deepcopy(ev))  # now stored
    assert catalog[-1].primary.read()["n"].values.tolist() == [0]
    assert len(catalog[-1].primary) == 1


def test_repeat_with_numpy_values_and_int_float_is_a_no_op(catalog):
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    ev = run.event(2)
    catalog.insert("event", ev)
    catalog.flush()
    before = snapshot(catalog)
    same = copy.deepcopy(ev)
    same["data"]["x"] = np.float64(ev["data"]["x"])
    same["data"]["n"] = np.int64(ev["data"]["n"])
    catalog.insert("event", same)
    catalog.flush()
    assert snapshot(catalog) == before


@pytest.mark.parametrize("which", ["start", "descriptor", "stop"])
def test_different_document_with_same_uid_conflicts(catalog, which):
    run = Run()
    run.event(0)
    run.stop()
    catalog.ingest(run.docs)
    before = snapshot(catalog)
    original = next(d for n, d in run.docs if n == which)
    changed = copy.deepcopy(original)
    if which == "start":
        changed["scan_id"] = 1234
    elif which == "descriptor":
        changed["data_keys"]["x"]["units"] = "um"
    else:
        changed["exit_status"] = "fail"
    with pytest.raises(ConflictError) as info:
        catalog.insert(which, changed)
    assert which in str(info.value)
    assert original["uid"] in str(info.value)
    assert isinstance(info.value, DocumentError)
    assert snapshot(catalog) == before


def test_event_with_same_uid_and_seq_num_but_other_data_conflicts(catalog):
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    ev = run.event(0)
    catalog.insert("event", ev)
    changed = copy.deepcopy(ev)
    changed["data"]["x"] = 99.0
    with pytest.raises(ConflictError) as info:
        catalog.insert("event", changed)  # while the first is still queued
    assert ev["uid"] in str(info.value)
    catalog.flush()
    before = snapshot(catalog)
    with pytest.raises(ConflictError) as info:
        catalog.insert("event", changed)  # after it was stored
    assert ev["uid"] in str(info.value)
    assert "event" in str(info.value)
    assert snapshot(catalog) == before
    assert catalog[-1].primary.read()["x"].values.tolist() == [0.0]


def test_event_reusing_a_uid_with_other_content_conflicts(catalog):
    """Event uids are unique: a second event with the same uid (other seq_num) is refused."""
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    first = run.event(0)
    catalog.insert("event", first)
    catalog.flush()
    before = snapshot(catalog)
    second = dict(run.event(1), uid=first["uid"])
    with pytest.raises(ConflictError) as info:
        catalog.insert("event", second)
        catalog.flush()  # a store sending events in batches raises here at the latest
    assert first["uid"] in str(info.value)
    catalog.flush()
    assert snapshot(catalog) == before


def _page_conflict(catalog):
    """Store event 0; return a page of a new event 2 followed by a changed event 0."""
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    events = [run.event(i) for i in range(3)]
    catalog.insert("event_page", pack_event_page(*events[:1]))
    changed = copy.deepcopy(events[0])
    changed["data"]["x"] = -1.0
    return events, pack_event_page(events[2], changed)


def test_event_page_with_changed_content_conflicts_and_stores_nothing(catalog):
    events, page = _page_conflict(catalog)
    before = snapshot(catalog)
    with pytest.raises(ConflictError) as info:
        catalog.insert("event_page", page)
    assert events[0]["uid"] in str(info.value)
    catalog.flush()
    assert catalog[-1].primary.read()["n"].values.tolist() == [0]
    assert snapshot(catalog) == before


def test_event_page_conflict_message_names_the_event_page(catalog):
    events, page = _page_conflict(catalog)
    with pytest.raises(ConflictError) as info:
        catalog.insert("event_page", page)
    assert info.value.name == "event_page"
    assert "event_page" in str(info.value)
    assert events[0]["uid"] in str(info.value)


def test_ingest_is_atomic(catalog):
    kept = Run(metadata={"scan_id": 1})
    kept.event(0)
    kept.stop()
    catalog.ingest(kept.docs)
    before = snapshot(catalog)

    new = Run(metadata={"scan_id": 2})
    for i in range(5):
        new.event(i)
    new.stop()
    bad = copy.deepcopy(new.docs[4][1])
    bad["data"]["nope"] = 1
    bad["timestamps"]["nope"] = 1
    docs = [*new.docs[:4], ("event", bad), *new.docs[4:]]
    with pytest.raises(DocumentError, match="nope"):
        catalog.ingest(docs)
    assert snapshot(catalog) == before
    assert new.start["uid"] not in catalog

    # Appending to an existing run: a refusal in the middle keeps none of the call.
    more = [("event", kept.event(i)) for i in (1, 2, 3)]
    conflict = copy.deepcopy(kept.docs[0][1])
    conflict["scan_id"] = 77
    with pytest.raises(ConflictError):
        catalog.ingest([*more[:2], ("start", conflict), more[2]])
    assert snapshot(catalog) == before

    # The same documents without the bad one go in completely.
    assert catalog.ingest(new.docs) == len(new.docs)
    assert catalog[new.start["uid"]].primary.read()["n"].values.tolist() == [0, 1, 2, 3, 4]


def test_ingest_atomic_with_live_events_queued(catalog):
    """Queued single events from insert() survive a failed ingest() of something else."""
    live = Run()
    for name, doc in live.docs:
        catalog.insert(name, doc)
    for i in range(3):
        catalog.insert("event", live.event(i))  # queued, not yet flushed
    other = Run(metadata={"scan_id": 5})
    with pytest.raises(UnknownParentError):
        catalog.ingest([*other.docs, ("stop", dict(other.bundle.compose_stop(), run_start="x"))])
    assert other.start["uid"] not in catalog
    assert catalog[live.start["uid"]].primary.read()["n"].values.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- ordering and descriptors


def test_events_out_of_order_come_back_sorted(catalog):
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    events = [run.event(i) for i in range(8)]
    order = [3, 0, 2, 1, 7, 5, 6, 4]
    for i in order[:4]:
        catalog.insert("event", events[i])
    catalog.flush()  # split into two stored pages that overlap in seq_num
    for i in order[4:]:
        catalog.insert("event", events[i])
    ds = catalog[-1].primary.read()
    assert ds["n"].values.tolist() == list(range(8))
    np.testing.assert_array_equal(ds["time"].values, [e["time"] for e in events])
    assert catalog[-1].primary.read(events=slice(2, 5))["n"].values.tolist() == [2, 3, 4]


def test_out_of_order_pages_come_back_sorted(catalog):
    """Pages whose seq_num ranges interleave: (1, 5), (2), (6, 3)."""
    run = Run()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    events = {i + 1: run.event(i) for i in range(6)}
    for group in ([1, 5], [2], [6, 3], [4]):
        catalog.insert("event_page", pack_event_page(*[events[s] for s in group]))
    ds = catalog[-1].primary.read()
    assert ds["n"].values.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(ds["time"].values, [events[s]["time"] for s in range(1, 7)])


@pytest.mark.parametrize("numpy", [False, True])
def test_page_sharing_one_buffer_between_columns_keeps_each_value(catalog, store_kind, numpy):
    """event-model's pages share one list between time and the timestamps (converted once);
    a flyer may then refill that buffer for its next page."""
    bundle = compose_run()
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={f: {"source": "sim", "dtype": "number", "shape": []} for f in "ab"},
    )
    for name, doc in (("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)):
        catalog.insert(name, doc)
    shared = [10.0, 11.0, 12.0]
    buffer = np.array(shared) if numpy else list(shared)
    page = desc.compose_event_page(
        data={"a": [1.0, 2.0, 3.0], "b": buffer},
        timestamps={"a": buffer, "b": buffer},
        seq_num=[1, 2, 3],
        time=buffer,
    )
    catalog.insert("event_page", page)
    # A flyer's buffer, refilled before the page was written. (The HTTP client still holds
    # the caller's arrays until it sends them: a known gap, not what this test is about.)
    if numpy and store_kind != "http":
        buffer[:] = 0.0
    catalog.insert("stop", bundle.compose_stop())
    ds = catalog[-1].primary.read()
    assert ds["time"].values.tolist() == shared
    assert ds["b"].values.tolist() == shared
    (replayed,) = [d for n, d in catalog[-1].documents() if n == "event_page"]
    assert replayed["timestamps"] == {"a": shared, "b": shared}


def test_several_descriptors_in_one_stream(catalog):
    def conf(sigma):
        return {
            "det": {
                "data": {"det_sigma": sigma, "det_mode": f"m{sigma}"},
                "timestamps": {"det_sigma": 1.0, "det_mode": 1.0},
                "data_keys": {
                    "det_sigma": {"source": "sim", "dtype": "integer", "shape": []},
                    "det_mode": {"source": "sim", "dtype": "string", "shape": []},
                },
            }
        }

    run = Run(configuration=conf(1))
    first = run.desc_bundle
    for i in range(3):
        run.event(i, first)
    second = run.descriptor(DATA_KEYS, configuration=conf(2))  # configuration changed
    for i in range(3, 5):
        run.event(i, second)
    baseline = run.descriptor({"t": {"source": "sim", "dtype": "number", "shape": []}}, "baseline")
    baseline.compose_event(data={"t": 1.0}, timestamps={"t": 1.0})
    run.stop()
    for name, doc in run.docs:
        catalog.insert(name, doc)

    stream = catalog[-1].primary
    assert len(stream.descriptors) == 2
    assert [d["uid"] for d in stream.descriptors] == [
        first.descriptor_doc["uid"],
        second.descriptor_doc["uid"],
    ]
    ds = stream.read()
    assert ds["n"].values.tolist() == [0, 1, 2, 3, 4]
    sent = [d for n, d in run.docs if n == "event"]
    np.testing.assert_array_equal(ds["time"].values, [e["time"] for e in sent])
    assert ds["s"].values.tolist() == ["s0", "s1", "s2", "s3", "s4"]
    config = stream.config["det"]
    assert config["det_sigma"].values.tolist() == [1, 1, 1, 2, 2]
    assert config["det_mode"].values.tolist() == ["m1", "m1", "m1", "m2", "m2"]
    np.testing.assert_array_equal(config["time"].values, ds["time"].values)
    assert stream.to_dask().compute().identical(ds)
    assert xr.concat(list(stream.iter_chunks(size=1)), "time").identical(ds)
    assert stream.read(events=slice(2, 4))["n"].values.tolist() == [2, 3]
    assert list(catalog[-1]) == ["primary", "baseline"]


# ---------------------------------------------------------------- field kinds


def test_stream_with_zero_events(catalog):
    run = Run(
        data_keys={
            "x": {"source": "s", "dtype": "number", "shape": []},
            "n": {"source": "s", "dtype": "integer", "shape": []},
            "s": {"source": "s", "dtype": "string", "shape": []},
            "img": {"source": "s", "dtype": "array", "shape": [2, 3]},
            "flag": {"source": "s", "dtype": "boolean", "shape": []},
        }
    )
    run.stop()
    catalog.ingest(run.docs)
    stream = catalog[-1].primary
    assert len(stream) == 0
    ds = stream.read()
    assert ds.sizes["time"] == 0
    assert ds["x"].dtype == np.float64
    assert ds["n"].dtype == np.int64
    assert ds["s"].dtype.kind == "U"
    assert ds["flag"].dtype == np.bool_
    assert ds["img"].shape == (0, 2, 3)
    assert ds["time"].dtype == np.float64
    assert stream.to_pandas().empty
    assert stream.to_dask().sizes["time"] == 0
    assert list(stream.iter_chunks()) == []
    assert stream.timestamps().sizes["time"] == 0


def test_string_and_boolean_fields(catalog):
    keys = {
        "s": {"source": "s", "dtype": "string", "shape": []},
        "flag": {"source": "s", "dtype": "boolean", "shape": []},
    }
    run = Run(data_keys=keys)
    values = ["", "Ni", "ünïcødé ✓", "a much longer string value " * 3]
    for i, v in enumerate(values):
        ev = run.desc_bundle.compose_event(
            data={"s": v, "flag": i % 2 == 0}, timestamps={"s": 0.0, "flag": 0.0}
        )
        run.docs.append(("event", ev))
    catalog.ingest(run.docs)
    ds = catalog[-1].primary.read()
    assert ds["s"].values.tolist() == values
    assert ds["flag"].dtype == np.bool_
    assert ds["flag"].values.tolist() == [True, False, True, False]


def test_variable_length_fields(catalog):
    keys = {
        "spectrum": {"source": "s", "dtype": "array", "shape": [None]},
        "rag": {"source": "s", "dtype": "array", "shape": [3]},
    }
    run = Run(data_keys=keys)
    spectra = [[1.0, 2.0], [3.0], [], [4.0, 5.0, 6.0]]
    ragged = [[1, 2, 3], [1], [1, 2], [5, 6, 7]]
    for a, b in zip(spectra, ragged, strict=True):
        ev = run.desc_bundle.compose_event(
            data={"spectrum": a, "rag": b}, timestamps={"spectrum": 0.0, "rag": 0.0}
        )
        run.docs.append(("event", ev))
    run.stop()
    catalog.ingest(run.docs)
    ds = catalog[-1].primary.read()
    assert ds.sizes["time"] == 4
    for got, want in zip(ds["spectrum"].values, spectra, strict=True):
        assert np.asarray(got).tolist() == want
    for got, want in zip(ds["rag"].values, ragged, strict=True):
        assert np.asarray(got).tolist() == want
    other = runbroker.temp()
    other.ingest(catalog[-1].documents())
    again = other[-1].primary.read()
    for got, want in zip(again["rag"].values, ragged, strict=True):
        assert np.asarray(got).tolist() == want
    other.close()


@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32", "float64"])
def test_inline_images_round_trip_exactly(catalog, dtype):
    rng = np.random.default_rng(3)
    shape = (64, 48)
    keys = {
        "img": {
            "source": "cam",
            "dtype": "array",
            "shape": list(shape),
            "dtype_numpy": np.dtype(dtype).str,
            "dims": ["y", "x"],
        },
        "small": {"source": "cam", "dtype": "array", "shape": [2, 2]},
    }
    run = Run(data_keys=keys)
    frames = []
    for i in range(5):
        frame = (rng.random(shape) * 1000).astype(dtype)
        if i == 2:
            frame[:] = 7  # compresses well
        frames.append(frame)
        ev = run.desc_bundle.compose_event(
            data={"img": frame, "small": np.arange(4.0).reshape(2, 2) + i},
            timestamps={"img": 0.0, "small": 0.0},
        )
        run.docs.append(("event", ev))
    run.stop()
    for name, doc in run.docs:
        catalog.insert(name, doc)
    ds = catalog[-1].primary.read()
    assert ds["img"].dims == ("time", "y", "x")
    assert ds["img"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ds["img"].values, np.stack(frames))
    assert ds["small"].shape == (5, 2, 2)
    np.testing.assert_array_equal(ds["small"].values[3], np.arange(4.0).reshape(2, 2) + 3)
    replayed = [d for n, d in catalog[-1].documents(pages=False) if n == "event"]
    for got, want in zip(replayed, frames, strict=True):
        np.testing.assert_array_equal(np.asarray(got["data"]["img"]), want)


def test_images_from_a_run_engine(catalog, RE):
    rng = np.random.default_rng(11)
    cam = SynSignal(func=lambda: rng.integers(0, 4096, (16, 16)).astype("uint16"), name="cam")
    sent = []
    RE.subscribe(lambda n, d: sent.append(copy.deepcopy(d)) if n == "event" else None)
    RE(bp.count([cam], num=4))
    ds = catalog[-1].primary.read()
    np.testing.assert_array_equal(ds["cam"].values, np.stack([e["data"]["cam"] for e in sent]))
    assert ds["cam"].dtype == np.uint16


def _number_pages(catalog):
    """A ``number`` field whose first stored page happens to hold only integral values."""
    run = Run(data_keys={"x": DATA_KEYS["x"]})
    for name, doc in run.docs:
        catalog.insert(name, doc)
    events = [
        run.desc_bundle.compose_event(data={"x": v}, timestamps={"x": 0.0})
        for v in (1, 2, 3.5, 4.5)
    ]
    catalog.insert("event_page", pack_event_page(*events[:2]))
    catalog.flush()
    catalog.insert("event_page", pack_event_page(*events[2:]))
    catalog.flush()
    return catalog[-1].primary


def test_number_field_reads_as_float_whatever_the_values(catalog):
    stream = _number_pages(catalog)
    full = stream.read()
    assert full["x"].dtype == np.float64
    assert full["x"].values.tolist() == [1.0, 2.0, 3.5, 4.5]
    head = stream.read(events=slice(0, 2))
    assert head["x"].dtype == np.float64  # same dtype for any slice of the stream
    assert head.identical(full.isel(time=slice(0, 2)))


def test_to_dask_does_not_truncate_a_number_field(catalog):
    stream = _number_pages(catalog)
    lazy = stream.to_dask()
    assert lazy["x"].dtype == np.float64
    assert lazy.compute()["x"].values.tolist() == [1.0, 2.0, 3.5, 4.5]
    assert lazy.compute().identical(stream.read())


# ---------------------------------------------------------------- durability and replay


def test_durability_event_mode(tmp_path):
    path = tmp_path / "durable.db"
    writer = runbroker.open(path, durability="event")
    reader = runbroker.open(path)
    try:
        run = Run()
        for name, doc in run.docs:
            writer.insert(name, doc)
        for i in range(3):
            writer.insert("event", run.event(i))
            # Committed before insert() returned: another connection sees it at once.
            assert len(reader[-1].primary) == i + 1
        writer.insert("stop", run.stop())
        assert reader[-1].stop["exit_status"] == "success"
        assert reader[-1].primary.read()["n"].values.tolist() == [0, 1, 2]
    finally:
        writer.close()
        reader.close()
    again = runbroker.open(path)
    assert again[-1].primary.read()["s"].values.tolist() == ["s0", "s1", "s2"]
    again.close()


def test_documents_replayed_into_a_fresh_catalog(catalog, make_catalog, RE):
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    sample_z = SynAxis(name="sample_z")
    rng = np.random.default_rng(5)
    cam = SynSignal(func=lambda: rng.random((5, 4)), name="cam")
    label = SynSignal(func=lambda: f"L{int(rng.integers(10))}", name="label")
    RE.preprocessors.append(bpp.SupplementalData(baseline=[sample_z]))
    RE(bp.scan([det, cam, label], motor, -1, 1, 6), sample={"name": "Ni", "tags": ["a", "b"]})
    original = catalog[-1]

    for pages in (True, False):
        fresh = make_catalog()
        fresh.ingest(original.documents(pages=pages))
        copy_ = fresh[original.uid]
        assert copy_.metadata["start"] == original.metadata["start"]
        assert copy_.metadata["stop"] == original.metadata["stop"]
        assert copy_.primary.descriptors == original.primary.descriptors
        assert list(copy_) == list(original)
        for stream in original:
            a, b = original[stream].read(), copy_[stream].read()
            assert a.identical(b), stream
            assert original[stream].timestamps().identical(copy_[stream].timestamps())
        assert list(copy_.documents()) == list(original.documents())

    # Replaying event by event through insert() gives the same again.
    third = make_catalog()
    for name, doc in original.documents(pages=False):
        third.insert(name, doc)
    assert third[-1].primary.read().identical(original.primary.read())
    assert third[-1].baseline.read().identical(original.baseline.read())


def test_replay_order_does_not_depend_on_when_pages_were_flushed(catalog, make_catalog):
    # Two streams whose last events were committed at different times: the replay must put
    # pages where their events arrived, so that a copy made from the replay (one
    # transaction) replays identically. Regression: the order once followed flush timing.
    run = compose_run()
    catalog.insert("start", run.start_doc)
    keys = {"x": {"source": "s", "dtype": "number", "shape": []}}
    baseline = run.compose_descriptor(name="baseline", data_keys=keys)
    primary = run.compose_descriptor(name="primary", data_keys=keys)
    catalog.insert("descriptor", baseline.descriptor_doc)
    catalog.insert("descriptor", primary.descriptor_doc)

    def event(desc, x):
        return desc.compose_event(data={"x": x}, timestamps={"x": 1.0})

    catalog.insert("event", event(baseline, 0.0))
    catalog.insert("event", event(primary, 1.0))
    catalog.insert("event", event(primary, 2.0))
    catalog.flush()
    catalog.insert("event", event(baseline, 3.0))
    catalog.insert("stop", run.compose_stop())
    original = list(catalog[-1].documents())
    for pages in (True, False):
        copy_ = make_catalog()
        copy_.ingest(catalog[-1].documents(pages=pages))
        assert list(copy_[-1].documents()) == original
