"""CSV export, read back by ``pandas.read_csv`` and compared with the catalog's ``read()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pandas as pd
import pytest
from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData, stage_wrapper
from ophyd.sim import det, motor, motor1, motor2

import runbroker
from runbroker.export import ExportError, exporter, live
from runbroker.export.csv import STATISTICS, column_text
from runbroker.testing.detectors import StreamHDF5Detector
from runbroker.testing.export import without_stop
from runbroker.testing.runs import changing_stream

RUNS = ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]


def _files(files: list[Path]) -> tuple[dict[str, Path], Path]:
    """The CSV file of each stream (by the name's ``_<stream>`` ending) and the sidecar."""
    sidecars = [p for p in files if p.name.endswith(".metadata.json")]
    assert len(sidecars) == 1, files
    stem = sidecars[0].name[: -len(".metadata.json")]
    tables = {p.stem[len(stem) + 1 :]: p for p in files if p.suffix == ".csv"}
    assert len(tables) + 1 == len(files), files
    return tables, sidecars[0]


def _same(column: pd.Series, values: np.ndarray) -> None:
    """Equal values (NaN where NaN), and the same dtype."""
    assert column.dtype == values.dtype, (column.name, column.dtype, values.dtype)
    np.testing.assert_array_equal(column.to_numpy(), values, strict=True)


def _scalars(ds: Any) -> list[str]:
    return [k for k, v in ds.data_vars.items() if v.ndim == 1]


@pytest.mark.parametrize("key", RUNS)
def test_every_stream_reads_back_as_read_gives_it(export_runs, tmp_path, key):
    run = export_runs[key]
    tables, sidecar = _files(run.export("csv", tmp_path))
    assert sorted(tables) == sorted(run)
    record = json.loads(sidecar.read_text())
    assert record["uid"] == run.metadata["start"]["uid"]
    assert record["complete"] is True
    assert record["start"] == json.loads(json.dumps(run.metadata["start"]))
    assert record["stop"] == json.loads(json.dumps(run.metadata["stop"]))
    for stream, path in tables.items():
        ds = run[stream].read()
        table = pd.read_csv(path)
        fields = _scalars(ds)
        assert list(table.columns) == ["time", "seq_num", *fields]
        _same(table["time"], ds["time"].values)
        _same(table["seq_num"], ds["seq_num"].values)
        for field in fields:
            _same(table[field], ds[field].values)
        info = record["csv"]["streams"][stream]
        assert info["file"] == path.name
        assert info["rows"] == len(table) == ds.sizes["time"]
        assert info["arrays_skipped"] == [k for k in ds.data_vars if k not in fields]


def test_image_runs_skip_arrays_by_default_and_say_so(export_runs, tmp_path):
    tables, sidecar = _files(export_runs["file_image"].export("csv", tmp_path))
    assert "adet_image" not in pd.read_csv(tables["primary"]).columns
    record = json.loads(sidecar.read_text())
    assert record["csv"]["arrays"] == "skip"
    assert record["csv"]["streams"]["primary"]["arrays_skipped"] == ["adet_image"]


@pytest.mark.parametrize(
    ("key", "field"), [("inline_image", "inline_cam"), ("file_image", "adet_image")]
)
def test_summary_gives_per_event_statistics_of_the_pixels(export_runs, tmp_path, key, field):
    run = export_runs[key]
    tables, _ = _files(run.export("csv", tmp_path, arrays="summary"))
    table = pd.read_csv(tables["primary"])
    images = run.primary.read()[field].values
    flat = images.reshape(len(images), -1)
    assert [c for c in table.columns if c.startswith(f"{field}.")] == [
        f"{field}.{s}" for s in STATISTICS
    ]
    assert table[f"{field}.shape"].tolist() == ["x".join(map(str, images.shape[1:]))] * len(flat)
    _same(table[f"{field}.min"], flat.min(axis=1).astype(np.int64))
    _same(table[f"{field}.max"], flat.max(axis=1).astype(np.int64))
    _same(table[f"{field}.mean"], flat.mean(axis=1, dtype=np.float64))
    _same(table[f"{field}.sum"], flat.sum(axis=1).astype(np.int64))
    assert flat.max() > 0  # the pixels were really read, not references


def test_refuse_names_the_field_and_the_stream(export_runs, tmp_path):
    with pytest.raises(ExportError, match=r"'inline_cam' of stream 'primary'.*arrays="):
        export_runs["inline_image"].export("csv", tmp_path, arrays="refuse")
    assert not list(tmp_path.glob("*.csv"))
    # Runs without arrays are not refused.
    assert export_runs["grid"].export("csv", tmp_path / "grid", arrays="refuse")


def test_an_unknown_array_policy_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ExportError, match="skip, refuse, summary"):
        exporter("csv", tmp_path, arrays="drop")


def test_an_existing_file_is_never_replaced_unless_asked(export_runs, tmp_path):
    run = export_runs["scalar"]
    files = run.export("csv", tmp_path, template="{scan_id}")
    before = {p: p.read_bytes() for p in files}
    (tmp_path / "1_primary.csv").write_text("mine\n")
    with pytest.raises(FileExistsError, match="already exists"):
        run.export("csv", tmp_path, template="{scan_id}")
    assert (tmp_path / "1_primary.csv").read_text() == "mine\n"
    again = run.export("csv", tmp_path, template="{scan_id}", overwrite=True)
    assert sorted(again) == sorted(before)
    assert {p: p.read_bytes() for p in again} == before


