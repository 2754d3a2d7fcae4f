"""Standard names: the alias table of a catalog, ``read(names="standard")``, searches by
standard names (``resolve_fields``) and the NeXus export under standard names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import runbroker
from runbroker.catalog import Catalog
from runbroker.config import read_file
from runbroker.errors import AliasError, CatalogConfigError
from runbroker.queries import DataKey, Field, Key, Not, Or, ScanID
from runbroker.standard_names import Aliases, resolve_fields

ALIASES = {"motor": "theta", "det": "data", "nothing_here": "energy"}


@pytest.fixture
def scanned(store_kind: str, make_catalog: Callable[..., runbroker.Catalog]) -> runbroker.Catalog:
    """A catalog with the alias table, holding one scan of det over motor."""
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    cat = make_catalog(aliases=ALIASES)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 3))
    cat.flush()
    return cat


def test_read_with_standard_names(scanned: runbroker.Catalog) -> None:
    stream = scanned[-1].primary
    own = stream.read()
    standard = stream.read(names="standard")
    assert sorted(standard.data_vars) == ["data", "motor_setpoint", "theta"]
    np.testing.assert_array_equal(standard["theta"].values, own["motor"].values)
    np.testing.assert_array_equal(standard["data"].values, own["det"].values)
    assert sorted(stream.read(names="beamline").data_vars) == ["det", "motor", "motor_setpoint"]
    # Fields may be asked for by either name.
    assert list(stream.read(["theta"], names="standard").data_vars) == ["theta"]
    assert list(stream.read(["motor"], names="standard").data_vars) == ["theta"]
    with pytest.raises(ValueError, match=r"names='std'.*'beamline'.*'standard'"):
        stream.read(names="std")


def test_search_by_standard_names(scanned: runbroker.Catalog) -> None:
    uid = scanned[-1].uid
    assert list(scanned.search(DataKey("theta", dtype="number"))) == [uid]
    assert list(scanned.search(DataKey("motor"))) == [uid]  # the beamline name still works
    assert list(scanned.search(DataKey("energy"))) == []
    assert list(scanned.search(~DataKey("theta") | (Key("plan_name") == "count"))) == []


def test_field_queries_take_standard_names(scanned: runbroker.Catalog) -> None:
    uid = scanned[-1].uid
    # motor goes -1 .. 1 in the scan: "theta" is the catalog's standard name for it
    assert list(scanned.search(Field("primary", "theta").between(-1, 1))) == [uid]
    assert list(scanned.search(Field("primary", "motor").between(-1, 1))) == [uid]
    assert list(scanned.search(Field("primary", "theta").min() > 0)) == []
    assert list(scanned.search(Field("primary", "theta").count() == 3)) == [uid]


def test_two_fields_with_one_standard_name(
    store_kind: str, make_catalog: Callable[..., runbroker.Catalog]
) -> None:
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    cat = make_catalog(aliases={"det": "signal", "motor": "signal"})
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 3))
    with pytest.raises(AliasError, match="'det' and 'motor' both have the standard name 'signal'"):
        cat[-1].primary.read(names="standard")
    assert sorted(cat[-1].primary.read().data_vars) == ["det", "motor", "motor_setpoint"]
    # A search by the shared name finds a run holding either.
    assert list(cat.search(DataKey("signal"))) == [cat[-1].uid]


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (["I0", "monitor"], "maps beamline names to standard names"),
        ({"I0": "two theta"}, "'I0' maps to 'two theta', which is not a NeXus name"),
        ({"I0": 3}, "not a NeXus name"),
        ({"": "monitor"}, "beamline name '' is not a non-empty str"),
        ({5: "monitor"}, "beamline name 5"),
    ],
)
def test_bad_alias_tables_are_refused(table: Any, says: str, tmp_path: Path) -> None:
    with pytest.raises(AliasError, match=says):
        Aliases(table)
    with pytest.raises(AliasError, match=says):
        runbroker.open(tmp_path / "runs.db", aliases=table)
    assert not (tmp_path / "runs.db").exists()  # refused before anything is made


def test_named_catalog_aliases(tmp_path: Path) -> None:
    config = tmp_path / "cats.yml"
    config.write_text(
        "good:\n  uri: runs.db\n  aliases: {I0: monitor, th: theta}\n"
        "bad:\n  uri: runs.db\n  aliases: {I0: 'two theta'}\n"
    )
    with pytest.raises(CatalogConfigError, match=r"cats.yml, line 4: .*'bad'.*not a NeXus name"):
        read_file(config)
    config.write_text("good:\n  uri: runs.db\n  aliases: {I0: monitor, th: theta}\n")
    [entry] = read_file(config)
    assert entry.options["aliases"] == {"I0": "monitor", "th": "theta"}
    cat = entry.open()
    assert dict(cat.aliases) == {"I0": "monitor", "th": "theta"}
    assert cat.search(ScanID(1)).aliases == cat.aliases  # kept by searches
    cat.close()


def test_resolve_fields_walks_the_query_tree() -> None:
    table = {"I0": "monitor", "i0_mon": "monitor", "th": "theta", "theta": "two_theta"}
    assert resolve_fields(DataKey("theta", stream="primary"), table) == DataKey(
        "th", stream="primary"
    )
    assert resolve_fields(DataKey("monitor", dtype="number"), table) == Or(
        DataKey("I0", dtype="number"),
        DataKey("i0_mon", dtype="number"),
        DataKey("monitor", dtype="number"),
    )
    other = Key("sample") == "Ni"
    tree = Not(DataKey("two_theta") & other) | ScanID(3)
    both = Or(DataKey("theta"), DataKey("two_theta"))
    assert resolve_fields(tree, table) == Not(both & other) | ScanID(3)
    assert resolve_fields(other, table) is other
    assert resolve_fields(DataKey("energy"), table) == DataKey("energy")
    assert resolve_fields(DataKey("th"), {}) == DataKey("th")
    assert resolve_fields(None, table) is None


# -- the NeXus export ---------------------------------------------------------------------


def test_nexus_export_under_standard_names(export_runs: dict, tmp_path: Path) -> None:
    from test_export_nexus import assert_nexus_valid, punx

    source = export_runs["catalog"]
    table = {"motor": "theta", "det1": "monitor", "motor1": "x_translation"}
    cat = Catalog(source.store, assets=source.assets, aliases=table)
    run = cat[export_runs["scalar"].uid]
    [path] = run.export("nexus", tmp_path, names="standard")
    primary = run.primary.read()
    with h5py.File(path) as f:
        streams = f["entry/streams/primary"]
        assert {"theta", "monitor", "det2"} <= set(streams)
        assert not {"motor", "det1"} & set(streams)
        np.testing.assert_array_equal(streams["theta"][()], primary["motor"].values)
        np.testing.assert_array_equal(streams["monitor"][()], primary["det1"].values)
        assert streams["theta"].attrs["long_name"] == "motor"  # its own name, kept
        assert "x_translation" in f["entry/streams/baseline"]
        assert f["entry/data"].attrs["signal"] == "monitor"
        assert list(f["entry/data"].attrs["axes"]) == ["theta"]
    assert_nexus_valid(punx([path])[path])
    [plain] = run.export("nexus", tmp_path / "plain")
    with h5py.File(plain) as f:
        assert {"motor", "det1"} <= set(f["entry/streams/primary"])
    clash = Catalog(source.store, assets=source.assets, aliases={"det1": "I", "det2": "I"})
    with pytest.raises(AliasError, match="'det1' and 'det2'"):
        clash[run.uid].export("nexus", tmp_path / "clash", names="standard")
