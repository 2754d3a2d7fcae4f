"""Data Exchange export, read back with h5py and as a tomography reader reads it.

The tomography reader meant here is ``dxchange`` (what TomoPy users load DX files with). It
cannot be installed in this environment: the ``dxchange`` on PyPI is an unrelated 0.0.1
package, the real one is distributed through conda only. So ``test_tomography_reader_*``
does with h5py exactly what ``dxchange.exchange.read_aps_32id`` does (read
``exchange/data``, ``data_white``, ``data_dark``, ``theta`` and turn degrees into radians)
and checks what TomoPy then relies on: data ``n_theta x rows x cols``, darks and flats of the
same frame size, one angle per projection, in degrees in the file.

Runs come from real RunEngine scans: the shared ``export_runs`` (the ``tomo`` run reads its
frames from the HDF5 files of an area detector) and, here, scans with inline images, an angle
in radians, a baseline, two frames a point, and a stream declared by two descriptors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from bluesky.preprocessors import SupplementalData
from ophyd import Device, Signal
from ophyd.sim import SynAxis, SynSignal, motor1

import runbroker
from runbroker.export import ExportError, live
from runbroker.testing.detectors import ADHDF5Detector
from runbroker.testing.export import assert_same_array as _same
from runbroker.testing.export import counted_frame, engine_catalog, without_stop
from runbroker.testing.export import read_field as _read
from runbroker.testing.runs import changing_stream

ANGLES_RAD = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]


class _Angle(Signal):
    """A soft rotation axis whose data key carries units, as an EPICS motor's does."""

    def __init__(self, *args: Any, units: str, **kwargs: Any) -> None:
        super().__init__(*args, value=0.0, **kwargs)
        self._units = units

    def describe(self) -> dict[str, dict[str, Any]]:
        out = super().describe()
        out[self.name]["units"] = self._units
        return out


def _cam(name: str, shape: tuple[int, int] = (3, 4)) -> SynSignal:
    """Inline 2-D uint16 frames, each different (frame k is arange + 100 k)."""
    count = iter(range(1_000_000))
    size = shape[0] * shape[1]
    return SynSignal(
        name=name,
        func=lambda: np.arange(size, dtype="uint16").reshape(shape) + 100 * next(count),
    )


def _rotation(
    cams: list[Any],
    angles: list[Any],
    values: list[float],
    streams: tuple[str, ...] = ("darkfield", "whitefield"),
    md: dict[str, Any] | None = None,
) -> Any:
    yield from bps.open_run(md={"plan_name": "rotation", **(md or {})})
    staged = [c for c in cams if isinstance(c, Device)]
    for cam in staged:
        yield from bps.stage(cam)
    for stream in streams:
        for _ in range(2):
            yield from bps.trigger_and_read(cams, name=stream)
    for value in values:
        for a in angles:
            yield from bps.mv(a, value)
        yield from bps.trigger_and_read([*cams, *angles])
    for cam in staged:
        yield from bps.unstage(cam)
    yield from bps.close_run()


def _two_descriptor_docs() -> list[tuple[str, dict]]:
    """Projections in one ``primary`` stream declared twice (exposure changed mid-scan)."""
    keys = {
        "cam": {"source": "sim", "dtype": "array", "dtype_numpy": "<u2", "shape": [2, 3]},
        "theta": {"source": "sim", "dtype": "number", "shape": [], "units": "deg"},
    }
    return changing_stream(
        [keys, keys],
        lambda name, dk, seq: counted_frame(name, dk, seq) if name == "cam" else 30.0 * seq,
        n=2,
        configurations=[{"cam": {"data": {"exposure": t}, "timestamps": {}}} for t in (0.1, 0.5)],
    )


