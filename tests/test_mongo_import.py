"""Importing runs from a databroker MongoDB (``runbroker.importers.import_mongo``).

No MongoDB server can be installed where these tests run, so the source database is a
``mongomock`` database (an in-memory imitation of pymongo's API); the tests are skipped if
``mongomock`` is missing. It is filled the way databroker's ``mongo_normalized`` writer filled
MongoDB: one document per event and per datum, in the collections ``run_start``,
``run_stop``, ``event_descriptor``, ``event``, ``resource`` and ``datum``, each with a Mongo
``_id``. The documents come from a real bluesky RunEngine driving ophyd's simulated devices: a
``count`` with a baseline, two ``scan`` runs, and a ``count`` of ``img``, whose images go to
files (resource and datum documents).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runbroker
from runbroker.cli import _mongo_filter
from runbroker.importers import ImportReport, import_mongo
from runbroker.queries import Key

mongomock = pytest.importorskip("mongomock")

_COLLECTION = {
    "start": "run_start",
    "stop": "run_stop",
    "descriptor": "event_descriptor",
    "event": "event",
    "resource": "resource",
    "datum": "datum",
}

Docs = list[tuple[str, dict]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    """The documents of four runs from a real RunEngine, by run uid, oldest run first."""
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from bluesky.preprocessors import SupplementalData
    from event_model import sanitize_doc
    from ophyd.sim import det, det1, img, motor, motor1

    img.save_path = str(tmp_path_factory.mktemp("img"))  # where ophyd.sim writes its files
    runs: dict[str, Docs] = {}

    def keep(name: str, doc: dict) -> None:
        # sanitize_doc turns numpy values into plain ones, as databroker did before writing.
        doc = sanitize_doc(copy.deepcopy(doc))
        uid = doc["uid"] if name == "start" else next(reversed(runs))
        runs.setdefault(uid, []).append((name, doc))

    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(keep)
    engine.preprocessors.append(SupplementalData(baseline=[motor1]))
    engine(count([det], 3), sample="Ni")
    engine.preprocessors.clear()
    engine(scan([det, det1], motor, -1, 1, 5), sample={"name": "Cu", "temp": 300})
    engine(count([img, det], 3))
    engine(scan([det], motor, 0, 2, 3))
    return runs


def _fill(db: Any, runs: dict[str, Docs], shuffle: bool = False) -> None:
    """Write the documents as databroker did: one Mongo document each, with an ``_id``.

    ``shuffle`` stores each run's documents in a random order, as a database that was merged
    or restored may hold them: the importer must not rely on the order in MongoDB.
    """
    rng = np.random.default_rng(0)
    for docs in runs.values():
        docs = list(docs)
        if shuffle:
            docs = [docs[i] for i in rng.permutation(len(docs))]
        for name, doc in docs:
            # insert_one adds "_id" to the dict it is given: keep the recorded ones clean.
            db[_COLLECTION[name]].insert_one(copy.deepcopy(doc))


@pytest.fixture
def mongo_db(recorded: dict[str, Docs]) -> Any:
    db = mongomock.MongoClient()["databroker"]
    _fill(db, recorded)
    return db


def _by_plan(recorded: dict[str, Docs], plan: str) -> list[str]:
    return [uid for uid, docs in recorded.items() if docs[0][1]["plan_name"] == plan]


def _uid_of_img_run(recorded: dict[str, Docs]) -> str:
    return next(uid for uid, docs in recorded.items() if any(n == "resource" for n, _ in docs))


def _events(docs: Docs, stream: str) -> list[dict]:
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    events = [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]
    return sorted(events, key=lambda e: e["seq_num"])


def _datum_ids(pairs: Iterator[tuple[str, dict]]) -> list[str]:
    ids: list[str] = []
    for name, doc in pairs:
        if name == "datum_page":
            ids.extend(doc["datum_id"])
        elif name == "datum":
            ids.append(doc["datum_id"])
    return ids


def _check_copied(catalog: runbroker.Catalog, uid: str, docs: Docs) -> None:
    """The run in ``catalog`` holds what the RunEngine recorded for it."""
    run = catalog[uid]
    start = next(d for n, d in docs if n == "start")
    stop = next(d for n, d in docs if n == "stop")
    assert run.metadata["start"] == start
    assert run.metadata["stop"] == stop
    assert "_id" not in run.start and "_id" not in run.stop
    streams = {d["name"] for n, d in docs if n == "descriptor"}
    assert set(run) == streams
    for stream in streams:
        events = _events(docs, stream)
        # Unfilled: exactly what the events held (datum ids for the images) ...
        ds = run[stream].read(fill=False)
        assert ds.sizes["time"] == len(events)
        np.testing.assert_array_equal(ds["time"].values, [e["time"] for e in events])
        for key in events[0]["data"]:
            np.testing.assert_array_equal(ds[key].values, [e["data"][key] for e in events])
        # ... and filled: the images from the files ophyd.sim wrote.
        filled = run[stream].read()
        for key, dk in run[stream].data_keys.items():
            if dk.get("external"):
                assert filled[key].shape == (len(events), *dk["shape"])
    # Every datum of the run, once (an upstream replay bug sent single datums twice).
    replayed = _datum_ids(run.documents())
    assert Counter(replayed) == Counter(_datum_ids(iter(docs)))
    for _name, doc in run.documents():
        assert "_id" not in doc


def test_import_copies_every_run(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    report = import_mongo(mongo_db, catalog, progress=False)
    assert (report.copied, report.skipped, report.failed) == (len(recorded), 0, [])
    assert len(catalog) == len(recorded)
    for uid, docs in recorded.items():
        assert uid in catalog
        _check_copied(catalog, uid, docs)
    # Start-time order: the newest run of the catalog is the last one recorded.
    assert catalog[-1].uid == list(recorded)[-1]
    assert len(_datum_ids(catalog[_uid_of_img_run(recorded)].documents())) == 3


def test_second_import_copies_nothing(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    first = import_mongo(mongo_db, catalog, progress=False)
    before = {uid: list(run.documents()) for uid, run in catalog.items()}
    second = import_mongo(mongo_db, catalog, progress=False)
    assert first.copied == len(recorded)
    assert (second.copied, second.skipped, second.failed, second.documents) == (
        0,
        len(recorded),
        [],
        0,
    )
    assert {uid: list(run.documents()) for uid, run in catalog.items()} == before


def test_refused_run_is_reported_and_a_rerun_copies_only_it(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    broken = _by_plan(recorded, "scan")[0]
    descriptors = mongo_db["event_descriptor"]
    descriptor = descriptors.find_one({"run_start": broken})
    # "float" is no JSON-schema dtype: event-model's schema refuses the descriptor.
    descriptors.update_one({"_id": descriptor["_id"]}, {"$set": {"data_keys.det.dtype": "float"}})

    report = import_mongo(mongo_db, catalog, progress=False)
    assert report.copied == len(recorded) - 1
    assert [uid for uid, _ in report.failed] == [broken]
    message = report.failed[0][1]
    assert "descriptor" in message and "data_keys.det.dtype" in message
    assert broken in str(report)
    # Copied whole or not at all: nothing of the refused run is stored.
    assert broken not in catalog
    assert len(catalog) == len(recorded) - 1

    with pytest.raises(runbroker.DocumentError) as caught:
        import_mongo(mongo_db, catalog, progress=False, strict=True)
    assert any(broken in note for note in caught.value.__notes__)

    descriptors.replace_one({"_id": descriptor["_id"]}, descriptor)
    again = import_mongo(mongo_db, catalog, progress=False)
    assert (again.copied, again.skipped, again.failed) == (1, len(recorded) - 1, [])
    _check_copied(catalog, broken, recorded[broken])


def test_query_selects_runs(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    scans = _by_plan(recorded, "scan")
    report = import_mongo(mongo_db, catalog, query={"plan_name": "scan"}, progress=False)
    assert report.copied == len(scans) == 2
    assert sorted(catalog) == sorted(scans)
    assert {run.start["plan_name"] for run in catalog.values()} == {"scan"}


def test_query_object_and_the_cli_query_form_select_runs(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    # A query object is applied to each run's start and stop, which MongoDB never sees.
    scans = _by_plan(recorded, "scan")
    query = (Key("plan_name") == "scan") & (Key("stop.exit_status") == "success")
    report = import_mongo(mongo_db, catalog, query=query, progress=False)
    assert report.copied == len(scans) == 2 and sorted(catalog) == sorted(scans)
    # The command line's --query: a dict goes to MongoDB as it is, the JSON form is applied.
    assert _mongo_filter('{"plan_name": {"$in": ["scan"]}}') == {"plan_name": {"$in": ["scan"]}}
    assert _mongo_filter(query.to_json()) == query
    with pytest.raises(runbroker.queries.QueryError, match="--query '\\[1\\]'"):
        _mongo_filter("[1]")


@pytest.mark.parametrize(
    "spec",
    [
        {"stop.exit_status": "success", "plan_name": "scan"},  # the stop is another collection
        {"$or": [{"stop.exit_status": "success"}, {"plan_name": "none"}]},
        {"start.plan_name": "scan"},  # run_start holds no "start" key
        {"sample": {"temp": 300, "name": "Cu"}},  # a sub-document in another field order
        {"detectors": "det", "num_points": {"$gt": 3}},
    ],
)
def test_dict_query_means_what_it_means_in_search(
    catalog: runbroker.Catalog, mongo_db: Any, spec: dict
) -> None:
    import_mongo(mongo_db, catalog, progress=False)
    expected = sorted(catalog.search(spec))
    assert expected  # each query selects some runs, so that selecting none is seen
    selected = runbroker.temp()
    import_mongo(mongo_db, selected, query=spec, progress=False)
    assert sorted(selected) == expected
    # The command line's --query gives import_mongo the same.
    assert _mongo_filter(json.dumps(spec)) == spec


def test_dict_query_refused_as_search_refuses_it(mongo_db: Any) -> None:
    # MongoDB would answer $size, but no other command would: one language for --query.
    with pytest.raises(runbroker.queries.QueryError, match=r"'\$size'"):
        import_mongo(mongo_db, runbroker.temp(), query={"detectors": {"$size": 1}})
    with pytest.raises(runbroker.queries.QueryError, match=r"--query .*'\$size'"):
        _mongo_filter('{"detectors": {"$size": 1}}')


def test_old_resources_without_run_start(
    catalog: runbroker.Catalog, mongo_db: Any, recorded: dict[str, Docs]
) -> None:
    """Resources from before event-model required run_start / path_semantics (and root)."""
    mongo_db["resource"].update_many(
        {}, {"$unset": {"run_start": "", "path_semantics": "", "root": ""}}
    )
    report = import_mongo(mongo_db, catalog, progress=False)
    assert (report.copied, report.failed) == (len(recorded), [])
    uid = _uid_of_img_run(recorded)
    docs = list(catalog[uid].documents())
    resources = [d for n, d in docs if n == "resource"]
    assert len(resources) == 1
    assert resources[0]["run_start"] == uid
    assert resources[0]["path_semantics"] == "posix"
    assert resources[0]["root"] == ""
    names = [n for n, _ in docs]
    # Every parent before its children.
    assert names.index("resource") < names.index("datum_page") < names.index("event_page")
    assert len(_datum_ids(iter(docs))) == 3


def test_small_batches_read_events_in_few_queries(
    catalog: runbroker.Catalog, recorded: dict[str, Docs]
) -> None:
    """Events come in pages of ``batch_events`` in seq_num order, one query per descriptor."""
    mongo_db = mongomock.MongoClient()["databroker"]
    _fill(mongo_db, recorded, shuffle=True)
    finds: Counter[str] = Counter()

    class Counting:
        def __init__(self, collection: Any) -> None:
            self._collection = collection

        def find(self, *args: Any, **kwargs: Any) -> Any:
            finds[self._collection.name] += 1
            return self._collection.find(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._collection, name)

    class CountingDB:
        name = mongo_db.name

        def __getitem__(self, name: str) -> Counting:
            return Counting(mongo_db[name])

        def list_collection_names(self) -> list[str]:
            return mongo_db.list_collection_names()

    report = import_mongo(CountingDB(), catalog, progress=False, batch_events=2)
    assert report.copied == len(recorded)
    n_descriptors = sum(n == "descriptor" for docs in recorded.values() for n, _ in docs)
    assert finds["event"] == n_descriptors
    for uid, docs in recorded.items():
        _check_copied(catalog, uid, docs)
    for uid in recorded:
        for name, doc in catalog[uid].documents():
            if name == "event_page":
                assert doc["seq_num"] == sorted(doc["seq_num"])


def test_sources_and_catalogs_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recorded: dict[str, Docs]
) -> None:
    pymongo = pytest.importorskip("pymongo")
    client = mongomock.MongoClient()
    _fill(client["metadatastore"], recorded)
    # Stand-in for a server: pymongo.MongoClient(url) returns the mongomock client.
    closed: list[bool] = []
    monkeypatch.setattr(client, "close", lambda: closed.append(True))

    def fake_client(url: str) -> Any:
        client.url = url
        db_name = url.rsplit("/", 1)[1]
        monkeypatch.setattr(
            client,
            "get_default_database",
            lambda: client[db_name] if db_name else _no_default(pymongo),
        )
        return client

    monkeypatch.setattr(pymongo, "MongoClient", fake_client)
    path = tmp_path / "runs.db"
    report = import_mongo("mongodb://localhost:27017/metadatastore", path, progress=False)
    assert report.copied == len(recorded)
    assert closed == [True]
    with runbroker.open(path) as cat:
        assert sorted(cat) == sorted(recorded)

    with pytest.raises(ValueError, match="names no database"):
        import_mongo("mongodb://user:secret@localhost:27017/", path, progress=False)
    with pytest.raises(ValueError, match="no run_start collection"):
        import_mongo("mongodb://localhost:27017/metadatstore", path, progress=False)
    with pytest.raises(ValueError, match="not a MongoDB URL"):
        import_mongo("runs.db", path, progress=False)


def _no_default(pymongo: Any) -> Any:
    raise pymongo.errors.ConfigurationError("No default database name defined or provided.")


def test_password_not_in_messages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("pymongo")
    with pytest.raises(ValueError) as caught:
        import_mongo("mongodb://user:secret@localhost:27017/", tmp_path / "x.db", progress=False)
    assert "secret" not in str(caught.value)


def test_progress_bar(
    catalog: runbroker.Catalog,
    mongo_db: Any,
    recorded: dict[str, Docs],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("tqdm")
    import_mongo(mongo_db, catalog, progress=True)
    err = capsys.readouterr().err
    assert "import" in err and f"{len(recorded)}/{len(recorded)}" in err


def test_report_text() -> None:
    report = ImportReport(copied=1, skipped=2, documents=9, failed=[("abc", "refused")])
    assert str(report) == (
        "copied 1 run (9 documents), skipped 2 already in the catalog, 1 failed:\n  abc: refused"
    )


def test_bad_arguments(mongo_db: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_events"):
        import_mongo(mongo_db, tmp_path / "x.db", batch_events=0)
    with pytest.raises(TypeError, match="pymongo Database"):
        import_mongo(object(), tmp_path / "x.db")
