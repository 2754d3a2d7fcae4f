"""Keys whose value is the run's uid (``start.uid``, ``stop.run_start``) are searched in the
runs' uid column, not in metadata rows (runbroker.store.flatten.IN_RUN_COLUMNS): every kind
of query on them gives what the reference semantics (``Query.matches``) give, on every store,
and ``distinct`` counts them."""

from __future__ import annotations

import sqlite3

import pytest
from event_model import compose_run

import runbroker
from runbroker.queries import (
    Contains,
    In,
    Key,
    KeyPresent,
    NotIn,
    Regex,
    SubDocument,
)


def _records() -> list[dict]:
    """Two stopped runs and one still running."""
    records = []
    for i, uid in enumerate(["run-a", "run-b", "run-c"]):
        bundle = compose_run(uid=uid, time=float(i + 1), metadata={"plan_name": "scan"})
        stop = None if uid == "run-c" else dict(bundle.compose_stop(time=float(i + 1.5)))
        records.append({"start": bundle.start_doc, "stop": stop})
    return records


def _load(cat: runbroker.Catalog, records: list[dict]) -> None:
    for record in records:
        cat.insert("start", record["start"])
        if record["stop"] is not None:
            cat.insert("stop", record["stop"])
    cat.flush()


def _queries(records: list[dict]) -> list:
    stop_b = records[1]["stop"]
    without_run_start = {k: v for k, v in stop_b.items() if k != "run_start"}
    return [
        Key("uid") == "run-a",
        Key("start.uid") == "run-b",
        Key("uid") != "run-a",
        Key("start.uid") > "run-a",
        Key("stop.run_start") <= "run-a",
        Key("stop.run_start") == "run-c",  # still running: no stop, no run_start
        Key("stop.run_start") != "run-a",
        Key("uid") == 3,
        In("uid", ["run-a", "run-c", 3]),
        In("stop.run_start", ["run-b", "run-c"]),
        NotIn("uid", ["run-a"]),
        NotIn("stop.run_start", ["run-a"]),
        Regex("uid", "-[ab]$"),
        Regex("stop.run_start", "^RUN-B$", case_sensitive=False),
        KeyPresent("uid"),
        KeyPresent("stop.run_start"),
        Contains("uid", "run-a"),  # not a list
        Key("stop.uid") == stop_b["uid"],
        SubDocument("stop", stop_b),
        SubDocument("stop", without_run_start),  # the stop has one key more
        (Key("stop.run_start") == "run-b") & (Key("plan_name") == "scan"),
        (Key("uid") == "run-a") | (Key("stop.run_start") == "run-b"),
    ]


def test_every_query_on_uid_keys_agrees_with_the_reference(catalog):
    records = _records()
    _load(catalog, records)
    for query in _queries(records):
        want = sorted(r["start"]["uid"] for r in records if query.matches(r))
        assert sorted(catalog.search(query)) == want, query
        assert len(catalog.search(query)) == len(want), query


def test_distinct_counts_uid_keys(catalog):
    _load(catalog, _records())
    assert sorted(catalog.distinct("uid")) == [("run-a", 1), ("run-b", 1), ("run-c", 1)]
    assert sorted(catalog.distinct("stop.run_start")) == [("run-a", 1), ("run-b", 1)]
    hits = catalog.search(Key("stop.run_start") == "run-b")
    assert hits.distinct("uid") == [("run-b", 1)]


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
def test_uid_keys_write_no_metadata_rows(catalog, tmp_path):
    _load(catalog, _records())
    path = catalog.store.uri.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        keys = {k for (k,) in conn.execute("SELECT DISTINCT key FROM meta")}
    assert "start.plan_name" in keys and "stop.uid" in keys
    assert not keys & {"start.uid", "stop.run_start"}
