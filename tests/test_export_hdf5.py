"""Raw HDF5 export: read by h5py and silx, live through SWMR from another process, and
re-ingested into a fresh catalog with identical reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import silx.io
from bluesky import RunEngine
from bluesky.plans import count, scan
from bluesky.preprocessors import SupplementalData
from event_model import compose_run
from ophyd.sim import SynSignal, det1, motor, motor1

import runbroker
from runbroker.export import ExportError, exporter, live
from runbroker.export.hdf5 import read_documents
from runbroker.testing.compare import assert_same_run
from runbroker.testing.detectors import ADHDF5Detector
from runbroker.testing.export import without_stop

RUNS = ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]
# A prompt export writes each dataset whole, or (past buffer_bytes) appends page by page as a
# live one does; with a small buffer it does the first, then the second.
LAYOUTS = {"whole": {}, "paged": {"buffer_bytes": 0}, "overflow": {"buffer_bytes": 3000}}


def _assert_same_run(copy: runbroker.Catalog, run: Any) -> None:
    assert_same_run(copy[run.uid], run)


def _check_file(path: Path, run: Any) -> None:
    """Every stream's rows in the file equal ``read()``, dtype included."""
    with h5py.File(path, "r") as f:
        assert f.attrs["uid"] == run.uid
        assert bool(f.attrs["complete"]) is True
        assert json.loads(f.attrs["start"])["uid"] == run.uid
        assert json.loads(f.attrs["stop"]) == run.stop
        for stream in run:
            ds = run[stream].read()
            g = f[stream]
            assert g.attrs["stream"] == stream
            assert np.array_equal(g["time"][()], ds["time"].values)
            assert np.array_equal(g["seq_num"][()], ds["seq_num"].values)
            stamps = run[stream].timestamps()
            for field in ds.data_vars:
                stored = g["data"][field]
                assert stored.attrs["field"] == field
                assert stored.dtype == ds[field].dtype, field
                assert np.array_equal(stored[()], ds[field].values), field
                assert np.array_equal(g["timestamps"][field][()], stamps[field].values)
            uids = [d["uid"] for d in run[stream]._descriptors]
            assert json.loads(g.attrs["descriptors"]) == uids


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", RUNS)
def test_h5py_reads_what_read_gives(
    export_runs: dict, key: str, layout: str, tmp_path: Path
) -> None:
    run = export_runs[key]
    (path,) = run.export("hdf5", tmp_path, **LAYOUTS[layout])
    assert path.suffix == ".h5"
    _check_file(path, run)
    if layout == "whole":  # every dataset written in one piece: contiguous, fixed size
        with h5py.File(path, "r") as f:
            for stream in run:
                g = f[stream]
                for ds in [g["time"], g["uid"], *g["data"].values(), *g["timestamps"].values()]:
                    assert ds.chunks is None and ds.maxshape == ds.shape, ds.name


