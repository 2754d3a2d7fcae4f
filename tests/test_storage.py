"""Storage-level behaviour: page codecs, page layout, group commit, adaptive search plans."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import compose_run

import runbroker
from runbroker import ConflictError, DocumentError
from runbroker.queries import Key, Not
from runbroker.store import pages as codec
from runbroker.store import sql as sqlstore
from runbroker.store import sqlwrite

DATA_KEYS = {
    "x": {"dtype": "number", "shape": [], "source": "sim:x"},
    "y": {"dtype": "number", "shape": [], "source": "sim:y"},
}


def _new_run(cat: runbroker.Catalog, **md):
    run = compose_run(metadata=md)
    cat.insert("start", run.start_doc)
    desc = run.compose_descriptor(name="primary", data_keys=DATA_KEYS)
    cat.insert("descriptor", desc.descriptor_doc)
    return run, desc


def _page_ids(cat: runbroker.Catalog) -> list:
    stream = cat[-1].primary
    return cat.store.pages(stream.run_uid, [d["uid"] for d in stream.descriptors])


def test_codecs_round_trip_constant_and_repeated_columns():
    t = np.linspace(0.0, 1.0, 50)
    cols = {
        "time": t,
        "same_as_time": t.copy(),
        "const": np.full(50, 7.5),
        "ints": np.arange(50),
        "image": np.arange(50 * 64 * 64, dtype="uint16").reshape(50, 64, 64),
        "strings": [f"s{i}" for i in range(50)],
    }
    blob = codec.encode(cols)
    out = codec.decode(blob)
    for name, col in cols.items():
        if isinstance(col, list):
            assert out[name] == col
        else:
            assert out[name].dtype == col.dtype and np.array_equal(out[name], col), name
    # The repeated and the constant column take (almost) no room.
    plain = codec.encode({"time": t, "ints": np.arange(50)})
    assert len(codec.encode({"time": t, "same": t.copy(), "c": np.full(50, 7.5)})) < len(plain)
    assert codec.decode(blob, ["same_as_time"])["same_as_time"].tolist() == t.tolist()


def test_numpy_event_pages_are_accepted_and_read_back(catalog):
    run, desc = _new_run(catalog)
    x, y = np.random.rand(100), np.random.rand(100)
    page = desc.compose_event_page(
        data={"x": x, "y": y},
        timestamps={"x": np.full(100, 1.0), "y": np.full(100, 2.0)},
        seq_num=np.arange(1, 101),
        time=np.linspace(10, 20, 100),
        validate=False,
    )
    catalog.insert("event_page", page)
    catalog.insert("stop", run.compose_stop())
    ds = catalog[-1].primary.read()
    assert np.array_equal(ds["x"].values, x) and np.array_equal(ds["y"].values, y)
    assert np.array_equal(catalog[-1].primary.timestamps()["y"].values, np.full(100, 2.0))


def test_numpy_page_with_float_seq_nums_is_refused(catalog):
    _, desc = _new_run(catalog)
    page = desc.compose_event_page(
        data={"x": np.ones(3), "y": np.ones(3)},
        timestamps={"x": np.ones(3), "y": np.ones(3)},
        seq_num=[1, 2, 3],
        time=[1.0, 2.0, 3.0],
        validate=False,
    )
    page["seq_num"] = np.array([1.0, 2.5, 3.0])
    with pytest.raises(DocumentError) as info:
        catalog.insert("event_page", page)
    assert "seq_num" in str(info.value) and "integer" in str(info.value)
    catalog.flush()
    assert len(catalog[-1].primary) == 0


def test_a_refused_document_keeps_the_pending_ones(catalog, tmp_path):
    """Group commit: documents waiting for the commit survive a refused one after them."""
    run, desc = _new_run(catalog, sample="Ni")
    catalog.insert(
        "event", desc.compose_event(data={"x": 1.0, "y": 2.0}, timestamps={"x": 0, "y": 0})
    )
    with pytest.raises(ConflictError):
        catalog.insert("start", dict(run.start_doc, sample="Cu"))
    catalog.insert("stop", run.compose_stop())
    catalog.flush()  # other processes see it within 100 ms; the test need not wait
    other = runbroker.open(catalog.store.uri, readonly=True)
    try:
        stored = other[-1]
        assert stored.start["sample"] == "Ni"
        assert stored.primary.read()["x"].values.tolist() == [1.0]
        assert stored.stop["exit_status"] == "success"
    finally:
        other.close()


def test_slow_live_run_is_compacted_to_few_pages(catalog):
    run, desc = _new_run(catalog)
    for i in range(100):  # a flush after every event: the worst case for page count
        catalog.insert(
            "event",
            desc.compose_event(data={"x": float(i), "y": -i}, timestamps={"x": 0, "y": 0}),
        )
        catalog.flush()
    assert len(_page_ids(catalog)) < sqlwrite._COMPACT_AFTER + 1
    catalog.insert("stop", run.compose_stop())
    assert len(_page_ids(catalog)) == 1
    ds = catalog[-1].primary.read()
    assert ds["x"].values.tolist() == [float(i) for i in range(100)]
    assert ds["y"].values.tolist() == [-float(i) for i in range(100)]


def test_compaction_keeps_out_of_order_events_sorted(catalog):
    run, desc = _new_run(catalog)
    events = [
        desc.compose_event(
            data={"x": float(i), "y": 0.0}, timestamps={"x": 0, "y": 0}, seq_num=i + 1
        )
        for i in range(60)
    ]
    order = list(range(60))
    np.random.default_rng(1).shuffle(order)
    for i in order:
        catalog.insert("event", events[i])
        catalog.flush()
    catalog.insert("stop", run.compose_stop())
    ds = catalog[-1].primary.read()
    assert ds["x"].values.tolist() == [float(i) for i in range(60)]
    replayed = [d for n, d in catalog[-1].documents(pages=False) if n == "event"]
    assert sorted(e["seq_num"] for e in replayed) == list(range(1, 61))


@pytest.mark.parametrize("shared", [True, False])
def test_searches_agree_whichever_plan_is_chosen(catalog, shared):
    """Above _COMMON hits a search walks runs by time; below, it collects them by index."""
    n = sqlstore._COMMON + 500
    docs = []
    for i in range(n):
        run = compose_run(
            metadata={"scan_id": i, "sample": "Ni" if shared or i % 997 == 0 else f"s{i}"}
        )
        docs.append(("start", run.start_doc))
    catalog.ingest(docs)
    starts = [d for _, d in docs]
    newest_first = sorted(starts, key=lambda d: (d["time"], d["uid"]), reverse=True)
    for query in (Key("sample") == "Ni", (Key("sample") == "Ni") & (Key("scan_id") >= 5)):
        want = [d["uid"] for d in newest_first if query.matches({"start": d, "stop": None})]
        hits = catalog.search(query)
        assert [r.uid for r in hits[-100:]] == want[:100]
        assert len(hits) == len(want)
        assert list(hits)[: len(want)] == want
        negated = catalog.search(Not(query))
        assert len(negated) == n - len(want)


def test_pool_sizes_reach_the_postgresql_engine(postgres_url):
    """Pool sizes are a PostgreSQL setting (SQLite files need no pool): so this test is."""
    from runbroker.testing.postgres import new_schema

    cat = runbroker.open(new_schema(postgres_url, "pool_test"), pool_size=2, max_overflow=1)
    try:
        assert cat.store._engine.pool.size() == 2
        assert cat.store._engine.pool._max_overflow == 1
        assert len(cat) == 0
    finally:
        cat.close()
