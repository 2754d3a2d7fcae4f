"""Event pages on their way in: validation, columns from the page, the join of the pages
queued per commit and their encoding (issue 20's fast paths), checked against what the
plain conversions give."""

from __future__ import annotations

import uuid
from decimal import Decimal

import numpy as np
import pytest
from event_model import compose_run

from runbroker.documents import DocumentError, validate
from runbroker.store import pages as codec
from runbroker.store.events import DescriptorState, merge_batches

DATA_KEYS = {f: {"source": "sim", "dtype": "number", "shape": []} for f in ("a", "b")}


def _run(n: int = 4, numpy: bool = False) -> tuple[DescriptorState, dict]:
    bundle = compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys=DATA_KEYS)
    times = (1.7e9 + np.arange(n) * 0.25).tolist()
    t = np.array(times) if numpy else times
    page = desc.compose_event_page(
        data={"a": np.arange(n) * 0.5 if numpy else [i * 0.5 for i in range(n)], "b": t},
        timestamps={"a": t, "b": t},
        seq_num=np.arange(1, n + 1) if numpy else list(range(1, n + 1)),
        time=t,
        validate=False,  # event-model's own check refuses numpy arrays; ours does not
    )
    state = DescriptorState.from_descriptor(1, 1, bundle.start_doc["uid"], desc.descriptor_doc, 0)
    return state, page


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([1.5, 2.5], "float64", [1.5, 2.5]),
        ([1.5, 2, True], "float64", [1.5, 2.0, 1.0]),
        ([1.5, np.float32(0.5), np.int64(3)], "float64", [1.5, 0.5, 3.0]),
        ([1.5, Decimal("0.25")], "float64", [1.5, 0.25]),
        ([1.5, float("nan")], "float64", [1.5, float("nan")]),
        # What np.fromiter did before the fast path: a numeric string is read as a number.
        ([1.5, "2.5"], "float64", [1.5, 2.5]),
        ([1, 2, 3], "int64", [1, 2, 3]),
        ([1, True, np.int32(4)], "int64", [1, 1, 4]),
        ([1, 2.5], "float64", [1.0, 2.5]),
        ([True, False], "bool", [True, False]),
    ],
)
def test_list_columns_convert_as_numpy_would(values, dtype, expected):
    column = codec.to_column(values)
    assert column.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(column, expected)


def _plain_column(values: list) -> np.ndarray | list:
    """The conversion before the struct fast path: np.fromiter for floats, else np.asarray
    (whose OverflowError, for an int beyond a float among floats, escaped from insert)."""
    if type(values[0]) is float:
        try:
            return np.fromiter(values, dtype=np.float64, count=len(values))
        except (TypeError, ValueError, OverflowError):
            pass
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError):
        return list(values)
    return arr if arr.dtype.kind in "biufc" else list(values)


@pytest.mark.parametrize(
    "values",
    [
        [1.5, None],
        [1.5, "x"],
        [1.5, [1.0, 2.0]],
        [1, 2**70],
        [1, 2**63],
        [1, None],
        [1.5, 2**1100],
        [1, "2"],
        [1, 2.0, np.float64(3)],
    ],
)
def test_columns_that_are_not_one_number_type_convert_as_before(values):
    column, plain = codec.to_column(values), _plain_column(values)
    assert type(column) is type(plain)
    if isinstance(plain, np.ndarray):
        assert column.dtype == plain.dtype
        np.testing.assert_array_equal(column, plain)
    else:
        assert column == plain


def test_page_columns_are_the_pages_values_in_our_own_memory():
    for numpy in (False, True):
        state, page = _run(numpy=numpy)
        batch = state.page_batch(page)
        assert batch.data["seq_num"].dtype == np.int64
        assert batch.data["seq_num"].tolist() == [1, 2, 3, 4]
        assert (batch.seq_min, batch.seq_max) == (1, 4)
        assert batch.data["time"].tolist() == list(page["time"])
        # One shared list (or array) becomes one array: time and every timestamp column.
        assert batch.extra["t:a"] is batch.extra["t:b"] is batch.data["time"]
        assert batch.extra["uid"].dtype == np.dtype("S36")
        assert codec.uid_list(batch.extra["uid"]) == list(page["uid"])
        if numpy:
            for part, f in (("time", None), ("seq_num", None), ("data", "a")):
                given = page[part] if f is None else page[part][f]
                given[:] = 0  # the caller refills its buffers: what was queued keeps its values
            assert batch.data["seq_num"].tolist() == [1, 2, 3, 4]
            assert batch.data["d:a"].tolist() == [0.0, 0.5, 1.0, 1.5]
            assert batch.data["time"][0] == 1.7e9


def test_page_seq_nums_of_other_types_and_order():
    state, page = _run()
    for seqs in ([1.0, 2.0, 3.0, 4.0], np.arange(1, 5, dtype=np.int32), [4, 2, 3, 1]):
        batch = state.page_batch(dict(page, seq_num=seqs))
        assert batch.data["seq_num"].dtype == np.int64
        assert batch.data["seq_num"].tolist() == [int(s) for s in seqs]
        assert (batch.seq_min, batch.seq_max) == (1, 4)
    with pytest.raises(DocumentError, match="appears twice"):
        state.page_batch(dict(page, seq_num=[1, 2, 2, 3]))


def test_uids_that_make_no_block_stay_a_list():
    state, page = _run(3)
    for uids in (["a", "bb", "c"], ["é1", "é2", "é3"], ["a\0", "b\0", "c\0"], ["ab", "cd", "e"]):
        batch = state.page_batch(dict(page, uid=uids))
        assert batch.extra["uid"] == uids
        blob = codec.encode(batch.extra)
        assert codec.uid_list(codec.decode(blob)["uid"]) == uids
    block = np.array([b"e1", b"e2", b"e3"])
    column = codec.uid_column(block)
    assert column.tolist() == block.tolist() and not np.shares_memory(column, block)


