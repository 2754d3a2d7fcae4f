"""``STREAM:`` fields (stream_resource detectors): their data is never in the events, so the
store, its replay and the exports must not invent a value for them there.

Documents come from the real RunEngine with :class:`StreamHDF5Detector`, which writes a real
HDF5 file; every catalog test runs on SQLite, PostgreSQL and the folder store.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from event_model import unpack_event_page
from ophyd.sim import motor

import runbroker
from runbroker.export import read_documents
from runbroker.store.events import canonical
from runbroker.testing.detectors import StreamHDF5Detector, expected_frame

SHAPE = (4, 6)
N = 3


def _stream_scan(root: Path) -> list[tuple[str, dict]]:
    """The documents of a real RunEngine scan of N points with a stream detector ``sd``."""
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(scan([StreamHDF5Detector("sd", root / "sd", shape=SHAPE)], motor, 0, 1, N))
    return docs


def _by_kind(docs) -> dict[str, list[bytes]]:
    """Each kind of document, in order, in a form equal when the documents mean the same
    (event pages as their events)."""
    out: dict[str, list[bytes]] = {}
    for name, doc in docs:
        if name == "event_page":
            for event in unpack_event_page(doc):
                out.setdefault("event", []).append(canonical(event))
        else:
            out.setdefault(name, []).append(canonical(doc))
    return out


def test_replay_gives_back_exactly_the_documents_that_came_in(catalog, tmp_path):
    sent = _stream_scan(tmp_path)
    catalog.ingest(sent)
    replayed = list(catalog[-1].documents(pages=False))
    events = [d for n, d in replayed if n == "event"]
    assert all("sd_image" not in e["data"] and "sd_image" not in e["timestamps"] for e in events)
    assert _by_kind(replayed) == _by_kind(sent)


def test_ingesting_the_same_documents_again_is_a_no_op(catalog, tmp_path):
    sent = _stream_scan(tmp_path)
    catalog.ingest(sent)
    catalog.ingest(sent)  # a retried callback
    event = next(d for n, d in sent if n == "event")
    catalog.insert("event", event)  # one event sent twice
    run = catalog[-1]
    assert len(catalog) == 1
    assert run.primary.read()["seq_num"].values.tolist() == list(range(1, N + 1))
    np.testing.assert_array_equal(
        run.primary.read()["sd_image"].values,
        np.stack([expected_frame(k, SHAPE) for k in range(N)]),
    )


def test_document_exports_carry_no_field_the_events_never_had(tmp_path):
    sent = _stream_scan(tmp_path)
    cat = runbroker.open(tmp_path / "runs.db")
    cat.ingest(sent)
    for fmt in ("jsonl", "msgpack"):
        (path,) = cat[-1].export(fmt, tmp_path / fmt)
        assert _by_kind(read_documents(path)) == _by_kind(sent), fmt


def test_json_export_writes_the_references(tmp_path):
    cat = runbroker.open(tmp_path / "runs.db")
    cat.ingest(_stream_scan(tmp_path))
    run = cat[-1]
    refs = run.primary.read(fill=False)["sd_image"].values.tolist()
    (path,) = run.export("json", tmp_path / "json")
    exported = json.loads(path.read_text())["streams"]["primary"]
    assert exported["data"]["sd_image"] == refs
    assert refs[0].endswith("/0")
    # The events stamp the motor, never the stream detector.
    assert "motor" in exported["timestamps"] and "sd_image" not in exported["timestamps"]


def test_raw_hdf5_without_fill_keeps_references_and_reads_back_the_same(tmp_path):
    sent = _stream_scan(tmp_path)
    cat = runbroker.open(tmp_path / "runs.db")
    cat.ingest(sent)
    run = cat[-1]
    refs = run.primary.read(fill=False)["sd_image"].values.tolist()
    (path,) = run.export("hdf5", tmp_path / "h5", fill=False)
    with h5py.File(path) as h5:
        assert h5["primary/data/sd_image"].asstr()[:].tolist() == refs
        assert "motor" in h5["primary/timestamps"] and "sd_image" not in h5["primary/timestamps"]
    # The references are for readers of the file: ingested again, the events are as sent.
    assert _by_kind(read_documents(path)) == _by_kind(sent)


@pytest.mark.parametrize("live", [False, True])
def test_filled_raw_hdf5_stamps_no_stream_field_and_reads_back(tmp_path, live):
    from runbroker.export import live as live_exporter

    sent = _stream_scan(tmp_path)
    if live:  # page by page, as a RunEngine callback writes it
        exporter = live_exporter("hdf5", tmp_path / "h5")
        for name, doc in sent:
            exporter(name, doc)
        exporter.close()
        (path,) = (tmp_path / "h5").glob("*.h5")
    else:
        cat = runbroker.open(tmp_path / "runs.db")
        cat.ingest(sent)
        (path,) = cat[-1].export("hdf5", tmp_path / "h5")
    with h5py.File(path) as h5:
        assert h5["primary/data/sd_image"].shape == (N, *SHAPE)
        assert "sd_image" not in h5["primary/timestamps"]
    events = [e for n, d in read_documents(path) if n == "event_page" for e in unpack_event_page(d)]
    assert all("sd_image" not in e["timestamps"] for e in events)
    frames = np.stack([e["data"]["sd_image"] for e in events])
    np.testing.assert_array_equal(frames, np.stack([expected_frame(k, SHAPE) for k in range(N)]))


def test_documents_fill_puts_the_stream_frames_in_the_events(catalog, tmp_path):
    catalog.ingest(_stream_scan(tmp_path))
    run = catalog[-1]
    events = [d for n, d in run.documents(fill=True, pages=False) if n == "event"]
    assert [e["filled"]["sd_image"] for e in events] == [True] * N
    frames = np.stack([e["data"]["sd_image"] for e in events])
    np.testing.assert_array_equal(frames, run.primary.read()["sd_image"].values)
    np.testing.assert_array_equal(frames, np.stack([expected_frame(k, SHAPE) for k in range(N)]))


def test_references_wait_for_frames_announced_late_and_are_empty_if_never(tmp_path):
    from runbroker.export import live
    from runbroker.testing.detectors import late_frames_scan

    docs = late_frames_scan(tmp_path / "late", n=N)
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    expected = {
        "late": [f"{resource['uid']}/{row}" for row in range(N)],
        "never": [""] * N,  # the run's other data is kept, not lost over the missing frames
    }
    for case, refs in expected.items():
        exporter = live("json", tmp_path / case)
        for name, doc in docs:
            if case == "late" or name != "stream_datum":
                exporter(name, doc)
        (path,) = exporter.close()
        primary = json.loads(path.read_text())["streams"]["primary"]
        assert primary["data"]["sd_image"] == refs, case
        assert primary["seq_num"] == list(range(1, N + 1)), case
