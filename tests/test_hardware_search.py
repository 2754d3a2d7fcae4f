"""Hardware search: ``Device``, ``Config`` and ``DataKey`` on every store, from real RunEngine
runs and from hand-made descriptors whose values we chose, checked against ``matches``."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from event_model import compose_run

import runbroker
from runbroker.errors import QueryError
from runbroker.queries import And, Config, ConfigReading, DataKey, Device, Key, Not, Or, Query
from runbroker.store.migrations import downgrade, upgrade
from runbroker.testing.stores import stores_except


@pytest.fixture
def cat(store_kind: str, request: pytest.FixtureRequest) -> runbroker.Catalog:
    """The ``catalog`` of this store kind (asked for only once the kind is known to run)."""
    return request.getfixturevalue("catalog")


def _uids(cat: runbroker.Catalog, query: Query) -> set[str]:
    return set(cat.search(query))


@pytest.fixture
def recorded(cat: runbroker.Catalog) -> dict[str, str]:
    """Three RunEngine runs: a count of det (motor1 in the baseline), a scan of det over
    motor, and a count of det after its sigma was set to 3."""
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import SynGauss, motor, motor1

    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    RE(count([det], 2))
    RE.preprocessors.clear()
    RE(scan([det], motor, -1, 1, 3))
    det.sigma.put(3.0)
    RE(count([det], 2))
    cat.flush()
    return {"count": cat[-3].uid, "scan": cat[-2].uid, "wide": cat[-1].uid}


def test_real_runs(cat: runbroker.Catalog, recorded: dict[str, str]) -> None:
    catalog = cat
    count, scan, wide = recorded["count"], recorded["scan"], recorded["wide"]
    assert _uids(catalog, Device("det")) == {count, scan, wide}
    assert _uids(catalog, Device("motor")) == {scan}
    assert _uids(catalog, Device("motor1")) == {count}
    assert _uids(catalog, Device("motor1", stream="baseline")) == {count}
    assert _uids(catalog, Device("motor1", stream="primary")) == set()
    assert _uids(catalog, Device("nothing")) == set()
    # ophyd's configuration keys are det_sigma ...: the short name finds them too.
    assert _uids(catalog, Config("det", "sigma") > 2) == {wide}
    assert _uids(catalog, Config("det", "det_sigma") == 1) == {count, scan}
    assert _uids(catalog, Config("det", "sigma") != 1) == {wide}
    assert _uids(catalog, Config("det", "sigma").in_([3, 7])) == {wide}
    assert _uids(catalog, Config("det", "noise") == "none") == {count, scan, wide}
    assert _uids(catalog, Config("motor", "velocity") >= 0) == {scan}
    assert _uids(catalog, Config("det", "sigma", stream="baseline") > 0) == set()
    number = DataKey("det", dtype="number", shape=[], external=False, stream="primary")
    assert _uids(catalog, number) == {count, scan, wide}
    assert _uids(catalog, DataKey("det", external=True)) == set()
    assert _uids(catalog, DataKey("motor", source="SIM:motor")) == {scan}
    assert _uids(catalog, DataKey("det", shape=[2])) == set()
    # Composed with metadata queries, and negated.
    assert _uids(catalog, Device("det") & (Key("plan_name") == "scan")) == {scan}
    assert _uids(catalog, ~Device("motor") & (Config("det", "sigma") < 2)) == {count}
    assert _uids(catalog, Device("motor") | (Config("det", "sigma") > 2)) == {scan, wide}


@pytest.mark.parametrize("walk", [True, False], ids=["walk-by-time", "by-index"])
@stores_except("http", reason="the plan chosen is the SQL store's; over HTTP it is the server's")
def test_both_plans_agree(
    cat: runbroker.Catalog, recorded: dict[str, str], walk: bool, monkeypatch: Any
) -> None:
    """Every run is 'common' (walk the runs by time, probing each run's sets) or none is
    (collect the runs of the matching sets): both answer as ``matches`` does."""
    import runbroker.store.sql as sqlstore

    monkeypatch.setattr(sqlstore.SQLStore, "_is_common", lambda *args: walk)
    records = {uid: cat[uid] for uid in recorded.values()}
    queries = [
        Device("det"),
        Device("motor1", stream="baseline"),
        Config("det", "sigma") > 2,
        Config("det", "sigma") == 1,
        Config("det", "noise") == "none",
        ~Device("motor") & (Config("det", "sigma") < 2),
        DataKey("det", dtype="number", shape=[], external=False, stream="primary"),
        Device("motor") | (Config("det", "sigma") > 2),
    ]
    for query in queries:
        want = {uid for uid, run in records.items() if query.matches(_record(run))}
        assert _uids(cat, query) == want, query


def _record(run: Any) -> dict:
    return {
        "start": run.metadata["start"],
        "stop": run.metadata["stop"],
        "descriptors": [d for name, d in run.documents() if name == "descriptor"],
    }


def test_json_form_round_trips() -> None:
    queries = [
        Device("fccd"),
        Device("fccd", stream="primary"),
        Config("fccd", "acquire_time") > 0.5,
        Config("fccd", "mode", stream="baseline").in_(["a", 1, None]),
        DataKey("fccd_image", shape=[1024, 1024], dtype="array", external=True),
        DataKey("I0", external="FILESTORE:", stream="primary", source="PV:I0", dtype_numpy="<f8"),
    ]
    for q in queries:
        assert Query.from_json(q.to_json()) == q
        assert Query.from_url(q.to_url()) == q
    both = And(*queries) | Not(queries[0])
    assert Query.from_dict(both.to_dict()) == both
    assert (Config("fccd", "acquire_time") > 0.5).to_dict() == {
        "type": "config",
        "device": "fccd",
        "name": "acquire_time",
        "op": "gt",
        "value": 0.5,
        "stream": None,
    }


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: Config("fccd", "acquire_time") == [0.5, 1], "JSON scalar"),
        (lambda: Config("fccd", "acquire_time") > {"a": 1}, "JSON scalar"),
        (lambda: Config("fccd", "acquire_time") > float("nan"), "finite"),
        (lambda: Config("fccd", "acquire_time").in_("fast"), "list of scalars"),
        (lambda: Config("", "acquire_time"), "Config device"),
        (lambda: ConfigReading("fccd", "x", "like", 1), "unknown op"),
        (lambda: Device(3), "Device name"),
        (lambda: Device("fccd", stream=""), "stream"),
        (lambda: DataKey("img", shape="1024"), "shape"),
        (lambda: DataKey("img", shape=[1.5]), "shape's size"),
        (lambda: DataKey("img", dtype=5), "dtype"),
        (lambda: DataKey("img", external=1), "external"),
        (lambda: Query.from_dict({"type": "device", "name": "x", "colour": 1}), "colour"),
    ],
)
def test_bad_queries_are_refused_by_name(build: Callable[[], Any], says: str) -> None:
    with pytest.raises(QueryError, match=says):
        build()


def test_a_record_without_descriptors_matches_no_positive_query() -> None:
    record = {"start": {"uid": "u"}, "stop": None}
    assert not Device("x").matches(record)
    assert not (Config("x", "y") == 1).matches(record)
    assert not DataKey("x").matches(record)
    assert (Config("x", "y") != 1).matches(record)  # exactly NOT ==, as Key's != is


# -- hand-made runs: every value chosen, the SQL answer checked against matches() ----------

_VALUES: list[Any] = [0, 1, 2.5, -3, 7, "fast", "slow", "a/b@c", True, False, None, [1, 2]]
_DEVICES = ["fccd", "det", "a%2Fb", "x y"]  # quoted in the stores
_STREAMS = ["primary", "baseline", "dark"]
_KEYS = ["img", "I0", "th"]


def _descriptor(rng: random.Random, bundle: Any, stream: str, keys: list[str]) -> dict:
    devices = rng.sample(_DEVICES, rng.randint(1, 3))
    configuration = {}
    for dev in devices:
        names = rng.sample(["gain", f"{dev}_gain", "mode", f"{dev}_mode"], rng.randint(0, 3))
        data = {name: rng.choice(_VALUES) for name in names}
        configuration[dev] = {"data": data, "timestamps": {name: 0.0 for name in data}}
    data_keys = {}
    for key in keys:
        dk: dict[str, Any] = {
            "source": rng.choice(["PV:a", "PV:b"]),
            "dtype": rng.choice(["number", "array"]),
            "shape": rng.choice([[], [2, 3], [4]]),
        }
        if rng.random() < 0.5:
            dk["external"] = rng.choice(["FILESTORE:", "STREAM:"])
        if rng.random() < 0.3:
            dk["dtype_numpy"] = rng.choice(["<f8", "<u2"])
        data_keys[key] = dk
    object_keys = {dev: [k for k in data_keys if rng.random() < 0.5] for dev in devices[:1]}
    return bundle.compose_descriptor(
        name=stream, data_keys=data_keys, configuration=configuration, object_keys=object_keys
    ).descriptor_doc


def _hand_made(rng: random.Random, n: int) -> tuple[list[tuple[str, dict]], list[dict]]:
    docs: list[tuple[str, dict]] = []
    records = []
    for i in range(n):
        bundle = compose_run(uid=f"run{i:03d}", time=1000.0 + i, metadata={"scan_id": i})
        docs.append(("start", bundle.start_doc))
        descriptors = []
        for stream in rng.sample(_STREAMS, rng.randint(0, 3)):
            keys = rng.sample(_KEYS, rng.randint(1, 3))  # the same in each of its descriptors
            for _ in range(rng.randint(1, 2)):  # a stream declared twice, at times
                descriptors.append(_descriptor(rng, bundle, stream, keys))
                docs.append(("descriptor", descriptors[-1]))
        stop = bundle.compose_stop()
        docs.append(("stop", stop))
        records.append({"start": bundle.start_doc, "stop": stop, "descriptors": descriptors})
    return docs, records


def _query(rng: random.Random) -> Query:
    stream = rng.choice([None, None, *_STREAMS])
    kind = rng.randrange(4)
    if kind == 0:
        return Device(rng.choice(_DEVICES), stream=stream)
    if kind == 1:
        builder = Config(rng.choice(_DEVICES), rng.choice(["gain", "mode", "det_gain"]), stream)
        value = rng.choice([v for v in _VALUES if not isinstance(v, list)])
        op = rng.choice(["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "in_"])
        if op == "in_":
            return builder.in_(rng.sample([0, 1, 2.5, "fast", None, True], 2))
        return getattr(builder, op)(value)
    if kind == 2:
        props: dict[str, Any] = {}
        if rng.random() < 0.5:
            props["shape"] = rng.choice([[], [2, 3], [4]])
        if rng.random() < 0.5:
            props["dtype"] = rng.choice(["number", "array"])
        if rng.random() < 0.5:
            props["external"] = rng.choice([True, False, "FILESTORE:", "STREAM:"])
        if rng.random() < 0.2:
            props["dtype_numpy"] = rng.choice(["<f8", "<u2"])
        if rng.random() < 0.2:
            props["source"] = rng.choice(["PV:a", "PV:b"])
        return DataKey(rng.choice(_KEYS), stream=stream, **props)
    parts = [_query(rng) for _ in range(2)]
    return rng.choice([And(*parts), Or(*parts), Not(parts[0])])


def test_search_agrees_with_matches_on_hand_made_runs(cat: runbroker.Catalog) -> None:
    catalog = cat
    rng = random.Random(18)
    docs, records = _hand_made(rng, 40)
    catalog.ingest(docs)
    catalog.flush()
    hits = 0
    for _ in range(150):
        query = _query(rng)
        want = {r["start"]["uid"] for r in records if query.matches(r)}
        assert _uids(catalog, query) == want, query
        hits += bool(want)
    assert hits > 60  # the queries are not all empty


def test_exact_values_of_hand_made_descriptors(cat: runbroker.Catalog) -> None:
    catalog = cat
    bundle = compose_run(uid="exact", metadata={})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "fccd_image": {
                "source": "PV:fccd",
                "dtype": "array",
                "shape": [1024, 1024],
                "external": "FILESTORE:",
                "dtype_numpy": "<u2",
            }
        },
        configuration={
            "fccd": {
                "data": {"fccd_acquire_time": 0.75, "fccd_roi": [0, 0, 10, 10]},
                "timestamps": {"fccd_acquire_time": 0.0, "fccd_roi": 0.0},
            }
        },
        object_keys={"fccd": ["fccd_image"]},
    ).descriptor_doc
    catalog.ingest([("start", bundle.start_doc), ("descriptor", desc)])
    catalog.ingest([("stop", bundle.compose_stop())])
    found = lambda q: list(catalog.search(q))  # noqa: E731
    assert found(Config("fccd", "acquire_time") > 0.5) == ["exact"]
    assert found(Config("fccd", "acquire_time") > 0.75) == []
    assert found(Config("fccd", "acquire_time") <= 0.75) == ["exact"]
    assert found(Config("fccd", "fccd_acquire_time") == 0.75) == ["exact"]
    assert found(Config("fccd", "roi") == 0) == []  # an array is not a searchable reading
    image = DataKey("fccd_image", shape=[1024, 1024], dtype="array", external=True)
    assert found(image) == ["exact"]
    assert found(DataKey("fccd_image", external="FILESTORE:", dtype_numpy="<u2")) == ["exact"]
    assert found(DataKey("fccd_image", shape=[1024])) == []
    assert found(DataKey("fccd_image", external=False)) == []
    assert found(DataKey("fccd_image", stream="baseline")) == []


def test_folder_index_built_again_from_the_files(tmp_path: Any) -> None:
    """The folder store's facts come back when its index is rebuilt from the run files, and
    a descriptor added to a run after reopening is searchable."""
    import shutil

    folder = tmp_path / "runs"
    folder.mkdir()
    cat = runbroker.open(folder, create=True)
    bundle = compose_run(uid="later", metadata={})
    first = bundle.compose_descriptor(
        name="primary",
        data_keys={"x": {"source": "s", "dtype": "number", "shape": []}},
        configuration={"m": {"data": {"m_speed": 2}, "timestamps": {"m_speed": 0.0}}},
        object_keys={"m": ["x"]},
    )
    cat.ingest([("start", bundle.start_doc), ("descriptor", first.descriptor_doc)])
    cat.insert("event", first.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}))
    cat.close()
    shutil.rmtree(folder / ".runbroker")
    cat = runbroker.open(folder)
    assert list(cat.search(Config("m", "speed") == 2)) == ["later"]
    second = bundle.compose_descriptor(
        name="dark", data_keys={"y": {"source": "s", "dtype": "number", "shape": []}}
    )
    cat.insert("descriptor", second.descriptor_doc)
    cat.insert("event", second.compose_event(data={"y": 1.0}, timestamps={"y": 0.0}))
    cat.insert("stop", bundle.compose_stop())
    assert list(cat.search(DataKey("y", stream="dark"))) == ["later"]
    assert list(cat.search(Config("m", "speed", stream="primary") == 2)) == ["later"]
    cat.close()
    cat = runbroker.open(folder)  # the file changed: read again, facts replaced, not doubled
    assert list(cat.search(DataKey("y", stream="dark") & DataKey("x"))) == ["later"]
    cat.close()


@stores_except("folder", "http", reason="SQL schema migrations (alembic) of a catalog database")
def test_migration_0007_writes_the_facts_of_descriptors_stored_before(
    catalog: runbroker.Catalog, RE: Any
) -> None:
    from bluesky.plans import count, scan
    from ophyd.sim import det, motor

    RE(count([det], 2))
    RE(scan([det], motor, -1, 1, 3))
    uri = catalog.store.uri
    uids = set(catalog)
    catalog.close()
    downgrade(uri, "-1")  # the revision before 0007: no hardware facts
    with runbroker.open(uri) as old:
        assert len(old.search(Device("det"))) == 0
    assert upgrade(uri) == "0007"
    with runbroker.open(uri) as cat:
        assert set(cat.search(Device("det"))) == uids
        assert len(cat.search(Device("motor", stream="primary"))) == 1
        assert set(cat.search(Config("det", "sigma") == 1)) == uids
    assert upgrade(uri) == "0007"  # again: nothing doubled
    with runbroker.open(uri) as cat:
        assert len(cat.search(~(Config("det", "sigma") == 1))) == 0
        assert cat.distinct("@device/*") == []  # the facts are no user key


def test_a_plans_runs_share_one_set_of_facts_and_notes_leave_them(
    catalog: runbroker.Catalog, RE: Any
) -> None:
    from bluesky.plans import count
    from ophyd.sim import det

    for _ in range(3):
        RE(count([det], 2))
    uids = set(catalog)
    assert set(catalog.search(Device("det"))) == uids
    store = catalog.store
    if hasattr(store, "_engine"):  # SQL stores: the facts are written once, each run linked
        with store._engine.connect() as conn:
            sets = conn.exec_driver_sql("SELECT count(*) FROM fact_sets").scalar()
            links = conn.exec_driver_sql("SELECT count(*) FROM run_facts").scalar()
        assert (sets, links) == (1, 3)
    # Annotating a run rewrites its searchable note rows; its hardware facts stay.
    run = catalog[sorted(uids)[0]]
    run.annotate("sample burned", tags=["bad"])
    assert set(catalog.search(Device("det") & (Config("det", "sigma") == 1))) == uids
