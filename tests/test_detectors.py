"""The simulated file-writing detectors of ``runbroker.testing.detectors`` under a real RunEngine.

Files are read back with h5py / tifffile / numpy directly: these tests check the test equipment
(the AD layouts and the documents), not runbroker's reading of external data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np
import pytest
import tifffile
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import SynAxis

import runbroker
from runbroker.testing.detectors import (
    HDF5_DATASET,
    ADHDF5Detector,
    ADTIFFDetector,
    StreamHDF5Detector,
    expected_frame,
    npy_detector,
)

Docs = list[tuple[str, dict[str, Any]]]
SHAPE = (6, 8)


@pytest.fixture
def run_plan() -> Callable[[Any], Docs]:
    """Run a plan in a real RunEngine; return its documents, each checked against its schema."""
    engine = RunEngine({}, call_returns_result=False)

    def run(plan: Any) -> Docs:
        docs: Docs = []
        token = engine.subscribe(lambda name, doc: docs.append((name, doc)))
        try:
            engine(plan)
        finally:
            engine.unsubscribe(token)
        for name, doc in docs:
            event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        return docs

    return run


@pytest.fixture
def motor() -> SynAxis:
    return SynAxis(name="motor")


def _plan(kind: str, dets: list, motor: SynAxis, n: int) -> Any:
    return count(dets, n) if kind == "count" else scan(dets, motor, -1, 1, n)


def _by_name(docs: Docs, name: str) -> list[dict[str, Any]]:
    return [doc for n, doc in docs if n == name]


def _check_resource_datums(docs: Docs, det: Any, spec: str, n: int) -> dict[str, Any]:
    """One resource of ``spec`` in the run, one datum per point, events referencing them."""
    start = _by_name(docs, "start")[0]
    (resource,) = _by_name(docs, "resource")
    assert resource["spec"] == spec
    assert resource["run_start"] == start["uid"]
    assert resource["root"] == str(det.file_root)
    assert Path(resource["root"]).is_absolute()
    assert not Path(resource["resource_path"]).is_absolute()
    assert resource["path_semantics"] == "posix"
    datums = _by_name(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"point_number": i} for i in range(n)]
    assert all(d["resource"] == resource["uid"] for d in datums)
    events = _by_name(docs, "event")
    assert [e["data"][det.image_key] for e in events] == [d["datum_id"] for d in datums]
    assert all(e["filled"] == {det.image_key: False} for e in events)
    # Each datum reaches the consumers before the event that references it.
    names = [name for name, _ in docs]
    assert names.index("resource") < names.index("datum") < names.index("event")
    return resource


def _check_descriptor(docs: Docs, det: Any, external: str, shape: list[int]) -> None:
    (descriptor,) = _by_name(docs, "descriptor")
    key = descriptor["data_keys"][det.image_key]
    assert key["external"] == external
    assert key["dtype"] == "array"
    assert key["dtype_numpy"] == np.dtype(det.dtype).str
    assert key["shape"] == shape
    stats = [e["data"][f"{det.name}_stats_total"] for e in _by_name(docs, "event")]
    assert stats == [int(det.frames(i).sum(dtype=np.int64)) for i in range(len(stats))]


def _check_hdf5(path: Path, n_frames: int, det: Any) -> None:
    with h5py.File(path, "r") as f:
        data = f[HDF5_DATASET]
        assert data.shape == (n_frames, *det.frame_shape)
        assert data.maxshape == (None, *det.frame_shape)
        assert data.chunks == (1, *det.frame_shape)
        assert data.dtype == det.dtype
        frames = data[:]
    for k in range(n_frames):
        np.testing.assert_array_equal(frames[k], expected_frame(k, det.frame_shape, det.dtype))


# -- AD HDF5 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["count", "scan"])
@pytest.mark.parametrize("fpp", [1, 3])
def test_ad_hdf5(run_plan, motor, tmp_path: Path, kind: str, fpp: int) -> None:
    det = ADHDF5Detector("det", tmp_path, shape=SHAPE, frame_per_point=fpp, dtype="uint16")
    n = 4
    docs = run_plan(_plan(kind, [det], motor, n))
    resource = _check_resource_datums(docs, det, "AD_HDF5", n)
    assert resource["resource_kwargs"] == {"frame_per_point": fpp}
    assert resource["resource_path"].endswith(".h5")
    _check_descriptor(docs, det, "FILESTORE:", list(SHAPE) if fpp == 1 else [fpp, *SHAPE])
    (path,) = det.files_written
    assert path == tmp_path / resource["resource_path"]
    _check_hdf5(path, n * fpp, det)


def test_ad_hdf5_one_file_per_run(run_plan, motor, tmp_path: Path) -> None:
    det = ADHDF5Detector("det", tmp_path, shape=SHAPE, dtype="float32")
    first = run_plan(count([det], 2))
    second = run_plan(scan([det], motor, 0, 1, 3))
    assert len(det.files_written) == 2
    paths = [tmp_path / _by_name(d, "resource")[0]["resource_path"] for d in (first, second)]
    assert paths == det.files_written
    # Each run restarts at frame 0.
    _check_hdf5(det.files_written[0], 2, det)
    _check_hdf5(det.files_written[1], 3, det)


def test_trigger_needs_stage(tmp_path: Path) -> None:
    det = ADHDF5Detector("det", tmp_path)
    with pytest.raises(RuntimeError, match="stage"):
        det.trigger()
    assert det.files_written == []


def test_expected_frame_catches_transposes_and_shifts() -> None:
    a = expected_frame(0, (16, 16), "uint8")
    assert not np.array_equal(a, a.T)
    assert not np.array_equal(a, expected_frame(1, (16, 16), "uint8"))
    assert expected_frame(70, (512, 512), "uint16").dtype == np.uint16
    assert len(np.unique(expected_frame(3, (4, 5), "int16"))) == 20


# -- AD TIFF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["count", "scan"])
@pytest.mark.parametrize("fpp", [1, 2])
def test_ad_tiff(run_plan, motor, tmp_path: Path, kind: str, fpp: int) -> None:
    det = ADTIFFDetector("tiff", tmp_path, shape=SHAPE, frame_per_point=fpp, dtype="int32")
    n = 3
    docs = run_plan(_plan(kind, [det], motor, n))
    resource = _check_resource_datums(docs, det, "AD_TIFF", n)
    kwargs = resource["resource_kwargs"]
    assert kwargs["template"] == "%s%s_%6.6d.tiff"
    assert kwargs["frame_per_point"] == fpp
    assert resource["resource_path"].endswith("/")
    _check_descriptor(docs, det, "FILESTORE:", list(SHAPE) if fpp == 1 else [fpp, *SHAPE])
    # The files are where an AD_TIFF handler looks: template % (folder/, filename, frame).
    folder = f"{Path(resource['root']) / resource['resource_path']}/"
    wanted = [Path(kwargs["template"] % (folder, kwargs["filename"], k)) for k in range(n * fpp)]
    assert det.files_written == wanted
    assert sorted(wanted[0].parent.glob(f"{kwargs['filename']}_*.tiff")) == wanted
    for k, path in enumerate(wanted):
        frame = tifffile.imread(path)
        assert frame.dtype == np.int32
        np.testing.assert_array_equal(frame, expected_frame(k, SHAPE, "int32"))


# -- stream HDF5 -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["count", "scan"])
def test_stream_hdf5(run_plan, motor, tmp_path: Path, kind: str) -> None:
    det = StreamHDF5Detector("cam", tmp_path, shape=SHAPE)
    n = 5
    docs = run_plan(_plan(kind, [det], motor, n))
    start = _by_name(docs, "start")[0]
    (descriptor,) = _by_name(docs, "descriptor")
    _check_descriptor(docs, det, "STREAM:", list(SHAPE))
    (sres,) = _by_name(docs, "stream_resource")
    (path,) = det.files_written
    assert sres["run_start"] == start["uid"]
    assert sres["data_key"] == "cam_image"
    assert sres["mimetype"] == "application/x-hdf5"
    assert sres["uri"] == f"file://localhost{path}"
    assert sres["parameters"] == {"dataset": HDF5_DATASET, "chunk_shape": [1, *SHAPE]}
    sdatums = _by_name(docs, "stream_datum")
    assert [d["indices"] for d in sdatums] == [{"start": i, "stop": i + 1} for i in range(n)]
    # The RunEngine fills in what the detector left blank.
    assert [d["seq_nums"] for d in sdatums] == [
        {"start": i, "stop": i + 1} for i in range(1, n + 1)
    ]
    assert all(d["descriptor"] == descriptor["uid"] for d in sdatums)
    assert all(d["stream_resource"] == sres["uid"] for d in sdatums)
    events = _by_name(docs, "event")
    assert [e["seq_num"] for e in events] == list(range(1, n + 1))
    assert all("cam_image" not in e["data"] and e["filled"] == {} for e in events)
    _check_hdf5(path, n, det)


# -- ophyd.sim NPY_SEQ -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["count", "scan"])
def test_npy_detector(run_plan, motor, tmp_path: Path, kind: str) -> None:
    img = npy_detector(tmp_path, shape=SHAPE)
    n = 3
    docs = run_plan(_plan(kind, [img], motor, n))
    (resource,) = _by_name(docs, "resource")
    assert resource["spec"] == "NPY_SEQ"
    assert resource["root"] == str(tmp_path)
    datums = _by_name(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"index": i} for i in range(n)]
    key = _by_name(docs, "descriptor")[0]["data_keys"]["img"]
    assert key["external"] == "FILESTORE" and key["shape"] == list(SHAPE)
    stem = Path(resource["root"]) / resource["resource_path"]
    assert img.files_written == [Path(f"{stem}_{i}.npy") for i in range(n)]
    for k, path in enumerate(img.files_written):
        np.testing.assert_array_equal(np.load(path), expected_frame(k, SHAPE))


# -- runbroker ingest ------------------------------------------------------------------------


def test_runbroker_accepts_the_documents(motor, tmp_path: Path) -> None:
    engine = RunEngine({}, call_returns_result=False)
    cat = runbroker.temp()
    engine.subscribe(cat.insert)
    dets = [
        ADHDF5Detector("h5", tmp_path, shape=SHAPE, frame_per_point=2),
        ADTIFFDetector("tiff", tmp_path, shape=SHAPE),
        StreamHDF5Detector("cam", tmp_path, shape=SHAPE),
        npy_detector(tmp_path, shape=SHAPE),
    ]
    engine(scan(dets, motor, -1, 1, 3))
    engine(count(dets, 2))
    assert len(cat) == 2
    for run, n in ((cat[-2], 3), (cat[-1], 2)):
        assert run.metadata["stop"]["exit_status"] == "success"
        names = [name for name, _ in run.documents(fill=False)]
        assert names.count("resource") == 3
        assert names.count("stream_resource") == 1
        assert names.count("stream_datum") == n
        assert "datum" in names or "datum_page" in names
    cat.close()
