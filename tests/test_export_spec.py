"""SPEC export, read back by spec2nexus and silx and compared with the catalog's ``read()``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
import silx.io
from bluesky import RunEngine
from bluesky.plans import count, scan
from bluesky.preprocessors import SupplementalData
from ophyd.sim import det, det1, det2, motor, motor1, motor2
from silx.io.specfile import SpecFile
from spec2nexus.spec import SpecDataFile

import runbroker
from runbroker.export import ExportError, exporter, live
from runbroker.export.hints import axes, signals
from runbroker.testing.export import without_stop
from runbroker.testing.runs import changing_stream

RUNS = ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]


def _numbers(ds: Any) -> list[str]:
    return [k for k, v in ds.data_vars.items() if v.ndim == 1 and v.dtype.kind in "biuf"]


def _expected_labels(run: Any) -> list[str]:
    """Axes first, Epoch, other numbers, detectors last."""
    start, desc = run.metadata["start"], run.primary.descriptors[0]
    numbers = _numbers(run.primary.read())
    first = [f for f in axes(start, desc) if f in numbers]
    last = [f for f in signals(start, desc) if f in numbers and f not in first]
    return [*first, "Epoch", *[f for f in numbers if f not in first + last], *last]


def _check_scan(path: Path, number: str, run: Any) -> None:
    """Scan ``number`` of the file holds ``run``'s primary stream, for spec2nexus and silx."""
    ds = run.primary.read()
    start = run.metadata["start"]
    scan = SpecDataFile(str(path)).getScan(number)
    labels = _expected_labels(run)
    assert labels == scan.L
    assert [len(labels)] == scan.N
    assert scan.MD["uid"] == start["uid"]
    assert scan.scanNum == number
    for field in labels:
        if field == "Epoch":
            epoch = np.asarray(scan.data["Epoch"]) + scan.header.epoch
            np.testing.assert_allclose(epoch, ds["time"].values, rtol=0, atol=1e-6)
        else:  # SPEC holds numbers as text: every value, read as a float, is exact
            np.testing.assert_array_equal(
                np.asarray(scan.data[field]), ds[field].values.astype(np.float64), strict=True
            )
    # silx: its HDF5-like view (float32) and its SpecFile reader (float64).
    key = f"{number}.1" if "." not in number else number
    numbers = [label for label in labels if label != "Epoch"]
    with silx.io.open(str(path)) as h5:
        assert list(h5[f"{key}/measurement"]) == labels
        for field in numbers:
            np.testing.assert_array_equal(
                h5[f"{key}/measurement/{field}"][()], ds[field].values.astype(np.float32)
            )
    sf = SpecFile(str(path))
    try:
        found = sf[key]
        assert found.labels == labels
        for field in numbers:
            np.testing.assert_array_equal(found.data_column_by_name(field), ds[field].values)
    finally:
        sf.close()


@pytest.mark.parametrize("key", RUNS)
def test_each_run_is_a_scan_spec2nexus_and_silx_read(export_runs, tmp_path, key):
    run = export_runs[key]
    (path,) = run.export("spec", tmp_path)
    assert path.suffix == ".spec"
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["#F", "#E", "#D", "#C"]
    _check_scan(path, str(run.metadata["start"]["scan_id"]), run)
    scan = SpecDataFile(str(path)).getScan(run.metadata["start"]["scan_id"])
    assert scan.MD["stop.exit_status"] == "success"
    assert scan.MD["stop.uid"] == run.metadata["stop"]["uid"]
    for k, v in run.metadata["start"].items():
        assert scan.MD[k] == (v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))


def test_positions_come_from_the_baseline_first_reading(export_runs, tmp_path):
    run = export_runs["scalar"]
    (path,) = run.export("spec", tmp_path)
    scan = SpecDataFile(str(path)).getScan(1)
    first = run.baseline.read().isel(time=0)
    assert list(scan.positioner) == list(first.data_vars)
    for name, value in scan.positioner.items():
        assert value == float(first[name])
    with silx.io.open(str(path)) as h5:
        assert sorted(h5["1.1/instrument/positioners"]) == sorted(first.data_vars)
    assert "#C streams not in the columns: baseline" in path.read_text()


def test_without_baseline_the_motors_first_values_are_the_positions(export_runs, tmp_path):
    run = export_runs["grid"]
    (path,) = run.export("spec", tmp_path)
    scan = SpecDataFile(str(path)).getScan(run.metadata["start"]["scan_id"])
    first = run.primary.read().isel(time=0)
    assert scan.positioner == {"motor1": float(first["motor1"]), "motor2": float(first["motor2"])}
    assert scan.L[:2] == ["motor1", "motor2"] and scan.L[-1] == "det4"


