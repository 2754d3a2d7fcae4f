"""Property tests: generated runs survive ingest and replay unchanged, and the SQL search
returns exactly the runs that the reference ``Query.matches`` accepts."""

from __future__ import annotations

import itertools
import os
import string

import numpy as np
import pytest
from event_model import compose_run, pack_event_page
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runbroker
from runbroker.queries import (
    And,
    Comparison,
    Contains,
    FullText,
    In,
    KeyPresent,
    Not,
    NotIn,
    Or,
    PartialUID,
    Regex,
    ScanID,
    ScanIDRange,
    SubDocument,
    TimeRange,
    epoch,
)
from runbroker.testing.postgres import new_schema

# Generated queries name keys and types that no generated run has, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::runbroker.queries.EmptySearchWarning")

SETTINGS = settings(
    deadline=None,
    max_examples=60,
    # open_empty is a factory: every example asks it for a fresh, empty catalog.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
_schemas = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql", "folder"])
def open_empty(request, tmp_path_factory):
    """Factory of fresh, empty catalogs of each store kind (the same semantics everywhere)."""
    if request.param == "sqlite":
        return lambda: runbroker.open("sqlite://")
    if request.param == "folder":
        return lambda: runbroker.open(tmp_path_factory.mktemp("folder"), create=True)
    base = request.getfixturevalue("postgres_url")
    return lambda: runbroker.open(new_schema(base, f"p{os.getpid()}_{next(_schemas)}"))


# Text that JSON can carry (no lone surrogates) and that numpy's fixed-width str keeps
# (no NUL characters, which numpy strips from the end of strings).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)

# ---------------------------------------------------------------- round trip

md_key = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=6).map(
    lambda k: "md_" + k  # stays clear of the keys the start schema gives types to
)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["k", "v", "ü", "x_1"]), inner, max_size=3)
    ),
    max_leaves=8,
)
metadata = st.dictionaries(md_key, json_value, max_size=5)

FIELD_KINDS = ("number", "integer", "string", "array")


def data_key(kind: str) -> dict:
    if kind == "array":
        return {"source": "gen", "dtype": "array", "shape": [2, 3]}
    return {"source": "gen", "dtype": kind, "shape": []}


def value_strategy(kind: str) -> st.SearchStrategy:
    if kind == "number":
        return st.floats(allow_infinity=False, allow_nan=False, width=64)
    if kind == "integer":
        return st.integers(-(2**62), 2**62)
    if kind == "string":
        return TEXT
    return st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
        min_size=2,
        max_size=2,
    )


@st.composite
def generated_runs(draw):
    """(documents in order, expected {stream: {field: values}}, insert mode)."""
    bundle = compose_run(metadata={"scan_id": draw(st.integers(0, 10**6)), **draw(metadata)})
    docs = [("start", bundle.start_doc)]
    expected: dict[str, dict] = {}
    stream_names = draw(
        st.lists(
            st.sampled_from(["primary", "baseline", "aux"]), min_size=1, max_size=3, unique=True
        )
    )
    for stream in stream_names:
        fields = draw(
            st.dictionaries(
                st.sampled_from(["a", "b", "c", "d"]),
                st.sampled_from(FIELD_KINDS),
                min_size=1,
                max_size=4,
            )
        )
        keys = {f: data_key(kind) for f, kind in fields.items()}
        columns: dict[str, list] = {f: [] for f in fields}
        columns["time"] = []
        for _ in range(draw(st.integers(1, 2))):
            desc = bundle.compose_descriptor(name=stream, data_keys=keys)
            docs.append(("descriptor", desc.descriptor_doc))
            n = draw(st.integers(0, 50))
            events = []
            for _ in range(n):
                data = {f: draw(value_strategy(kind)) for f, kind in fields.items()}
                ev = desc.compose_event(data=data, timestamps={f: 1.5 for f in fields})
                events.append(ev)
                for f in fields:
                    columns[f].append(data[f])
                columns["time"].append(ev["time"])
            if draw(st.booleans()):
                docs.extend(("event", ev) for ev in events)
            else:
                i = 0
                while i < len(events):
                    size = draw(st.integers(1, 20))
                    docs.append(("event_page", pack_event_page(*events[i : i + size])))
                    i += size
        expected[stream] = {"fields": fields, "columns": columns}
    if draw(st.booleans()):
        docs.append(
            ("stop", bundle.compose_stop(exit_status=draw(st.sampled_from(["success", "fail"]))))
        )
    mode = draw(st.sampled_from(["insert", "ingest"]))
    return docs, expected, mode