def test_the_join_keeps_shared_columns_shared_and_encodes_them_once():
    state, page = _run()
    _, second = _run()
    batches = [state.page_batch(page), state.page_batch(dict(second, seq_num=[5, 6, 7, 8]))]
    data, extra = merge_batches([(b.data, b.extra, b.n) for b in batches])
    assert extra["t:a"] is extra["t:b"] is data["time"]
    assert data["d:b"] is data["time"]
    assert data["d:a"] is not data["time"]
    assert data["seq_num"].tolist() == list(range(1, 9))
    assert codec.uid_list(extra["uid"]) == page["uid"] + second["uid"]
    header = codec.decode(codec.encode(extra))
    assert header["t:b"].tolist() == header["t:a"].tolist() == data["time"].tolist()
    # Lists (a column missing from a page, values that are not numbers) are never shared.
    pieces = [({"x": None, "y": None}, {}, 2), ({"x": ["s", "t"], "y": ["s", "t"]}, {}, 2)]
    joined, _ = merge_batches(pieces)
    assert joined["x"] == joined["y"] == [None, None, "s", "t"]
    assert joined["x"] is not joined["y"]


def test_pages_validate_the_same_whether_columns_are_lists_or_arrays():
    """numpy time or seq_num beside list data columns was a ValueError from jsonschema-rs."""
    _, page = _run()
    cases = {
        "time": (np.arange(4.0), np.array(["a"] * 4)),
        "seq_num": (np.arange(1.0, 5.0), np.arange(4.0) + 0.5),
    }
    for key, (good, bad) in cases.items():
        for data in (page["data"], {k: np.asarray(v) for k, v in page["data"].items()}):
            doc = dict(page, data=data, **{key: good})
            assert validate("event_page", doc) is doc
            with pytest.raises(DocumentError, match=key):
                validate("event_page", dict(doc, **{key: bad}))
    doc = dict(page, filled={"a": np.zeros(4, dtype=bool)})
    assert validate("event_page", doc) is doc
    with pytest.raises(DocumentError):
        validate("event_page", dict(page, filled={"a": [1, 2, 3, 4]}))
    with pytest.raises(DocumentError):
        validate("event_page", dict(page, data=dict(page["data"], a=np.float64(1.0))))


def test_a_refused_page_raises_from_its_insert_and_stores_nothing(tmp_path):
    import runbroker

    cat = runbroker.open(tmp_path / "c.db")
    bundle = compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys=DATA_KEYS)
    cat.insert("start", bundle.start_doc)
    cat.insert("descriptor", desc.descriptor_doc)
    good = desc.compose_event_page(
        data={"a": [1.0, 2.0], "b": [3.0, 4.0]},
        timestamps={"a": [0.0, 0.0], "b": [0.0, 0.0]},
        seq_num=[1, 2],
        time=[0.0, 0.0],
    )
    cat.insert("event_page", good)
    bad = dict(good, uid=[str(uuid.uuid4()) for _ in range(2)], seq_num=[3.5, 4.5])
    with pytest.raises(DocumentError, match="seq_num"):
        cat.insert("event_page", bad)
    short = dict(good, uid=[str(uuid.uuid4()) for _ in range(2)], seq_num=[3, 4], time=[0.0])
    with pytest.raises(DocumentError, match="time"):
        cat.insert("event_page", short)
    cat.insert("stop", bundle.compose_stop())
    assert cat[-1].primary.read()["a"].values.tolist() == [1.0, 2.0]
    cat.close()


@pytest.mark.parametrize("numpy", [False, True], ids=["lists", "numpy"])
def test_a_large_page_is_written_in_place_and_reads_back_whole(tmp_path, numpy, monkeypatch):
    """A page whose blobs pass pagerows.INPLACE_MIN_BYTES goes in by incremental blob I/O
    (zeroblob, then its pieces written): the stored blobs are byte for byte what the
    joined encoding gives, and the stream reads back as sent."""
    import sqlite3

    import runbroker
    from runbroker.store import pagerows

    written = []
    real = pagerows._INSERT_ZEROS.execute
    monkeypatch.setattr(pagerows._INSERT_ZEROS, "execute", lambda *a: written.append(1) or real(*a))
    n = 40_000  # ~1.5 MB of uids, times and values
    state, page = _run(n, numpy=numpy)
    cat = runbroker.open(tmp_path / "runs.db")
    bundle_start = {"uid": state.run_uid, "time": 1.7e9}
    cat.insert("start", bundle_start)
    descriptor = {
        "uid": state.uid,
        "run_start": state.run_uid,
        "time": 1.7e9,
        "name": "primary",
        "data_keys": DATA_KEYS,
    }
    cat.insert("descriptor", descriptor)
    cat.insert("event_page", page)
    cat.flush()
    assert written, "the page did not take the in-place path"
    ds = cat[-1].primary.read()
    np.testing.assert_array_equal(ds["a"].values, np.arange(n) * 0.5)
    assert ds["seq_num"].values.tolist() == list(range(1, n + 1))
    replayed = [doc for name, doc in cat[-1].documents() if name == "event_page"]
    assert [uid for doc in replayed for uid in doc["uid"]] == list(page["uid"])
    cat.close()
    con = sqlite3.connect(tmp_path / "runs.db")
    (data, extra), *others = con.execute("SELECT data, extra FROM pages").fetchall()
    con.close()
    assert not others
    batch = state.page_batch(page)
    assert data == codec.encode(batch.data) and extra == codec.encode(batch.extra)
