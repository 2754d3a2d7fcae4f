"""NeXus export, proved by readers we did not write: punx validates, silx plots, h5py reads.

Every value read back from a file is compared with the catalog's ``read()``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import silx.io
import silx.io.nxdata
from event_model import compose_run

import runbroker
from runbroker.export import ExportError, exporter
from runbroker.export.nexus import nexus_name
from runbroker.testing.export import without_stop

PUNX = Path(sys.executable).with_name("punx")
EXPORTED = ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]
_ROW = re.compile(r"^(\S+)\s+(OK|NOTE|WARN|ERROR|TODO|UNUSED|COMMENT|OPTIONAL)\s+(\S+)\s+(.*?)\s*$")
_SUMMARY = re.compile(r"^(OK|NOTE|WARN|ERROR|TODO|UNUSED|COMMENT|OPTIONAL)\s+(\d+)\s+\D")


# -- helpers ----------------------------------------------------------------------------------


def punx(paths: Iterable[Path]) -> dict[Path, dict[str, Any]]:
    """``punx validate`` of each file (in parallel): summary counts and the findings rows."""
    procs = {
        p: subprocess.Popen(
            [str(PUNX), "validate", "--report", "ERROR,WARN,NOTE", str(p)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in paths
    }
    out = {}
    for p, proc in procs.items():
        text, _ = proc.communicate(timeout=120)
        counts = {m[1]: int(m[2]) for m in map(_SUMMARY.match, text.splitlines()) if m}
        rows = [m.groups() for m in map(_ROW.match, text.splitlines()) if m]
        assert "ERROR" in counts, f"punx printed no summary for {p}:\n{text}"
        out[p] = {"counts": counts, "rows": rows, "text": text}
    return out


def assert_nexus_valid(
    report: dict[str, Any], notes: tuple[str, ...] = ("relaxed pattern",)
) -> None:
    """No ERROR; the only WARN is punx's blanket one for NXcollection contents (the issue asks
    for streams and configuration in NXcollections); NOTE only for upper-case names."""
    counts, rows = report["counts"], report["rows"]
    assert counts["ERROR"] == 0, report["text"]
    warns = [r for r in rows if r[1] == "WARN"]
    assert len(warns) == counts["WARN"], report["text"]
    assert all(r[3] == "NXcollection contains non-NeXus content" for r in warns), warns
    collections = ("/entry/streams", "/entry/configuration", "/entry/documents")
    assert all(r[0].startswith(collections) for r in warns), warns
    found = [r for r in rows if r[1] == "NOTE"]
    assert len(found) == counts["NOTE"]
    assert all(any(n in f"{r[2]} {r[3]}" for n in notes) for r in found), found


def only_file(files: list[Path]) -> Path:
    assert len(files) == 1 and files[0].suffix == ".nxs", files
    return files[0]


def text(ds: h5py.Dataset) -> Any:
    value = ds.asstr()[()]
    return value.tolist() if isinstance(value, np.ndarray) else value


def assert_column(ds: h5py.Dataset, expected: np.ndarray) -> None:
    if expected.dtype.kind in "UO":
        np.testing.assert_array_equal(ds.asstr()[()].astype(str), expected.astype(str))
    else:
        assert ds.dtype == expected.dtype, ds.name
        np.testing.assert_array_equal(ds[()], expected, err_msg=ds.name)


def assert_streams_equal(path: Path, run: Any) -> None:
    """Every field, timestamp, time and seq_num of every stream equals the catalog's."""
    with h5py.File(path, "r") as f:
        streams = f["entry/streams"]
        assert sorted(streams) == sorted(nexus_name(s) for s in run)
        for name in run:
            group = streams[nexus_name(name)]
            ds = run[name].read()
            stamps = run[name].timestamps()
            assert group.attrs["stream"] == name
            assert_column(group["time"], ds["time"].values)
            assert_column(group["seq_num"], ds["seq_num"].values)
            for field in ds.data_vars:
                assert_column(group[nexus_name(field)], ds[field].values)
                assert_column(group["timestamps"][nexus_name(field)], stamps[field].values)