def _check_stream(ds, spec):
    cols = spec["columns"]
    n = len(cols["time"])
    assert ds.sizes["time"] == n
    assert ds["time"].values.tolist() == cols["time"]
    for field, kind in spec["fields"].items():
        got = ds[field]
        if kind == "number":
            assert got.dtype == np.float64, field
            np.testing.assert_array_equal(got.values, np.asarray(cols[field], dtype=float))
        elif kind == "integer":
            assert got.dtype == np.int64, field
            assert got.values.tolist() == cols[field]
        elif kind == "string":
            assert got.dtype.kind == "U", (field, got.dtype)
            assert got.values.tolist() == cols[field]
        else:
            assert got.shape == (n, 2, 3), field
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got.values, np.asarray(cols[field]).reshape(n, 2, 3))


@SETTINGS
@given(generated_runs())
def test_generated_runs_round_trip(open_empty, run):
    docs, expected, mode = run
    first = open_empty()
    second = open_empty()
    try:
        if mode == "insert":
            for name, doc in docs:
                first.insert(name, doc)
        else:
            assert first.ingest(docs) == len(docs)
        start = docs[0][1]
        original = first[start["uid"]]
        assert original.metadata["start"] == start
        stop = docs[-1][1] if docs[-1][0] == "stop" else None
        assert original.metadata["stop"] == stop
        assert list(original) == list(expected)
        for stream, spec in expected.items():
            _check_stream(original[stream].read(), spec)

        second.ingest(original.documents())
        copy = second[start["uid"]]
        assert copy.metadata["start"] == original.metadata["start"]
        assert copy.metadata["stop"] == original.metadata["stop"]
        for stream in expected:
            assert copy[stream].descriptors == original[stream].descriptors
            a, b = original[stream].read(), copy[stream].read()
            assert a.identical(b), stream
            assert a.equals(b)
        assert list(copy.documents()) == list(original.documents())
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------- search agrees with matches()

# Small pools so that generated queries often hit generated metadata.
# "a", "ab", "b": values the generated runs' uids take too (uid keys are searched in runs).
POOL = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    -2.5,
    3,
    "",
    "Ni",
    "ni",
    "Cu foil",
    "x_y",
    "1",
    "Ünï",
    "a",
    "ab",
    "b",
]
pool_value = st.sampled_from(POOL)
pool_key = st.sampled_from(["a", "b", "c"])
pool_meta_value = st.recursive(
    pool_value,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(pool_key, inner, max_size=3),
    max_leaves=6,
)
QUERY_KEYS = [
    "a",
    "b",
    "a.b",
    "a.c",
    "b.a.c",
    "start.a",
    "stop.a",
    "stop.exit_status",
    "stop.reason",
    "scan_id",
    "plan_name",
    "time",
    "uid",
    "start.uid",
    "stop.uid",
    "stop.run_start",
    "stop",
    "start.stop",
]
query_key = st.sampled_from(QUERY_KEYS)
WORDS = ["ni", "cu", "foil", "x", "y", "ünï", "1", "scan", "count", "fail", "success"]


@st.composite
def generated_catalog_records(draw):
    """Start/stop documents of a few runs with colliding metadata."""
    uids = draw(
        st.lists(st.text("ab", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)
    )
    records = []
    for uid in uids:
        md = draw(st.dictionaries(pool_key, pool_meta_value, max_size=3))
        scan_id = draw(st.none() | st.integers(0, 5))
        if scan_id is not None:
            md["scan_id"] = scan_id
        plan = draw(st.none() | st.sampled_from(["scan", "count", "Ni scan"]))
        if plan is not None:
            md["plan_name"] = plan
        when = draw(st.sampled_from([1.0, 2.0, 3.5, 10.0]))
        bundle = compose_run(uid=uid, time=when, metadata=md)
        stop = None
        if draw(st.booleans()):
            stop = dict(
                bundle.compose_stop(
                    exit_status=draw(st.sampled_from(["success", "fail", "abort"])),
                    reason=draw(st.sampled_from(["", "Ni fail", "x_y"])),
                    time=when + 1,
                )
            )
            stop.update(draw(st.dictionaries(pool_key, pool_meta_value, max_size=2)))
        records.append({"start": bundle.start_doc, "stop": stop})
    return records


def leaf_queries():
    ops = st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"])
    patterns = st.sampled_from(["^N", "i$", "[0-9]+", "foil|Ni", "", r"\w+_\w+", "^$", "ü"])
    return st.one_of(
        st.builds(Comparison, query_key, ops, pool_value),
        st.builds(In, query_key, st.lists(pool_value, max_size=3)),
        st.builds(NotIn, query_key, st.lists(pool_value, max_size=3)),
        st.builds(Contains, query_key, pool_value),
        st.builds(Regex, query_key, patterns, st.booleans()),
        st.builds(
            FullText,
            st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
        ),
        st.builds(KeyPresent, query_key),
        st.builds(
            SubDocument,
            query_key,
            st.recursive(
                st.dictionaries(pool_key, pool_value, max_size=2),
                lambda inner: st.dictionaries(pool_key, inner | pool_value, max_size=2),
                max_leaves=4,
            ),
        ),
        st.builds(
            lambda a, b: (
                TimeRange(
                    since=None if a is None else epoch(a), until=None if b is None else epoch(b)
                )
                if a is None or b is None or a <= b
                else TimeRange(since=epoch(b), until=epoch(a))
            ),
            st.none() | st.sampled_from([0.0, 1.0, 2.0, 3.5, 5.0]),
            st.none() | st.sampled_from([1.0, 2.0, 3.5, 11.0]),
        ),
        st.lists(st.integers(0, 6), min_size=1, max_size=3).map(lambda ids: ScanID(*ids)),
        st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda p: ScanIDRange(min(p), max(p))),
        st.lists(st.text("ab", min_size=1, max_size=3), min_size=1, max_size=2).map(
            lambda ps: PartialUID(*ps)
        ),
    )


