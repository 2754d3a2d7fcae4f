"""Tests for runbroker.queries: serialisation, composition and the reference evaluator."""

import json
import math
import re
import time
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runbroker.queries as rq
from runbroker.queries import (
    MISSING,
    And,
    Comparison,
    Contains,
    FullText,
    In,
    Key,
    KeyPresent,
    Not,
    NotIn,
    Or,
    PartialUID,
    Query,
    QueryError,
    Regex,
    ScanID,
    ScanIDRange,
    TimeRange,
    epoch,
    lookup,
    parse_time,
    scalar_equal,
    split_key,
    text_tokens,
)


def run(start=None, stop=None):
    return {"start": {} if start is None else start, "stop": stop}


# ---------------------------------------------------------------- strategies

# A small key alphabet so that random queries often hit random records.
keys = st.sampled_from(["a", "b", "a.b", "start.a", "stop.a", "stop.exit_status", "c.d.e"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "1", "Ni", "ni", "Cu foil", "x_y"])
    | st.text(max_size=8)
)
patterns = st.sampled_from(["^N", "i$", "[0-9]+", "foil|Ni", "", r"\w+_\w+", "^$"])
bounds = st.none() | st.floats(-3e9, 3e9, allow_nan=False)
zones = st.sampled_from([None, "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])


@st.composite
def time_ranges(draw):
    since, until = draw(bounds), draw(bounds)
    if since is not None and until is not None and since > until:
        since, until = until, since
    return TimeRange(
        since=None if since is None else epoch(since),
        until=None if until is None else epoch(until),
        timezone=draw(zones),
    )


@st.composite
def scan_id_ranges(draw):
    a, b = sorted([draw(st.integers(-10, 10)), draw(st.integers(-10, 10))])
    return ScanIDRange(a, b)


leaves = st.one_of(
    st.builds(Comparison, keys, st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]), scalars),
    st.builds(In, keys, st.lists(scalars, max_size=4)),
    st.builds(NotIn, keys, st.lists(scalars, max_size=4)),
    st.builds(Contains, keys, scalars),
    st.builds(Regex, keys, patterns, st.booleans()),
    st.builds(FullText, st.sampled_from(["ni", "Cu foil", "x_y", "1", "foil, NI!"])),
    st.builds(KeyPresent, keys),
    time_ranges(),
    st.lists(st.integers(-10, 10), min_size=1, max_size=3).map(lambda ids: ScanID(*ids)),
    scan_id_ranges(),
    st.lists(st.sampled_from(["a", "ab", "b", "abc1"]), min_size=1, max_size=3).map(
        lambda ps: PartialUID(*ps)
    ),
)
queries = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda qs: And(*qs)),
        st.lists(children, max_size=3).map(lambda qs: Or(*qs)),
        children.map(Not),
    ),
    max_leaves=8,
)

values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcde"), inner),
    max_leaves=6,
)
documents = st.dictionaries(st.sampled_from(["a", "b", "c", "exit_status"]), values, max_size=4)
records = st.builds(
    lambda start, extra, stop: {"start": {**start, **extra}, "stop": stop},
    documents,
    st.fixed_dictionaries(
        {},
        optional={
            "time": st.floats(-3e9, 3e9) | st.integers(-10, 10) | st.text(max_size=2),
            "scan_id": st.integers(-12, 12) | st.floats(-12, 12) | st.booleans(),
            "uid": st.sampled_from(["abc123", "b", "ABC", ""]) | st.integers(),
        },
    ),
    st.none() | documents,
)


# ---------------------------------------------------------------- serialisation


@settings(max_examples=300)
@given(queries)
def test_round_trips(q):
    d = q.to_dict()
    # JSON-able: survives a trip through json with no change at all.
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert Query.from_dict(d) == q
    assert Query.from_json(q.to_json()) == q
    url = q.to_url()
    assert re.fullmatch(r"[A-Za-z0-9_-]*", url)
    assert Query.from_url(url) == q
    assert hash(Query.from_dict(d)) == hash(q)


@given(queries)
def test_repr_reads_like_constructor_call(q):
    namespace = {name: getattr(rq, name) for name in rq.__all__}
    namespace.update(inf=math.inf)
    assert eval(repr(q), namespace) == q


