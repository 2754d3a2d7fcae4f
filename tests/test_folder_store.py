"""The folder-of-files store beyond the shared API suite: folders of exported runs, the index
(built once, reused, kept up to date, moved with the folder, or in the cache folder when the
folder cannot be written), broken files, order, and the files a writable folder writes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

import runbroker
from runbroker.errors import RunNotFoundError
from runbroker.export import DEFAULT_TEMPLATE, render
from runbroker.export.jsondoc import read_jsonl
from runbroker.queries import FullText, Key, PartialUID, Regex, ScanID, TimeRange
from runbroker.store.files import FolderStore, FolderWarning
from runbroker.store.runfile import files_parsed
from runbroker.testing.compare import assert_same_run
from runbroker.testing.readonly import run_read_only

RUNS = ("scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors")


@pytest.fixture(scope="module", params=["jsonl", "msgpack"])
def exported(request, export_runs, tmp_path_factory):
    """A folder of the export runs written by ``run.export`` in one format."""
    folder = tmp_path_factory.mktemp(f"exported_{request.param}")
    for key in RUNS:
        export_runs[key].export(request.param, folder)
    return folder


def _same_everywhere(cat: runbroker.Catalog, source: runbroker.Run) -> None:
    """Every read of ``source`` gives the same from ``cat``."""
    run = cat[source.uid]
    assert_same_run(run, source)
    assert run.metadata["start"] == source.metadata["start"]
    assert run.metadata["stop"] == source.metadata["stop"]
    for stream in source:
        a, b = run[stream], source[stream]
        assert a.data_keys.keys() == b.data_keys.keys()
        assert a.to_dask().compute().identical(b.read())
        for device, conf in b.config.items():
            assert a.config[device].identical(conf), (stream, device)
    filled = [(n, d) for n, d in run.documents(fill=True) if n == "event_page"]
    expected = [(n, d) for n, d in source.documents(fill=True) if n == "event_page"]
    assert len(filled) == len(expected)
    for (_, got), (_, want) in zip(filled, expected, strict=True):
        assert got["seq_num"] == want["seq_num"]
        for key, values in want["data"].items():
            np.testing.assert_array_equal(np.asarray(got["data"][key]), np.asarray(values))


def test_a_folder_of_exports_reads_as_its_source(exported, export_runs):
    with runbroker.open(exported) as cat:
        assert len(cat) == len(RUNS)
        assert list(cat) == list(export_runs["catalog"])  # the same order as the source
        for key in RUNS:
            _same_everywhere(cat, export_runs[key])
        scalar = export_runs["scalar"]
        assert cat[-1].uid == export_runs["two_descriptors"].uid
        assert cat[scalar.start["scan_id"]].uid == scalar.uid
        assert cat[scalar.uid[:8]].uid == scalar.uid
        assert [r.uid for r in cat[-2:]] == list(export_runs["catalog"])[:2]
        for query in (
            Key("sample") == "Fe foil",
            FullText("foil"),
            Regex("sample", "^Fe"),
            ScanID(scalar.start["scan_id"]),
            PartialUID(scalar.uid[:6]),
            TimeRange(since=f"@{scalar.start['time'] - 1}", until=f"@{scalar.start['time'] + 1}"),
        ):
            assert list(cat.search(query)) == list(export_runs["catalog"].search(query)), query


def test_the_index_is_built_once_and_reused(exported):
    runbroker.open(exported).close()  # built (or brought up to date)
    before = files_parsed()
    with runbroker.open(exported) as cat:
        assert cat[-1].start["uid"]
        assert len(cat.search(Key("sample") == "grid")) == 1
        assert files_parsed() == before  # opening, looking up and searching read no run file
        cat[-1].primary.read()
        assert files_parsed() == before + 1  # reading a run reads its file
        assert cat.store.index_path == exported / ".runbroker" / "index.db"


def _copy_exports(export_runs, folder: Path, keys=RUNS) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    return {key: export_runs[key].export("jsonl", folder)[0] for key in keys}


def test_the_index_follows_files_added_changed_and_removed(export_runs, tmp_path):
    folder = tmp_path / "runs"
    files = _copy_exports(export_runs, folder, RUNS[:3])
    with runbroker.open(folder) as cat:
        assert len(cat) == 3
    more = _copy_exports(export_runs, tmp_path / "more", RUNS[3:4])
    shutil.copy(more["file_image"], folder)
    files["scalar"].unlink()
    # "grid" is written again with other metadata (same uid): its new start is what counts.
    lines = files["grid"].read_bytes().splitlines(keepends=True)
    name, start = json.loads(lines[0])
    lines[0] = (json.dumps([name, {**start, "sample": "regridded"}]) + "\n").encode()
    files["grid"].write_bytes(b"".join(lines))
    before = files_parsed()
    with runbroker.open(folder) as cat:
        assert files_parsed() == before + 2  # only the added and the changed file
        assert sorted(cat) == sorted(
            export_runs[k].uid for k in ("grid", "inline_image", "file_image")
        )
        assert list(cat.search(Key("sample") == "regridded")) == [export_runs["grid"].uid]
        assert len(cat.search(Key("sample") == "grid")) == 0
        assert len(cat.search(FullText("foil"))) == 0  # the removed run is gone from every table
        assert_same_run(cat[export_runs["file_image"].uid], export_runs["file_image"])
        # A file added while the catalog is open is seen at the next refresh.
        shutil.copy(more["file_image"], folder / "copy-of-file-image.jsonl")
        export_runs["scalar"].export("jsonl", folder, template="scalar", overwrite=True)
        with pytest.warns(FolderWarning, match="copy-of-file-image.jsonl"):
            cat.store.refresh()  # the copy holds a run another file holds: left out, said once
        assert export_runs["scalar"].uid in cat
        assert len(cat) == 4


def test_a_moved_and_renamed_folder_opens_with_its_index(export_runs, tmp_path):
    folder = tmp_path / "before"
    _copy_exports(export_runs, folder)
    with runbroker.open(folder) as cat:
        expected = {uid: run.primary.read() for uid, run in cat.items()}
    moved = tmp_path / "elsewhere" / "after"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    before = files_parsed()
    with runbroker.open(moved) as cat:
        assert list(cat) == list(expected)
        assert files_parsed() == before  # the index moved with the folder and still fits
        for uid, ds in expected.items():
            assert cat[uid].primary.read().identical(ds)
        assert_same_run(cat[export_runs["file_image"].uid], export_runs["file_image"])


@pytest.mark.parametrize("damage", [b"", b"not a database at all", b"SQLite format 3\0junk"])
def test_a_damaged_index_is_built_again(export_runs, tmp_path, damage):
    folder = tmp_path / "runs"
    _copy_exports(export_runs, folder, ("scalar", "grid"))
    with runbroker.open(folder) as cat:
        index = cat.store.index_path
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(damage * 100)  # derived data: rebuilt from the files, not an error
    with runbroker.open(folder) as cat:
        assert sorted(cat) == sorted(export_runs[k].uid for k in ("scalar", "grid"))
        assert_same_run(cat[export_runs["grid"].uid], export_runs["grid"])


def test_a_file_holding_another_run_since_it_was_indexed_never_serves_it(export_runs, tmp_path):
    from runbroker.catalog import Catalog

    folder = tmp_path / "runs"
    scalar, grid = export_runs["scalar"], export_runs["grid"]
    (path,) = scalar.export("jsonl", folder, template="run")
    # No refresh on its own while the test runs: the store meets the change when it reads.
    cat = Catalog(FolderStore(folder, readonly=True, refresh_interval=3600))
    pages = cat.store.pages(scalar.uid, [d["uid"] for d in cat.store.descriptors(scalar.uid)])
    (other,) = grid.export("jsonl", tmp_path / "other", template="run")
    os.replace(other, path)  # the file now holds another run, under the same name
    # The folder no longer holds the run: not found (the Store contract), never grid's pages.
    with pytest.raises(RunNotFoundError):
        cat.store.read_pages(scalar.uid, [p.id for p in pages], None)
    with pytest.raises(KeyError):
        cat[scalar.uid].primary.read()  # gone: the folder was looked at again
    assert_same_run(cat[grid.uid], grid)
    cat.close()


_READ_ONLY = """
import json, sys, runbroker
cat = runbroker.open(sys.argv[1])
print(json.dumps({
    "index": str(cat.store.index_path),
    "uids": list(cat),
    "sums": {uid: float(run.primary.read()["det1"].sum()) for uid, run in cat.items()
             if "det1" in run.primary.fields},
}))
"""


def test_a_read_only_folder_keeps_its_index_in_the_cache_folder(export_runs, tmp_path):
    folder, cache = tmp_path / "pack", tmp_path / "cache"
    _copy_exports(export_runs, folder, ("scalar", "grid"))
    cache.mkdir()
    result = run_read_only(
        folder,
        [sys.executable, "-c", _READ_ONLY, str(folder)],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert not (folder / ".runbroker").exists()
    assert Path(got["index"]).parent == cache / "runbroker" / "folders"
    assert got["uids"] == [export_runs["grid"].uid, export_runs["scalar"].uid]
    scalar = export_runs["scalar"]
    assert got["sums"][scalar.uid] == float(scalar.primary.read()["det1"].sum())


def test_broken_files_are_left_out_with_a_warning_naming_file_and_line(export_runs, tmp_path):
    folder = tmp_path / "runs"
    files = _copy_exports(export_runs, folder, ("scalar", "grid"))
    good = files["scalar"].read_bytes().splitlines(keepends=True)
    (folder / "bad-json.jsonl").write_bytes(b"[not json\n" + b"".join(good))
    (folder / "no-start.jsonl").write_bytes(b"".join(good[1:]))
    other = files["grid"].read_bytes().splitlines(keepends=True)
    (folder / "two-starts.jsonl").write_bytes(good[0] + other[0] + b"".join(other[1:]))
    (folder / "empty.msgpack").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cat = runbroker.open(folder)
    messages = [str(w.message) for w in caught if issubclass(w.category, FolderWarning)]
    assert len(messages) == 4, messages
    found = {Path(m.split(": ", 2)[1].split(",")[0]).name: m for m in messages}
    assert "line 1" in found["bad-json.jsonl"] and "not JSON" in found["bad-json.jsonl"]
    assert "line 1" in found["no-start.jsonl"] and "not a start" in found["no-start.jsonl"]
    assert "line 2" in found["two-starts.jsonl"] and "second start" in found["two-starts.jsonl"]
    assert "empty.msgpack" in found
    assert sorted(cat) == sorted([export_runs["scalar"].uid, export_runs["grid"].uid])
    assert_same_run(cat[export_runs["grid"].uid], export_runs["grid"])
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        cat.store.refresh()
    assert not [w for w in again if issubclass(w.category, FolderWarning)]  # said once
    cat.close()
    # Mended, a file is taken in.
    (folder / "no-start.jsonl").write_bytes(b"".join(other))
    with pytest.warns(FolderWarning):  # the other three are still broken
        cat = runbroker.open(folder)
    assert export_runs["grid"].uid in cat and len(cat) == 2  # a second copy of grid: left out
    cat.close()


def _open_damaged(folder: Path, before: list[bytes], tmp_path: Path) -> tuple:
    """Open ``folder``, which holds one damaged run file, and a catalog given the documents
    before the damage (``before``, lines): the catalog, the warning and what it should hold."""
    prefix = tmp_path / "prefix.jsonl"
    prefix.write_bytes(b"".join(before))
    expected = runbroker.temp()
    expected.ingest(read_jsonl(prefix))
    with pytest.warns(FolderWarning) as caught:
        cat = runbroker.open(folder)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, FolderWarning)]
    return cat, message, expected


@pytest.mark.parametrize("where", ["cut short at the end", "garbage in the middle"])
def test_a_damaged_line_keeps_the_documents_before_it(export_runs, tmp_path, where):
    folder = tmp_path / "runs"
    source = export_runs["scalar"]
    (path,) = source.export("jsonl", folder)
    lines = path.read_bytes().splitlines(keepends=True)
    if where == "cut short at the end":  # a crash while the stop document was written
        bad = len(lines)
        path.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])
    else:
        bad = len(lines) - 2
        path.write_bytes(b"".join(lines[: bad - 1]) + b'["event", {"ui\x00\n' + lines[-1])
    cat, message, expected = _open_damaged(folder, lines[: bad - 1], tmp_path)
    assert message.startswith(f"partly read: {path}")
    assert f"line {bad}" in message and "the documents after it are left out" in message
    run = cat[source.uid]
    assert run.stop is None and "running (no stop document)" in repr(run)
    assert_same_run(run, expected[source.uid])
    assert len(run.primary.read()["time"]) == len(expected[source.uid].primary.read()["time"])
    cat.close()
    with warnings.catch_warnings(record=True) as again:  # the index remembers the damage
        warnings.simplefilter("always")
        runbroker.open(folder).close()
    assert [str(w.message) for w in again if issubclass(w.category, FolderWarning)] == [message]


def _event_page_of_nope(doc: dict) -> dict:
    return dict(doc, descriptor="nope")


def _undeclared_field(doc: dict) -> dict:
    return dict(doc, data=dict(doc["data"], zz=[0] * len(doc["uid"])))


def _stop_of_another_run(doc: dict) -> dict:
    return dict(doc, run_start="nope")


def _times_too_few(doc: dict) -> dict:
    return dict(doc, time=doc["time"][:-1])


@pytest.mark.parametrize(
    "key, kind, change, words",
    [
        ("scalar", "event_page", _event_page_of_nope, "an event of descriptor 'nope'"),
        ("scalar", "event_page", _undeclared_field, "data.zz"),
        ("scalar", "stop", _stop_of_another_run, "belongs to run 'nope'"),
        ("file_image", "event_page", _times_too_few, "values but the page has 4 uids"),
    ],
)
def test_a_valid_document_the_run_cannot_take_keeps_the_documents_before_it(
    export_runs, tmp_path, key, kind, change, words
):
    folder = tmp_path / "runs"
    source = export_runs[key]
    (path,) = source.export("jsonl", folder)
    lines = path.read_bytes().splitlines(keepends=True)
    bad = 1 + next(i for i, line in enumerate(lines) if json.loads(line)[0] == kind)
    name, doc = json.loads(lines[bad - 1])
    lines[bad - 1] = json.dumps([name, change(doc)]).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    cat, message, expected = _open_damaged(folder, lines[: bad - 1], tmp_path)
    assert message.startswith(f"partly read: {path}, line {bad}: "), message
    assert words in message and "the documents after it are left out" in message
    run = cat[source.uid]
    assert run.stop is None
    assert_same_run(run, expected[source.uid])
    cat.close()


def test_a_lookup_that_misses_says_files_were_left_out(export_runs, tmp_path):
    folder = tmp_path / "runs"
    files = _copy_exports(export_runs, folder, ("scalar", "grid"))
    lost = export_runs["grid"]
    files["grid"].write_bytes(b"[not json\n" + files["grid"].read_bytes())
    with pytest.warns(FolderWarning):
        cat = runbroker.open(folder)
    for key in (lost.uid[:8], lost.start["scan_id"]):
        with pytest.raises(KeyError) as err:
            cat[key]
        assert f"1 file of {folder} left out as unreadable ({files['grid'].name})" in (
            str(err.value)
        )
    cat.close()
    # With every file read, a miss is only a miss.
    files["grid"].unlink()
    with runbroker.open(folder) as cat, pytest.raises(KeyError) as err:
        cat[lost.uid[:8]]
    assert "left out" not in str(err.value)


def test_runs_with_equal_times_are_in_a_deterministic_order(tmp_path):
    docs = []
    for uid in ("b-run", "a-run", "d-run", "c-run"):
        bundle = compose_run(uid=uid, time=100.0, metadata={"scan_id": 1})
        docs += [("start", bundle.start_doc), ("stop", bundle.compose_stop())]
    sqlite = runbroker.open(tmp_path / "runs.db")
    sqlite.ingest(docs)
    folder = tmp_path / "runs"
    sqlite.export("jsonl", folder)
    with runbroker.open(folder) as cat:
        assert list(cat) == ["d-run", "c-run", "b-run", "a-run"] == list(sqlite)
        assert cat[-1].uid == "d-run" and cat[1].uid == "d-run"
    sqlite.close()


def test_a_written_run_is_a_jsonl_export(tmp_path):
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    cat = runbroker.open(f"{tmp_path / 'runs'}/")  # made: a folder, from the trailing slash
    assert isinstance(cat.store, FolderStore)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 5), sample="Cu")
    run = cat[-1]
    path = tmp_path / "runs" / f"{render(DEFAULT_TEMPLATE, run.start)}.jsonl"
    assert sorted(p.name for p in path.parent.iterdir()) == [".runbroker", path.name]
    copy = runbroker.temp()
    copy.ingest(read_jsonl(path))
    assert_same_run(copy[run.uid], run)
    cat.close()
    with runbroker.open(tmp_path / "runs", readonly=True) as ro:
        assert_same_run(ro[run.uid], copy[run.uid])
        with pytest.raises(PermissionError, match="read-only"):
            ro.insert("start", compose_run().start_doc)


def test_a_named_folder_catalog_takes_its_options(export_runs, tmp_path, monkeypatch):
    folder = tmp_path / "pack"
    _copy_exports(export_runs, folder, ("file_image",))
    run = export_runs["file_image"]
    (resource,) = [d for k, d in run.store.assets(run.uid) if k == "resource"]
    moved = tmp_path / "detector-files"
    shutil.copytree(resource["root"], moved)
    config = tmp_path / "catalogs.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            packed:
              uri: {folder}
              root_map: {{{resource["root"]}: {moved}}}
            """
        )
    )
    monkeypatch.setenv("RUNBROKER_CATALOGS", str(config))
    cat = runbroker.catalog["packed"]
    assert cat.assets.root_map == {resource["root"]: str(moved)}
    np.testing.assert_array_equal(
        cat[run.uid].primary.read()["adet_image"].values,
        run.primary.read()["adet_image"].values,
    )
    cat.close()
