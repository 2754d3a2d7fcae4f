"""The ingest rules of store.intake, driven over the in-memory sink (no database): what is
new reaches the sink, repeats do not, and every refusal names the document."""

from __future__ import annotations

import copy

import pytest
from event_model import pack_datum_page, pack_event_page

from runbroker.documents import ConflictError, DocumentError, UnknownParentError
from runbroker.store.intake import take
from runbroker.testing.memorysink import MemorySink

START = {"uid": "r1", "time": 0.0}
DESC = {
    "uid": "d1",
    "run_start": "r1",
    "time": 0.0,
    "name": "primary",
    "data_keys": {"x": {"source": "s", "dtype": "number", "shape": []}},
}
RESOURCE = {
    "uid": "res1",
    "run_start": "r1",
    "spec": "NPY",
    "root": "/",
    "resource_path": "a",
    "resource_kwargs": {},
    "path_semantics": "posix",
}


def event(seq: int, x: float = 0.0, uid: str | None = None) -> dict:
    return {
        "uid": uid or f"e{seq}",
        "descriptor": "d1",
        "time": float(seq),
        "seq_num": seq,
        "data": {"x": x},
        "timestamps": {"x": float(seq)},
    }


def datum(i: int, value: int = 0) -> dict:
    return {"datum_id": f"res1/{i}", "resource": "res1", "datum_kwargs": {"i": value}}


@pytest.fixture
def sink() -> MemorySink:
    sink = MemorySink()
    for name, doc in [("start", START), ("descriptor", DESC), ("resource", RESOURCE)]:
        take(sink, name, copy.deepcopy(doc))
    return sink


@pytest.mark.parametrize(
    "name, doc, parent",
    [
        ("stop", {"uid": "s1", "run_start": "nope", "time": 1.0, "exit_status": "success"}, "run"),
        ("descriptor", dict(DESC, uid="d2", run_start="nope"), "run"),
        ("event", dict(event(1), descriptor="nope"), "descriptor"),
        ("datum", dict(datum(0), resource="nope", datum_id="nope/0"), "resource"),
    ],
)
def test_unknown_parents_are_refused(sink, name, doc, parent):
    with pytest.raises(UnknownParentError, match=f"refers to {parent} 'nope'"):
        take(sink, name, doc)


def test_repeats_are_ignored_and_changes_refused(sink):
    take(sink, "descriptor", copy.deepcopy(DESC))
    assert list(sink.states) == ["d1"]
    with pytest.raises(ConflictError, match=r"'d1'.*a different document with this uid"):
        take(sink, "descriptor", dict(DESC, name="other"))
    take(sink, "event", event(1))
    take(sink, "event", event(1))
    assert list(sink.events) == [("d1", 1)]
    with pytest.raises(ConflictError, match="already has an event with seq_num 1"):
        take(sink, "event", event(1, x=5.0))
    with pytest.raises(ConflictError, match="uid was already used"):
        take(sink, "event", event(2, uid="e1"))
    assert list(sink.events) == [("d1", 1)]


def test_an_overlapping_page_stores_only_its_new_events(sink):
    take(sink, "event", event(1))
    take(sink, "event_page", pack_event_page(event(1), event(2)))
    assert sorted(sink.events) == [("d1", 1), ("d1", 2)]
    with pytest.raises(ConflictError) as info:
        take(sink, "event_page", pack_event_page(event(3), event(2, x=9.0)))
    assert info.value.name == "event_page"
    assert ("d1", 3) not in sink.events


def test_datums_new_ones_stored_changed_ones_refused(sink):
    take(sink, "datum", datum(0))
    take(sink, "datum_page", pack_datum_page(datum(0), datum(1)))
    assert sorted(sink.datums) == ["res1/0", "res1/1"]
    with pytest.raises(ConflictError, match="a different datum is stored"):
        take(sink, "datum", datum(1, value=7))
    with pytest.raises(DocumentError, match="appears twice"):
        take(sink, "datum_page", pack_datum_page(datum(2), datum(2)))