@settings(max_examples=300)
@given(queries, records)
def test_deserialised_query_evaluates_the_same(q, record):
    assert Query.from_json(q.to_json()).matches(record) == q.matches(record)


def test_to_dict_shapes():
    assert (Key("a.b") <= 2.5).to_dict() == {
        "type": "comparison",
        "key": "a.b",
        "op": "le",
        "value": 2.5,
    }
    assert In("a", ["x", 1]).to_dict() == {"type": "in", "key": "a", "values": ["x", 1]}
    assert NotIn("a", []).to_dict() == {"type": "not_in", "key": "a", "values": []}
    assert Contains("a", None).to_dict() == {"type": "contains", "key": "a", "value": None}
    assert Regex("a", "^x").to_dict() == {
        "type": "regex",
        "key": "a",
        "pattern": "^x",
        "case_sensitive": True,
    }
    assert FullText("x").to_dict() == {"type": "full_text", "text": "x"}
    assert KeyPresent("a").to_dict() == {"type": "key_present", "key": "a"}
    assert TimeRange(since="@1.5").to_dict() == {
        "type": "time_range",
        "since": 1.5,
        "until": None,
        "timezone": None,
    }
    assert ScanID(1, 2).to_dict() == {"type": "scan_id", "scan_ids": [1, 2]}
    assert ScanIDRange(1, 5).to_dict() == {"type": "scan_id_range", "start_id": 1, "end_id": 5}
    assert PartialUID("ab").to_dict() == {"type": "partial_uid", "prefixes": ["ab"]}
    assert And(ScanID(1)).to_dict() == {"type": "and", "queries": [ScanID(1).to_dict()]}
    assert Or().to_dict() == {"type": "or", "queries": []}
    assert Not(ScanID(1)).to_dict() == {"type": "not", "query": ScanID(1).to_dict()}


def test_url_is_unpadded_base64url_of_compact_json():
    q = (Key("sample") == "Ni?&/") | ScanID(1)
    url = q.to_url()
    assert "=" not in url
    import base64

    assert base64.urlsafe_b64decode(url + "=" * (-len(url) % 4)).decode() == q.to_json()
    assert " " not in q.to_json()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"type": "bogus"}, "'bogus'"),
        ({"type": ["and"]}, "['and']"),
        ({"key": "a"}, "None"),
        ({"type": "comparison", "key": "a", "op": "eq"}, "'value'"),
        ({"type": "key_present"}, "'key'"),
        ({"type": "key_present", "key": "a", "colour": 1}, "'colour'"),
        ({"type": "and", "queries": [{"type": "nope"}]}, "'nope'"),
        ({"type": "and", "queries": "x"}, "'queries'"),
        ({"type": "scan_id", "scan_ids": 3}, "'scan_ids'"),
        ({"type": "not", "query": 5}, "int"),
        ({"type": "in", "key": "a", "values": 5}, "5"),
        ({"type": "comparison", "key": "a", "op": "like", "value": 1}, "'like'"),
        ({"type": "time_range", "since": 1, "until": 0, "timezone": None}, "since is after"),
        ([1, 2], "list"),
    ],
)
def test_from_dict_rejects_bad_input(data, needle):
    with pytest.raises(QueryError) as info:
        Query.from_dict(data)
    assert needle in str(info.value)


def test_from_dict_fills_in_defaults_for_optional_fields():
    assert Query.from_dict({"type": "regex", "key": "a", "pattern": "x"}) == Regex("a", "x")
    assert Query.from_dict({"type": "time_range", "since": 5}) == TimeRange(since="@5")
    assert Query.from_dict({"type": "time_range"}) == TimeRange()


@pytest.mark.parametrize("text", ["{", "[1", "not json", b"\xff"])
def test_from_json_rejects_bad_json(text):
    with pytest.raises(QueryError, match="JSON"):
        Query.from_json(text)


@pytest.mark.parametrize("text", ["a", "!!!!", "_w"])
def test_from_url_rejects_garbage(text):
    with pytest.raises(QueryError):
        Query.from_url(text)


# ---------------------------------------------------------------- composition