def assert_configuration_equal(path: Path, run: Any) -> None:
    """Configuration rows (one per descriptor) expand to the catalog's per-event config."""
    with h5py.File(path, "r") as f:
        for name in run:
            stream = run[name]
            config = stream.config
            if not any(len(c.data_vars) for c in config.values()):
                continue
            group = f["entry/configuration"][nexus_name(name)]
            uids = text(group["descriptor_uid"])
            assert uids == [d["uid"] for d in stream.descriptors]
            events = f["entry/streams"][nexus_name(name)]
            which = events["descriptor_index"][()] if len(uids) > 1 else np.zeros(len(stream), int)
            for device, values in config.items():
                for key in values.data_vars:
                    ds = group[nexus_name(device)][nexus_name(key)]
                    stored = ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]
                    np.testing.assert_array_equal(stored[which], values[key].values)


# -- runs exported once -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(export_runs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each fixture run exported once, and punx's verdict on each file."""
    folder = tmp_path_factory.mktemp("nexus")
    paths = {key: only_file(export_runs[key].export("nexus", folder)) for key in EXPORTED}
    reports = punx(paths.values())
    return {key: (path, reports[path]) for key, path in paths.items()}


@pytest.mark.parametrize("key", EXPORTED)
def test_punx_finds_no_error(exported: dict, key: str) -> None:
    assert_nexus_valid(exported[key][1])


@pytest.mark.parametrize("key", EXPORTED)
def test_values_equal_the_catalog(exported: dict, export_runs: dict, key: str) -> None:
    path, _ = exported[key]
    assert_streams_equal(path, export_runs[key])
    assert_configuration_equal(path, export_runs[key])


@pytest.mark.parametrize("key", EXPORTED)
def test_file_traces_back_to_its_run(exported: dict, export_runs: dict, key: str) -> None:
    path, _ = exported[key]
    run = export_runs[key]
    start, stop = run.metadata["start"], run.metadata["stop"]
    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["default"] == "entry"
        assert f.attrs["file_name"] == path.name
        assert f.attrs["creator"] == "runbroker"
        assert f.attrs["HDF5_Version"] == h5py.version.hdf5_version
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert text(entry["entry_identifier"]) == run.uid
        assert datetime.fromisoformat(text(entry["start_time"])).timestamp() == pytest.approx(
            start["time"], abs=1e-5
        )
        assert datetime.fromisoformat(text(entry["end_time"])).timestamp() == pytest.approx(
            stop["time"], abs=1e-5
        )
        assert text(entry["title"]) == f"scan {start['scan_id']}: {start['plan_name']}"
        docs = entry["documents"]
        assert docs.attrs["NX_class"] == "NXcollection"
        assert json.loads(text(docs["start"])) == json.loads(json.dumps(start))
        assert json.loads(text(docs["stop"])) == json.loads(json.dumps(stop))
        descriptors = json.loads(text(docs["descriptors"]))
        expected = [d["uid"] for s in run for d in run[s].descriptors]
        assert sorted(d["uid"] for d in descriptors) == sorted(expected)
        assert bool(docs["complete"][()]) is True
        assert "notes" not in entry
        assert text(entry["sample/name"]) == start["sample"]
        assert entry["sample"].attrs["NX_class"] == "NXsample"


def test_proposal_is_the_experiment_identifier(exported: dict) -> None:
    with h5py.File(exported["scalar"][0], "r") as f:
        assert text(f["entry/experiment_identifier"]) == "p-1234"
    with h5py.File(exported["grid"][0], "r") as f:
        assert "experiment_identifier" not in f["entry"]


def test_scalar_plot_follows_the_hints(exported: dict, export_runs: dict) -> None:
    path, _ = exported["scalar"]
    ds = export_runs["scalar"].primary.read()
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot is not None and plot.is_valid
        assert plot.group.name == "/entry/data"
        assert plot.signal_dataset_name == "det1"
        assert plot.axes_dataset_names == ["motor"]
        assert plot.auxiliary_signals_dataset_names == ["det2"]
        np.testing.assert_array_equal(plot.signal[()], ds["det1"].values)
        np.testing.assert_array_equal(plot.axes[0][()], ds["motor"].values)
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        assert data.attrs["NX_class"] == "NXdata"
        assert data.attrs["motor_indices"] == 0
        # One copy of each array: the plot, the instrument and the stream share it.
        primary = f["entry/streams/primary"]
        assert data["det1"].id == primary["det1"].id
        assert data["motor"].id == primary["motor"].id
        assert data["det1"].attrs["target"] == "/entry/streams/primary/det1"


