"""TIFF export, read back with tifffile: same values and dtype as the catalog's ``read()``.

Runs come from real RunEngine scans (the shared ``export_runs``: inline images, an area
detector writing HDF5 files, a tomography scan with dark/flat/primary streams, scalar runs with
a baseline and with two descriptors) plus, here, a detector taking two frames a point, float
images, and a stream whose frame size changes between its two descriptors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
import tifffile
from bluesky.plans import count, scan
from ophyd.sim import SynSignal, motor

from runbroker.export import ExportError, live
from runbroker.testing.detectors import ADHDF5Detector
from runbroker.testing.export import assert_same_array as _same
from runbroker.testing.export import counted_frame, engine_catalog, without_stop
from runbroker.testing.export import read_field as _read
from runbroker.testing.runs import changing_stream


def _roi_change_docs() -> list[tuple[str, dict]]:
    """A ``primary`` stream declared twice: the camera's region of interest changed."""
    cam = {"source": "sim", "dtype": "array", "dtype_numpy": "<u2"}
    shapes = ([2, 3], [3, 2])
    return changing_stream([{"cam": {**cam, "shape": s}} for s in shapes], counted_frame, n=2)


@pytest.fixture(scope="module")
def tiff_runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("tiff_runs")
    cat, RE = engine_catalog(folder / "runs.db")
    runs: dict[str, Any] = {}
    RE(
        scan(
            [ADHDF5Detector("fcam", folder / "fpp", shape=(4, 5), frame_per_point=2)],
            motor,
            0,
            1,
            3,
        )
    )
    runs["two_frames"] = cat[-1]
    gen = np.random.default_rng(5)
    RE(count([SynSignal(name="fcam", func=lambda: gen.random((3, 4), dtype="float32"))], 2))
    runs["float"] = cat[-1]
    cat.ingest(_roi_change_docs())
    runs["roi"] = cat[-1]
    yield runs
    cat.close()


def _split(files: list[Path]) -> tuple[dict[str, Path], dict[str, Any]]:
    """TIFF files by name, and the sidecar's content."""
    (sidecar,) = [p for p in files if p.name.endswith(".metadata.json")]
    tiffs = {p.name: p for p in files if p.suffix == ".tiff"}
    assert len(tiffs) + 1 == len(files)
    return tiffs, json.loads(sidecar.read_text())


def _description(path: Path) -> dict[str, Any]:
    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.pages[0].description)


def _stack(path: Path) -> np.ndarray:
    """The frames of a stack, checking they are grey pages, one per frame (not RGB)."""
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        n = 1 if data.ndim == 2 else len(data)
        assert len(tif.pages) == n
        for page in tif.pages:
            assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            assert page.samplesperpixel == 1
    return data