def test_operators_build_and_flatten():
    a, b, c, d = ScanID(1), ScanID(2), PartialUID("x"), KeyPresent("k")
    assert a & b == And(a, b)
    assert (a & b) & c == And(a, b, c)
    assert a & (b & c) == And(a, b, c)
    assert (a & b) & (c & d) == And(a, b, c, d)
    assert a | b | c == Or(a, b, c)
    assert (a | b) & c == And(Or(a, b), c)
    assert (a & b) | c == Or(And(a, b), c)
    assert ~a == Not(a)
    assert ~~a == a
    assert ~(a & b) == Not(And(a, b))
    # Explicit construction is kept as written, nested or not.
    assert And(And(a, b), c) != And(a, b, c)


def test_operators_reject_non_queries():
    with pytest.raises(TypeError):
        ScanID(1) & True
    with pytest.raises(TypeError):
        ScanID(1) | "x"
    with pytest.raises(QueryError, match="And takes queries"):
        And(ScanID(1), "x")
    with pytest.raises(QueryError, match="Not takes queries"):
        Not(3)


def test_queries_are_immutable_and_hashable():
    q = Key("a") == 1
    with pytest.raises(AttributeError):
        q.value = 2
    assert len({q, Key("a") == 1, Key("a") == 1.0, ScanID(1), ScanID(1)}) == 2
    assert In("a", [1]) != NotIn("a", [1])
    assert And(ScanID(1)) != Or(ScanID(1))
    assert not isinstance(NotIn("a", [1]), In)
    assert not isinstance(Or(), And)


def test_key_builder():
    k = Key("sample")
    assert (k == "Ni") == Comparison("sample", "eq", "Ni")
    assert (k != "Ni") == Comparison("sample", "ne", "Ni")
    assert (k < 1) == Comparison("sample", "lt", 1)
    assert (k <= 1) == Comparison("sample", "le", 1)
    assert (k > 1) == Comparison("sample", "gt", 1)
    assert (k >= 1) == Comparison("sample", "ge", 1)
    assert (1 < k) == Comparison("sample", "gt", 1)  # noqa: SIM300
    assert k.in_(["a"]) == In("sample", ("a",))
    assert k.not_in(["a"]) == NotIn("sample", ("a",))
    assert k.contains(3) == Contains("sample", 3)
    assert k.regex("x", case_sensitive=False) == Regex("sample", "x", False)
    assert k.present() == KeyPresent("sample")
    with pytest.raises(TypeError):
        hash(k)
    with pytest.raises(QueryError):
        Key("a..b")


def test_chained_comparison_is_an_error_not_a_silent_half_query():
    with pytest.raises(TypeError, match=re.escape("& | ~")):
        1 < Key("a") < 5  # noqa: B015


def test_reprs():
    assert repr(Key("sample") == "Ni") == "Key('sample') == 'Ni'"
    assert repr(Key("t") >= 3.5) == "Key('t') >= 3.5"
    assert repr(ScanID(1, 2)) == "ScanID(1, 2)"
    assert repr(PartialUID("ab")) == "PartialUID('ab')"
    assert repr(ScanID(1) & ~PartialUID("a")) == "And(ScanID(1), Not(PartialUID('a')))"
    q = TimeRange(since="2021-12-06", until="@1638900000.25", timezone="Europe/Paris")
    assert repr(q) == (
        "TimeRange(since='2021-12-06 00:00:00+01:00', "
        "until='2021-12-07 19:00:00.250000+01:00', timezone='Europe/Paris')"
    )
    assert repr(TimeRange(until=epoch(0.1 + 0.2), timezone="UTC")).startswith(
        "TimeRange(since=None, until='@0.30000000000000004'"
    )


# ---------------------------------------------------------------- values and keys


def test_split_key():
    assert split_key("sample") == ("start", ("sample",))
    assert split_key("sample.temp") == ("start", ("sample", "temp"))
    assert split_key("start.sample") == ("start", ("sample",))
    assert split_key("stop.exit_status") == ("stop", ("exit_status",))
    assert split_key("stop") == ("start", ("stop",))
    for bad in ["", ".", "a.", ".a", "a..b", None, 3]:
        with pytest.raises(QueryError):
            split_key(bad)


def test_keyed_constructors_validate_key():
    for make in [
        lambda k: Key(k) == 1,
        lambda k: In(k, [1]),
        lambda k: NotIn(k, [1]),
        lambda k: Contains(k, 1),
        lambda k: Regex(k, "x"),
        lambda k: KeyPresent(k),
    ]:
        with pytest.raises(QueryError, match=r"'a\.\.b'"):
            make("a..b")