def test_instrument_has_positioners_and_detectors(exported: dict, export_runs: dict) -> None:
    path, _ = exported["scalar"]
    ds = export_runs["scalar"].primary.read()
    with h5py.File(path, "r") as f:
        instrument = f["entry/instrument"]
        assert instrument.attrs["NX_class"] == "NXinstrument"
        motor = instrument["motor"]
        assert motor.attrs["NX_class"] == "NXpositioner"
        assert text(motor["name"]) == "motor"
        np.testing.assert_array_equal(motor["value"][()], ds["motor"].values)
        np.testing.assert_array_equal(motor["target_value"][()], ds["motor_setpoint"].values)
        assert motor["value"].id == f["entry/streams/primary/motor"].id
        for det in ("det1", "det2"):
            group = instrument[det]
            assert group.attrs["NX_class"] == "NXdetector"
            assert text(group["local_name"]) == det
            np.testing.assert_array_equal(group["data"][()], ds[det].values)
            assert group["data"].id == f[f"entry/streams/primary/{det}"].id


def test_file_images_are_filled_into_the_detector(exported: dict, export_runs: dict) -> None:
    path, _ = exported["file_image"]
    ds = export_runs["file_image"].primary.read()
    with h5py.File(path, "r") as f:
        adet = f["entry/instrument/adet"]
        assert adet["data"].dtype == np.uint16
        assert adet["data"].shape == (4, 6, 8)
        np.testing.assert_array_equal(adet["data"][()], ds["adet_image"].values)
        np.testing.assert_array_equal(adet["adet_stats_total"][()], ds["adet_stats_total"].values)
        assert adet["data"].id == f["entry/streams/primary/adet_image"].id
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid and plot.signal_dataset_name == "adet_stats_total"
        assert plot.axes_dataset_names == ["motor"]


def test_inline_images_and_a_count_plotted_against_time(exported: dict, export_runs: dict) -> None:
    path, _ = exported["inline_image"]
    ds = export_runs["inline_image"].primary.read()
    with h5py.File(path, "r") as f:
        cam = f["entry/instrument/inline_cam/data"]
        assert cam.dtype == np.uint16 and cam.shape == (3, 4, 5)
        np.testing.assert_array_equal(cam[()], ds["inline_cam"].values)
        data = f["entry/data"]
        assert list(data.attrs["axes"]) == ["time"]
        assert data["time"].id == f["entry/streams/primary/time"].id
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid and plot.signal_dataset_name == "det1"
        np.testing.assert_array_equal(plot.axes[0][()], ds["time"].values)


def test_grid_scan_is_plotted_as_an_image(exported: dict, export_runs: dict) -> None:
    path, _ = exported["grid"]
    ds = export_runs["grid"].primary.read()
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid
        assert plot.signal.shape == (3, 4)
        np.testing.assert_array_equal(plot.signal[()], ds["det4"].values.reshape(3, 4))
        m1, m2 = (a[()] for a in plot.axes)
        np.testing.assert_array_equal(m1, ds["motor1"].values.reshape(3, 4)[:, 0])
        np.testing.assert_array_equal(m2, ds["motor2"].values.reshape(3, 4)[0, :])
    with h5py.File(path, "r") as f:
        data = f["entry/data"]
        assert list(data.attrs["axes"]) == ["motor1", "motor2"]
        assert (data.attrs["motor1_indices"], data.attrs["motor2_indices"]) == (0, 1)
        # The gridded plot holds copies (a link cannot reshape), so they claim no link.
        assert "target" not in data["det4"].attrs and "target" not in data["motor1"].attrs


def test_grid_option_false_keeps_one_dimension(export_runs: dict, tmp_path: Path) -> None:
    path = only_file(export_runs["grid"].export("nexus", tmp_path, grid=False))
    ds = export_runs["grid"].primary.read()
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid and plot.signal.shape == (12,)
        assert plot.axes_dataset_names == ["motor1"]
        np.testing.assert_array_equal(plot.signal[()], ds["det4"].values)
    with h5py.File(path, "r") as f:
        assert f["entry/data/motor2"].attrs.get("target") == "/entry/streams/primary/motor2"
        assert f["entry/data"].attrs["motor2_indices"] == 0


def test_two_descriptors_keep_both_configurations(exported: dict, export_runs: dict) -> None:
    path, _ = exported["two_descriptors"]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry/configuration/primary/I0/I0_gain"][()], [1, 10])
        np.testing.assert_array_equal(
            f["entry/streams/primary/descriptor_index"][()], [0, 0, 0, 1, 1, 1]
        )
        np.testing.assert_array_equal(f["entry/data/I0"][()], [101, 102, 103, 1004, 1005, 1006])
    with silx.io.open(str(path)) as f:
        assert silx.io.nxdata.get_default(f).is_valid