@pytest.mark.parametrize(
    ("key", "field"), [("inline_image", "inline_cam"), ("file_image", "adet_image")]
)
def test_arrays_are_named_in_a_comment_not_columns(export_runs, tmp_path, key, field):
    (path,) = export_runs[key].export("spec", tmp_path)
    scan = SpecDataFile(str(path)).getScan(export_runs[key].metadata["start"]["scan_id"])
    assert field not in scan.L
    assert any(c.startswith("not columns (arrays or text):") and field in c for c in scan.comments)


def test_other_streams_are_named(export_runs, tmp_path):
    (path,) = export_runs["tomo"].export("spec", tmp_path)
    assert "#C streams not in the columns: dark, flat\n" in path.read_text()


def test_a_session_file_holds_every_run_as_a_scan(export_runs, tmp_path):
    keys = ["scalar", "grid", "inline_image", "two_descriptors"]
    for key in keys:
        assert export_runs[key].export("spec", tmp_path, file="session.spec") == [
            tmp_path / "session.spec"
        ]
    path = tmp_path / "session.spec"
    assert [p.name for p in tmp_path.iterdir()] == ["session.spec"]
    numbers = [str(export_runs[k].metadata["start"]["scan_id"]) for k in keys]
    assert SpecDataFile(str(path)).getScanNumbers() == numbers
    for key, number in zip(keys, numbers, strict=True):
        _check_scan(path, number, export_runs[key])
    # Positioners change (baseline motors, grid motors, none for the last two): SPEC starts a
    # new header each time they do.
    spec = SpecDataFile(str(path))
    assert list(spec.getScan(numbers[0]).positioner) == list(export_runs["scalar"].baseline.read())
    assert list(spec.getScan(numbers[1]).positioner) == ["motor1", "motor2"]
    text = path.read_text()
    assert len(spec.headers) == text.count("#E ") == text.count("#F session.spec") == 3


def test_a_session_file_is_refused_when_it_is_not_spec(export_runs, tmp_path):
    notes = tmp_path / "session.spec"
    notes.write_text("my notes\n")
    with pytest.raises(ExportError, match="not a SPEC data file"):
        export_runs["grid"].export("spec", tmp_path, file="session.spec")
    assert notes.read_text() == "my notes\n"


def test_a_run_is_appended_to_a_session_file_once(export_runs, tmp_path):
    run = export_runs["grid"]
    run.export("spec", tmp_path, file="session.spec")
    before = (tmp_path / "session.spec").read_text()
    with pytest.raises(ExportError, match=r"already holds run .* \(scan 2\)"):
        run.export("spec", tmp_path, file="session.spec")
    assert (tmp_path / "session.spec").read_text() == before


def test_two_runs_cannot_write_one_session_file_at_once(export_runs, tmp_path):
    first, second = export_runs["grid"], export_runs["scalar"]
    writing = exporter("spec", tmp_path, file="session.spec")
    for name, doc in first.documents(arrays=True):
        if name == "stop":
            break
        writing(name, doc)
    other = exporter("spec", tmp_path, file="session.spec")
    with pytest.raises(ExportError, match=f"being written by run {first.metadata['start']['uid']}"):
        other("start", second.metadata["start"])
    writing.close()
    second.export("spec", tmp_path, file="session.spec")  # free again once the first is closed
    assert sorted(SpecDataFile(str(tmp_path / "session.spec")).getScanNumbers()) == ["1", "2"]


def test_the_stream_option_chooses_the_rows(export_runs, tmp_path):
    run = export_runs["tomo"]
    (path,) = run.export("spec", tmp_path, stream="flat")
    scan = SpecDataFile(str(path)).getScan(run.metadata["start"]["scan_id"])
    flat = run["flat"].read()
    assert scan.L == ["Epoch", "tomocam_stats_total"]
    assert scan.data["tomocam_stats_total"] == flat["tomocam_stats_total"].values.tolist()
    assert "#C streams not in the columns: dark, primary\n" in path.read_text()


def test_an_existing_file_is_never_replaced_unless_asked(export_runs, tmp_path):
    run = export_runs["grid"]
    (path,) = run.export("spec", tmp_path, template="{scan_id}")
    path.write_text("mine\n")
    with pytest.raises(FileExistsError, match="already exists"):
        run.export("spec", tmp_path, template="{scan_id}")
    assert path.read_text() == "mine\n"
    run.export("spec", tmp_path, template="{scan_id}", overwrite=True)
    _check_scan(path, "2", run)


def test_a_run_without_stop_is_finished_on_close_and_marked_incomplete(export_runs, tmp_path):
    run = export_runs["scalar"]
    exp = without_stop("spec", run, tmp_path)
    (path,) = exp.close()
    scan = SpecDataFile(str(path)).getScan(1)
    assert any("INCOMPLETE" in c and run.metadata["start"]["uid"] in c for c in scan.comments)
    assert not any(k.startswith("stop.") for k in scan.MD)
    _check_scan(path, "1", run)