def test_lookup():
    record = run({"a": {"b": {"c": 1}, "l": [{"x": 1}], "n": None}}, {"exit_status": "success"})
    assert lookup(record, "a.b.c") == 1
    assert lookup(record, "start.a.b") == {"c": 1}
    assert lookup(record, "a.n") is None
    assert lookup(record, "a.l") == [{"x": 1}]
    assert lookup(record, "a.l.x") is MISSING
    assert lookup(record, "a.b.c.d") is MISSING
    assert lookup(record, "zzz") is MISSING
    assert lookup(record, "stop.exit_status") == "success"
    assert lookup(run({"exit_status": "x"}), "stop.exit_status") is MISSING
    assert repr(MISSING) == "MISSING"


def test_scalar_equal():
    assert scalar_equal(1, 1.0)
    assert scalar_equal(None, None)
    assert scalar_equal("a", "a")
    assert scalar_equal(True, True)
    assert scalar_equal(np.int64(3), 3.0)
    assert not scalar_equal(True, 1)
    assert not scalar_equal(0, False)
    assert not scalar_equal("1", 1)
    assert not scalar_equal(None, 0)
    assert not scalar_equal([1], [1])
    assert not scalar_equal({"a": 1}, {"a": 1})
    assert not scalar_equal(math.nan, math.nan)
    assert not scalar_equal(MISSING, MISSING)


@pytest.mark.parametrize("bad", [[1], (1,), {"a": 1}, {1}, b"x", np.array([1, 2]), object()])
def test_non_scalar_values_rejected(bad):
    name = type(bad).__name__
    for make in [lambda v: Key("sample") == v, lambda v: Contains("sample", v)]:
        with pytest.raises(QueryError, match=rf"'sample'.*{name}"):
            make(bad)
    with pytest.raises(QueryError, match=rf"'sample'.*{name}"):
        In("sample", [1, bad])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_non_finite_values_rejected(bad):
    with pytest.raises(QueryError, match=r"'t'.*finite"):
        Key("t") < bad  # noqa: B015


@pytest.mark.parametrize("bad", ["Ni", b"Ni", {"Ni": 1}, 5, None])
def test_in_values_must_be_a_collection(bad):
    with pytest.raises(QueryError, match=r"'sample'.*values must be a list"):
        In("sample", bad)


def test_numpy_scalars_become_python_scalars():
    q = In("a", np.array([1, 2]))
    assert q.values == (1, 2)
    assert all(type(v) is int for v in q.values)
    c = Key("a") == np.float64(2.5)
    assert type(c.value) is float
    assert type((Key("a") == np.bool_(True)).value) is bool
    assert type((Key("a") == np.str_("x")).value) is str
    assert ScanID(np.int32(4)).scan_ids == (4,)
    assert json.loads((Key("a") == np.int16(7)).to_json())["value"] == 7


def test_text_tokens():
    assert text_tokens("Ni_foil, 300K-scan!") == ["ni", "foil", "300k", "scan"]
    assert text_tokens("Ünïcode Straße") == ["ünïcode", "straße"]
    assert text_tokens("  _-.,  ") == []


# ---------------------------------------------------------------- evaluator


def test_eq_and_ne():
    q, not_q = Key("sample") == "Ni", Key("sample") != "Ni"
    assert q.matches(run({"sample": "Ni"}))
    assert not q.matches(run({"sample": "ni"}))
    assert not q.matches(run({}))
    assert not q.matches(run({"sample": ["Ni"]}))
    # ne is exactly not-eq: runs lacking the key or holding another type match.
    assert not_q.matches(run({}))
    assert not_q.matches(run({"sample": ["Ni"]}))
    assert not_q.matches(run({"sample": None}))
    assert not not_q.matches(run({"sample": "Ni"}))


def test_eq_number_classes():
    assert (Key("n") == 1).matches(run({"n": 1.0}))
    assert (Key("n") == 1.0).matches(run({"n": 1}))
    assert not (Key("n") == 1).matches(run({"n": True}))
    assert not (Key("n") == True).matches(run({"n": 1}))  # noqa: E712
    assert (Key("n") == True).matches(run({"n": True}))  # noqa: E712
    assert not (Key("n") == 1).matches(run({"n": "1"}))
    assert not (Key("n") == 0).matches(run({"n": None}))
    assert (Key("n") == None).matches(run({"n": None}))  # noqa: E711
    assert not (Key("n") == None).matches(run({}))  # noqa: E711
    assert (Key("n") == 3).matches(run({"n": np.int64(3)}))


