"""Dict queries as databroker users write them (MongoDB style), translated to query objects."""

from __future__ import annotations

import re

import pytest
from bluesky.plans import count, scan
from ophyd.sim import det, det1, motor

from runbroker.mongoquery import OPERATORS, from_mongo, parse_query
from runbroker.queries import (
    Comparison,
    Contains,
    In,
    Key,
    KeyPresent,
    Not,
    NotIn,
    Or,
    QueryError,
    Regex,
    ScanIDRange,
    SubDocument,
)


def _eq(key, value):
    return Or(Comparison(key, "eq", value), Contains(key, value))


def test_each_operator_translates_to_the_query_objects():
    assert from_mongo({"plan_name": "scan"}) == _eq("plan_name", "scan")
    assert from_mongo({"n": {"$eq": 3}}) == _eq("n", 3)
    assert from_mongo({"n": {"$ne": 3}}) == ~_eq("n", 3)
    assert from_mongo({"n": {"$gt": 1}}) == (Key("n") > 1)
    assert from_mongo({"n": {"$gte": 1}}) == (Key("n") >= 1)
    assert from_mongo({"n": {"$lt": "b"}}) == (Key("n") < "b")
    assert from_mongo({"n": {"$lte": 1.5}}) == (Key("n") <= 1.5)
    in_ = Or(In("s", ["a", "b"]), Contains("s", "a"), Contains("s", "b"))
    assert from_mongo({"s": {"$in": ["a", "b"]}}) == in_
    assert from_mongo({"s": {"$nin": ["a", "b"]}}) == ~in_
    assert from_mongo({"s": {"$exists": True}}) == KeyPresent("s")
    assert from_mongo({"s": {"$exists": False}}) == ~KeyPresent("s")
    assert from_mongo({"s": {"$regex": "^N"}}) == Regex("s", "^N")
    assert from_mongo({"s": {"$regex": "^n", "$options": "i"}}) == Regex("s", "^n", False)
    assert from_mongo({"s": re.compile("^n", re.IGNORECASE)}) == Regex("s", "^n", False)
    assert from_mongo({"n": {"$not": {"$gt": 5}}}) == Not(Key("n") > 5)
    assert from_mongo({"$and": [{"a": 1}, {"b": 2}]}) == _eq("a", 1) & _eq("b", 2)
    assert from_mongo({"$or": [{"a": 1}, {"b": 2}]}) == Or(_eq("a", 1), _eq("b", 2))
    assert from_mongo({"$nor": [{"a": 1}]}) == Not(Or(_eq("a", 1)))
    assert from_mongo({"$not": {"a": 1}}) == Not(_eq("a", 1))
    # null also matches a missing key, as in MongoDB
    assert from_mongo({"a": None}) == Or(Key("a") == None, Contains("a", None), ~KeyPresent("a"))  # noqa: E711
    assert from_mongo({"n": {"$gte": 1, "$lt": 5}}) == (Key("n") >= 1) & (Key("n") < 5)
    assert from_mongo({"sample.name": "Cu"}) == _eq("sample.name", "Cu")
    whole = SubDocument("sample", {"name": "Cu", "x": {"y": 1}})
    assert from_mongo({"sample": {"x": {"y": 1}, "name": "Cu"}}) == whole
    assert from_mongo({"sample": {"$eq": {"name": "Cu", "x": {"y": 1}}}}) == whole
    assert from_mongo({"sample": {"$in": [{"name": "Cu", "x": {"y": 1}}, "Ni"]}}) == Or(
        whole, Key("sample") == "Ni", Contains("sample", "Ni")
    )
    assert from_mongo({"stop.exit_status": "success"}) == _eq("stop.exit_status", "success")
    assert from_mongo({}) == from_mongo({"$and": [{}]}).queries[0]  # {} matches every run
    assert set(OPERATORS) >= {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"}
    assert set(OPERATORS) >= {"$exists", "$regex", "$and", "$or", "$not"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"a": {"$where": "x"}}, ["'$where'", "key 'a'", "supported operators: $eq"]),
        ({"$where": "x"}, ["'$where'", "top level", "$and"]),
        ({"a": {"$elemMatch": {"b": 1}}}, ["'$elemMatch'"]),
        ({"sample": {"name": [1]}}, ["key 'sample.name'", "JSON scalar"]),
        ({"sample": {"a.b": 1}}, ["key 'sample'", "'a.b'", "dotless"]),
        ({"a": [1, 2]}, ["key 'a'", "array equality", "$in"]),
        ({"a": {"$in": [[1]]}}, ["key 'a'", "array equality"]),
        ({"a": {"$in": "ab"}}, ["key 'a'", "$in takes a list"]),
        ({"a": {"$gt": [1]}}, ["key 'a'", "$gt takes a number or a str"]),
        ({"a": {"$exists": 1}}, ["key 'a'", "true or false"]),
        ({"a": {"$regex": "x", "$options": "m"}}, ["key 'a'", "'m'", "'i'"]),
        ({"a": {"$options": "i"}}, ["key 'a'", "$options goes with $regex"]),
        ({"a": {"$regex": "("}}, ["key 'a'", "invalid regex"]),
        ({"a": {"$not": 5}}, ["key 'a'", "$not takes operators"]),
        ({"a": {"$gt": 1, "b": 2}}, ["key 'a'", "mixes operators and field names"]),
        ({"$or": []}, ["$or takes a non-empty list"]),
        ({"$and": [5]}, ["$and[0] must be a dict"]),
        ({"a..b": 1}, ["'a..b'", "empty segment"]),
        ([{"a": 1}], ["must be a dict", "list"]),
    ],
)
def test_what_cannot_be_translated_is_a_clear_error(spec, says):
    with pytest.raises(QueryError) as info:
        from_mongo(spec)
    for needle in says:
        assert needle in str(info.value)


