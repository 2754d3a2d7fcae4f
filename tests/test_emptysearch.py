"""A search that finds nothing because of a mistyped key or a value of the wrong type warns
once, naming the key and what the catalog holds; it still finds nothing."""

from __future__ import annotations

import warnings

import pytest
from bluesky.plans import count, scan
from ophyd.sim import det, motor

from runbroker.queries import Contains, EmptySearchWarning, In, Key, Regex


def _warnings(search):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = search()
    return found, [str(w.message) for w in caught if w.category is EmptySearchWarning]


@pytest.fixture
def filled(catalog, RE):
    RE(count([det], 2), sample="Ni", sample_name="Ni foil")
    RE(scan([det], motor, -1, 1, 3), sample="Cu", proposal={"id": 7})
    catalog.flush()
    return catalog


def test_a_key_no_run_has_warns_once_with_the_nearest_keys(filled):
    found, said = _warnings(lambda: len(filled.search(Key("smaple") == "Ni")))
    assert found == 0
    (message,) = said
    assert "'smaple'" in message and filled.store.uri in message
    assert "nearest keys: 'sample'" in message
    # once per catalog and key: neither another search on it nor iterating warns again
    found, said = _warnings(lambda: list(filled.search({"smaple": "Cu"})))
    assert (found, said) == ([], [])
    found, said = _warnings(lambda: list(filled.search(Key("proposal.idd") == 7)))
    assert found == [] and len(said) == 1 and "'proposal.id'" in said[0]
    found, said = _warnings(lambda: len(filled.search(Key("stop.exit_stat") == "success")))
    assert found == 0 and "nearest keys: 'stop.exit_status'" in said[0]


def test_a_value_of_a_type_the_key_never_holds_warns(filled):
    found, said = _warnings(lambda: len(filled.search(Key("scan_id") == "1")))
    assert found == 0
    (message,) = said
    assert "Key('scan_id') == '1'" in message
    assert "never holds a str value" in message and "of type int" in message
    found, said = _warnings(lambda: len(filled.search(Key("detectors") == "det")))
    assert found == 0 and "Contains('detectors', ...)" in said[0]
    found, said = _warnings(lambda: len(filled.search(Regex("num_points", "^1"))))
    assert found == 0 and "never holds a str value" in said[0]
    found, said = _warnings(lambda: len(filled.search(In("sample", [1, 2]))))
    assert found == 0 and "never holds a number value" in said[0] and "of type str" in said[0]


def test_no_warning_when_the_keys_and_types_are_right(filled, catalog):
    for query in [
        Key("sample") == "Fe",  # a value no run has, of the right type
        Contains("detectors", "nothing"),
        (Key("sample") == "Ni") & (Key("plan_name") == "scan"),
        Key("scan_id") > 100,
    ]:
        found, said = _warnings(lambda query=query: len(filled.search(query)))
        assert (found, said) == (0, []), query
    found, said = _warnings(lambda: len(filled.search(Key("sample") == "Ni")))
    assert (found, said) == (1, [])


def test_an_empty_catalog_does_not_warn(make_catalog):
    found, said = _warnings(lambda: len(make_catalog().search(Key("smaple") == "Ni")))
    assert (found, said) == (0, [])


def test_searches_runbroker_makes_itself_do_not_warn(filled):
    # run.derived searches a key only derived runs have: finding nothing is the usual answer.
    found, said = _warnings(lambda: (len(filled[-1].derived), list(filled[-1].derived)))
    assert (found, said) == ((0, []), [])
