"""JSON, JSON Lines and msgpack exports, read back by the standard library's json, by msgpack
with msgpack-numpy, and re-ingested into a fresh catalog with identical reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from event_model import compose_run
from ophyd.sim import SynSignal, det1, motor

import runbroker
from runbroker.export import ExportError, live
from runbroker.export.jsondoc import read_jsonl, read_msgpack
from runbroker.testing.compare import assert_same_run
from runbroker.testing.export import without_stop

RUNS = ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]
READERS = {"jsonl": read_jsonl, "msgpack": read_msgpack}


def _lines(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_run(copy: runbroker.Catalog, run: Any) -> None:
    assert_same_run(copy[run.uid], run)


def _special_run() -> list[tuple[str, dict]]:
    """NaN, infinities, a missing integer reading and integers beyond 64 bits."""
    bundle = compose_run(metadata={"scan_id": 77, "big": 2**70, "neg": -(2**65)})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "x": {"source": "s", "dtype": "number", "shape": []},
            "n": {"source": "s", "dtype": "integer", "shape": []},
            "v": {"source": "s", "dtype": "array", "shape": [3]},
            "w": {"source": "s", "dtype": "array", "shape": [2], "dtype_numpy": "<f4"},
        },
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i, x in enumerate([1.0, float("nan"), float("inf"), float("-inf"), 2.5]):
        data = {
            "x": x,
            "n": None if i == 3 else i,
            "v": np.array([x, 1.0, -x]),
            "w": np.array([x, 0.5], dtype="<f4"),
        }
        docs.append(
            ("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 1.0 + i)))
        )
    docs.append(("stop", bundle.compose_stop()))
    return docs


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
@pytest.mark.parametrize("key", RUNS)
def test_round_trip_gives_identical_reads(
    export_runs: dict, key: str, fmt: str, tmp_path: Path
) -> None:
    run = export_runs[key]
    (path,) = run.export(fmt, tmp_path)
    assert path.suffix == f".{fmt}"
    copy = runbroker.temp()
    copy.ingest(READERS[fmt](path))
    _assert_same_run(copy, run)
    # Detector files stay references: the asset documents are in the export.
    names = [name for name, _ in READERS[fmt](path)]
    if key in ("file_image", "tomo"):
        assert "resource" in names and "datum_page" in names
    assert names[0] == "start" and names[-1] == "stop"


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
@pytest.mark.parametrize("key", ["file_image", "tomo"])
def test_filled_export_stands_alone(export_runs: dict, key: str, fmt: str, tmp_path: Path) -> None:
    run = export_runs[key]
    (path,) = run.export(fmt, tmp_path, fill=True)
    docs = list(READERS[fmt](path))
    assert not {"resource", "datum", "datum_page"} & {name for name, _ in docs}
    for name, doc in docs:
        if name == "descriptor":
            assert not any("external" in dk for dk in doc["data_keys"].values())
    copy = runbroker.temp()
    copy.ingest(docs)
    _assert_same_run(copy, run)


def test_jsonl_declares_dtypes_that_json_loses(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["inline_image"]
    (path,) = run.export("jsonl", tmp_path)
    lines = _lines(path)  # the standard library reads every line
    (desc,) = [doc for name, doc in lines if name == "descriptor"]
    assert desc["data_keys"]["inline_cam"]["dtype_numpy"] == "<u2"
    assert "dtype_numpy" not in desc["data_keys"]["det1"]  # floats read back as floats
    (page,) = [doc for name, doc in lines if name == "event_page"]
    images = run.primary.read()["inline_cam"].values
    assert images.dtype == np.uint16
    assert np.array_equal(np.array(page["data"]["inline_cam"], dtype="<u2"), images)
    assert page["uid"] == [doc["uid"] for doc in _event_docs(run)]


def _event_docs(run: Any) -> list[dict]:
    return [doc for name, doc in run.documents(pages=False) if name == "event"]


def test_msgpack_is_read_by_msgpack_numpy(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["inline_image"]
    (path,) = run.export("msgpack", tmp_path)
    with open(path, "rb") as f:
        pairs = list(msgpack.Unpacker(f, object_hook=msgpack_numpy.decode, raw=False))
    assert [name for name, _ in pairs] == [name for name, _ in run.documents()]
    (page,) = [doc for name, doc in pairs if name == "event_page"]
    expected = run.primary.read()
    assert page["data"]["inline_cam"].dtype == np.uint16
    assert np.array_equal(page["data"]["inline_cam"], expected["inline_cam"].values)
    assert np.array_equal(page["data"]["det1"], expected["det1"].values)


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_nan_infinity_and_big_integers(fmt: str, tmp_path: Path) -> None:
    cat = runbroker.temp()
    cat.ingest(_special_run())
    run = cat[-1]
    (path,) = run.export(fmt, tmp_path)
    docs = list(READERS[fmt](path))
    assert docs[0][1]["big"] == 2**70 and docs[0][1]["neg"] == -(2**65)
    copy = runbroker.temp()
    copy.ingest(docs)
    again = copy[-1].primary.read()
    assert again.identical(run.primary.read())
    assert again["x"].values[2] == np.inf and again["x"].values[3] == -np.inf
    assert np.isnan(again["n"].values[3]) and again["w"].dtype == np.float32


def test_jsonl_spells_non_finite_values(tmp_path: Path) -> None:
    cat = runbroker.temp()
    cat.ingest(_special_run())
    (path,) = cat[-1].export("jsonl", tmp_path)
    text = path.read_text()
    assert "NaN" not in text  # strict JSON: every JSON reader takes it
    (page,) = [doc for name, doc in _lines(path) if name == "event_page"]
    assert page["data"]["x"] == [1.0, None, "Infinity", "-Infinity", 2.5]
    assert json.loads(text.splitlines()[0])[1]["big"] == 2**70


# -- the JSON document ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["scalar", "inline_image", "two_descriptors", "grid"])
def test_json_document_holds_every_stream(export_runs: dict, key: str, tmp_path: Path) -> None:
    run = export_runs[key]
    (path,) = run.export("json", tmp_path)
    doc = json.loads(path.read_text())
    assert doc["uid"] == run.uid and doc["complete"] is True
    assert doc["start"]["uid"] == run.uid and doc["stop"] == run.stop
    assert len(doc["descriptors"]) == sum(len(run[s]._descriptors) for s in run)
    assert sorted(doc["streams"]) == sorted(run)
    for stream in run:
        ds = run[stream].read()
        out = doc["streams"][stream]
        assert out["seq_num"] == ds["seq_num"].values.tolist()
        assert out["time"] == ds["time"].values.tolist()
        assert sorted(out["data"]) == sorted(ds.data_vars)
        for field in ds.data_vars:
            values = np.array(out["data"][field], dtype=ds[field].dtype)
            assert np.array_equal(values, ds[field].values), field
            stamps = run[stream].timestamps([field])[field].values
            assert out["timestamps"][field] == stamps.tolist()
    if key == "two_descriptors":
        uids = [d["uid"] for d in doc["descriptors"]]
        assert doc["streams"]["primary"]["descriptor"] == [uids[0]] * 3 + [uids[1]] * 3


def test_json_keeps_detector_references_unless_filled(export_runs: dict, tmp_path: Path) -> None:
    run = export_runs["file_image"]
    (refs,) = run.export("json", tmp_path / "refs")
    (filled,) = run.export("json", tmp_path / "filled", fill=True)
    images = run.primary.read()["adet_image"].values
    stored = json.loads(refs.read_text())["streams"]["primary"]["data"]["adet_image"]
    datums = [d["data"]["adet_image"] for d in _event_docs(run)]
    assert stored == datums
    pixels = json.loads(filled.read_text())["streams"]["primary"]["data"]["adet_image"]
    assert np.array_equal(np.array(pixels, dtype=images.dtype), images)


# -- live, incomplete, refusals ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_live_file_grows_per_event(fmt: str, tmp_path: Path) -> None:
    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    export = live(fmt, tmp_path / "out")
    RE.subscribe(export)
    seen: list[int] = []

    def count_events(name: str, doc: dict) -> None:
        if name == "event":
            (path,) = (tmp_path / "out").iterdir()
            seen.append(sum(1 for n, _ in READERS[fmt](path) if n == "event"))

    RE.subscribe(count_events)
    cam = SynSignal(name="cam", func=lambda: np.arange(12, dtype=np.int16).reshape(3, 4))
    RE(scan([det1, cam], motor, -1, 1, 4))
    assert seen == [1, 2, 3, 4]
    (path,) = export.files
    copy = runbroker.temp()
    copy.ingest(READERS[fmt](path))
    _assert_same_run(copy, cat[-1])
    assert copy[-1].primary.read()["cam"].dtype == np.int16


@pytest.mark.parametrize("fmt", ["json", "jsonl", "msgpack"])
def test_run_without_stop_is_closed_and_marked(export_runs: dict, fmt: str, tmp_path: Path) -> None:
    run = export_runs["scalar"]
    exp = without_stop(fmt, run, tmp_path)
    (path,) = exp.close()
    if fmt == "json":
        doc = json.loads(path.read_text())
        assert doc["complete"] is False and doc["stop"] is None
        assert len(doc["streams"]["primary"]["seq_num"]) == 7
        return
    docs = list(READERS[fmt](path))
    assert [name for name, _ in docs].count("stop") == 0
    assert [name for name, _ in docs].count("descriptor") == 2
    copy = runbroker.temp()
    copy.ingest(docs)
    assert copy[-1].stop is None
    assert copy[-1].primary.read().identical(run.primary.read())


@pytest.mark.parametrize("fmt", ["json", "jsonl", "msgpack"])
def test_never_overwrites(export_runs: dict, fmt: str, tmp_path: Path) -> None:
    run = export_runs["scalar"]
    (path,) = run.export(fmt, tmp_path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        run.export(fmt, tmp_path)
    assert path.read_bytes() == before
    assert run.export(fmt, tmp_path, overwrite=True) == [path]


# -- bad input -------------------------------------------------------------------------------


def test_read_jsonl_refuses_other_files(tmp_path: Path) -> None:
    csv = tmp_path / "table.jsonl"
    csv.write_text("time,det\n1,2\n")
    with pytest.raises(ExportError, match=r"table\.jsonl, line 1: not JSON"):
        list(read_jsonl(csv))
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    with pytest.raises(ExportError, match=r"other\.jsonl, line 1: expected a \[name, document\]"):
        list(read_jsonl(other))
    headless = tmp_path / "headless.jsonl"
    headless.write_text('["stop", {"uid": "s"}]\n')
    with pytest.raises(ExportError, match="first document is a stop, not a start"):
        list(read_jsonl(headless))


def test_read_jsonl_names_a_truncated_file(export_runs: dict, tmp_path: Path) -> None:
    (path,) = export_runs["scalar"].export("jsonl", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ExportError, match=rf"{path.name}: line \d+ is cut short"):
        list(read_jsonl(path))


def test_read_msgpack_refuses_bad_files(export_runs: dict, tmp_path: Path) -> None:
    (path,) = export_runs["inline_image"].export("msgpack", tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes(data[:-30])
    with pytest.raises(ExportError, match=r"cut\.msgpack: cut short after record \d+"):
        list(read_msgpack(cut))
    text = tmp_path / "text.msgpack"
    text.write_bytes(b"time,det\n1,2\n")
    with pytest.raises(ExportError, match=r"text\.msgpack.*expected a \[name, document\]"):
        list(read_msgpack(text))
    pickled = tmp_path / "pickled.msgpack"
    pickled.write_bytes(
        msgpack.packb(
            ["start", {"x": np.array([None], dtype=object)}], default=msgpack_numpy.encode
        )
    )
    with pytest.raises(ExportError, match=r"pickled\.msgpack: not a runbroker msgpack export"):
        list(read_msgpack(pickled))