def test_inline_images_one_stack(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["inline_image"]
    tiffs, meta = _split(run.export("tiff", tmp_path, template="{start[sample]}"))
    assert list(tiffs) == ["inline_primary_inline_cam.tiff"]
    path = tiffs["inline_primary_inline_cam.tiff"]
    _same(_stack(path), _read(run, "primary", "inline_cam"))
    info = _description(path)
    uid = run.metadata["start"]["uid"]
    assert info["uid"] == uid and info["stream"] == "primary" and info["field"] == "inline_cam"
    assert info["metadata"] == "inline.metadata.json"
    assert meta["uid"] == uid and meta["complete"] is True
    assert meta["start"] == run.metadata["start"] and meta["stop"] == run.metadata["stop"]
    assert meta["images"] == [
        {
            "file": path.name,
            "stream": "primary",
            "field": "inline_cam",
            "seq_num": [1, 3],
            "series": [{"frames": 3, "shape": [4, 5], "dtype": "uint16"}],
        }
    ]


def test_images_from_detector_files(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["file_image"]
    tiffs, _ = _split(run.export("tiff", tmp_path))
    (path,) = tiffs.values()
    assert path.name.endswith("_primary_adet_image.tiff")
    _same(_stack(path), _read(run, "primary", "adet_image"))


def test_one_stack_per_stream(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    tiffs, meta = _split(run.export("tiff", tmp_path, template="tomo"))
    assert sorted(tiffs) == [f"tomo_{s}_tomocam_image.tiff" for s in ("dark", "flat", "primary")]
    for stream in ("dark", "flat", "primary"):
        path = tiffs[f"tomo_{stream}_tomocam_image.tiff"]
        _same(_stack(path), _read(run, stream, "tomocam_image"))
        assert _description(path)["stream"] == stream
    assert [i["stream"] for i in meta["images"]] == ["dark", "flat", "primary"]


def test_one_file_per_frame(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    tiffs, meta = _split(run.export("tiff", tmp_path, per="frame", template="t"))
    assert len(tiffs) == 2 + 2 + 5
    frames = _read(run, "primary", "tomocam_image")
    for k in range(5):
        path = tiffs[f"t_primary_tomocam_image_{k:05d}.tiff"]
        _same(_stack(path), frames[k])
        info = _description(path)
        assert info["seq_num"] == k + 1 and info["index"] == k
        assert info["uid"] == run.metadata["start"]["uid"]
    _same(
        _stack(tiffs["t_dark_tomocam_image_00001.tiff"]),
        _read(run, "dark", "tomocam_image")[1],
    )
    assert len(meta["images"]) == 9


def test_frames_per_point_become_pages(tiff_runs: dict[str, Any], tmp_path: Path) -> None:
    run = tiff_runs["two_frames"]
    frames = _read(run, "primary", "fcam_image")
    assert frames.shape == (3, 2, 4, 5)
    tiffs, _ = _split(run.export("tiff", tmp_path / "stack"))
    (path,) = tiffs.values()
    _same(_stack(path), frames.reshape(6, 4, 5))
    tiffs, meta = _split(run.export("tiff", tmp_path / "frames", per="frame", template="f"))
    assert len(tiffs) == 6
    for k in range(6):
        _same(_stack(tiffs[f"f_primary_fcam_image_{k:05d}.tiff"]), frames[k // 2, k % 2])
    assert [(i["seq_num"], i["frame_in_event"]) for i in meta["images"]] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
    ]


def test_float_images_keep_their_dtype(tiff_runs: dict[str, Any], tmp_path: Path) -> None:
    run = tiff_runs["float"]
    expected = _read(run, "primary", "fcam")
    assert expected.dtype == np.float32
    tiffs, _ = _split(run.export("tiff", tmp_path))
    _same(_stack(next(iter(tiffs.values()))), expected)


def test_changed_frame_size_starts_a_second_series(
    tiff_runs: dict[str, Any], tmp_path: Path
) -> None:
    """Two descriptors in one stream, the second with another frame size."""
    run = tiff_runs["roi"]
    tiffs, meta = _split(run.export("tiff", tmp_path))
    (path,) = tiffs.values()
    frames = _read(run, "primary", "cam")  # ragged: one array per event
    with tifffile.TiffFile(path) as tif:
        assert [s.shape for s in tif.series] == [(2, 2, 3), (2, 3, 2)]
        first, second = (s.asarray() for s in tif.series)
    _same(first, np.stack(frames[:2]).astype("uint16"))
    _same(second, np.stack(frames[2:]).astype("uint16"))
    assert [s["shape"] for s in meta["images"][0]["series"]] == [[2, 3], [3, 2]]


@pytest.mark.parametrize("key", ["scalar", "two_descriptors", "grid"])
def test_run_without_images_gets_only_metadata(
    export_runs: dict[str, Any], tmp_path: Path, key: str
) -> None:
    """Decided: no error, so that a live TIFF export survives the scalar scans between
    image scans; the metadata file (``images: []``) says there was nothing to write."""
    run = export_runs[key]
    files = run.export("tiff", tmp_path)
    tiffs, meta = _split(files)
    assert tiffs == {} and meta["images"] == []
    assert meta["uid"] == run.metadata["start"]["uid"]
    assert [p.name for p in tmp_path.iterdir()] == [files[0].name]


def test_fields_option(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    tiffs, _ = _split(run.export("tiff", tmp_path / "a", fields=["dark:tomocam_image"]))
    assert [n.split("_", 3)[-1] for n in tiffs] == ["dark_tomocam_image.tiff"]
    tiffs, _ = _split(run.export("tiff", tmp_path / "b", fields="tomocam_image"))
    assert len(tiffs) == 3


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"fields": ["nothing"]}, ["no image field 'nothing'", "dark:tomocam_image"]),
        ({"fields": ["primary:theta"]}, ["primary:theta", "shape [] per event, not an image"]),
        ({"per": "event"}, ["per='event'", "'stream' or 'frame'"]),
    ],
)
def test_bad_options(
    export_runs: dict[str, Any], tmp_path: Path, options: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ExportError) as info:
        export_runs["tomo"].export("tiff", tmp_path, **options)
    for word in words:
        assert word in str(info.value)


def test_existing_files_are_not_overwritten(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["inline_image"]
    files = run.export("tiff", tmp_path, template="x")
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run.export("tiff", tmp_path, template="x")
    assert {p: p.read_bytes() for p in files} == before
    again = run.export("tiff", tmp_path, template="x", overwrite=True, per="frame")
    assert len(again) == 1 + 3


def test_run_without_stop_is_marked_incomplete(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["file_image"]
    tiffs, meta = _split(without_stop("tiff", run, tmp_path).close())
    assert meta["complete"] is False and meta["stop"] is None
    _same(_stack(next(iter(tiffs.values()))), _read(run, "primary", "adet_image"))


def test_live_stack_grows_during_the_scan(tmp_path: Path) -> None:
    """Each point's two frames are in the file (and readable) before the next point."""
    cat, RE = engine_catalog(tmp_path / "runs.db")
    export = live("tiff", tmp_path / "out", template="live")
    RE.subscribe(export)
    cam = ADHDF5Detector("cam", tmp_path / "frames", shape=(4, 6), frame_per_point=2)
    seen: list[tuple[int, bool]] = []

    def plan() -> Any:
        yield from bps.open_run()
        yield from bps.stage(cam)
        for point in range(4):
            yield from bps.trigger_and_read([cam])
            path = tmp_path / "out" / "live_primary_cam_image.tiff"
            with tifffile.TiffFile(path) as tif:
                pages = np.stack([p.asarray() for p in tif.pages])
            expected = np.stack([cam.frames(k) for k in range(point + 1)]).reshape(-1, 4, 6)
            seen.append((len(pages), bool((pages == expected).all())))
            meta = json.loads((tmp_path / "out" / "live.metadata.json").read_text())
            assert meta["complete"] is False
        yield from bps.unstage(cam)
        yield from bps.close_run()

    RE(plan())
    assert seen == [(2, True), (4, True), (6, True), (8, True)]
    tiffs, meta = _split(export.files)
    _same(
        _stack(tiffs["live_primary_cam_image.tiff"]),
        _read(cat[-1], "primary", "cam_image").reshape(8, 4, 6),
    )
    assert meta["complete"] is True
    cat.close()


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({"bigtiff": True}, lambda tif: tif.is_bigtiff),
        ({}, lambda tif: not tif.is_bigtiff),
        ({"compression": "zlib"}, lambda tif: tif.pages[0].compression == 8),  # ADOBE_DEFLATE
    ],
)
def test_bigtiff_and_compression(
    export_runs: dict[str, Any], tmp_path: Path, options: dict[str, Any], check: Any
) -> None:
    run = export_runs["file_image"]
    tiffs, _ = _split(run.export("tiff", tmp_path, **options))
    (path,) = tiffs.values()
    with tifffile.TiffFile(path) as tif:
        assert check(tif)
    _same(_stack(path), _read(run, "primary", "adet_image"))