def _handmade(descriptors: list[dict[str, dict]], n: int = 3) -> list[tuple]:
    """A stream whose data_keys change between descriptors (integers count, numbers by 1/3)."""
    return changing_stream(
        descriptors, lambda k, dk, seq: seq if dk["dtype"] == "integer" else seq / 3, n
    )


def _number(dtype: str = "number") -> dict:
    return {"source": "sim", "dtype": dtype, "shape": []}


def test_a_run_whose_frames_are_announced_late_exports(tmp_path):
    """A stream detector announcing its frames late, and a baseline: the SPEC exporter's own
    rows waiting for the baseline must not meet the pages held back for their frames."""
    from runbroker.testing.detectors import late_frames_scan

    cat = runbroker.open(tmp_path / "runs.db")
    cat.ingest(late_frames_scan(tmp_path))
    run = cat[-1]
    names = [name for name, _ in run.store.documents(run.uid)]
    assert names.index("stream_datum") > names.index("event_page")  # late, as stored
    (path,) = run.export("spec", tmp_path / "out")
    _check_scan(path, "1", run)


def test_labels_are_unique_and_never_hold_two_spaces(tmp_path):
    keys = {"x": _number(), "I0  gain": _number(), "I0 gain": _number(), "Epoch": _number()}
    cat = runbroker.temp()
    cat.ingest(_handmade([keys]))
    (path,) = cat[-1].export("spec", tmp_path)
    (line,) = [line for line in path.read_text().splitlines() if line.startswith("#L ")]
    labels = re.split("  +", line[3:])
    assert labels == ["x", "Epoch", "I0 gain", "I0 gain_2", "Epoch_2"]
    scan = SpecDataFile(str(path)).getScan(42)
    assert labels == scan.L
    ds = cat[-1].primary.read()
    assert scan.data["Epoch_2"] == ds["Epoch"].values.tolist()
    assert scan.data["I0 gain_2"] == ds["I0 gain"].values.tolist()


def test_a_later_descriptor_with_other_fields_is_noted_and_gaps_are_nan(tmp_path):
    first = {"x": _number(), "I0": _number("integer"), "gone": _number()}
    second = {"x": _number(), "I0": _number("integer"), "new": _number()}
    cat = runbroker.temp()
    cat.ingest(_handmade([first, second]))
    run = cat[-1]
    (path,) = run.export("spec", tmp_path)
    scan = SpecDataFile(str(path)).getScan(42)
    ds = run.primary.read()
    assert scan.L == ["x", "Epoch", "I0", "gone"]
    np.testing.assert_array_equal(scan.data["gone"], ds["gone"].values)  # NaN where missing
    assert np.isnan(scan.data["gone"][3:]).all()
    assert scan.data["I0"] == ds["I0"].values.tolist()
    assert any("adds new, not columns" in c for c in scan.comments)


def _live_plan(points: int, check: Any) -> Any:
    """A step scan that calls ``check(k)`` after its k-th event, mid-run."""
    yield from bps.open_run(md={"plan_name": "live_check", "motors": ["motor"]})
    for k in range(1, points + 1):
        yield from bps.mv(motor, k / 4)
        yield from bps.trigger_and_read([det, motor])
        yield from bps.null()
        check(k)
    yield from bps.close_run()


def test_live_rows_are_in_the_file_while_the_scan_runs(tmp_path):
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    export = live("spec", tmp_path, strict=True)
    RE.subscribe(export)
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    seen: list[int] = []

    def check(k: int) -> None:
        (path,) = tmp_path.glob("*.spec")
        spec = SpecDataFile(str(path))
        scan = spec.getScan(spec.getLastScanNumber())
        assert scan.data["motor"] == [i / 4 for i in range(1, k + 1)]
        assert sorted(scan.positioner) == ["motor1", "motor1_setpoint", "motor2", "motor2_setpoint"]
        assert "stop.exit_status" not in scan.MD
        with silx.io.open(str(path)) as h5:
            assert len(h5[f"{scan.scanNum}.1/measurement/det"]) == k
        seen.append(k)

    RE(_live_plan(5, check))
    assert seen == [1, 2, 3, 4, 5]
    (path,) = export.files
    _check_scan(path, str(cat[-1].metadata["start"]["scan_id"]), cat[-1])


def test_live_session_file_writes_the_header_once(tmp_path):
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE.subscribe(live("spec", tmp_path, file="session.spec", strict=True))
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    RE(scan([det1, det2], motor, -1, 1, 5))
    RE(count([det1], 3))
    RE(scan([det2], motor, 0, 2, 4))
    path = tmp_path / "session.spec"
    text = path.read_text()
    assert text.count("#F ") == 1 and text.count("#O0 ") == 1
    spec = SpecDataFile(str(path))
    assert spec.getScanNumbers() == ["1", "2", "3"]
    for number in (1, 2, 3):
        run = cat[number]
        _check_scan(path, str(number), run)
        assert spec.getScan(str(number)).positioner == {
            k: float(v[0]) for k, v in run.baseline.read().data_vars.items()
        }