queries = st.recursive(
    leaf_queries(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda qs: And(*qs)),
        st.lists(inner, max_size=3).map(lambda qs: Or(*qs)),
        inner.map(Not),
    ),
    max_leaves=5,
)


def _ordered(records):
    by_key = sorted(records, key=lambda r: (r["start"]["time"], r["start"]["uid"]), reverse=True)
    return [r["start"]["uid"] for r in by_key]


def _load(records, open_empty):
    cat = open_empty()
    for record in records:
        cat.insert("start", record["start"])
        if record["stop"] is not None:
            cat.insert("stop", record["stop"])
    return cat


@SETTINGS
@given(generated_catalog_records(), st.lists(queries, min_size=1, max_size=8))
def test_sql_search_agrees_with_reference_matches(open_empty, records, qs):
    cat = _load(records, open_empty)
    try:
        assert list(cat) == _ordered(records)
        for q in qs:
            want = _ordered([r for r in records if q.matches(r)])
            got = list(cat.search(q))
            assert got == want, q
            assert len(cat.search(q)) == len(want), q
    finally:
        cat.close()


@SETTINGS
@given(generated_catalog_records(), queries, queries)
def test_chained_search_is_and(open_empty, records, q1, q2):
    cat = _load(records, open_empty)
    try:
        want = _ordered([r for r in records if q1.matches(r) and q2.matches(r)])
        assert list(cat.search(q1).search(q2)) == want
        assert list(cat.search(q1 & q2)) == want
        assert list(cat.search(q1 | q2)) == _ordered(
            [r for r in records if q1.matches(r) or q2.matches(r)]
        )
    finally:
        cat.close()


# ---------------------------------------------------------------- found discrepancies, pinned


def _agree(records, query, open_empty):
    cat = _load(records, open_empty)
    try:
        assert list(cat.search(query)) == _ordered([r for r in records if query.matches(r)])
    finally:
        cat.close()


def _records(*metadatas):
    out = []
    for i, md in enumerate(metadatas):
        bundle = compose_run(uid=f"run{i}", time=float(i), metadata=md)
        out.append({"start": bundle.start_doc, "stop": None})
    return out


def test_not_scan_id_includes_runs_without_scan_id(open_empty):
    records = _records({"scan_id": 1}, {}, {"scan_id": 2})
    _agree(records, Not(ScanID(1)), open_empty)
    _agree(records, Not(ScanIDRange(0, 2)), open_empty)
    _agree(records, Not(And(ScanID(1), ScanID(1))), open_empty)


def test_large_integers_compare_exactly(open_empty):
    big = 2**53
    records = _records({"n": big}, {"n": big + 1}, {"n": big + 2})
    _agree(records, Comparison("n", "eq", big + 1), open_empty)
    _agree(records, Comparison("n", "lt", big + 1), open_empty)
    _agree(records, Comparison("n", "ge", big + 1), open_empty)
    _agree(records, In("n", [big + 1]), open_empty)
    _agree(records, Contains("n", big + 1), open_empty)


def test_several_full_text_queries_in_one_search(open_empty):
    records = _records(
        {"plan_name": "scan", "sample": "Ni"},
        {"plan_name": "scan", "sample": "Cu"},
        {"plan_name": "count", "sample": "Ni"},
    )
    _agree(records, And(FullText("ni"), FullText("scan")), open_empty)
    _agree(records, And(FullText("scan"), FullText("ni")), open_empty)
    _agree(records, Or(FullText("cu"), FullText("count")), open_empty)
    _agree(records, And(FullText("count"), Not(FullText("ni"))), open_empty)
    cat = _load(records, open_empty)
    try:
        assert list(cat.search(FullText("ni")).search(FullText("scan"))) == ["run0"]
    finally:
        cat.close()