# -- runs made for one test -------------------------------------------------------------------


def _documents(
    keys: dict[str, dict],
    pages: list[dict[str, Any]],
    *,
    md: dict[str, Any] | None = None,
    hints: dict | None = None,
    stop: bool = True,
) -> list[tuple[str, dict]]:
    """A run of one ``primary`` descriptor; each page gives ``data`` and ``seq_num``."""
    bundle = compose_run(metadata={"scan_id": 7, "plan_name": "made", **(md or {})})
    desc = bundle.compose_descriptor(name="primary", data_keys=keys, hints=hints or {})
    docs: list[tuple[str, dict]] = [
        ("start", bundle.start_doc),
        ("descriptor", desc.descriptor_doc),
    ]
    for page in pages:
        seq = page["seq_num"]
        t = [1000.0 + s for s in seq]
        docs.append(
            (
                "event_page",
                desc.compose_event_page(
                    data=page["data"],
                    timestamps={k: t for k in page["data"]},
                    seq_num=seq,
                    time=t,
                    validate=False,
                ),
            )
        )
    if stop:
        docs.append(("stop", bundle.compose_stop()))
    return docs


def _export_documents(docs: list[tuple[str, dict]], folder: Path, **options: Any) -> Path:
    exp = exporter("nexus", folder, **options)
    for name, doc in docs:
        exp(name, doc)
    return only_file(exp.close())


def test_awkward_names_strings_and_order(tmp_path: Path) -> None:
    """Invalid NeXus names are mended (the field's name kept in @long_name), text and
    booleans survive, and events that arrived out of order are stored in read() order."""
    num = {"dtype": "number", "shape": [], "source": "x"}
    keys = {
        "det-1:total": {**num, "units": "counts"},
        "2theta": {**num, "units": "deg"},
        "label": {"dtype": "string", "shape": [], "source": "x"},
        "ok": {"dtype": "boolean", "shape": [], "source": "x"},
    }

    def page(seq: list[int]) -> dict:
        data = {
            "det-1:total": [10.0 * s for s in seq],
            "2theta": [0.5 * s for s in seq],
            "label": [f"point é{s}" for s in seq],
            "ok": [s % 2 == 0 for s in seq],
        }
        return {"seq_num": seq, "data": data}

    docs = _documents(
        keys,
        [page([3, 1]), page([2]), page([4, 5])],
        md={"motors": ["2theta"], "sample": {"name": "Cu", "temperature": 300, "x": {"a": 1}}},
    )
    cat = runbroker.temp()
    cat.ingest(docs)
    run = cat[-1]
    path = _export_documents(docs, tmp_path)
    assert_streams_equal(path, run)
    with h5py.File(path, "r") as f:
        primary = f["entry/streams/primary"]
        assert "det_1_total" in primary and "_2theta" in primary
        assert primary["det_1_total"].attrs["long_name"] == "det-1:total"
        assert primary["det_1_total"].attrs["units"] == "counts"
        assert primary["ok"].dtype == np.bool_
        np.testing.assert_array_equal(primary["seq_num"][()], [1, 2, 3, 4, 5])
        sample = f["entry/sample"]
        assert text(sample["name"]) == "Cu"
        assert sample["temperature"][()] == 300
        assert json.loads(text(sample["x"])) == {"a": 1}
        assert f["entry/instrument/_2theta/value"].id == primary["_2theta"].id
        assert f["entry/data"].attrs["signal"] == "det_1_total"
    assert_nexus_valid(punx([path])[path])


@pytest.mark.parametrize("buffer_bytes", [0, 2**20])
def test_a_field_some_descriptors_lack_is_missing_there(tmp_path: Path, buffer_bytes: int) -> None:
    bundle = compose_run(metadata={"scan_id": 8, "plan_name": "made"})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    seq = iter(range(1, 100))
    for keys in (["x"], ["x", "extra"]):
        data_keys = {k: {"dtype": "integer", "shape": [], "source": "x"} for k in keys}
        desc = bundle.compose_descriptor(name="primary", data_keys=data_keys, validate=False)
        docs.append(("descriptor", desc.descriptor_doc))
        for _ in range(2):
            s = next(seq)
            values = {k: 10 * s for k in keys}
            docs.append(("event", desc.compose_event(data=values, timestamps=values, seq_num=s)))
    docs.append(("stop", bundle.compose_stop()))
    cat = runbroker.temp()
    cat.ingest(docs)
    path = _export_documents(docs, tmp_path, buffer_bytes=buffer_bytes)
    assert_streams_equal(path, cat[-1])
    with h5py.File(path, "r") as f:
        extra = f["entry/streams/primary/extra"][()]
    np.testing.assert_array_equal(extra, [np.nan, np.nan, 30, 40])