@pytest.fixture(scope="module")
def dx_runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Runs only the DX tests need, in their own SQLite catalog."""
    folder = tmp_path_factory.mktemp("dx_runs")
    cat, RE = engine_catalog(folder / "runs.db")
    runs: dict[str, Any] = {"catalog": cat}

    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    md = {"sample": {"name": "shale", "temp": 295}, "proposal_id": "p-9", "beamline_id": "2-BM"}
    RE(_rotation([_cam("pco")], [_Angle(name="rot_angle", units="rad")], ANGLES_RAD, md=md))
    runs["radians"] = cat[-1]
    RE.preprocessors.clear()

    RE(_rotation([_cam("pco")], [_Angle(name="rot_angle", units="mm")], [0.0, 1.0]))
    runs["not_an_angle"] = cat[-1]

    cams = [_cam("cam_a"), _cam("cam_b")]
    RE(_rotation(cams, [SynAxis(name="theta")], [0.0, 90.0], streams=()))
    runs["two_cams"] = cat[-1]

    two = [_Angle(name="theta_x", units="deg"), _Angle(name="angle_y", units="deg")]
    RE(_rotation([_cam("pco")], two, [0.0, 90.0]))
    runs["two_angles"] = cat[-1]

    RE(_rotation([_cam("pco")], [SynAxis(name="theta")], [0.0, 90.0], streams=("dark_flat",)))
    runs["dark_or_flat"] = cat[-1]

    fpp = ADHDF5Detector("fcam", folder / "fpp", shape=(4, 5), frame_per_point=2)
    RE(_rotation([fpp], [SynAxis(name="theta")], [0.0, 60.0, 120.0], streams=("dark",)))
    runs["two_frames"] = cat[-1]

    cat.ingest(_two_descriptor_docs())
    runs["two_exposures"] = cat[-1]
    yield runs
    cat.close()


def _export(run: Any, directory: Path, **options: Any) -> Path:
    files = run.export("dx", directory, **options)
    assert len(files) == 1 and files[0].suffix == ".h5"
    return files[0]


def test_tomo_run_layout_equals_catalog(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    path = _export(run, tmp_path)
    with h5py.File(path, "r") as f:
        assert f.attrs["implements"] == "exchange:measurement:process"
        _same(f["exchange/data"][()], _read(run, "primary", "tomocam_image"))
        _same(f["exchange/data_dark"][()], _read(run, "dark", "tomocam_image"))
        _same(f["exchange/data_white"][()], _read(run, "flat", "tomocam_image"))
        _same(f["exchange/theta"][()], _read(run, "primary", "theta"))
        assert f["exchange/theta"].attrs["units"] == "degrees"
        assert f["exchange/data"].dtype == np.uint16
        assert f["exchange/data"].attrs["axes"] == "theta:y:x"
        assert f["measurement/sample/name"].asstr()[()] == "rock"
        assert f["measurement/instrument/detector/name"].asstr()[()] == "tomocam"
        assert f["measurement/instrument/detector/dimension_x"][()] == 7
        acq = f["process/acquisition"]
        assert acq["run_uid"].asstr()[()] == run.metadata["start"]["uid"]
        assert acq["plan_name"].asstr()[()] == "tomo_scan"
        assert json.loads(acq["start"][()]) == run.metadata["start"]
        assert json.loads(acq["stop"][()]) == run.metadata["stop"]
        assert len(json.loads(acq["descriptors"][()])) == 3
        assert bool(acq["complete"][()]) is True
        assert acq["exit_status"].asstr()[()] == "success"
        assert acq["software/version"].asstr()[()] == runbroker.__version__
        assert json.loads(acq["sources"][()]) == {
            "projections": ["primary:tomocam_image"],
            "darks": ["dark:tomocam_image"],
            "flats": ["flat:tomocam_image"],
            "theta": ["primary:theta"],
        }


def test_tomography_reader_expectations(export_runs: dict[str, Any], tmp_path: Path) -> None:
    """What dxchange.exchange.read_aps_32id does, with h5py (see the module docstring)."""
    run = export_runs["tomo"]
    path = _export(run, tmp_path)
    with h5py.File(path, "r") as f:
        tomo = f["exchange/data"][()]
        flat = f["exchange/data_white"][()]
        dark = f["exchange/data_dark"][()]
        theta = f["exchange/theta"][()] * np.pi / 180.0
    n_theta = len(run.primary.read()["theta"])
    assert tomo.ndim == 3 and tomo.shape == (n_theta, 5, 7)
    assert flat.shape[1:] == dark.shape[1:] == tomo.shape[1:]
    assert theta.shape == (tomo.shape[0],)
    np.testing.assert_allclose(theta, np.radians([0.0, 45.0, 90.0, 135.0, 180.0]))
    assert tomo.dtype == flat.dtype == dark.dtype == np.uint16


def test_radians_are_written_in_degrees(dx_runs: dict[str, Any], tmp_path: Path) -> None:
    """Inline images; the angle's data key says ``rad``; the names are darkfield/whitefield;
    a baseline stream is present and ignored."""
    run = dx_runs["radians"]
    np.testing.assert_allclose(_read(run, "primary", "rot_angle"), ANGLES_RAD)
    path = _export(run, tmp_path)
    with h5py.File(path, "r") as f:
        theta = f["exchange/theta"][()]
        np.testing.assert_allclose(theta, np.degrees(_read(run, "primary", "rot_angle")))
        np.testing.assert_allclose(theta, [0.0, 45.0, 90.0, 135.0])
        _same(f["exchange/data"][()], _read(run, "primary", "pco"))
        _same(f["exchange/data_dark"][()], _read(run, "darkfield", "pco"))
        _same(f["exchange/data_white"][()], _read(run, "whitefield", "pco"))
        assert f["measurement/sample/name"].asstr()[()] == "shale"
        assert f["measurement/sample/temp"][()] == 295
        assert f["measurement/sample/experiment/proposal"].asstr()[()] == "p-9"
        assert f["measurement/instrument/name"].asstr()[()] == "2-BM"
        sources = json.loads(f["process/acquisition/sources"][()])
    assert "baseline" in run
    assert not any("baseline" in s for used in sources.values() for s in used)


def test_options_map_streams_and_fields(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    # Swapped on purpose: the options, not the names, decide.
    path = _export(
        run,
        tmp_path,
        projections="primary:tomocam_image",
        darks="flat",
        flats=["dark", "flat"],
        theta="theta_setpoint",
    )
    with h5py.File(path, "r") as f:
        _same(f["exchange/data_dark"][()], _read(run, "flat", "tomocam_image"))
        both = np.concatenate(
            [_read(run, "dark", "tomocam_image"), _read(run, "flat", "tomocam_image")]
        )
        _same(f["exchange/data_white"][()], both)
        _same(f["exchange/theta"][()], _read(run, "primary", "theta_setpoint"))
        assert json.loads(f["process/acquisition/sources"][()])["theta"] == [
            "primary:theta_setpoint"
        ]


def test_options_can_leave_datasets_out(export_runs: dict[str, Any], tmp_path: Path) -> None:
    path = _export(export_runs["tomo"], tmp_path, darks=False, flats=[], theta=False)
    with h5py.File(path, "r") as f:
        assert sorted(f["exchange"]) == ["data"]


def test_explicit_stream_and_angle(dx_runs: dict[str, Any], tmp_path: Path) -> None:
    """Two angle fields: the one named is used, from ``STREAM:FIELD``."""
    run = dx_runs["two_angles"]
    path = _export(run, tmp_path, theta="primary:angle_y")
    with h5py.File(path, "r") as f:
        _same(f["exchange/theta"][()], _read(run, "primary", "angle_y"))


def test_two_frames_a_point_repeat_the_angle(dx_runs: dict[str, Any], tmp_path: Path) -> None:
    """frame_per_point=2 from HDF5 files: each frame is a projection, each angle doubles."""
    run = dx_runs["two_frames"]
    path = _export(run, tmp_path)
    frames = _read(run, "primary", "fcam_image")
    assert frames.shape == (3, 2, 4, 5)
    with h5py.File(path, "r") as f:
        _same(f["exchange/data"][()], frames.reshape(6, 4, 5))
        _same(f["exchange/data_dark"][()], _read(run, "dark", "fcam_image").reshape(4, 4, 5))
        np.testing.assert_array_equal(f["exchange/theta"][()], [0, 0, 60, 60, 120, 120])
        assert "data_white" not in f["exchange"]


def test_two_descriptors_in_one_stream(dx_runs: dict[str, Any], tmp_path: Path) -> None:
    run = dx_runs["two_exposures"]
    path = _export(run, tmp_path)
    with h5py.File(path, "r") as f:
        _same(f["exchange/data"][()], _read(run, "primary", "cam"))
        _same(f["exchange/theta"][()], _read(run, "primary", "theta"))
        assert len(f["exchange/data"]) == 4
        assert len(json.loads(f["process/acquisition/descriptors"][()])) == 2


@pytest.mark.parametrize(
    ("key", "options", "words"),
    [
        ("scalar", {}, ["no projections", "stream 'primary' has no image field", "projections="]),
        ("tomo", {"projections": "nope"}, ["projections=nope matched no stream", "dark, flat"]),
        ("tomo", {"projections": "primary:theta"}, ["'theta' has shape []", "tomocam_image"]),
        ("tomo", {"theta": "exposure"}, ["theta='exposure'", "is not a field", "primary"]),
        ("two_cams", {}, ["several image fields (cam_a, cam_b)", "projections='primary:FIELD'"]),
        ("two_angles", {}, ["several angle fields (theta_x, angle_y)", "theta='primary:FIELD'"]),
        ("not_an_angle", {}, ["rot_angle has units 'mm'", "theta="]),
        ("dark_or_flat", {}, ["'dark_flat' could hold darks or flats", "darks='dark_flat'"]),
        ("tomo", {"darks": 3}, ["darks=3"]),
    ],
)
def test_bad_mapping_is_refused_and_leaves_no_file(
    export_runs: dict[str, Any],
    dx_runs: dict[str, Any],
    tmp_path: Path,
    key: str,
    options: dict[str, Any],
    words: list[str],
) -> None:
    run = {**export_runs, **dx_runs}[key]
    with pytest.raises(ExportError) as info:
        run.export("dx", tmp_path, **options)
    for word in words:
        assert word in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_the_ambiguities_resolve_with_options(dx_runs: dict[str, Any], tmp_path: Path) -> None:
    run = dx_runs["dark_or_flat"]
    path = _export(run, tmp_path, darks="dark_flat", projections="primary")
    with h5py.File(path, "r") as f:
        _same(f["exchange/data_dark"][()], _read(run, "dark_flat", "pco"))
        assert "data_white" not in f["exchange"]
    path = _export(dx_runs["two_cams"], tmp_path / "b", projections="primary:cam_b")
    with h5py.File(path, "r") as f:
        _same(f["exchange/data"][()], _read(dx_runs["two_cams"], "primary", "cam_b"))


def test_existing_file_is_not_overwritten(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    path = _export(run, tmp_path, template="tomo")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run.export("dx", tmp_path, template="tomo", projections=False)
    assert path.read_bytes() == before
    again = _export(run, tmp_path, template="tomo", overwrite=True, theta=False)
    assert again == path
    with h5py.File(path, "r") as f:
        assert "theta" not in f["exchange"]


def test_run_without_stop_is_closed_incomplete(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    (path,) = without_stop("dx", run, tmp_path).close()
    with h5py.File(path, "r") as f:
        acq = f["process/acquisition"]
        assert bool(acq["complete"][()]) is False
        assert acq["exit_status"].asstr()[()] == "incomplete"
        assert json.loads(acq["stop"][()]) is None
        assert "end_date" not in acq
        _same(f["exchange/data"][()], _read(run, "primary", "tomocam_image"))


def test_live_export_from_the_run_engine(tmp_path: Path) -> None:
    """Frames filled from the detector's HDF5 files while it writes them."""
    cat, RE = engine_catalog(tmp_path / "runs.db")
    export = live("dx", tmp_path / "dx")
    RE.subscribe(export)
    cam = ADHDF5Detector("tomocam", tmp_path / "frames", shape=(5, 7))
    angles = [0.0, 60.0, 120.0, 180.0]
    RE(_rotation([cam], [SynAxis(name="theta")], angles, streams=("dark", "flat")))
    run = cat[-1]
    (path,) = export.files
    with h5py.File(path, "r") as f:
        _same(f["exchange/data"][()], _read(run, "primary", "tomocam_image"))
        _same(f["exchange/data_dark"][()], _read(run, "dark", "tomocam_image"))
        _same(f["exchange/data_white"][()], _read(run, "flat", "tomocam_image"))
        _same(f["exchange/theta"][()], _read(run, "primary", "theta"))
        assert bool(f["process/acquisition/complete"][()]) is True
    cat.close()


def test_compressed_frames(export_runs: dict[str, Any], tmp_path: Path) -> None:
    run = export_runs["tomo"]
    path = _export(run, tmp_path, compression="gzip")
    with h5py.File(path, "r") as f:
        assert f["exchange/data"].compression == "gzip"
        _same(f["exchange/data"][()], _read(run, "primary", "tomocam_image"))