def test_ordering():
    assert (Key("t") > 300).matches(run({"t": 300.5}))
    assert not (Key("t") > 300).matches(run({"t": 300}))
    assert (Key("t") >= 300).matches(run({"t": 300}))
    assert (Key("t") < 1).matches(run({"t": -1}))
    assert (Key("t") <= 1).matches(run({"t": 1.0}))
    assert (Key("s") < "b").matches(run({"s": "a"}))
    assert (Key("s") < "b").matches(run({"s": "B"}))  # code-point order: "B" < "a"
    assert not (Key("s") < "a").matches(run({"s": "b"}))
    # Mixed classes, bools, None, NaN, missing: never ordered.
    assert not (Key("t") < 5).matches(run({"t": "1"}))
    assert not (Key("t") > "1").matches(run({"t": 5}))
    assert not (Key("t") < 5).matches(run({"t": True}))
    assert not (Key("t") > False).matches(run({"t": True}))
    assert not (Key("t") < 5).matches(run({"t": None}))
    assert not (Key("t") > None).matches(run({"t": None}))
    assert not (Key("t") < 5).matches(run({"t": math.nan}))
    assert not (Key("t") >= 5).matches(run({"t": math.nan}))
    assert not (Key("t") < 5).matches(run({}))
    assert not (Key("t") < 5).matches(run({"t": [1]}))


def test_nested_and_stop_keys():
    record = run({"sample": {"name": "Ni", "temp": 300}}, {"exit_status": "success"})
    assert (Key("sample.name") == "Ni").matches(record)
    assert (Key("start.sample.temp") > 200).matches(record)
    assert (Key("stop.exit_status") == "success").matches(record)
    assert not (Key("exit_status") == "success").matches(record)
    running = run({"sample": {"name": "Ni"}}, None)
    assert not (Key("stop.exit_status") == "success").matches(running)
    assert (Key("stop.exit_status") != "success").matches(running)
    assert not KeyPresent("stop.exit_status").matches(running)
    assert not (Key("sample.name.x") == "Ni").matches(record)


def test_in_and_not_in():
    q = In("s", ["Ni", 1, None])
    assert q.matches(run({"s": "Ni"}))
    assert q.matches(run({"s": 1.0}))
    assert q.matches(run({"s": None}))
    assert not q.matches(run({"s": True}))
    assert not q.matches(run({}))
    assert not In("s", []).matches(run({"s": 1}))
    n = NotIn("s", ["Ni", 1, None])
    assert n.matches(run({}))
    assert n.matches(run({"s": True}))
    assert not n.matches(run({"s": 1}))
    assert NotIn("s", []).matches(run({}))


def test_contains():
    q = Contains("motors", "th")
    assert q.matches(run({"motors": ["tth", "th"]}))
    assert not q.matches(run({"motors": ["tth"]}))
    assert not q.matches(run({"motors": "th"}))  # a str is not a list
    assert not Contains("s", "t").matches(run({"s": "t"}))
    assert not q.matches(run({"motors": {"th": 1}}))
    assert not q.matches(run({}))
    assert Contains("l", 1).matches(run({"l": [1.0]}))
    assert not Contains("l", 1).matches(run({"l": [True]}))
    assert not Contains("l", 1).matches(run({"l": [[1]]}))
    assert Contains("l", None).matches(run({"l": [None]}))


def test_regex():
    assert Regex("s", "^Ni").matches(run({"s": "Ni foil"}))
    assert not Regex("s", "^ni").matches(run({"s": "Ni foil"}))
    assert Regex("s", "^ni", case_sensitive=False).matches(run({"s": "Ni foil"}))
    assert Regex("s", "foil").matches(run({"s": "Ni foil"}))  # search, not match
    assert not Regex("s", "1").matches(run({"s": 1}))
    assert not Regex("s", "").matches(run({}))
    assert Regex("s", "").matches(run({"s": ""}))
    assert not Regex("s", "N").matches(run({"s": ["Ni"]}))


