"""Notes travel with their run: replay, copy, pack/unpack (a file of their own), the document
exports and those that hold metadata (read back by h5py, spec2nexus and json), and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, motor

import runbroker
from runbroker.cli import main as cli
from runbroker.export import read_documents
from runbroker.notestream import notes_file
from runbroker.pack import pack, unpack, verify
from runbroker.queries import Annotation, Key, Tag


@pytest.fixture
def noted(tmp_path: Path) -> runbroker.Catalog:
    """A SQLite catalog with one RunEngine scan that carries an edited annotation, a tag, a
    deleted note and a correction."""
    cat = runbroker.open(tmp_path / "src" / "runs.db", create=True)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 5), sample="Nl")
    run = cat[-1]
    note = run.annotate("sample burned", tags=["bad"])
    run.edit_note(note["id"], text="sample burned at 300 K")
    run.tag("calibration")
    gone = run.annotate("typo")
    run.delete_note(gone["id"])
    run.correct(start={"sample": "Ni"}, reason="typed Nl at the beamline")
    return cat


def _state(run: runbroker.Run) -> tuple:
    """What a copy must reproduce: tags, annotations' texts, every revision, the start seen."""
    history = sorted((n["id"], n["revision"], n["by"], n["deleted"]) for n in run.note_history())
    texts = sorted(n["text"] for n in run.annotations)
    return run.tags, texts, history, run.start["sample"], run.metadata["start_original"]["sample"]


def test_a_replay_ends_with_the_notes_and_ingest_stores_them(noted, tmp_path):
    run = noted[-1]
    pairs = list(run.documents(notes=True))
    names = [name for name, _ in pairs]
    assert names[-1] == "note" and names.index("stop") < names.index("note")
    assert "note" not in [name for name, _ in run.documents()]  # only when asked
    copy = runbroker.open(tmp_path / "copy.db", create=True)
    copy.ingest(pairs)
    assert _state(copy[run.uid]) == _state(run)
    copy.ingest(run.documents(notes=True))  # again: stored once
    assert _state(copy[run.uid]) == _state(run)
    assert run.uid in list(copy.search(Tag("bad") & (Key("sample") == "Ni")).keys())


def test_copy_to_a_folder_catalog_carries_the_notes(noted, tmp_path):
    dest = tmp_path / "folder"
    assert cli(["copy", str(noted.store.uri), str(dest), "--create"]) == 0
    copy = runbroker.open(dest)
    assert _state(copy[noted[-1].uid]) == _state(noted[-1])


def test_pack_keeps_notes_in_a_file_of_their_own_and_unpack_restores_them(noted, tmp_path):
    run = noted[-1]
    report = pack(noted, tmp_path / "pack", progress=False)
    assert report.copied == 1 and not report.failed
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    entry = manifest["runs"][run.uid]
    assert entry["notes"] == notes_file(entry["file"]).name
    assert entry["notes"] in manifest["files"]  # checksummed like the run file
    lines = (tmp_path / "pack" / entry["notes"]).read_text().splitlines()
    assert len(lines) == len(run.note_history())
    assert verify(tmp_path / "pack").ok
    # the pack is a folder catalog that shows them, and unpacking stores them
    assert _state(runbroker.open(tmp_path / "pack")[run.uid]) == _state(run)
    home = tmp_path / "home.db"
    assert not unpack(tmp_path / "pack", into=str(home), progress=False).failed
    assert _state(runbroker.open(home)[run.uid]) == _state(run)


def test_exports_hold_the_notes(noted, tmp_path):
    run = noted[-1]
    (jsonl,) = run.export("jsonl", tmp_path / "jsonl")
    again = runbroker.open(tmp_path / "again.db", create=True)
    again.ingest(read_documents(jsonl))
    assert _state(again[run.uid]) == _state(run)
    (nexus,) = run.export("nexus", tmp_path / "nexus")
    with h5py.File(nexus, "r") as f:
        held = json.loads(f["entry/documents/notes"][()])
    assert sorted(n["text"] for n in held if n["kind"] == "annotation") == [
        "sample burned at 300 K"
    ]
    (spec,) = run.export("spec", tmp_path / "spec")
    from spec2nexus.spec import SpecDataFile

    comments = SpecDataFile(str(spec)).getScan(1).comments
    assert any("sample burned at 300 K" in c and "bad" in c for c in comments)
    assert any("correction" in c and "Ni" in c for c in comments)


def test_the_cli_tags_annotates_lists_and_corrects(tmp_path, capsys):
    cat = runbroker.open(tmp_path / "runs.db", create=True)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 3), sample="Nl")
    uid, db = cat[-1].uid, str(tmp_path / "runs.db")
    assert cli(["tag", db, "-1", "calibration", "good"]) == 0
    assert "calibration, good" in capsys.readouterr().out
    assert cli(["tag", db, uid[:8], "good", "--remove"]) == 0
    assert cli(["annotate", db, "-1", "sample burned", "--tag", "bad"]) == 0
    assert cli(["correct", db, "-1", "sample=Ni", "temperature=300", "--reason", "typo"]) == 0
    capsys.readouterr()
    assert cli(["annotations", db, "-1"]) == 0
    out = capsys.readouterr().out
    assert "sample burned" in out and "#bad" in out and '"sample": "Ni"' in out
    assert cli(["annotations", db, "-1", "--json", "--history"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [n["deleted"] for n in history if n["kind"] == "tag"] == [False, False]
    run = runbroker.open(db)[uid]
    assert run.tags == ["bad", "calibration"]
    assert run.start["sample"] == "Ni" and run.start["temperature"] == 300
    assert uid in list(runbroker.open(db).search(Annotation.contains("burned")).keys())
    # bad input: a value without KEY=, a missing reason, an empty tag
    assert cli(["correct", db, "-1", "sample", "--reason", "typo"]) != 0
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["correct", db, "-1", "sample=Ni"])
    assert cli(["tag", db, "-1", " "]) != 0
    assert "tag" in capsys.readouterr().err
