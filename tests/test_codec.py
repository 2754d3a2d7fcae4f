"""The stored forms of page columns and documents: event uids as fixed-width ASCII blocks (and
the JSON lists older pages hold, read forever), and lossless JSON for big integers."""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import uuid

import numpy as np
import orjson
import pytest
from event_model import compose_run
from hypothesis import given, settings
from hypothesis import strategies as st

import runbroker
from runbroker.store import jsoncodec
from runbroker.store import pages as codec
from runbroker.store.events import event_from_columns, merge_batches, page_from_columns

DATA_KEYS = {"x": {"dtype": "number", "shape": [], "source": "sim:x"}}


def _old_blob(columns: dict) -> bytes:
    """A page blob as written before uid blocks existed: uids as a JSON list of strings."""
    header, buffers, offset = {}, [], 0
    for name, col in columns.items():
        if name == "uid":
            buf = orjson.dumps(col)
            header[name] = ["json", None, [len(col)], offset, len(buf)]
        else:
            buf = np.ascontiguousarray(col).tobytes()
            header[name] = ["raw", col.dtype.str, list(col.shape), offset, len(buf)]
        buffers.append(buf)
        offset += len(buf)
    head = orjson.dumps(header)
    return b"".join([struct.pack("<I", len(head)), head, *buffers])


def _header(blob: bytes) -> dict:
    (n,) = struct.unpack_from("<I", blob)
    return orjson.loads(blob[4 : 4 + n])


def test_uuid_uids_are_one_ascii_block_decoded_without_copies():
    uids = [str(uuid.uuid4()) for _ in range(1000)]
    blob = codec.encode({"uid": uids, "t:x": np.zeros(1000)})
    assert _header(blob)["uid"][:2] == ["ascii", "|S36"]
    assert len(blob) < len(orjson.dumps(uids))  # no quotes and commas
    block = codec.decode(blob)["uid"]
    assert block.dtype == np.dtype("S36") and not block.flags.owndata
    assert codec.uid_list(block) == uids
    assert block.tobytes() == "".join(uids).encode()


def test_pages_written_before_uid_blocks_still_decode():
    uids = [str(uuid.uuid4()) for _ in range(3)]
    old = _old_blob({"uid": uids, "t:x": np.arange(3.0)})
    assert _header(old)["uid"][0] == "json"
    got = codec.decode(old)
    assert got["uid"] == uids and got["t:x"].tolist() == [0.0, 1.0, 2.0]
    # An old page joined with a new one (compaction, replay) gives one list of str.
    new = codec.decode(codec.encode({"uid": ["e-new"], "t:x": np.ones(1)}))
    _, extra = merge_batches([({}, got, 3), ({}, new, 1)])
    assert extra["uid"] == [*uids, "e-new"]
    again = codec.decode(codec.encode(extra))["uid"]
    assert codec.uid_list(again) == [*uids, "e-new"]
    assert page_from_columns("d", {"time": np.zeros(4), "seq_num": np.arange(4)}, extra)["uid"] == [
        *uids,
        "e-new",
    ]


def test_a_catalog_whose_pages_hold_json_uids_reads_and_grows(tmp_path):
    path = tmp_path / "old.db"
    cat = runbroker.open(path)
    run = compose_run()
    desc = run.compose_descriptor(name="primary", data_keys=DATA_KEYS)
    cat.insert("start", run.start_doc)
    cat.insert("descriptor", desc.descriptor_doc)
    page = desc.compose_event_page(
        data={"x": [1.0, 2.0]}, timestamps={"x": [0.0, 0.0]}, seq_num=[1, 2], time=[0.0, 0.0]
    )
    cat.insert("event_page", page)
    cat.close()
    # Rewrite the stored page as an older version wrote it.
    with sqlite3.connect(path) as db:
        ((page_id, extra),) = db.execute("SELECT id, extra FROM pages").fetchall()
        cols = codec.decode(extra)
        old = _old_blob({"uid": codec.uid_list(cols.pop("uid")), **cols})
        db.execute("UPDATE pages SET extra = ? WHERE id = ?", (old, page_id))
    cat = runbroker.open(path)
    try:
        later = desc.compose_event(data={"x": 3.0}, timestamps={"x": 0.0}, seq_num=3)
        cat.insert("event", later)
        cat.insert("stop", run.compose_stop())
        events = [d for n, d in cat[-1].documents(pages=False) if n == "event"]
        assert [e["uid"] for e in events] == [*page["uid"], later["uid"]]
        assert all(type(e["uid"]) is str for e in events)
        # The same event again is a repeat (compared with the stored, old-format one).
        event = {k: v for k, v in events[0].items() if k != "filled"}
        cat.insert("event", event)
        assert cat[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0]
    finally:
        cat.close()


# Every kind of text a uid could be: empty, NUL, newline, non-ASCII, surrogate-free unicode.
UID = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
UIDS = st.lists(UID, min_size=1, max_size=30) | st.lists(
    st.sampled_from(["a", "ab", "\x00", "", "é", "a\nb", "x" * 36]), min_size=1, max_size=10
)