def test_bad_regex_names_pattern_and_error():
    with pytest.raises(QueryError) as info:
        Regex("sample", "Ni(")
    message = str(info.value)
    assert "'Ni('" in message
    assert "'sample'" in message
    assert "missing ), unterminated subpattern" in message
    with pytest.raises(QueryError, match="case_sensitive"):
        Regex("sample", "x", case_sensitive="no")
    with pytest.raises(QueryError, match="pattern must be a str"):
        Regex("sample", 3)


def test_key_present():
    assert KeyPresent("a").matches(run({"a": None}))
    assert KeyPresent("a").matches(run({"a": {}}))
    assert KeyPresent("a").matches(run({"a": []}))
    assert KeyPresent("a.b").matches(run({"a": {"b": 0}}))
    assert not KeyPresent("a").matches(run({"b": 1}))
    assert KeyPresent("stop.reason").matches(run({}, {"reason": ""}))


def test_full_text():
    record = run(
        {
            "sample": {"name": "Nickel_foil", "notes": ["first scan, 300K!", {"deep": "Hidden"}]},
            "plan_name": "count",
            "num": 42,
            "uid_key_only": None,
        }
    )
    assert FullText("nickel").matches(record)
    assert FullText("FOIL nickel").matches(record)
    assert FullText("nickel_foil").matches(record)
    assert FullText("300k scan").matches(record)
    assert FullText("hidden").matches(record)
    assert FullText("count!").matches(record)
    assert not FullText("nick").matches(record)  # whole tokens only
    assert not FullText("42").matches(record)  # numbers are not text
    assert not FullText("sample").matches(record)  # field names are not searched
    assert not FullText("nickel copper").matches(record)
    assert not FullText("success").matches(run({}, {"exit_status": "success"}))
    for bad in ["", "  ", "_,-!"]:
        with pytest.raises(QueryError, match=re.escape(repr(bad))):
            FullText(bad)


def test_scan_id_and_range():
    assert ScanID(3).matches(run({"scan_id": 3}))
    assert ScanID(3).matches(run({"scan_id": 3.0}))
    assert ScanID(1, 3).matches(run({"scan_id": 3}))
    assert not ScanID(1).matches(run({"scan_id": True}))
    assert not ScanID(3).matches(run({"scan_id": "3"}))
    assert not ScanID(3).matches(run({}))
    r = ScanIDRange(10, 20)
    assert r.matches(run({"scan_id": 10}))
    assert r.matches(run({"scan_id": 19.5}))
    assert not r.matches(run({"scan_id": 20}))
    assert not r.matches(run({"scan_id": 9}))
    assert not r.matches(run({"scan_id": "15"}))
    assert not ScanIDRange(5, 5).matches(run({"scan_id": 5}))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: ScanID(), "at least one"),
        (lambda: ScanID(1.5), "float 1.5"),
        (lambda: ScanID(True), "bool True"),
        (lambda: ScanID("3"), "str '3'"),
        (lambda: ScanIDRange(5, 1), "5 > end_id 1"),
        (lambda: ScanIDRange(1.0, 2), "start_id must be an int"),
        (lambda: PartialUID(), "non-empty"),
        (lambda: PartialUID(""), "non-empty"),
        (lambda: PartialUID(12), "12"),
    ],
)
def test_scan_and_uid_validation(make, needle):
    with pytest.raises(QueryError) as info:
        make()
    assert needle in str(info.value)


def test_partial_uid():
    assert PartialUID("abc").matches(run({"uid": "abc123"}))
    assert PartialUID("zz", "ab").matches(run({"uid": "abc123"}))
    assert not PartialUID("ABC").matches(run({"uid": "abc123"}))
    assert not PartialUID("abc").matches(run({"uid": "ABC123"}))
    assert not PartialUID("bc").matches(run({"uid": "abc123"}))
    assert not PartialUID("1").matches(run({"uid": 1}))
    assert not PartialUID("a").matches(run({}))


def test_and_or_not_evaluation():
    record = run({"a": 1})
    yes, no = Key("a") == 1, Key("a") == 2
    assert And().matches(record)
    assert not Or().matches(record)
    assert (yes & yes).matches(record)
    assert not (yes & no).matches(record)
    assert (yes | no).matches(record)
    assert not (no | no).matches(record)
    assert (~no).matches(record)
    assert not (~yes).matches(record)


