"""``runbroker export`` and ``runbroker ingest`` from the shell: selection, options, progress,
and the round trip of lossless exports back into a new catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import runbroker
from runbroker.cli import main
from runbroker.queries import Key
from runbroker.testing.compare import assert_same_run


def _db(export_runs: dict) -> str:
    return str(export_runs["folder"] / "runs.db")


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack", "hdf5"])
def test_export_then_ingest_reads_the_same(export_runs, tmp_path, fmt, capsys):
    out = tmp_path / "out"
    assert main(["export", _db(export_runs), str(out), "-f", fmt, "-q"]) == 0
    source = export_runs["catalog"]
    assert f"exported {len(source)} run(s) as {fmt}" in capsys.readouterr().out
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
