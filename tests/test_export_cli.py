"""``runbroker export`` and ``runbroker ingest`` from the shell: selection, options, progress,
and the round trip of lossless exports back into a new catalog."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runbroker
from runbroker.cli import main
from runbroker.display import plural
from runbroker.queries import Key
from runbroker.testing.compare import assert_same_run


def _db(export_runs: dict) -> str:
    return str(export_runs["folder"] / "runs.db")


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack", "hdf5"])
def test_export_then_ingest_reads_the_same(export_runs, tmp_path, fmt, capsys):
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", fmt, "-q"]) == 0
    source = export_runs["catalog"]
    assert f"exported {plural(len(source), 'run')} as {fmt}" in capsys.readouterr().out
    copy = tmp_path / "copy.db"
    assert main(["ingest", str(copy), str(out), "-q"]) == 0
    assert f"copied {len(source)} runs" in capsys.readouterr().out
    again = runbroker.open(copy)
    for uid in source:
        assert_same_run(again[uid], source[uid])
    again.close()
    assert main(["ingest", str(copy), str(out), "-q"]) == 0
    assert f"skipped {len(source)} already" in capsys.readouterr().out


def test_ingest_reports_a_bad_file_by_name_and_reads_the_others(export_runs, tmp_path, capsys):
    out = tmp_path / "out"
    query = (Key("sample") == "Fe foil").to_json()
    assert main(["export", _db(export_runs), str(out), "-f", "jsonl", "--query", query]) == 0
    assert "event" in capsys.readouterr().err  # the progress bar
    assert len(list(out.glob("*.jsonl"))) == 1
    bad = out / "zz-broken.jsonl"
    bad.write_text('["start", {"uid": "x"\n')
    assert main(["ingest", str(tmp_path / "copy.db"), str(out), "-q"]) == 2
    captured = capsys.readouterr()
    assert "copied 1 run" in captured.out and "1 failed" in captured.out
    assert "zz-broken.jsonl" in captured.out + captured.err
    assert main(["ingest", str(tmp_path / "copy2.db"), str(bad), "--strict", "-q"]) == 1


def test_export_options_and_selection_by_uid(export_runs, tmp_path):
    run = export_runs["scalar"]
    out = tmp_path / "out"
    args = ["export", _db(export_runs), str(out), "-f", "jsonl", "--uid", run.uid, "-q"]
    assert main([*args, "--template", "{start[sample]}-{scan_id}"]) == 0
    assert [p.name for p in out.iterdir()] == ["Fe_foil-1.jsonl"]
    # The same again is refused, and the file kept; --overwrite replaces it.
    before = (out / "Fe_foil-1.jsonl").stat().st_mtime_ns
    assert main([*args, "--template", "{start[sample]}-{scan_id}"]) == 1
    assert (out / "Fe_foil-1.jsonl").stat().st_mtime_ns == before
    assert main([*args, "--template", "{start[sample]}-{scan_id}", "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-f", "xls"], "no export format 'xls'"),
        (["-f", "jsonl", "-o", "novalue"], "KEY=VALUE"),
        (["-f", "jsonl", "--template", "{start[nope]}"], "'nope'"),
        (["-f", "jsonl", "--uid", "0" * 36], "no run"),
    ],
)
def test_export_errors_are_one_clear_line(export_runs, tmp_path, extra, message):
    proc = subprocess.run(
        [sys.executable, "-m", "runbroker.cli", "export", _db(export_runs), str(tmp_path), *extra],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_ingest_of_nothing_says_so(tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["ingest", str(tmp_path / "c.db"), str(tmp_path)]) == 1
    assert "no .jsonl, .msgpack or .h5 export" in capsys.readouterr().err


def test_export_and_copy_take_uid_prefixes_and_scan_ids_as_show_does(export_runs, tmp_path):
    scalar, grid = export_runs["scalar"], export_runs["grid"]
    out = tmp_path / "out"
    uids = [scalar.uid[:8], grid.uid[:6]]
    assert main(["export", _db(export_runs), str(out), "-f", "jsonl", "-q", "--uid", *uids]) == 0
    assert {p.stem.rsplit("_", 1)[-1] for p in out.iterdir()} == {scalar.uid[:8], grid.uid[:8]}
    copy = tmp_path / "copy.db"
    assert main(["copy", _db(export_runs), str(copy), "-q", "--uid", "-1", scalar.uid[:8]]) == 0
    with runbroker.open(copy, readonly=True) as again:
        assert set(again) == {export_runs["catalog"][-1].uid, scalar.uid}


def test_export_names_every_uid_it_cannot_find(export_runs, tmp_path):
    keys = ["zzzz", export_runs["scalar"].uid[:8], "999"]
    command = ["runbroker.cli", "export", _db(export_runs), str(tmp_path / "o"), "-f", "jsonl"]
    proc = subprocess.run(
        [sys.executable, "-m", *command, "--uid", *keys], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--uid: no run whose uid is or starts with 'zzzz'" in proc.stderr
    assert "999" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_export_skip_existing_leaves_exported_runs_and_writes_the_others(export_runs, tmp_path):
    out = tmp_path / "out"
    args = ["export", _db(export_runs), str(out), "-f", "jsonl", "-q"]
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    gone = sorted(before)[0]
    (out / gone).unlink()
    assert main(args) == 1  # without the flag, an existing file stops the export
    assert main([*args, "--skip-existing"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name != gone)


def test_export_skip_existing_reports_what_it_skipped(export_runs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", _db(export_runs), str(out), "-f", "csv", "-q"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    n = len(export_runs["catalog"])
    assert f"exported 0 runs as csv: 0 files, skipped {n} whose files exist" in (
        capsys.readouterr().out
    )


def test_batch_export_reports_runs_the_format_cannot_hold_and_goes_on(
    export_runs, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["export", _db(export_runs), str(out), "-f", "dx", "-q"]
    assert main(args) == 2
    text = capsys.readouterr().out
    # Runs with images are written; those of scalars alone are reported by uid, with why.
    with_images = [export_runs[k] for k in ("inline_image", "file_image", "tomo")]
    assert "exported 3 runs as dx: 3 files, 3 failed:" in text
    for key in ("scalar", "grid", "two_descriptors"):
        assert f"run {export_runs[key].uid}: no projections" in text
    assert {p.stem.rsplit("_", 1)[-1] for p in out.iterdir()} == {r.uid[:8] for r in with_images}
    # --strict stops at the first such run, with its reason.
    assert main([*args, "--strict", "--overwrite"]) == 1
    assert "no projections" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-f", "csv", "-o", "nope=1"], "the csv export has no option 'nope'; its options are: "),
        (["-f", "tiff", "-o", "per=run"], "per='run'"),
        (["-f", "jsonl", "--template", "{start[nope]}"], "'nope'"),
    ],
)
def test_export_checks_its_arguments_before_the_progress_bar(export_runs, tmp_path, extra, message):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "runbroker.cli", "export", _db(export_runs), str(out), *extra],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("runbroker: ") and message in proc.stderr
    assert "event" not in proc.stderr  # no progress bar was drawn
    assert not out.exists()


def test_unknown_option_lists_the_valid_ones(export_runs, tmp_path, capsys):
    assert main(["export", _db(export_runs), str(tmp_path), "-f", "csv", "-o", "nope=1"]) == 1
    assert "its options are: arrays, assets, overwrite, template" in capsys.readouterr().err


@pytest.mark.parametrize("dest", ["new.db", "new/"])
def test_ingest_creates_no_catalog_when_nothing_can_be_read(export_runs, tmp_path, dest, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jsonl").write_text('["start", {"uid": "x"\n')
    assert main(["ingest", f"{tmp_path}/{dest}", str(tmp_path / "in"), "-q"]) == 2
    assert "broken.jsonl" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    # A file that begins with a good start document and is damaged further on.
    (path,) = export_runs["scalar"].export("jsonl", tmp_path / "in", template="scalar")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"[not json\n")
    assert main(["ingest", f"{tmp_path}/{dest}", str(tmp_path / "in"), "-q"]) == 2
    assert "scalar.jsonl" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_ingest_passes_over_detector_file_folders(export_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", "hdf5", "-q"]) == 0
    # Detector files beside the exports, as a beamline folder holds them.
    shutil.copytree(export_runs["folder"] / "detector", out / "detector")
    (out / "images" / "deeper").mkdir(parents=True)
    (out / "images" / "frame_000.tiff").write_bytes(b"II*\x00")
    (out / "images" / "deeper" / "stray.jsonl").write_text("not read: its folder holds images")
    assert main(["ingest", str(tmp_path / "copy.db"), str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert f"copied {len(export_runs['catalog'])} runs" in text and "0 failed" in text
    # A detector folder named on its own holds no export.
    assert main(["ingest", str(tmp_path / "none.db"), str(out / "detector"), "-q"]) == 1
    assert "no .jsonl, .msgpack or .h5 export" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("fmt", ["tiff", "dx"])
def test_ingest_reads_the_exports_beside_detector_files_in_the_same_folder(
    export_runs, tmp_path, fmt, capsys
):
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", "jsonl", "-q"]) == 0
    jsonl = sorted(out.glob("*.jsonl"))
    # Images (or a Data Exchange HDF5 file) of one run, written into the same folder.
    uid = export_runs["file_image"].uid
    assert main(["export", _db(export_runs), str(out), "-f", fmt, "--uid", uid, "-q"]) == 0
    assert len(list(out.iterdir())) > len(jsonl)
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "copy.db"), f"{out}/", "-q"]) == 0
    text = capsys.readouterr().out
    assert f"copied {len(jsonl)} runs" in text and "0 failed" in text


def test_a_uid_prefix_of_digits_is_found_when_no_scan_id_matches(tmp_path, capsys):
    from event_model import compose_run

    bundle = compose_run(uid="20251231-0000-4000-8000-000000000000", metadata={"scan_id": 7})
    with runbroker.open(tmp_path / "runs.db") as cat:
        cat.ingest([("start", bundle.start_doc), ("stop", bundle.compose_stop())])
    db = str(tmp_path / "runs.db")
    assert main(["show", db, "20251231"]) == 0
    assert "20251231-0000" in capsys.readouterr().out
    assert main(["show", db, "7"]) == 0  # digits are a scan_id first
    assert main(["export", db, str(tmp_path / "out"), "-f", "jsonl", "-q", "--uid", "2025"]) == 0
    assert len(list((tmp_path / "out").iterdir())) == 1
    assert main(["show", db, "8"]) == 1
    assert "no run with scan_id 8" in capsys.readouterr().err


def test_ingest_and_copy_create_an_unusual_catalog_name_only_with_create(
    export_runs, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", "jsonl", "-q"]) == 0
    target = str(tmp_path / "mycatalog")
    assert main(["ingest", target, str(out), "-q"]) == 1
    assert "--create" in capsys.readouterr().err and not Path(target).exists()
    assert main(["ingest", target, str(out), "-q", "--create"]) == 0
    n = len(export_runs["catalog"])
    assert len(runbroker.open(target, readonly=True)) == n
    copy = str(tmp_path / "new" / "copy.db")
    assert main(["copy", _db(export_runs), copy, "-q"]) == 1
    assert "--create" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main(["copy", _db(export_runs), copy, "-q", "--create"]) == 0
    assert len(runbroker.open(copy, readonly=True)) == n


def test_db_commands_name_what_is_not_a_catalog(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a catalog\n")
    assert main(["db", "upgrade", str(notes)]) == 1
    assert f"{str(notes)!r} is not a runbroker catalog" in capsys.readouterr().err
    assert main(["db", "index", str(tmp_path), "sample"]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert notes.read_text() == "not a catalog\n" and sorted(tmp_path.iterdir()) == [notes]


def test_create_reaches_a_catalog_given_by_its_configured_name(
    export_runs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    target = tmp_path / "sub" / "beamcat"
    assert main(["catalogs", "add", "beam", str(target)]) == 0
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", "jsonl", "-q"]) == 0
    assert main(["ingest", "beam", str(out), "-q"]) == 1
    assert "--create" in capsys.readouterr().err
    assert main(["ingest", "beam", str(out), "-q", "--create"]) == 0
    assert len(runbroker.open(target, readonly=True)) == len(export_runs["catalog"])