def test_silx_opens_the_file(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["tomo"]
    (path,) = run.export("hdf5", tmp_path)
    expected = run.primary.read()
    with silx.io.open(str(path)) as f:
        assert silx.io.is_group(f["primary/data"])
        assert np.array_equal(f["primary/data/tomocam_image"][()], expected["tomocam_image"])
        assert np.array_equal(f["primary/data/theta"][()], expected["theta"].values)
        assert set(f) == {"dark", "flat", "primary"}


@pytest.mark.parametrize("layout", ["whole", "paged"])
@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("key", RUNS)
def test_round_trip_gives_identical_reads(
    export_runs: dict, key: str, fill: bool, layout: str, tmp_path: Path
) -> None:
    run = export_runs[key]
    (path,) = run.export("hdf5", tmp_path, fill=fill, **LAYOUTS[layout])
    docs = list(read_documents(path))
    names = [name for name, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"
    external = key in ("file_image", "tomo")
    assert ("resource" in names) is (external and not fill)
    copy = runbroker.temp()
    copy.ingest(docs)
    _assert_same_run(copy, run)
    events = [doc for name, doc in docs if name == "event_page"]
    assert sorted(u for page in events for u in page["uid"]) == sorted(
        doc["uid"] for name, doc in run.documents(pages=False) if name == "event"
    )


def test_detector_data_is_filled_into_the_file(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["file_image"]
    (filled,) = run.export("hdf5", tmp_path / "filled")
    (refs,) = run.export("hdf5", tmp_path / "refs", fill=False)
    images = run.primary.read()["adet_image"].values
    with h5py.File(filled, "r") as f:
        ds = f["primary/data/adet_image"]
        assert ds.dtype == np.uint16 and ds.shape == images.shape
        assert ds.maxshape == images.shape  # written whole
        assert np.array_equal(ds[()], images)
        assert bool(f.attrs["filled"]) and "_asset_documents" not in f
    with h5py.File(refs, "r") as f:
        datums = [
            doc["data"]["adet_image"] for name, doc in run.documents(pages=False) if name == "event"
        ]
        assert f["primary/data/adet_image"].asstr()[()].tolist() == datums
        kept = [json.loads(t)[0] for t in f["_asset_documents"].asstr()[()]]
        assert kept[0] == "resource" and "datum_page" in kept


def test_frames_are_chunked_per_frame(tmp_path: Path) -> None:
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    frames = iter(range(100))
    cam = SynSignal(name="cam", func=lambda: np.full((64, 48), next(frames), dtype=np.uint16))
    RE(count([cam, det1], 5))
    # Past buffer_bytes (here at once) a prompt export grows its datasets as a live one does.
    (path,) = cat[-1].export("hdf5", tmp_path, buffer_bytes=0)
    with h5py.File(path, "r") as f:
        assert f["primary/data/cam"].chunks == (1, 64, 48)
        images = f["primary/data/cam"][()]
    expected = cat[-1].primary.read()["cam"].values
    assert images.dtype == np.uint16 and np.array_equal(images, expected)
    assert np.unique(images[:, 0, 0]).size == 5
    with h5py.File(path, "r") as f:
        assert f["primary/data/det1"].maxshape == (None,)
    (whole,) = cat[-1].export("hdf5", tmp_path / "whole")
    with h5py.File(whole, "r") as f:
        assert f["primary/data/cam"].chunks is None
        assert np.array_equal(f["primary/data/cam"][()], expected)


def test_two_descriptors_share_a_group_with_their_configuration(
    export_runs: dict, tmp_path: Path
) -> None:
    run = export_runs["two_descriptors"]
    (path,) = run.export("hdf5", tmp_path)
    with h5py.File(path, "r") as f:
        assert list(f) == ["primary"]
        assert f["primary/descriptor"][()].tolist() == [0, 0, 0, 1, 1, 1]
        assert f["primary/configuration/I0/I0_gain"][()].tolist() == [1, 10]


def test_descriptors_with_other_fields_get_their_own_group(tmp_path: Path) -> None:
    bundle = compose_run(metadata={"scan_id": 5})
    docs = [("start", bundle.start_doc)]
    seq = 0
    for i, keys in enumerate((["a"], ["a", "b"], ["a"])):
        # event-model composes one set of keys per stream; older data has several.
        desc = bundle.compose_descriptor(
            name=f"s{i}",
            data_keys={k: {"source": "s", "dtype": "number", "shape": []} for k in keys},
        )
        docs.append(("descriptor", {**desc.descriptor_doc, "name": "primary"}))
        for _ in range(2):
            seq += 1
            data = {k: float(seq) for k in keys}
            docs.append(
                ("event", desc.compose_event(data=data, timestamps=dict.fromkeys(keys, 0.0)))
            )
    docs.append(("stop", bundle.compose_stop()))
    cat = runbroker.temp()
    cat.ingest(docs)
    run = cat[-1]
    (path,) = run.export("hdf5", tmp_path)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["primary", "primary_2"]
        assert f["primary/data/a"][()].tolist() == [1.0, 2.0, 5.0, 6.0]
        assert f["primary_2/data/b"][()].tolist() == [3.0, 4.0]
        assert f["primary_2"].attrs["stream"] == "primary"
    copy = runbroker.temp()
    copy.ingest(read_documents(path))
    assert copy[-1].primary.read()["a"].values.tolist() == run.primary.read()["a"].values.tolist()


@pytest.mark.parametrize("live", [True, False])
def test_columns_widen_when_later_pages_need_it(live: bool, tmp_path: Path) -> None:
    """A missing integer reading turns the column into floats; uids that are not uuid4.
    Live, the datasets are rewritten; a prompt export joins the pages first."""
    bundle = compose_run(metadata={"scan_id": 6})
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"n": {"source": "s", "dtype": "integer", "shape": []}}
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i, (value, uid) in enumerate([(1, "e1"), (2, "e2"), (None, "é" * 3), (4, "x" * 50)]):
        ev = desc.compose_event(data={"n": value}, timestamps={"n": 0.0}, seq_num=i + 1)
        docs.append(("event", {**ev, "uid": uid}))
    docs.append(("stop", bundle.compose_stop()))
    exp = exporter("hdf5", tmp_path)
    exp.live = live
    for name, doc in docs:
        exp(name, doc)
    (path,) = exp.close()
    with h5py.File(path, "r") as f:
        assert (f["primary/time"].chunks is None) is not live
        assert f["primary/uid"].asstr()[()].tolist() == ["e1", "e2", "é" * 3, "x" * 50]
        n = f["primary/data/n"][()]
    assert n.dtype == np.float64 and n[[0, 1, 3]].tolist() == [1.0, 2.0, 4.0]
    assert np.isnan(n[2])


def test_uid_blocks_after_uids_widened_to_text(tmp_path: Path) -> None:
    """A page of odd uids widens the uid dataset to text; a later page whose uids come as the
    catalog's fixed-width block is written as text too."""
    bundle = compose_run(metadata={"scan_id": 7})
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    block = np.array([b"0" * 36, b"1" * 36], dtype="S36")
    pages = [
        desc.compose_event_page(
            data={"x": [1.0, 2.0]}, timestamps={"x": [0.0, 0.0]}, seq_num=[1, 2], time=[0.0, 0.0]
        ),
        desc.compose_event_page(
            data={"x": [3.0, 4.0]}, timestamps={"x": [0.0, 0.0]}, seq_num=[3, 4], time=[0.0, 0.0]
        ),
    ]
    pages[0]["uid"] = ["é", "x" * 40]
    pages[1]["uid"] = block
    exp = exporter("hdf5", tmp_path, buffer_bytes=0)
    exp.live = False
    exp("start", bundle.start_doc)
    exp("descriptor", desc.descriptor_doc)
    for page in pages:
        exp("event_page", page)
    exp("stop", bundle.compose_stop())
    with h5py.File(exp.files[0], "r") as f:
        assert f["primary/uid"].asstr()[()].tolist() == ["é", "x" * 40, "0" * 36, "1" * 36]


@pytest.mark.parametrize("layout", ["whole", "paged"])
def test_names_beyond_ascii(layout: str, tmp_path: Path) -> None:
    """A stream and a field named in UTF-8 keep their names, and the file is ingested back."""
    bundle = compose_run(metadata={"scan_id": 8})
    desc = bundle.compose_descriptor(
        name="données", data_keys={"température": {"source": "s", "dtype": "number", "shape": []}}
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(3):
        ev = desc.compose_event(data={"température": 20.0 + i}, timestamps={"température": 0.0})
        docs.append(("event", ev))
    docs.append(("stop", bundle.compose_stop()))
    cat = runbroker.temp()
    cat.ingest(docs)
    (path,) = cat[-1].export("hdf5", tmp_path, **LAYOUTS[layout])
    with h5py.File(path, "r") as f:
        assert f["données/data/température"][()].tolist() == [20.0, 21.0, 22.0]
    copy = runbroker.temp()
    copy.ingest(read_documents(path))
    _assert_same_run(copy, cat[-1])


# -- live ------------------------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import sys, h5py
    with h5py.File(sys.argv[1], "r", swmr=True) as f:
        g = f["primary"]
        print(len(g["time"]), len(g["data/det1"]), g["seq_num"][-1], len(f["baseline/time"]))
    """
)


def test_live_file_holds_the_rows_so_far(tmp_path: Path) -> None:
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    RE.subscribe(cat.insert)
    export = live("hdf5", tmp_path / "out")
    RE.subscribe(export)
    probes: list[str] = []

    def probe(name: str, doc: dict) -> None:
        # Subscribed after the exporter: event k has been written when this runs.
        if name == "event" and doc["seq_num"] in (1, 3) and doc["descriptor"] in primary:
            (path,) = (tmp_path / "out").iterdir()
            out = subprocess.run(
                [sys.executable, "-c", _PROBE, str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            probes.append(out.stdout.split())
        if name == "descriptor" and doc["name"] == "primary":
            primary.add(doc["uid"])

    primary: set[str] = set()
    RE.subscribe(probe)
    RE(scan([det1], motor, -1, 1, 5))
    assert probes == [["1", "1", "1", "1"], ["3", "3", "3", "1"]]
    (path,) = export.files
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"]) and len(f["baseline/time"]) == 2
    _check_file(path, cat[-1])


def test_live_export_fills_detector_files(tmp_path: Path) -> None:
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    export = live("hdf5", tmp_path / "out", assets=cat.assets)
    RE.subscribe(export)
    adet = ADHDF5Detector("adet", tmp_path / "detector", shape=(6, 8))
    RE(scan([adet], motor, 0, 1, 3))
    (path,) = export.files
    _check_file(path, cat[-1])
    copy = runbroker.temp()
    copy.ingest(read_documents(path))
    _assert_same_run(copy, cat[-1])


# -- incomplete, refusals, bad input ---------------------------------------------------------


def test_run_without_stop_is_closed_and_marked(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["scalar"]
    exp = without_stop("hdf5", run, tmp_path)
    (path,) = exp.close()
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"]) is False
        assert json.loads(f.attrs["stop"]) is None
        assert len(f["primary/time"]) == 7
    docs = list(read_documents(path))
    assert "stop" not in [name for name, _ in docs]
    copy = runbroker.temp()
    copy.ingest(docs)
    assert copy[-1].stop is None
    assert copy[-1].primary.read().identical(run.primary.read())


def test_never_overwrites(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["scalar"]
    (path,) = run.export("hdf5", tmp_path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        run.export("hdf5", tmp_path)
    assert path.read_bytes() == before
    assert run.export("hdf5", tmp_path, overwrite=True) == [path]
    _check_file(path, run)


def test_read_documents_refuses_bad_files(export_runs: dict, tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5 at all\n" * 100)
    with pytest.raises(ExportError, match=r"notes\.h5: cannot be read as HDF5 \(not an HDF5"):
        list(read_documents(text))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(ExportError, match=r"other\.h5: an HDF5 file, but not a runbroker"):
        list(read_documents(other))
    (path,) = export_runs["inline_image"].export("hdf5", tmp_path / "cut")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=rf"{path.name}: cannot be read as HDF5 .*truncated"):
        list(read_documents(path))