@settings(max_examples=300)
@given(queries, queries, records)
def test_logic_laws(a, b, record):
    ra, rb = a.matches(record), b.matches(record)
    assert isinstance(ra, bool)
    assert (a & b).matches(record) == (ra and rb)
    assert (a | b).matches(record) == (ra or rb)
    assert (~a).matches(record) == (not ra)


@given(keys, scalars, records)
def test_ne_is_exactly_not_eq_and_not_in_is_not_in(key, value, record):
    assert (Key(key) != value).matches(record) != (Key(key) == value).matches(record)
    assert NotIn(key, [value]).matches(record) != In(key, [value]).matches(record)
    assert In(key, [value]).matches(record) == (Key(key) == value).matches(record)


# ---------------------------------------------------------------- time


@pytest.fixture
def local_tz(monkeypatch):
    """Pin the process's local timezone so 'local' interpretation is testable."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield ZoneInfo("America/New_York")
    monkeypatch.undo()
    time.tzset()


def test_parse_time_strings_with_timezone():
    paris = ZoneInfo("Europe/Paris")
    cases = {
        "2021-12-06": datetime(2021, 12, 6, tzinfo=paris),
        "2021-12-06 15:46": datetime(2021, 12, 6, 15, 46, tzinfo=paris),
        "2021-12-06 15:46:30": datetime(2021, 12, 6, 15, 46, 30, tzinfo=paris),
        "2021-12-06T15:46:30": datetime(2021, 12, 6, 15, 46, 30, tzinfo=paris),
        " 2021-06-06 15:46 ": datetime(2021, 6, 6, 15, 46, tzinfo=paris),  # summer time
    }
    for text, expected in cases.items():
        assert parse_time(text, timezone="Europe/Paris") == expected.timestamp(), text
    assert parse_time("2021-12-06", "UTC") == 1638748800.0
    assert parse_time("2021-12-06", "Europe/Paris") == 1638748800.0 - 3600


def test_explicit_offsets_ignore_timezone():
    expected = 1638798390.0  # 2021-12-06T13:46:30Z
    for tz in [None, "UTC", "Asia/Tokyo"]:
        assert parse_time("2021-12-06T15:46:30+02:00", tz) == expected
        assert parse_time("2021-12-06T13:46:30Z", tz) == expected
        assert parse_time(datetime(2021, 12, 6, 13, 46, 30, tzinfo=ZoneInfo("UTC")), tz) == expected


def test_naive_values_use_local_time_when_no_timezone(local_tz):
    expected = datetime(2021, 12, 6, tzinfo=local_tz).timestamp()
    assert parse_time("2021-12-06") == expected
    assert parse_time(datetime(2021, 12, 6)) == expected
    assert parse_time(date(2021, 12, 6)) == expected
    assert TimeRange(since="2021-12-06").since == expected
    assert repr(TimeRange(since="2021-12-06")).startswith(
        "TimeRange(since='2021-12-06 00:00:00-05:00'"
    )


def test_parse_time_numbers_and_datetimes():
    assert parse_time("@1638748800") == 1638748800.0
    assert type(parse_time("@5")) is float
    assert parse_time("@1.25", "Europe/Paris") == 1.25
    assert parse_time(" @-2.5e3 ") == -2500.0
    assert parse_time(datetime(2021, 12, 6), "UTC") == 1638748800.0
    assert parse_time(date(2021, 12, 6), "UTC") == 1638748800.0


@pytest.mark.parametrize("bad", ["yesterday", "06/12/2021", "2021-13-01", "", "2021-12-06 25:00"])
def test_parse_time_rejects_bad_strings_with_examples(bad):
    with pytest.raises(QueryError) as info:
        parse_time(bad)
    assert repr(bad) in str(info.value)
    assert "2021-12-06 15:46:30" in str(info.value)


@pytest.mark.parametrize("bad", [True, None, [1], math.nan, math.inf])
def test_parse_time_rejects_other_types(bad):
    with pytest.raises(QueryError, match=re.escape(repr(bad))):
        parse_time(bad)


def test_parse_time_out_of_range_is_a_query_error(local_tz):
    # Naive local times go through the C library, which cannot reach year 1.
    with pytest.raises(QueryError, match="out of range"):
        parse_time("0001-01-01")


def test_unknown_timezone():
    for tz in ["Mars/Olympus", "", "../etc", 5]:
        with pytest.raises(QueryError, match=re.escape(repr(tz))):
            TimeRange(since="@0", timezone=tz)


def test_time_range_validation_and_storage():
    q = TimeRange(since="2021-12-06", until="2021-12-07", timezone="UTC")
    assert (q.since, q.until, q.timezone) == (1638748800.0, 1638835200.0, "UTC")
    assert TimeRange(since="@5", until="@5").since == 5.0
    with pytest.raises(QueryError, match="since is after until"):
        TimeRange(since="2021-12-07", until="2021-12-06", timezone="UTC")
    with pytest.raises(QueryError, match="'someday'"):
        TimeRange(until="someday")


def test_time_range_evaluation():
    q = TimeRange(since="@100", until="@200")
    assert q.matches(run({"time": 100}))
    assert q.matches(run({"time": 199.999}))
    assert not q.matches(run({"time": 200}))
    assert not q.matches(run({"time": 99}))
    assert not q.matches(run({"time": "150"}))
    assert not q.matches(run({"time": True}))
    assert not q.matches(run({}))
    assert TimeRange().matches(run({"time": -1e9}))
    assert not TimeRange().matches(run({}))
    assert TimeRange(since="@100").matches(run({"time": 1e12}))
    assert TimeRange(until="@100").matches(run({"time": -1e12}))
    assert not TimeRange(since="@100").matches(run({"time": math.nan}))
    # The Kolkata day (UTC+05:30) runs from 18:30 UTC the day before to 18:30 UTC.
    day = TimeRange(since="2021-12-06", until="2021-12-07", timezone="Asia/Kolkata")
    utc = ZoneInfo("UTC")
    assert day.matches(run({"time": datetime(2021, 12, 5, 18, 30, tzinfo=utc).timestamp()}))
    assert day.matches(run({"time": datetime(2021, 12, 6, 18, 29, tzinfo=utc).timestamp()}))
    assert not day.matches(run({"time": datetime(2021, 12, 6, 18, 30, tzinfo=utc).timestamp()}))
    assert not day.matches(run({"time": datetime(2021, 12, 5, 18, 29, tzinfo=utc).timestamp()}))


def test_year_and_month_strings_as_databroker_took_them():
    utc = ZoneInfo("UTC")
    year = TimeRange(since="2026", until="2027", timezone="UTC")
    assert (year.since, year.until) == (
        datetime(2026, 1, 1, tzinfo=utc).timestamp(),
        datetime(2027, 1, 1, tzinfo=utc).timestamp(),
    )
    november = TimeRange(since="2026-11", until="2026-12", timezone="Europe/Paris")
    assert november.since == datetime(2026, 11, 1, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert november.matches(run({"time": datetime(2026, 11, 30, 12, tzinfo=utc).timestamp()}))
    assert not november.matches(run({"time": datetime(2026, 12, 1, tzinfo=utc).timestamp()}))
    for bad in ["2026-13", "2026-1", "0000", "20261"]:
        with pytest.raises(QueryError, match=re.escape(repr(bad))):
            TimeRange(since=bad)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (1.7e9, ["since", "bare number", "'@1700000000.0'", "datetime.fromtimestamp"]),
        (2026, ["since", "write the year as a string, '2026'", "'@2026'"]),
        (np.float64(5.0), ["'@5.0'"]),
    ],
)
def test_a_bare_number_is_refused_as_a_time(value, says):
    with pytest.raises(QueryError) as info:
        TimeRange(since=value)
    for needle in says:
        assert needle in str(info.value)


def test_epoch_seconds_when_marked():
    assert TimeRange(since="@1700000000", until=epoch(1.7e9 + 0.5)).until == 1.7e9 + 0.5
    assert parse_time(datetime.fromtimestamp(1.7e9)) == 1.7e9
    for bad in ["@", "@soon", "@nan", "@inf"]:
        with pytest.raises(QueryError, match="epoch seconds"):
            parse_time(bad)
    for bad in [True, math.nan, "1.5"]:
        with pytest.raises(QueryError):
            epoch(bad)
    # The JSON form holds epoch seconds: what earlier versions wrote still reads back.
    q = Query.from_json('{"type":"time_range","since":1700000000,"until":null,"timezone":null}')
    assert q == TimeRange(since="@1700000000") and Query.from_json(q.to_json()) == q
