"""``runbroker copy`` and ``copy_catalog``: selected runs between any two stores, skipping those
present, a refused run reported without stopping the others. The destination is the
parametrised store (SQLite, PostgreSQL); the source an SQLite file, as on a laptop."""

from __future__ import annotations

from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import det, motor

import runbroker
from runbroker.cli import main
from runbroker.queries import Key
from runbroker.transfer import copy_catalog


@pytest.fixture
def source(tmp_path: Path) -> runbroker.Catalog:
    cat = runbroker.open(tmp_path / "facility.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    for sample in ("Fe", "Cu", "Fe"):
        RE(scan([det], motor, -1, 1, 4), sample=sample)
    RE(count([det], 2), sample="Ni")
    cat.flush()
    yield cat
    cat.close()


def test_selected_runs_are_copied_once_and_read_the_same(source, catalog):
    report = copy_catalog(source, catalog, query=Key("sample") == "Fe", progress=False)
    assert (report.copied, report.skipped, report.failed) == (2, 0, [])
    assert sorted(catalog) == sorted(source.search(Key("sample") == "Fe"))
    again = copy_catalog(source, catalog, progress=False)
    assert (again.copied, again.skipped) == (2, 2)
    assert len(catalog) == 4
    for uid in source:
        assert catalog[uid].primary.read().identical(source[uid].primary.read())
    # Oldest first, so scan_ids keep their order in the destination.
    assert [catalog[uid].start["scan_id"] for uid in list(catalog)[::-1]] == [1, 2, 3, 4]


def test_a_refused_run_is_reported_and_the_others_go_on(source, catalog):
    victim = source[-2]
    desc = next(d for n, d in victim.documents() if n == "descriptor")
    # The destination already holds another run whose descriptor has the same uid.
    other = compose_run(metadata={"scan_id": 99})
    catalog.ingest(
        [
            ("start", other.start_doc),
            ("descriptor", {**desc, "run_start": other.start_doc["uid"]}),
            ("stop", other.compose_stop()),
        ]
    )
    report = copy_catalog(source, catalog, progress=False)
    assert report.copied == 3 and [uid for uid, _ in report.failed] == [victim.uid]
    assert desc["uid"] in report.failed[0][1]
    assert victim.uid not in catalog
    with pytest.raises(ValueError, match="while copying run"):
        copy_catalog(source, catalog, uids=[victim.uid], progress=False, strict=True)


def test_relative_roots_are_made_absolute_for_a_catalog_elsewhere(tmp_path):
    import numpy as np

    facility = tmp_path / "facility"
    (facility / "frames").mkdir(parents=True)
    np.save(facility / "frames" / "img_0.npy", np.arange(6).reshape(2, 3))
    bundle = compose_run(metadata={"scan_id": 1})
    resource = bundle.compose_resource(
        spec="NPY_SEQ", root="frames", resource_path="img", resource_kwargs={}
    )
    key = {"source": "cam", "dtype": "array", "shape": [2, 3], "external": "FILESTORE:"}
    desc = bundle.compose_descriptor(name="primary", data_keys={"img": key})
    datum = resource.compose_datum(datum_kwargs={"index": 0})
    source = runbroker.open(facility / "runs.db")
    source.ingest(
        [
            ("start", bundle.start_doc),
            ("resource", resource.resource_doc),
            ("descriptor", desc.descriptor_doc),
            ("datum", datum),
            (
                "event",
                desc.compose_event(
                    data={"img": datum["datum_id"]}, timestamps={"img": 1.0}, seq_num=1
                ),
            ),
            ("stop", bundle.compose_stop()),
        ]
    )
    laptop = runbroker.open(tmp_path / "laptop" / "runs.db", create=True)  # and its folder
    copy_catalog(source, laptop, progress=False)
    uid = bundle.start_doc["uid"]
    assert laptop[uid].primary.read().identical(source[uid].primary.read())
    # Beside the source (the same folder), the root stays relative: the two move together.
    beside = runbroker.open(facility / "copy.db")
    copy_catalog(source, beside, progress=False)
    (doc,) = [d for n, d in beside[uid].documents() if n == "resource"]
    assert doc["root"] == "frames"


def test_relative_stream_resource_uris_are_made_absolute_for_a_catalog_elsewhere(tmp_path):
    from runbroker.testing.detectors import StreamHDF5Detector

    facility = tmp_path / "facility"
    docs: list = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(count([StreamHDF5Detector("sd", facility / "frames", shape=(4, 6))], 3))
    # The detector wrote an absolute URI; the run is stored with one relative to the catalog.
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    path = Path(resource["uri"].removeprefix("file://localhost"))
    relative = f"file:{path.relative_to(facility).as_posix()}"
    source = runbroker.open(facility / "runs.db")
    source.ingest((n, {**d, "uri": relative} if n == "stream_resource" else d) for n, d in docs)
    run = source[-1]
    laptop = runbroker.open(tmp_path / "laptop" / "runs.db", create=True)
    assert (
        main(["copy", str(facility / "runs.db"), str(tmp_path / "laptop" / "runs.db"), "-q"]) == 0
    )
    assert laptop[run.uid].primary.read().identical(run.primary.read())
    (doc,) = [d for n, d in laptop[run.uid].documents() if n == "stream_resource"]
    assert doc["uri"] == f"file://localhost{path}"


def test_cli_copy_by_query_and_uid(source, tmp_path, capsys):
    dest = tmp_path / "laptop.db"
    query = (Key("sample") == "Cu").to_json()
    assert main(["copy", str(tmp_path / "facility.db"), str(dest), "--query", query, "-q"]) == 0
    assert "copied 1 run" in capsys.readouterr().out
    ni = source.search(Key("sample") == "Ni")
    assert main(["copy", str(tmp_path / "facility.db"), str(dest), "--uid", *ni, "-q"]) == 0
    laptop = runbroker.open(dest, readonly=True)
    assert sorted(r.start["sample"] for r in laptop.values()) == ["Cu", "Ni"]
