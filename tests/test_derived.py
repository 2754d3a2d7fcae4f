"""Derived data: saved with its provenance, found, read back, linked to parents and children."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bluesky.plans import count
from ophyd.sim import det

from runbroker.assets.writers import WRITERS
from runbroker.derived import ProvenanceError, derived_from
from runbroker.queries import Key

CODE = {"name": "reduce", "version": "2.1.0", "url": "https://example.org/reduce"}


@pytest.fixture
def directory(store_kind: str, tmp_path: Path) -> Path | None:
    # SQLite catalogs keep derived files beside themselves; a server database has no folder.
    return None if store_kind == "sqlite" else tmp_path / "derived"


@pytest.fixture
def parent(catalog, RE):
    RE(count([det], 3))
    return catalog[-1]


def test_round_trip_save_search_read_parents_children(catalog, parent, directory):
    images = np.arange(4 * 16 * 16, dtype="float32").reshape(4, 16, 16)
    curve = np.linspace(0, 1, 4)
    derived = catalog.save_derived(
        {"primary": {"image": images, "total": images.sum(axis=(1, 2)), "q": curve}},
        metadata={"sample": "Ni", "purpose": "background subtracted"},
        parents=[parent],
        code=CODE,
        directory=directory,
    )
    # A normal run: same reading API, dtypes kept, images from files and scalars inline.
    ds = derived.primary.read()
    np.testing.assert_array_equal(ds["image"].values, images)
    assert ds["image"].dtype == np.float32
    np.testing.assert_array_equal(ds["q"].values, curve)
    data_keys = derived.primary.data_keys
    assert data_keys["image"]["external"] == "FILESTORE:"
    assert "external" not in data_keys["q"]
    np.testing.assert_array_equal(derived.primary.to_dask()["image"].compute(), images)

    # Provenance is in the start document and searchable.
    prov = derived.start["provenance"]
    assert prov["parents"] == [parent.uid] and prov["code"] == CODE
    assert list(catalog.search(derived_from(parent))) == [derived.uid]
    assert list(catalog.search(Key("provenance.code.name") == "reduce")) == [derived.uid]
    assert derived.parents == [parent]
    assert list(parent.derived) == [derived.uid]
    assert list(derived.derived) == []


@pytest.mark.parametrize("store_kind", ["sqlite"])  # only SQLite has a folder of its own
def test_sqlite_keeps_derived_files_beside_the_catalog(catalog, parent):
    derived = catalog.save_derived(
        {"primary": {"image": np.ones((1, 10, 10))}}, parents=[parent], code=CODE
    )
    (resource,) = [d for n, d in derived.documents() if n == "resource"]
    assert resource["root"] == "derived"  # relative: the folder can move as a whole
    folder = Path(catalog.store.uri.removeprefix("sqlite:///")).parent
    assert (folder / "derived" / resource["resource_path"]).exists()


@pytest.mark.parametrize("store_kind", ["postgresql"])  # SQLite has a default folder
def test_a_server_catalog_needs_a_directory(catalog, parent):
    with pytest.raises(ValueError, match="directory="):
        catalog.save_derived(
            {"primary": {"image": np.ones((1, 10, 10))}}, parents=[parent], code=CODE
        )


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_round_trips(catalog, parent, directory, writer):
    images = (np.arange(3 * 9 * 9) % 251).astype("uint16").reshape(3, 9, 9)
    derived = catalog.save_derived(
        {"fit": {"map": images}},
        parents=[parent.uid],
        code=CODE,
        directory=directory,
        writer=writer,
    )
    (resource,) = [d for n, d in derived.documents() if n == "resource"]
    assert resource["spec"] == WRITERS[writer].spec
    np.testing.assert_array_equal(derived["fit"].read()["map"].values, images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": CODE}, "parents="),
        ({"parents": "PARENT"}, "code="),
        ({"parents": "PARENT", "code": {"name": "x"}}, "code="),
    ],
)
def test_provenance_is_required(catalog, parent, directory, kwargs, message):
    kwargs = {k: ([parent] if v == "PARENT" else v) for k, v in kwargs.items()}
    before = len(catalog)
    with pytest.raises(ProvenanceError, match=message) as err:
        catalog.save_derived({"p": {"x": [1.0]}}, directory=directory, **kwargs)
    assert "waive_provenance" in str(err.value)
    assert len(catalog) == before


def test_provenance_can_be_waived_explicitly(catalog, directory):
    derived = catalog.save_derived(
        {"p": {"x": [1.0, 2.0]}}, waive_provenance="simulated data", directory=directory
    )
    assert derived.start["provenance"]["waived"] == "simulated data"
    assert derived["p"].read()["x"].values.tolist() == [1.0, 2.0]


def test_input_files_are_recorded(catalog, tmp_path, directory):
    source = tmp_path / "raw.dat"
    source.write_bytes(b"12345")
    derived = catalog.save_derived(
        {"p": {"x": [1.0]}}, inputs=[source], code=CODE, directory=directory
    )
    (entry,) = derived.start["provenance"]["inputs"]
    assert entry["path"] == str(source) and entry["size"] == 5
    with pytest.raises(FileNotFoundError):
        catalog.save_derived(
            {"p": {"x": [1.0]}}, inputs=[tmp_path / "nope"], code=CODE, directory=directory
        )


def test_unknown_parent_is_refused(catalog, directory):
    with pytest.raises(KeyError):
        catalog.save_derived(
            {"p": {"x": [1.0]}}, parents=["f" * 36], code=CODE, directory=directory
        )


def test_a_refused_run_leaves_no_files_and_no_run(catalog, parent, tmp_path):
    before = len(catalog)
    target = tmp_path / "refused"
    # scan_id must be an integer (event-model's start schema): refused at ingest, after the
    # images were written -- they must be removed again.
    with pytest.raises(Exception, match="scan_id"):
        catalog.save_derived(
            {"primary": {"image": np.ones((2, 10, 10))}},
            metadata={"scan_id": "not a number"},
            parents=[parent],
            code=CODE,
            directory=target,
        )
    assert len(catalog) == before
    assert [p for p in target.rglob("*") if p.is_file()] == []


def test_fields_must_share_their_length(catalog, parent, directory):
    with pytest.raises(ValueError, match=r"first axis.*'a': 2, 'b': 3"):
        catalog.save_derived(
            {"p": {"a": [1, 2], "b": [1, 2, 3]}}, parents=[parent], code=CODE, directory=directory
        )