def _documents(descriptors: list[dict[str, dict]], values: Any, n: int = 3) -> list[tuple]:
    """A stream whose data_keys change between descriptors; values from ``values(field, seq)``."""
    return changing_stream(descriptors, lambda k, dk, seq: values(k, seq), n)


def _number(dtype: str = "number") -> dict:
    return {"source": "sim", "dtype": dtype, "shape": []}


def _export(docs: list[tuple], directory: Path, **options: Any) -> tuple[list[Path], Any]:
    """Ingest ``docs`` into a catalog and export the run back from it."""
    cat = runbroker.temp()
    cat.ingest(docs)
    return cat[-1].export("csv", directory, **options), cat[-1]


def test_a_later_descriptor_adding_fields_widens_the_file(tmp_path):
    first = {"x": _number(), "I0": _number("integer")}
    second = {"x": _number(), "extra": _number(), "I0": _number("integer")}
    docs = _documents([first, second], lambda k, s: s if k == "I0" else s * 1.5)
    files, run = _export(docs, tmp_path)
    tables, _ = _files(files)
    table = pd.read_csv(tables["primary"])
    ds = run.primary.read()
    assert list(table.columns) == ["time", "seq_num", "x", "I0", "extra"]
    for field in ("time", "seq_num", "x", "I0", "extra"):
        _same(table[field], ds[field].values)
    assert table["extra"].isna().tolist() == [True] * 3 + [False] * 3


def test_floats_text_and_booleans_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(5)
    extremes = [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, np.nan, np.inf, -np.inf]
    floats = np.concatenate([extremes, rng.random(200) * 10.0 ** rng.integers(-300, 300, 200)])
    texts = ["plain", "a,b", 'say "hi"', " padded ", "line\nbreak", "x"]
    keys = {"f": _number(), "s": {"source": "sim", "dtype": "string", "shape": []}}
    keys["b"] = _number("boolean")
    docs = _documents(
        [keys],
        lambda k, s: {"f": float(floats[s - 1]), "s": texts[s % len(texts)], "b": s % 2 == 0}[k],
        n=len(floats),
    )
    files, run = _export(docs, tmp_path)
    table = pd.read_csv(_files(files)[0]["primary"], keep_default_na=False, na_values=["nan"])
    ds = run.primary.read()
    _same(table["f"], ds["f"].values)
    _same(table["b"], ds["b"].values)
    assert table["s"].tolist() == ds["s"].values.tolist()


def test_column_text_refuses_arrays_in_a_scalar_column():
    with pytest.raises(ValueError, match="shape"):
        column_text(np.zeros((2, 3)))


def test_a_run_without_stop_is_finished_on_close_and_marked_incomplete(export_runs, tmp_path):
    run = export_runs["scalar"]
    exp = without_stop("csv", run, tmp_path)
    tables, sidecar = _files(exp.close())
    record = json.loads(sidecar.read_text())
    assert record["complete"] is False
    assert record["stop"] is None
    _same(pd.read_csv(tables["primary"])["det1"], run.primary.read()["det1"].values)


def _live_plan(detectors: list, points: int, check: Any) -> Any:
    """A step scan that calls ``check(k)`` after its k-th event, mid-run."""
    yield from bps.open_run(md={"plan_name": "live_check", "motors": ["motor"]})
    for k in range(1, points + 1):
        yield from bps.mv(motor, k / 2)
        yield from bps.trigger_and_read([*detectors, motor])
        yield from bps.null()
        check(k)
    yield from bps.close_run()


def test_live_rows_are_in_the_file_while_the_scan_runs(tmp_path):
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    export = live("csv", tmp_path / "out", strict=True)
    RE.subscribe(export)
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    seen: list[int] = []

    def check(k: int) -> None:
        (path,) = (tmp_path / "out").glob("*_primary.csv")
        table = pd.read_csv(path)
        assert len(table) == k
        assert table["motor"].tolist() == [i / 2 for i in range(1, k + 1)]
        assert table["seq_num"].tolist() == list(range(1, k + 1))
        (sidecar,) = (tmp_path / "out").glob("*.metadata.json")
        assert json.loads(sidecar.read_text())["complete"] is False
        seen.append(k)

    RE(_live_plan([det], 4, check))
    assert seen == [1, 2, 3, 4]
    run = cat[-1]
    tables, sidecar = _files(export.files)
    assert sorted(tables) == ["baseline", "primary"]
    assert json.loads(sidecar.read_text())["complete"] is True
    for stream, path in tables.items():
        ds = run[stream].read()
        table = pd.read_csv(path)
        for field in ["time", "seq_num", *_scalars(ds)]:
            _same(table[field], ds[field].values)


def test_live_summary_reads_stream_detector_frames(tmp_path):
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    export = live("csv", tmp_path / "out", arrays="summary", strict=True)
    RE.subscribe(export)
    cam = StreamHDF5Detector("scam", tmp_path / "det", shape=(3, 4))
    sums: list[int] = []

    def check(k: int) -> None:
        (path,) = (tmp_path / "out").glob("*_primary.csv")
        table = pd.read_csv(path)
        assert len(table) == k
        sums.append(int(table["scam_image.sum"].iloc[-1]))

    RE(stage_wrapper(_live_plan([cam], 3, check), [cam]))
    images = cat[-1].primary.read()["scam_image"].values
    assert sums == images.reshape(3, -1).sum(axis=1).tolist()
