"""Distinct values of a metadata key (for search forms), on every store and over HTTP."""

from __future__ import annotations

import pytest
from event_model import compose_run

from runbroker.errors import QueryError
from runbroker.queries import Key
from runbroker.store.base import Distinct, distinct_values
from runbroker.testing.stores import stores_except

VALUES = ["Ni", "Cu", "Ni", 3, 3.5, True, None, 3, {"nested": 1}, ["a", "list"]]


@pytest.fixture
def filled(catalog):
    for i, value in enumerate(VALUES):
        md = {"thing": value, "scan_id": i, "sub": {"x": i % 2}, "plan_name": f"p{i % 3}"}
        bundle = compose_run(metadata=md)
        catalog.insert("start", bundle.start_doc)
        catalog.insert("stop", bundle.compose_stop(exit_status="success" if i else "abort"))
    catalog.flush()
    return catalog


def test_values_are_counted_most_common_first(filled):
    # Lists and dicts are not values; ties go by type (bool, number, text, null), then value.
    assert filled.distinct("thing") == [
        (3, 2),
        ("Ni", 2),
        (True, 1),
        (3.5, 1),
        ("Cu", 1),
        (None, 1),
    ]
    assert filled.distinct("sub.x") == [(0, 5), (1, 5)]
    assert filled.distinct("stop.exit_status") == [("success", 9), ("abort", 1)]


def test_values_are_those_of_the_catalog_searched(filled):
    hits = filled.search(Key("plan_name") == "p0")  # scan_ids 0, 3, 6, 9
    assert sorted(hits.distinct("sub.x")) == [(0, 2), (1, 2)]
    assert hits.distinct("thing", limit=2) == [(3, 1), ("Ni", 1)]


def test_an_unknown_key_has_no_values_and_a_bad_key_is_refused(filled):
    assert filled.distinct("no_such_key") == []
    with pytest.raises(QueryError, match="empty segment"):
        filled.distinct("a..b")


@stores_except("folder", reason="a folder store has no count of its own: the scan is its answer")
def test_the_database_count_agrees_with_the_scan(filled):
    store = filled.store
    assert isinstance(store, Distinct)
    for key in ("thing", "sub.x", "stop.exit_status", "plan_name"):
        scanned = distinct_values(_Scanned(store), key, None, 100)
        assert store.distinct(key, None, 100) == scanned, key


class _Scanned:
    """The store seen without its own count: distinct_values falls back to scanning."""

    def __init__(self, store):
        self.search = store.search
