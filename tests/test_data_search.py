"""Per-field statistics stored at a run's stop, ``Field`` queries, ``runbroker db stats``.

Every test runs on SQLite, PostgreSQL and the folder store through the ``catalog`` fixture.
Runs come from a real RunEngine with ophyd's simulated devices, or are hand-built with
event_model's compose_run where a case needs exact values (NaN, an empty stream, no events).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import det, motor

import runbroker
from runbroker.cli import main
from runbroker.cli_stats import fill_stats
from runbroker.queries import Field, FieldStat, Key, Query, QueryError
from runbroker.testing.detectors import ADHDF5Detector
from runbroker.testing.stores import stores_except


def _run(
    catalog, data: dict[str, list], stop: bool = True, md: dict | None = None, stream="primary"
):
    """A run with one stream whose fields hold ``data`` (values per event), as one page."""
    bundle = compose_run(metadata=md or {})
    keys = {
        f: {"source": "sim", "dtype": "array" if np.ndim(v[0]) else "number", "shape": []}
        for f, v in data.items()
        if v
    } or {f: {"source": "sim", "dtype": "number", "shape": []} for f in data}
    for f, v in data.items():
        if v and np.ndim(v[0]):
            keys[f]["shape"] = list(np.shape(v[0]))
    desc = bundle.compose_descriptor(name=stream, data_keys=keys)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    n = max((len(v) for v in data.values()), default=0)
    if n:
        page = desc.compose_event_page(
            data={f: list(v) for f, v in data.items()},
            timestamps={f: [1.0] * n for f in data},
            seq_num=list(range(1, n + 1)),
            time=[float(i) for i in range(n)],
        )
        docs.append(("event_page", page))
    if stop:
        docs.append(("stop", bundle.compose_stop()))
    catalog.ingest(docs)
    return bundle.start_doc["uid"]


def test_stats_of_a_scan_and_field_queries(catalog, RE):
    RE(scan([det], motor, -1, 1, 5))
    run = catalog[-1]
    m = run.stats["primary"]["motor"]
    assert m == {"count": 5, "min": -1.0, "max": 1.0, "mean": 0.0, "sum": 0.0, "nan": 0}
    assert len(catalog.search(Field("primary", "motor").between(-1, 1))) == 1
    assert len(catalog.search(Field("primary", "motor").between(0, 1))) == 0
    assert len(catalog.search(Field("primary", "det").max() == 1)) == 1
    assert len(catalog.search(Field("primary", "motor").count() >= 5)) == 1
    assert len(catalog.search(Field("baseline", "motor").count() >= 0)) == 0


def test_single_events_and_pages_give_the_same_stats(catalog, RE):
    RE(count([det, motor], 7))  # single events, as a live RunEngine sends them
    live = catalog[-1].stats["primary"]["det"]
    data = catalog[-1].primary.read()["det"].values
    assert live["count"] == 7 and live["sum"] == pytest.approx(data.sum())
    uid = _run(catalog, {"det": data.tolist()})  # the same values as a page
    assert catalog[uid].stats["primary"]["det"] == pytest.approx(live)


def test_nan_negative_and_arrays(catalog):
    frames = [[[1, 2], [3, 4]], [[-1, 0], [0, 0]], [[5, 5], [5, 5]]]
    uid = _run(catalog, {"x": [-2.5, math.nan, 4.0], "img": frames, "s": ["a", "b", "c"]})
    stats = catalog[uid].stats["primary"]
    assert stats["x"] == {"count": 3, "nan": 1, "sum": 1.5, "min": -2.5, "max": 4.0, "mean": 0.75}
    # Arrays: the same statistics over the per-frame sums 10, -1, 20.
    assert stats["img"] == {"count": 3, "nan": 0, "sum": 29.0, "min": -1.0, "max": 20.0,
                            "mean": pytest.approx(29 / 3)}  # fmt: skip
    assert "s" not in stats  # strings get none
    assert len(catalog.search(Field("primary", "img").sum() > 28)) == 1
    assert len(catalog.search(Field("primary", "x").nan() == 1)) == 1
    assert len(catalog.search(Field("primary", "x").min() < -2)) == 1


def test_all_nan_has_no_min(catalog):
    uid = _run(catalog, {"x": [math.nan, math.nan]})
    assert catalog[uid].stats["primary"]["x"] == {
        "count": 2, "nan": 2, "sum": 0.0, "min": None, "max": None, "mean": None
    }  # fmt: skip
    assert len(catalog.search(Field("primary", "x").min() > -1e300)) == 0
    assert len(catalog.search(Field("primary", "x").min() != 0)) == 0  # no min: no match
    assert len(catalog.search(~(Field("primary", "x").min() == 0))) == 1


def test_empty_stream_and_no_events(catalog):
    uid = _run(catalog, {"x": []})
    assert catalog[uid].stats == {
        "primary": {"x": {"count": 0, "nan": 0, "sum": 0.0, "min": None, "max": None,
                          "mean": None}}
    }  # fmt: skip
    assert len(catalog.search(Field("primary", "x").count() == 0)) == 1
    bundle = compose_run()
    catalog.ingest([("start", bundle.start_doc), ("stop", bundle.compose_stop())])
    assert catalog[bundle.start_doc["uid"]].stats == {}


def test_running_run_has_no_stats_until_it_stops(catalog):
    uid = _run(catalog, {"x": [1.0]}, stop=False)
    assert catalog[uid].stats is None
    assert len(catalog.search(Field("primary", "x").count() == 1)) == 0


def test_field_composes_with_metadata(catalog):
    _run(catalog, {"x": [1.0, 2.0]}, md={"sample": "Ni"})
    _run(catalog, {"x": [1.0, 9.0]}, md={"sample": "Ni"})
    _run(catalog, {"x": [1.0, 2.0]}, md={"sample": "Cu"})
    inside = Field("primary", "x").between(0, 5)
    assert len(catalog.search(inside & (Key("sample") == "Ni"))) == 1
    assert len(catalog.search(inside | (Key("sample") == "Ni"))) == 3
    assert len(catalog.search(~inside)) == 1
    assert len(catalog.search(Key("sample") == "Ni").search(Field("primary", "x").max() > 5)) == 1


@stores_except(
    "http", reason="db stats computes statistics where runs are stored, not through a server"
)
def test_db_stats_for_runs_stored_without_them(catalog, monkeypatch):
    # Runs stored before statistics existed: their stop left none.
    store = catalog.store
    if store_is_folder(catalog):
        monkeypatch.setattr(type(store), "_write_stats", lambda self, writer: None)
    else:
        monkeypatch.setattr(store, "stats_at_stop", False)
    uid = _run(catalog, {"x": [3.0, 4.0]})
    assert catalog[uid].stats is None and store.unsummarised() == [uid]
    monkeypatch.undo()
    assert fill_stats(catalog) == 1
    assert catalog[uid].stats["primary"]["x"]["sum"] == 7.0
    assert fill_stats(catalog) == 0  # idempotent
    assert len(catalog.search(Field("primary", "x").mean() == 3.5)) == 1
    assert fill_stats(catalog, recompute=True) == 1


def store_is_folder(catalog) -> bool:
    return type(catalog.store).__name__ == "FolderStore"


@stores_except(
    "http", reason="db stats computes statistics where runs are stored, not through a server"
)
def test_fill_gives_file_backed_images_stats(catalog, RE, tmp_path):
    fccd = ADHDF5Detector("fccd", tmp_path / "data", shape=(4, 5))
    RE(count([fccd], 3))
    run = catalog[-1]
    image = fccd.image_key
    assert image not in run.stats["primary"]  # datum ids at ingest: no statistics
    assert fill_stats(catalog, fill=True) == 1
    frames = run.primary.read([image])[image].values
    sums = frames.reshape(3, -1).sum(axis=1)
    assert run.stats["primary"][image]["sum"] == pytest.approx(sums.sum())
    assert run.stats["primary"][image]["max"] == pytest.approx(sums.max())
    assert len(catalog.search(Field("primary", image).sum() > sums.sum() - 1)) == 1
    assert fill_stats(catalog, fill=True) == 0


@stores_except(
    "http", reason="db stats computes statistics where runs are stored, not through a server"
)
def test_cli_db_stats(catalog, capsys):
    if "://" in catalog.store.uri and not catalog.store.uri.startswith("sqlite"):
        uri = catalog.store.uri
    else:
        uri = str(getattr(catalog.store, "folder", None) or catalog.store.uri)
    _run(catalog, {"x": [1.0]})
    catalog.close()
    assert main(["db", "stats", uri, "-q"]) == 0
    assert "statistics computed for 0 runs" in capsys.readouterr().out
    assert main(["db", "stats", uri, "-q", "--recompute"]) == 0
    assert "for 1 run\n" in capsys.readouterr().out


def test_query_json_form_and_errors():
    q = (Field("primary", "theta").sum() > 1000) & ~(Field("s t", "a.b").nan() != 0)
    assert Query.from_json(q.to_json()) == q
    assert Query.from_url(q.to_url()) == q
    assert (Field("primary", "x").min() >= 1).to_dict() == {
        "type": "field_stat", "stream": "primary", "field": "x", "stat": "min", "op": "ge",
        "value": 1,
    }  # fmt: skip
    with pytest.raises(QueryError, match="unknown statistic 'median'"):
        FieldStat("primary", "x", "median", "gt", 1)
    with pytest.raises(QueryError, match="compare with a number"):
        _ = Field("primary", "x").min() > "a"
    with pytest.raises(QueryError, match="finite"):
        _ = Field("primary", "x").min() > math.nan
    with pytest.raises(QueryError, match="stream must be a non-empty str"):
        Field("", "x")
    with pytest.raises(TypeError, match="no truth value"):
        bool(Field("primary", "x").min() > 1)


def test_alias_rewrite_by_replace():
    import dataclasses

    q = Field("primary", "th").between(0, 5)
    renamed = type(q)(*(dataclasses.replace(sub, field="theta") for sub in q.queries))
    assert renamed == Field("primary", "theta").between(0, 5)


def test_stats_survive_reopening(catalog, tmp_path: Path):
    uid = _run(catalog, {"x": [1.0, 2.0]})
    again = runbroker.open(catalog.store.uri) if not store_is_folder(catalog) else None
    if again is not None:
        assert again[uid].stats == catalog[uid].stats
        again.close()


def _events(desc, values: list[float], first: int = 1) -> list[tuple[str, dict]]:
    return [
        ("event", desc.compose_event(data={"x": v}, timestamps={"x": 1.0}, seq_num=first + i))
        for i, v in enumerate(values)
    ]


@stores_except("folder", reason="the SQL writer's statistics in memory against other writers")
def test_stats_whatever_the_writer_saw(catalog, store_kind):
    """A run's stop uses what its writer accumulated when the run began in the open
    transaction; otherwise it checks that against the stored pages: a run committed before
    it stopped, events another writer added, two descriptors of one stream."""
    keys = {"x": {"source": "sim", "dtype": "number", "shape": []}}
    # Committed before it stops.
    early = compose_run()
    desc = early.compose_descriptor(name="primary", data_keys=keys)
    for name, doc in [("start", early.start_doc), ("descriptor", desc.descriptor_doc)]:
        catalog.insert(name, doc)
    for name, doc in _events(desc, [1.0, 2.0]):
        catalog.insert(name, doc)
    catalog.flush()
    catalog.insert("stop", early.compose_stop())
    # Events from another writer between this one's.
    shared = compose_run()
    desc2 = shared.compose_descriptor(name="primary", data_keys=keys)
    for name, doc in [("start", shared.start_doc), ("descriptor", desc2.descriptor_doc)]:
        catalog.insert(name, doc)
    for name, doc in _events(desc2, [5.0]):
        catalog.insert(name, doc)
    catalog.flush()
    other = runbroker.open(catalog.store.uri)
    for name, doc in _events(desc2, [-3.0, 7.0], first=2):
        other.insert(name, doc)
    other.close()
    catalog.insert("stop", shared.compose_stop())
    # Two descriptors named alike, in one transaction.
    twice = compose_run()
    a = twice.compose_descriptor(name="primary", data_keys=keys)
    b = twice.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", twice.start_doc), ("descriptor", a.descriptor_doc)]
    docs += [("descriptor", b.descriptor_doc), *_events(a, [4.0]), *_events(b, [6.0, 8.0])]
    for name, doc in [*docs, ("stop", twice.compose_stop())]:
        catalog.insert(name, doc)
    catalog.flush()

    def x(run):
        return catalog.store.stats(run.start_doc["uid"])["primary"]["x"]

    assert x(early) == {"count": 2, "nan": 0, "sum": 3.0, "min": 1.0, "max": 2.0, "mean": 1.5}
    assert x(shared) == {"count": 3, "nan": 0, "sum": 9.0, "min": -3.0, "max": 7.0, "mean": 3.0}
    assert x(twice) == {"count": 3, "nan": 0, "sum": 18.0, "min": 4.0, "max": 8.0, "mean": 6.0}
    hits = catalog.search(Field("primary", "x").min() < 0)
    assert list(hits) == [shared.start_doc["uid"]]