def test_command_line_text_takes_either_form_and_names_the_option():
    assert parse_query('{"n": {"$gt": 20}}') == (Key("n") > 20)
    old = (Key("sample") == "Ni") & ScanIDRange(1, 5)
    assert parse_query(old.to_json()) == old
    # "type" names a query type only when it is one: otherwise it is a metadata key.
    assert parse_query('{"type": "calibration"}') == _eq("type", "calibration")
    with pytest.raises(QueryError, match=r"^--query '\{bad': not valid JSON"):
        parse_query("{bad")
    with pytest.raises(QueryError, match=r"^--query .*'\$size'"):
        parse_query('{"a": {"$size": 2}}')
    with pytest.raises(QueryError, match=r"^--query .*unknown field"):
        parse_query('{"type": "key_present", "name": "x"}')


@pytest.fixture
def runs(catalog, RE):
    RE(count([det], 3), sample="Ni", temp=300, operator="Ada", tags=["cal"])
    RE(scan([det], motor, -1, 1, 25), sample="Cu", temp=310.5, tags=["good", "cal"])
    RE(scan([det], motor, -1, 1, 5), sample={"name": "Cu", "form": "foil"}, note=None)
    RE(count([det1], 1), operator="adam", temp="hot", note="x")
    catalog.flush()
    return {uid: {"start": run.start, "stop": run.stop} for uid, run in catalog.items()}


CASES = [
    (
        {"plan_name": "scan", "num_points": {"$gt": 20}},
        (Key("plan_name") == "scan") & (Key("num_points") > 20),
    ),
    ({"sample": {"$in": ["Ni", "Cu"]}}, In("sample", ["Ni", "Cu"])),
    ({"sample": {"$nin": ["Ni", "Cu"]}}, NotIn("sample", ["Ni", "Cu"])),
    ({"sample": {"$ne": "Ni"}}, Key("sample") != "Ni"),
    ({"sample.name": "Cu"}, Key("sample.name") == "Cu"),
    ({"detectors": "det"}, Contains("detectors", "det")),
    ({"tags": {"$in": ["good"]}}, Contains("tags", "good")),
    ({"temp": {"$gte": 300, "$lt": 310}}, (Key("temp") >= 300) & (Key("temp") < 310)),
    ({"temp": {"$not": {"$gt": 305}}}, ~(Key("temp") > 305)),
    ({"temp": {"$exists": False}}, ~KeyPresent("temp")),
    ({"operator": {"$regex": "^ad", "$options": "i"}}, Regex("operator", "^ad", False)),
    ({"operator": {"$regex": "^ad"}}, Regex("operator", "^ad")),
    (
        {"$or": [{"sample": "Ni"}, {"tags": "good"}]},
        (Key("sample") == "Ni") | Contains("tags", "good"),
    ),
    ({"$nor": [{"plan_name": "count"}]}, Key("plan_name") != "count"),
    ({"note": None}, ~KeyPresent("note") | (Key("note") == None)),  # noqa: E711
    ({"note": {"$ne": None}}, KeyPresent("note") & (Key("note") != None)),  # noqa: E711
    (
        {"stop.exit_status": "success", "$and": [{"scan_id": {"$lte": 2}}]},
        (Key("stop.exit_status") == "success") & (Key("scan_id") <= 2),
    ),
]


def test_dict_searches_find_what_the_query_objects_find(catalog, runs):
    for spec, equivalent in CASES:
        expected = {uid for uid, record in runs.items() if equivalent.matches(record)}
        assert expected and expected != set(runs), spec  # each case tells runs apart
        assert set(catalog.search(spec)) == set(catalog.search(equivalent)) == expected, spec
        assert len(catalog.search(spec)) == len(expected), spec
    chained = catalog.search({"plan_name": "scan"}).search({"sample": "Cu"})
    assert [run.start["num_points"] for run in chained.values()] == [25]


def test_a_dict_value_is_the_whole_sub_document_as_in_mongodb(catalog, RE):
    shapes = {
        "exact": {"name": "Cu"},
        "more": {"name": "Cu", "form": "foil"},
        "nested": {"name": "Cu", "x": {"y": 1}},
        "deeper": {"name": "Cu", "x": {"y": 1, "z": 2}},
        "listed": {"name": "Cu", "l": [1]},
        "empty": {},
        "flat": "Cu",
    }
    for label, sample in shapes.items():
        RE(count([det], 1), sample=sample, label=label)
    catalog.flush()
    records = [{"start": run.start, "stop": run.stop} for run in catalog.values()]

    def labels(found):
        return sorted(run.start["label"] for run in found.values())

    for spec, expected in [
        ({"sample": {"name": "Cu"}}, ["exact"]),
        ({"sample": {"form": "foil", "name": "Cu"}}, ["more"]),
        ({"sample": {"name": "Cu", "x": {"y": 1}}}, ["nested"]),
        ({"sample": {"name": "Cu", "x": {}}}, []),
        ({"sample": {}}, ["empty"]),
        ({"sample": {"$ne": {"name": "Cu"}}}, sorted(set(shapes) - {"exact"})),
        ({"sample.name": "Cu"}, ["deeper", "exact", "listed", "more", "nested"]),
    ]:
        query = from_mongo(spec)
        assert labels(catalog.search(spec)) == expected, spec
        reference = sorted(r["start"]["label"] for r in records if query.matches(r))
        assert reference == expected, spec