@settings(max_examples=300, deadline=None)
@given(first=UIDS, second=UIDS)
def test_any_uids_come_back_as_the_same_strings(first, second):
    parts = [codec.decode(codec.encode({"uid": uids})) for uids in (first, second)]
    for uids, part in zip((first, second), parts, strict=True):
        assert codec.uid_list(part["uid"]) == uids
        columns = {"time": np.zeros(len(uids)), "seq_num": np.arange(len(uids))}
        assert page_from_columns("d", columns, part)["uid"] == uids
        assert [event_from_columns("d", columns, part, i)["uid"] for i in range(len(uids))] == uids
    # Joined (as compaction and replay join pages) and stored again.
    _, joined = merge_batches([({}, parts[0], len(first)), ({}, parts[1], len(second))])
    assert codec.uid_list(joined["uid"]) == first + second
    stored = codec.decode(codec.encode(joined))["uid"]
    assert codec.uid_list(stored) == first + second


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        -(2**63) - 1,
        2**70,
        [2**70],
        [[-(2**70)]],
        {"a": [1, 2**100, "x"]},
        {"nested": {"deep": [0.5, 2**65, None]}},
        {"sample": "Ni, 12345678901234567890123", "n": 2**80},
    ],
)
def test_integers_beyond_64_bits_round_trip_exactly(value):
    text = jsoncodec.dumps(value)
    for form in (text, memoryview(text), text.decode()):
        back = jsoncodec.loads(form)
        assert back == value
        assert json.dumps(back) == json.dumps(value)  # ints stay ints, not equal floats


def test_compact_json_with_a_big_integer_keeps_it_exact():
    assert jsoncodec.loads(b"[1,18446744073709551616,-9223372036854775809]") == [
        1,
        2**64,
        -(2**63) - 1,
    ]


def test_numbers_near_the_limit_keep_their_types():
    value = {"small": 2**63 - 1, "neg": -(2**63), "tiny": 0.0012345678901234567, "big": 1e300}
    back = jsoncodec.loads(jsoncodec.dumps(value))
    assert back == value
    assert [type(v) for v in back.values()] == [int, int, float, float]


# Columns on both sides of the small-column path's size (pages.encode_parts): a small run's
# page of a few events, and pages of hundreds.
SIZES = st.sampled_from([1, 2, 5, 63, 64, 65, 200])
VALUES = st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 3.0])


@st.composite
def numeric_columns(draw: st.DrawFn) -> dict:
    n = draw(SIZES)
    cols: dict = {}
    for i in range(draw(st.integers(1, 5))):
        kinds = ["floats", "const", "zeros", "ints", "frames", "repeat", "view"]
        kind = draw(st.sampled_from(kinds))
        if kind == "floats":
            col = np.array(draw(st.lists(VALUES, min_size=n, max_size=n)))
        elif kind == "const":
            col = np.full(n, draw(VALUES))
        elif kind == "zeros":  # equal values, not equal bytes
            col = np.where(np.arange(n) % 3 == 1, -0.0, 0.0)
        elif kind == "ints":
            col = (np.arange(n) % 7).astype(draw(st.sampled_from(["<i8", "<u2", "<i4", "|b1"])))
        elif kind == "frames":
            col = np.full((n, 2), draw(VALUES))
        elif kind == "view":  # not contiguous
            col = np.arange(2.0 * n)[::2]
        else:
            col = next(iter(cols.values())).copy() if cols else np.zeros(n)
        cols[f"c{i}"] = col
    return cols


@given(cols=numeric_columns())
@settings(max_examples=300, deadline=None)
def test_numeric_columns_come_back_bit_for_bit(cols):
    out = codec.decode(codec.encode(cols))
    for name, col in cols.items():
        got = out[name]
        assert got.dtype == col.dtype and got.shape == col.shape, name
        # NaN and -0.0 included: equal values are not enough, the bytes must be.
        assert got.tobytes() == np.ascontiguousarray(col).tobytes(), name


def test_a_small_page_keeps_repeated_and_constant_columns_compact():
    t = np.array([1.0, 2.0, 3.0])
    header = _header(
        codec.encode(
            {"time": t, "t:x": t.copy(), "c": np.full(3, 7.5), "z": np.array([0.0, -0.0, 0.0])}
        )
    )
    assert header["t:x"][0] == "same" and header["t:x"][3] == "time"
    assert header["c"][0] == "const" and header["c"][4] == 8
    # -0.0 is not 0.0 to the bytes: kept as it is, not made a constant.
    assert header["z"][0] == "raw"


EVENT_VALUES = st.one_of(
    st.floats(allow_nan=True),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.floats(allow_nan=False), max_size=2),
)


@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), EVENT_VALUES, max_size=3), max_size=6
    )
)
@settings(max_examples=300, deadline=None)
def test_fields_converted_together_equal_fields_converted_one_by_one(rows):
    """``to_columns`` (the floats of many fields in one conversion) gives each field the
    column ``to_column`` gives it: same type, dtype and values (missing values, strings,
    huge integers and lists among floats send a field back to the one-by-one path)."""
    fields = ["a", "b", "c"]
    columns = [tuple(row.get(f) for row in rows) for f in fields]
    together = codec.to_columns(columns)
    assert len(together) == len(fields)
    for f, got in zip(fields, together, strict=True):
        alone = codec.to_column([row.get(f) for row in rows])
        assert type(got) is type(alone), f
        if isinstance(alone, np.ndarray):
            assert got.dtype == alone.dtype and got.tobytes() == alone.tobytes(), f
        else:
            assert got == alone or repr(got) == repr(alone), f