@pytest.mark.parametrize("declared", [False, True])
def test_runs_without_events(tmp_path: Path, declared: bool) -> None:
    """A stream declared but empty still has its (empty) datasets and plot; a run with no
    stream at all has no plot, which punx notes."""
    keys = {
        "d": {"dtype": "number", "shape": [], "source": "x"},
        "img": {"dtype": "array", "shape": [2, 3], "dtype_numpy": "<u2", "source": "x"},
    }
    docs = _documents(keys, [], md={"detectors": ["d"]})
    if not declared:
        docs = [d for d in docs if d[0] != "descriptor"]
    path = _export_documents(docs, tmp_path)
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert text(entry["end_time"])
        if declared:
            assert entry["streams/primary/d"].shape == (0,)
            assert entry["streams/primary/img"].shape == (0, 2, 3)
            assert entry["streams/primary/img"].dtype == np.uint16
            assert entry.attrs["default"] == "data"
        else:
            assert "streams" not in entry and "data" not in entry
            assert "default" not in entry.attrs
    notes = ("relaxed pattern",) if declared else ("no default plot",)
    assert_nexus_valid(punx([path])[path], notes)


def test_image_only_run_plots_the_frames(tmp_path: Path) -> None:
    keys = {"cam": {"dtype": "array", "shape": [4, 5], "dtype_numpy": "<u2", "source": "x"}}
    frames = np.arange(3 * 20, dtype=np.uint16).reshape(3, 4, 5)
    docs = _documents(keys, [{"seq_num": [1, 2, 3], "data": {"cam": frames.tolist()}}])
    path = _export_documents(docs, tmp_path, compression="gzip")
    with h5py.File(path, "r") as f:
        cam = f["entry/data/cam"]
        assert cam.attrs["interpretation"] == "image"
        assert cam.compression == "gzip" and cam.dtype == np.uint16
        np.testing.assert_array_equal(cam[()], frames)
        assert "axes" not in f["entry/data"].attrs
    with silx.io.open(str(path)) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid and plot.interpretation == "image"
    assert_nexus_valid(punx([path])[path])


def test_buffered_pieces_equal_one_piece(tmp_path: Path) -> None:
    """With no buffer each page is appended to growing datasets; the file is the same."""
    keys = {"x": {"dtype": "number", "shape": [], "source": "x"}}
    pages = [{"seq_num": [s, s + 1], "data": {"x": [s, s + 1.5]}} for s in range(1, 20, 2)]
    docs = _documents(keys, pages, md={"detectors": ["x"]})
    whole = _export_documents(docs, tmp_path / "whole")
    pieces = _export_documents(docs, tmp_path / "pieces", buffer_bytes=0)
    with h5py.File(whole, "r") as a, h5py.File(pieces, "r") as b:
        for name in ("x", "time", "seq_num", "timestamps/x"):
            one, grown = a["entry/streams/primary"][name], b["entry/streams/primary"][name]
            assert grown.maxshape == (None,) and one.maxshape == one.shape
            np.testing.assert_array_equal(grown[()], one[()])
            assert grown.dtype == one.dtype
        # Timestamps equal to the event times are stored once, when written whole.
        whole_primary = a["entry/streams/primary"]
        assert whole_primary["timestamps/x"].id == whole_primary["time"].id
        assert b["entry/streams/primary/timestamps/x"].id != b["entry/streams/primary/time"].id


def test_a_field_changing_shape_mid_stream_is_refused_by_name(tmp_path: Path) -> None:
    keys = {"spectrum": {"dtype": "array", "shape": [None], "source": "x"}}
    pages = [
        {"seq_num": [1], "data": {"spectrum": [[1.0, 2.0]]}},
        {"seq_num": [2], "data": {"spectrum": [[1.0, 2.0, 3.0]]}},
    ]
    exp = exporter("nexus", tmp_path, buffer_bytes=0)
    docs = _documents(keys, pages)
    with pytest.raises(ExportError, match=r"/entry/streams/primary/spectrum changed from"):
        for name, doc in docs:
            exp(name, doc)


