"""Detector data in files: filled, lazy and unfilled reads, root_map, errors, path safety.

Documents come from the real RunEngine with simulated detectors that write real files in the
area-detector layouts (``runbroker.testing.detectors``); a few cases that a RunEngine cannot
produce (a hostile path, a wrong shape, a relative root) are written as documents directly.
Every test runs on SQLite and PostgreSQL through the ``catalog`` fixture.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import motor

import runbroker
from runbroker.assets import (
    ExternalDataError,
    HandlerNotFoundError,
    UnsafePathError,
    register_handler,
    registry,
)
from runbroker.assets.handlers import ADHDF5Handler
from runbroker.testing.detectors import (
    ADHDF5Detector,
    ADTIFFDetector,
    StreamHDF5Detector,
    expected_frame,
    npy_detector,
)
from runbroker.testing.stores import stores_except

SHAPE = (6, 8)


def _expected(n: int, fpp: int = 1, dtype: str = "uint16") -> np.ndarray:
    frames = np.stack([expected_frame(k, SHAPE, dtype) for k in range(n * fpp)])
    return frames if fpp == 1 else frames.reshape(n, fpp, *SHAPE)


def _detector(kind: str, root: Path, **kw: Any) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "npy":
        return npy_detector(root, name="det", shape=SHAPE)
    cls = {"hdf5": ADHDF5Detector, "tiff": ADTIFFDetector, "stream": StreamHDF5Detector}[kind]
    return cls("det", root, shape=SHAPE, **kw)


def _field(det: Any) -> str:
    return getattr(det, "image_key", det.name)


@pytest.mark.parametrize("kind", ["hdf5", "tiff", "stream", "npy"])
def test_filled_read_returns_the_frames(catalog, RE, tmp_path, kind):
    det = _detector(kind, tmp_path / "data")
    RE(count([det], 5))
    run = catalog[-1]
    ds = run.primary.read()
    image = ds[_field(det)]
    assert image.dtype == np.uint16
    assert image.shape == (5, *SHAPE)
    np.testing.assert_array_equal(image.values, _expected(5))
    # Other fields are read as before, beside the images.
    if kind != "npy":
        assert ds["det_stats_total"].shape == (5,)


@pytest.mark.parametrize("kind", ["hdf5", "tiff"])
def test_several_frames_per_point_in_a_scan(catalog, RE, tmp_path, kind):
    det = _detector(kind, tmp_path / "data", frame_per_point=3)
    RE(scan([det], motor, -1, 1, 4))
    ds = catalog[-1].primary.read()
    assert ds["det_image"].shape == (4, 3, *SHAPE)
    np.testing.assert_array_equal(ds["det_image"].values, _expected(4, fpp=3))
    np.testing.assert_allclose(ds["motor"].values, np.linspace(-1, 1, 4))


def test_events_window_reads_only_those_frames(catalog, RE, tmp_path):
    det = _detector("stream", tmp_path / "data")
    RE(count([det], 6))
    part = catalog[-1].primary.read(["det_image"], events=slice(2, 5))
    np.testing.assert_array_equal(part["det_image"].values, _expected(6)[2:5])
    assert part["seq_num"].values.tolist() == [3, 4, 5]


@pytest.mark.parametrize("kind", ["hdf5", "stream"])
def test_to_dask_is_lazy_with_one_chunk_per_file(catalog, RE, tmp_path, kind):
    det = _detector(kind, tmp_path / "data")
    RE(count([det], 7))
    lazy = catalog[-1].primary.to_dask()
    data = lazy["det_image"].data
    assert data.dtype == np.uint16 and data.shape == (7, *SHAPE)
    assert data.numblocks[0] == 1  # one file: one chunk, not one per frame
    np.testing.assert_array_equal(data.compute(), _expected(7))


def test_unfilled_read_returns_the_datum_references(catalog, RE, tmp_path):
    det = _detector("hdf5", tmp_path / "data")
    docs: list = []
    RE(count([det], 3), lambda name, doc: docs.append((name, doc)))
    refs = catalog[-1].primary.read(fill=False)["det_image"].values
    events = [d for n, d in docs if n == "event"]
    assert refs.tolist() == [e["data"]["det_image"] for e in events]


def test_unfilled_stream_read_names_resource_and_row(catalog, RE, tmp_path):
    det = _detector("stream", tmp_path / "data")
    docs: list = []
    RE(count([det], 3), lambda name, doc: docs.append((name, doc)))
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    refs = catalog[-1].primary.read(fill=False)["det_image"].values.tolist()
    assert refs == [f"{resource['uid']}/{i}" for i in range(3)]


def test_documents_fill_puts_frames_in_events(catalog, RE, tmp_path):
    det = _detector("tiff", tmp_path / "data")
    RE(count([det], 4))
    run = catalog[-1]
    events = [d for n, d in run.documents(fill=True, pages=False) if n == "event"]
    assert [e["filled"]["det_image"] for e in events] == [True] * 4
    np.testing.assert_array_equal(np.stack([e["data"]["det_image"] for e in events]), _expected(4))
    # Unfilled replay keeps the references, and the datums come once each.
    plain = list(run.documents(pages=False))
    assert all(isinstance(d["data"]["det_image"], str) for n, d in plain if n == "event")
    datum_ids = [d["datum_id"] for n, d in plain if n == "datum"]
    assert len(datum_ids) == len(set(datum_ids)) == 4


def test_replay_keeps_stream_resource_and_stream_datum_apart(catalog, RE, tmp_path):
    det = _detector("stream", tmp_path / "data")
    sent: list = []
    RE(count([det], 3), lambda name, doc: sent.append((name, doc)))
    replayed = list(catalog[-1].documents(pages=False))
    for name in ("stream_resource", "stream_datum"):
        assert [d for n, d in replayed if n == name] == [d for n, d in sent if n == name]


@stores_except(
    "http", reason="counts the detector files this process opens; over HTTP the server reads them"
)
def test_a_file_is_opened_once_per_read(make_catalog, RE, tmp_path):
    opened: list[str] = []

    class Counting(ADHDF5Handler):
        def __init__(self, full_path: str, **kwargs: Any) -> None:
            opened.append(full_path)
            super().__init__(full_path, **kwargs)

    cat = make_catalog(handlers={"AD_HDF5": Counting})
    RE.subscribe(cat.insert)
    det = _detector("hdf5", tmp_path / "data")
    RE(count([det], 20))
    cat[-1].primary.read()
    assert opened == [str(det.files_written[0])]
    cat[-1].primary.read()  # kept open between reads (bounded cache)
    assert len(opened) == 1


@stores_except(
    "http", reason="counts the detector files this process opens; over HTTP the server reads them"
)
def test_open_files_are_bounded(make_catalog, RE, tmp_path):
    cat = make_catalog()
    cat.assets.max_open = 2
    RE.subscribe(cat.insert)
    det = _detector("hdf5", tmp_path / "data")
    for _ in range(4):
        RE(count([det], 2))
    for uid in list(cat):
        cat[uid].primary.read()
    assert len(cat.assets._open) == 2


# -- moved data and root_map -----------------------------------------------------------------


@stores_except(
    "http",
    reason="root_map and handlers are settings of the process reading the files: the server's",
)
def test_root_map_finds_moved_files(make_catalog, RE, tmp_path):
    cat = make_catalog()
    RE.subscribe(cat.insert)
    hdf5 = _detector("hdf5", tmp_path / "beamline")
    stream = StreamHDF5Detector("sdet", tmp_path / "beamline", shape=SHAPE)
    RE(count([hdf5, stream], 3))
    uid = cat[-1].uid
    shutil.move(tmp_path / "beamline", tmp_path / "copy")

    with pytest.raises(ExternalDataError) as err:
        cat[uid].primary.read(["det_image"])
    message = str(err.value)
    assert "det_image" in message and uid[:8] in message
    assert str(tmp_path / "beamline") in message and "file not found" in message
    assert "no root_map entry applied" in message and "AD_HDF5" in message

    moved = make_catalog(root_map={str(tmp_path / "beamline"): str(tmp_path / "copy")})
    moved.ingest(cat[uid].documents())
    ds = moved[uid].primary.read()
    np.testing.assert_array_equal(ds["det_image"].values, _expected(3))
    np.testing.assert_array_equal(ds["sdet_image"].values, _expected(3))


@stores_except(
    "http",
    reason="root_map and handlers are settings of the process reading the files: the server's",
)
def test_root_map_is_named_when_the_mapped_file_is_missing(make_catalog, RE, tmp_path):
    cat = make_catalog(root_map={str(tmp_path / "beamline"): str(tmp_path / "nowhere")})
    RE.subscribe(cat.insert)
    RE(count([_detector("hdf5", tmp_path / "beamline")], 2))
    with pytest.raises(ExternalDataError, match="root_map changed") as err:
        cat[-1].primary.read()
    assert str(tmp_path / "nowhere") in str(err.value)


def _run_with_resource(
    cat: runbroker.Catalog,
    resource: dict,
    datum_kwargs: list[dict],
    shape: list[int],
    spec: str = "AD_HDF5",
) -> str:
    """A run written document by document: one external field ``img`` plus ``x``."""
    run = compose_run()
    cat.insert("start", run.start_doc)
    res = run.compose_resource(spec=spec, **resource)
    cat.insert("resource", res.resource_doc)
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "img": {
                "source": "sim",
                "dtype": "array",
                "shape": shape,
                "dtype_numpy": "<u2",
                "external": "FILESTORE:",
            },
            "x": {"source": "sim", "dtype": "number", "shape": []},
        },
    )
    cat.insert("descriptor", desc.descriptor_doc)
    for i, kwargs in enumerate(datum_kwargs):
        datum = res.compose_datum(datum_kwargs=kwargs)
        cat.insert("datum", datum)
        now = time.time()
        cat.insert(
            "event",
            desc.compose_event(
                data={"img": datum["datum_id"], "x": float(i)},
                timestamps={"img": now, "x": now},
                filled={"img": False},
            ),
        )
    cat.insert("stop", run.compose_stop())
    return run.start_doc["uid"]


def _h5(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames)


@pytest.mark.parametrize("store_kind", ["sqlite", "folder"])
def test_relative_root_follows_the_catalog_folder(make_catalog, tmp_path, store_kind):
    # Not PostgreSQL: a relative root is relative to the catalog's folder (the SQLite file's,
    # or the folder of run files itself), and a server database has no folder of its own.
    cat = make_catalog()
    sqlite = store_kind == "sqlite"
    folder = Path(cat.store.uri.removeprefix("sqlite:///")).parent if sqlite else cat.store.folder
    _h5(folder / "data" / "a.h5", _expected(3))
    resource = {"root": "data", "resource_path": "a.h5", "resource_kwargs": {}}
    uid = _run_with_resource(cat, resource, [{"point_number": i} for i in range(3)], list(SHAPE))
    cat.close()
    shutil.move(folder, tmp_path / "elsewhere")
    moved = runbroker.open(tmp_path / "elsewhere" / "runs.db" if sqlite else tmp_path / "elsewhere")
    np.testing.assert_array_equal(moved[uid].primary.read()["img"].values, _expected(3))
    moved.close()


# -- errors ------------------------------------------------------------------------------------


def _stored(cat: runbroker.Catalog, uid: str) -> list:
    return [(n, repr(d)) for n, d in cat[uid].documents()]


def test_a_deleted_file_names_run_field_path_and_handler(catalog, RE, tmp_path):
    det = _detector("hdf5", tmp_path / "data")
    RE(count([det], 3))
    uid = catalog[-1].uid
    before = _stored(catalog, uid)
    det.files_written[0].unlink()

    with pytest.raises(ExternalDataError) as err:
        catalog[uid].primary.read()
    message = str(err.value)
    for part in (uid[:8], "'det_image'", str(det.files_written[0]), "AD_HDF5", "ADHDF5Handler"):
        assert part in message
    with pytest.raises(ExternalDataError):
        catalog[uid].primary.to_dask()["det_image"].compute()
    # Other fields, the unfilled references and the stored documents are all still there.
    assert catalog[uid].primary.read(["det_stats_total"])["det_stats_total"].shape == (3,)
    assert catalog[uid].primary.read(fill=False)["det_image"].shape == (3,)
    assert _stored(catalog, uid) == before


@stores_except(
    "http",
    reason="root_map and handlers are settings of the process reading the files: the server's",
)
def test_a_missing_handler_says_how_to_register_one(make_catalog, tmp_path, monkeypatch):
    # Registrations are process-wide: start from none and leave none behind.
    monkeypatch.setattr(registry, "_registered", {"handlers": {}, "readers": {}})
    cat = make_catalog()
    _h5(tmp_path / "a.h5", _expected(2))
    resource = {"root": str(tmp_path), "resource_path": "a.h5", "resource_kwargs": {}}
    uid = _run_with_resource(
        cat, resource, [{"point_number": i} for i in range(2)], [*SHAPE], "XYZ"
    )
    with pytest.raises(HandlerNotFoundError) as err:
        cat[uid].primary.read()
    message = str(err.value)
    assert "'XYZ'" in message and "register_handler" in message and "'img'" in message
    assert cat[uid].primary.read(["x"])["x"].values.tolist() == [0.0, 1.0]

    # Per catalog, as an import string ...
    configured = make_catalog(handlers={"XYZ": "runbroker.assets.handlers:ADHDF5Handler"})
    configured.ingest(cat[uid].documents())
    np.testing.assert_array_equal(configured[uid].primary.read()["img"].values, _expected(2))
    # ... or for the whole process.
    register_handler("XYZ", ADHDF5Handler, overwrite=True)
    np.testing.assert_array_equal(cat[uid].primary.read()["img"].values, _expected(2))


@stores_except(
    "http",
    reason="root_map and handlers are settings of the process reading the files: the server's",
)
def test_handlers_are_found_through_entry_points(make_catalog, tmp_path, monkeypatch):
    # An installed package announces its handler in the runbroker.handlers entry-point group:
    # a real .dist-info folder on sys.path, read by importlib.metadata.
    dist = tmp_path / "site" / "myhandlers-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myhandlers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[runbroker.handlers]\nEPSPEC = runbroker.assets.handlers:ADHDF5Handler\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cat = make_catalog()
    _h5(tmp_path / "a.h5", _expected(2))
    resource = {"root": str(tmp_path), "resource_path": "a.h5", "resource_kwargs": {}}
    points = [{"point_number": i} for i in range(2)]
    uid = _run_with_resource(cat, resource, points, [*SHAPE], "EPSPEC")
    np.testing.assert_array_equal(cat[uid].primary.read()["img"].values, _expected(2))


def test_shape_mismatch_is_an_error_not_padding(catalog, tmp_path):
    _h5(tmp_path / "a.h5", np.ones((2, 5, 8), "u2"))
    resource = {"root": str(tmp_path), "resource_path": "a.h5", "resource_kwargs": {}}
    uid = _run_with_resource(catalog, resource, [{"point_number": i} for i in range(2)], [*SHAPE])
    with pytest.raises(ExternalDataError, match=r"shape \(1, 5, 8\).*declares \(6, 8\)"):
        catalog[uid].primary.read()


def test_too_few_frames_is_an_error(catalog, tmp_path):
    _h5(tmp_path / "a.h5", _expected(2))
    resource = {"root": str(tmp_path), "resource_path": "a.h5", "resource_kwargs": {}}
    uid = _run_with_resource(catalog, resource, [{"point_number": i} for i in range(3)], [*SHAPE])
    with pytest.raises(ExternalDataError, match="has 2 frames; point 2 needs frame 2"):
        catalog[uid].primary.read()


# -- path safety -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource_path",
    ["../outside.h5", "sub/../../outside.h5", "/etc/passwd"],
)
def test_resource_path_cannot_leave_its_root(catalog, tmp_path, resource_path):
    root = tmp_path / "root"
    _h5(tmp_path / "outside.h5", _expected(1))
    resource = {"root": str(root), "resource_path": resource_path, "resource_kwargs": {}}
    uid = _run_with_resource(catalog, resource, [{"point_number": 0}], [*SHAPE])
    with pytest.raises(UnsafePathError, match="img"):
        catalog[uid].primary.read()
    assert catalog[uid].primary.read(["x"])["x"].shape == (1,)


def test_datum_kwargs_cannot_leave_the_root(catalog, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    resource = {
        "root": str(root),
        "resource_path": "",
        "resource_kwargs": {"template": "%s%s_%6.6d.tiff", "filename": "../../x"},
    }
    uid = _run_with_resource(catalog, resource, [{"point_number": 0}], [*SHAPE], "AD_TIFF")
    with pytest.raises(UnsafePathError, match="outside the resource root"):
        catalog[uid].primary.read()

    npy = {"root": str(root), "resource_path": "a.npy", "resource_kwargs": {}}
    np.save(root / "a.npy", np.zeros((1, *SHAPE), "u2"))
    uid = _run_with_resource(catalog, npy, [{"index": "../../x"}], [*SHAPE], "NPY")
    with pytest.raises(UnsafePathError, match=r"climbs out"):
        catalog[uid].primary.read()


def test_stream_resource_uri_cannot_climb(catalog, tmp_path):
    run = compose_run()
    catalog.insert("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "img": {"source": "s", "dtype": "array", "shape": [2], "external": "STREAM:"},
        },
    )
    catalog.insert("descriptor", desc.descriptor_doc)
    res = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{tmp_path}/../escape.h5",
        data_key="img",
        parameters={"dataset": "/d"},
    )
    catalog.insert("stream_resource", res.stream_resource_doc)
    datum = res.compose_stream_datum(indices={"start": 0, "stop": 1})
    datum["descriptor"] = desc.descriptor_doc["uid"]
    datum["seq_nums"] = {"start": 1, "stop": 2}
    catalog.insert("stream_datum", datum)
    catalog.insert("event", desc.compose_event(data={}, timestamps={}))
    catalog.insert("stop", run.compose_stop())
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        catalog[-1].primary.read()


def test_lazy_chunks_pickle_to_other_processes(catalog, RE, tmp_path):
    # dask.distributed ships each task pickled: the store and the file configuration travel,
    # open files do not.
    import pickle

    det = _detector("hdf5", tmp_path / "data")
    RE(count([det], 4))
    catalog[-1].primary.read()  # leaves the file open in this catalog's cache
    lazy = pickle.loads(pickle.dumps(catalog[-1].primary.to_dask()["det_image"].data))
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), _expected(4))


@stores_except(
    "http",
    reason="root_map and handlers are settings of the process reading the files: the server's",
)
def test_a_missing_stream_reader_names_the_mimetype(make_catalog, RE, tmp_path):
    cat = make_catalog(readers={"application/x-hdf5": "no_such_module:Reader"})
    RE.subscribe(cat.insert)
    RE(count([_detector("stream", tmp_path / "data")], 2))
    with pytest.raises(HandlerNotFoundError, match="no_such_module:Reader"):
        cat[-1].primary.read()
    assert cat[-1].primary.read(["det_stats_total"])["det_stats_total"].shape == (2,)
