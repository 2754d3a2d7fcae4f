"""Single events queued by a writer until its commit (``DescriptorState``): kept as plain
tuples the garbage collector stops tracking, and given back exactly as they came."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbroker.documents import ConflictError
from runbroker.store.events import DescriptorState, canonical
from runbroker.store.pages import to_column

FIELDS = ("a", "b", "s")
DESCRIPTOR = {
    "uid": "d1",
    "data_keys": {
        "a": {"shape": [], "dtype": "number", "source": "sim"},
        "b": {"shape": [], "dtype": "number", "source": "sim"},
        # data from stream_datum documents: a column only when an event carries it
        "s": {"shape": [], "dtype": "number", "source": "sim", "external": "STREAM:"},
    },
}
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**40), 2**40),
    st.text(max_size=3),
)


def _state() -> DescriptorState:
    return DescriptorState.from_descriptor(1, 1, "r1", DESCRIPTOR, 0)


def _event(seq: int, **more) -> dict:
    """An event of fields a and b of descriptor d1, with ``more`` keys."""
    doc = {
        "uid": f"e{seq}",
        "time": 1.0,
        "seq_num": seq,
        "descriptor": "d1",
        "data": {"a": 1.0, "b": 2.0},
        "timestamps": {"a": 1.0, "b": 1.0},
    }
    return doc | more


@st.composite
def events(draw):
    n = draw(st.integers(1, 6))
    out = []
    for seq in range(1, n + 1):
        fields = draw(st.sets(st.sampled_from(FIELDS), min_size=1))
        doc = {
            "uid": f"e{seq}",
            "time": 1000.0 + seq,
            "seq_num": seq,
            "descriptor": "d1",
            "data": {f: draw(VALUES) for f in sorted(fields)},
            "timestamps": {f: 1000.0 + seq for f in sorted(fields)},
        }
        if draw(st.booleans()):
            doc["filled"] = {f: True for f in draw(st.sets(st.sampled_from(FIELDS)))}
        if draw(st.booleans()):
            doc["note"] = {"by": draw(st.text(max_size=3))}  # a key beyond the usual ones
        out.append(doc)
    return out


def _same_column(got, expected) -> bool:
    if isinstance(expected, np.ndarray):
        return (
            type(got) is np.ndarray
            and got.dtype == expected.dtype
            and (got.tobytes() == expected.tobytes())
        )
    return got == expected or repr(got) == repr(expected)


@given(docs=events())
@settings(max_examples=200, deadline=None)
def test_queued_events_come_back_as_they_were_given(docs):
    """Each queued event reads back (``queued_event``) as the document given, and the page
    made of them holds, per field, the column its values make one by one (a value left out
    taken as None), the stream field only if an event carries it."""
    state = _state()
    for doc in docs:
        assert state.add(doc)
    for doc in docs:
        assert canonical(state.queued_event(doc["seq_num"])) == canonical(doc)
    (batch,) = state.take()
    assert batch.n == len(docs)
    assert batch.extra["uid"] == [d["uid"] for d in docs]
    assert batch.data["seq_num"].tolist() == [d["seq_num"] for d in docs]
    assert batch.data["time"].tolist() == [d["time"] for d in docs]
    carried = any("s" in d["data"] or "s" in d["timestamps"] for d in docs)
    for f in FIELDS:
        assert ("d:" + f in batch.data) == (f != "s" or carried), f
        if "d:" + f in batch.data:
            for part, key in (("data", "d:"), ("timestamps", "t:")):
                columns = batch.data if key == "d:" else batch.extra
                expected = to_column([d[part].get(f) for d in docs])
                assert _same_column(columns[key + f], expected), (part, f)
    flags = {f for d in docs for f in d.get("filled", {})}
    for f in flags:
        assert batch.extra["f:" + f] == [d.get("filled", {}).get(f) for d in docs]


def test_a_stream_field_no_event_carries_gets_no_column():
    state = _state()
    for seq in (1, 2):
        state.add(_event(seq))
    (batch,) = state.take()
    assert sorted(batch.data) == ["d:a", "d:b", "seq_num", "time"]


def test_a_repeat_is_dropped_and_a_changed_repeat_refused():
    state = _state()
    doc = _event(1, filled={}, note="kept")
    assert state.add(doc)
    assert not state.add(dict(doc))  # the same event again: nothing queued
    with pytest.raises(ConflictError, match="seq_num 1 of descriptor 'd1' was already given"):
        state.add(dict(doc, note="changed"))
    with pytest.raises(ConflictError, match=r"seq_num 1 .* 'e1'"):
        state.add(dict(doc, data={"a": 1.0, "b": 3.0}))
    assert len(state.pending) == 1


def test_the_callers_dicts_and_arrays_may_change_after_insert():
    descriptor = {"uid": "d2", "data_keys": {"img": {"shape": [2], "dtype": "array"}}}
    state = DescriptorState.from_descriptor(1, 1, "r1", descriptor, 0)
    image = np.array([1.0, 2.0])
    doc = {
        "uid": "e1",
        "time": 1.0,
        "seq_num": 1,
        "descriptor": "d2",
        "data": {"img": image},
        "timestamps": {"img": 1.0},
    }
    state.add(doc)
    image[:] = 0
    doc["data"]["img"] = "replaced"
    doc["timestamps"]["img"] = 5.0
    (batch,) = state.take()
    assert batch.data["d:img"].tolist() == [[1.0, 2.0]]
    assert batch.extra["t:img"].tolist() == [1.0]


def test_a_queued_event_of_numbers_is_not_tracked_by_the_garbage_collector():
    """A queued event of plain numbers is a tuple the collector stops tracking by its pass
    of the middle generation (its parts at the first pass, itself at the next), before it
    could be moved to the oldest: a burst of queued events does not fill that generation and
    set off full collections (which stop every thread, the committer's too)."""
    state = _state()
    state.add(_event(1, filled={"a": False}))
    (entry,) = state.pending
    assert gc.is_tracked(entry)  # as every new tuple
    gc.collect(0)
    gc.collect(1)
    assert not gc.is_tracked(entry)