def test_incomplete_run_is_finished_on_close_and_marked(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["scalar"]
    exp = without_stop("nexus", run, tmp_path)
    path = only_file(exp.close())
    assert exp.close() == [path]  # closing twice is harmless
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert "end_time" not in entry and "duration" not in entry
        assert entry["notes"].attrs["NX_class"] == "NXnote"
        assert text(entry["notes/description"]).startswith("INCOMPLETE")
        assert bool(entry["documents/complete"][()]) is False
        assert "stop" not in entry["documents"]
    assert_streams_equal(path, run)
    assert_nexus_valid(punx([path])[path])
    with silx.io.open(str(path)) as f:
        assert silx.io.nxdata.get_default(f).is_valid


def test_never_overwrites_unless_asked(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["two_descriptors"]
    path = only_file(run.export("nexus", tmp_path))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        run.export("nexus", tmp_path)
    assert path.read_bytes() == before
    assert only_file(run.export("nexus", tmp_path, overwrite=True)) == path
    assert_streams_equal(path, run)


# -- live, from a RunEngine -------------------------------------------------------------------


def test_live_export_from_a_run_engine(tmp_path: Path) -> None:
    from bluesky import RunEngine
    from bluesky.plans import grid_scan, scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import det1, det2, det4, motor, motor1, motor2

    from runbroker.testing.detectors import ADHDF5Detector, StreamHDF5Detector

    cat = runbroker.open(tmp_path / "runs.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    # No buffer: every event is written as it comes, into datasets that grow.
    export = runbroker.export.live("nexus", tmp_path / "out", buffer_bytes=0)
    RE.subscribe(export)
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    adet = ADHDF5Detector("adet", tmp_path / "detector", shape=(3, 4))
    sdet = StreamHDF5Detector("sdet", tmp_path / "stream", shape=(2, 5))
    plan = scan([det1, det2, adet, sdet], motor, -1, 1, 4)
    RE(plan, sample={"name": "Cu", "temperature": 10})
    RE.preprocessors.clear()
    RE(grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4, snake_axes=True))
    files = export.close()
    assert len(files) == 2 and export.running == []
    scan_run, grid_run = cat[-2], cat[-1]
    for path, run in zip(files, (scan_run, grid_run), strict=True):
        assert_streams_equal(path, run)
        assert_configuration_equal(path, run)
    with h5py.File(files[0], "r") as f:
        primary = scan_run.primary.read()
        for det in ("adet", "sdet"):
            image = f[f"entry/instrument/{det}/data"]
            assert image.maxshape[0] is None  # written as the events came
            np.testing.assert_array_equal(image[()], primary[f"{det}_image"].values)
        assert f["entry/sample/temperature"][()] == 10
    # A snaking grid: every cell of the image holds the reading taken at its motor positions.
    ds = grid_run.primary.read()
    with silx.io.open(str(files[1])) as f:
        plot = silx.io.nxdata.get_default(f)
        assert plot.is_valid and plot.signal.shape == (3, 4)
        m1, m2 = (a[()] for a in plot.axes)
        image = plot.signal[()]
    assert not np.array_equal(ds["motor2"].values[4:8], ds["motor2"].values[:4])  # it snaked
    for e in range(12):
        i = int(np.flatnonzero(m1 == ds["motor1"].values[e])[0])
        j = int(np.flatnonzero(m2 == ds["motor2"].values[e])[0])
        assert image[i, j] == ds["det4"].values[e]
    reports = punx(files)
    for path in files:
        assert_nexus_valid(reports[path])


def test_failed_run_says_so(tmp_path: Path) -> None:
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd.sim import det

    def failing():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det])
        raise RuntimeError("beam lost")

    RE = RunEngine({}, call_returns_result=False)
    export = runbroker.export.live("nexus", tmp_path)
    RE.subscribe(export)
    with pytest.raises(RuntimeError, match="beam lost"):
        RE(failing())
    [path] = export.files
    with h5py.File(path, "r") as f:
        assert "end_time" in f["entry"]
        assert "exit_status 'fail'" in text(f["entry/notes/description"])
        assert "beam lost" in text(f["entry/notes/description"])
        assert bool(f["entry/documents/complete"][()]) is True
