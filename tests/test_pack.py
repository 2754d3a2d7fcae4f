"""Packs: runs with their detector files packed, moved, renamed, verified and unpacked.

The source catalog holds runs recorded by a real RunEngine with detectors that write real
HDF5 (area detector and stream resource), TIFF and NPY files, and a scalar scan.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runbroker
from runbroker.cli import main
from runbroker.export import read_documents
from runbroker.pack import PackCorruptError, PackError, pack, unpack, verify
from runbroker.queries import Key
from runbroker.testing.compare import assert_same_run
from runbroker.testing.readonly import run_read_only

SAMPLES = {"h5": "ad-hdf5", "tif": "ad-tiff", "npy": "npy", "sh5": "stream-hdf5", "scan": "none"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runbroker.Catalog]:
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from ophyd.sim import det, motor

    from runbroker.testing.detectors import (
        ADHDF5Detector,
        ADTIFFDetector,
        StreamHDF5Detector,
        npy_detector,
    )

    folder = tmp_path_factory.mktemp("facility")
    (folder / "npy").mkdir()
    cat = runbroker.open(folder / "runs.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(count([ADHDF5Detector("h5", folder / "det", shape=(4, 5))], 3), sample=SAMPLES["h5"])
    RE(count([ADTIFFDetector("tif", folder / "det", shape=(4, 5))], 3), sample=SAMPLES["tif"])
    RE(count([npy_detector(folder / "npy", shape=(3, 3))], 2), sample=SAMPLES["npy"])
    RE(count([StreamHDF5Detector("sh5", folder / "det", shape=(4, 5))], 3), sample=SAMPLES["sh5"])
    RE(scan([det], motor, 0, 1, 4), sample=SAMPLES["scan"])
    yield cat
    cat.close()


def _files_of(pack_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(pack_dir).as_posix()
        for p in pack_dir.rglob("*")
        if p.is_file() and ".runbroker" not in p.parts
    )


def _unpacked(pack_dir: Path, tmp_path: Path, **options: Any) -> runbroker.Catalog:
    home = tmp_path / "home" / "runs.db"
    home.parent.mkdir(exist_ok=True)
    report = unpack(pack_dir, into=str(home), progress=False, **options)
    assert not report.failed, report
    return runbroker.open(home)


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_copy_moved_and_renamed_reads_the_same(source, tmp_path, fmt):
    report = pack(source, tmp_path / "out" / "beamtime", format=fmt, progress=False)
    assert report.copied == len(source) and not report.failed
    # Move and rename the pack: nothing inside may depend on where it was written.
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(tmp_path / "out" / "beamtime", moved)
    assert verify(moved).ok
    files = _files_of(moved)
    assert sum(f.endswith(f".{fmt}") for f in files) == len(source)
    assert any(f.endswith(".h5") for f in files)
    assert any(f.endswith(".tiff") for f in files)
    assert any(f.endswith(".npy") for f in files)
    # Nothing inside points outside the pack: roots and URIs are relative, under files/.
    roots = [
        doc.get("root", doc.get("uri"))
        for f in files
        if f.endswith(f".{fmt}")
        for name, doc in read_documents(moved / f)
        if name in ("resource", "stream_resource")
    ]
    assert len(roots) == 4 and all(r.startswith("files/") for r in roots), roots
    manifest = json.loads((moved / "manifest.json").read_text())
    assert not any(os.path.isabs(p) for p in manifest["files"])
    assert "uri: ." in (moved / "catalog.yml").read_text()
    # Opened where it landed, as a folder catalog, and copied into a database: the same reads.
    packed = runbroker.open(moved, readonly=True)
    assert list(packed) == list(source)  # same runs, same order
    home = _unpacked(moved, tmp_path)
    for run in source.values():
        assert_same_run(packed[run.uid], run)
        assert_same_run(home[run.uid], run)
    packed.close()


def test_opening_a_fresh_pack_reads_no_run_file(source, tmp_path, monkeypatch):
    import runbroker.store.folderindex as folderindex

    pack(source, tmp_path / "p", query=~(Key("sample") == SAMPLES["h5"]), progress=False)
    pack(source, tmp_path / "p", append=True, progress=False)

    def parse(path: Any) -> None:
        raise AssertionError(f"{path} was read to open the pack")

    monkeypatch.setattr(folderindex, "parse", parse)
    cat = runbroker.open(tmp_path / "p", readonly=True)
    assert list(cat) == list(source)
    assert len(cat.search(Key("sample") == SAMPLES["tif"])) == 1
    cat.close()


def test_fill_puts_the_data_in_the_documents(source, tmp_path):
    pack(source, tmp_path / "p", external="fill", progress=False)
    files = _files_of(tmp_path / "p")
    assert not any(f.startswith("files/") for f in files)
    names = {
        name
        for f in files
        if f.endswith(".jsonl")
        for name, _ in map(json.loads, (tmp_path / "p" / f).read_text().splitlines())
    }
    assert not names & {"resource", "datum", "datum_page", "stream_resource", "stream_datum"}
    home = _unpacked(tmp_path / "p", tmp_path)
    packed = runbroker.open(tmp_path / "p")
    for run in source.values():
        expected = run.primary.read()
        for copy in (home, packed):
            got = copy[run.uid].primary.read()
            assert got.identical(expected), run.metadata["start"]["sample"]


def test_manifest_lists_the_files_for_transfer(source, tmp_path):
    pack(source, tmp_path / "p", external="manifest", progress=False)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    outside = manifest["outside"]
    listed = (tmp_path / "p" / "transfer" / "rsync-files.nul").read_text().split("\0")
    assert listed[:-1] == sorted(outside) and listed[-1] == ""
    assert all(os.path.isabs(p) and os.path.getsize(p) == n for p, n in outside.items())
    assert {Path(p).suffix for p in outside} == {".h5", ".tiff", ".npy"}
    globus = (tmp_path / "p" / "transfer" / "globus-batch.txt").read_text().splitlines()
    assert len(globus) == len(outside)
    assert not any(f.startswith("files/") for f in _files_of(tmp_path / "p"))
    # The files stayed where they were, so the runs read the same from the pack's documents.
    home = _unpacked(tmp_path / "p", tmp_path)
    for run in source.values():
        assert_same_run(home[run.uid], run)


def test_rsync_copies_every_listed_file_whatever_its_name(tmp_path):
    """A detector folder whose name holds a newline and spaces: rsync, run as the docs say
    on the pack's list, copies every file, and the packed run reads from the copies; the
    Globus batch, which cannot hold such a name, names it in a comment."""
    import numpy as np

    det = tmp_path / "beam time\nday 2"
    det.mkdir()
    for i in range(2):
        np.save(det / f"frame_{i}.npy", np.full((2, 2), i))
    cat = runbroker.open(tmp_path / "runs.db")
    uid = _npy_run(cat, det, [1, 0], "odd names")
    pack(cat, tmp_path / "p", external="manifest", progress=False)
    listed = tmp_path / "p" / "transfer" / "rsync-files.nul"
    remote = tmp_path / "remote"
    subprocess.run(
        ["rsync", "-a", "--from0", f"--files-from={listed}", "/", str(remote)], check=True
    )
    copied = remote / str(det).lstrip("/")
    assert sorted(p.name for p in copied.iterdir()) == ["frame_0.npy", "frame_1.npy"]
    # Globus reads its batch line by line: such names are comments there, named for the user.
    batch = (tmp_path / "p" / "transfer" / "globus-batch.txt").read_text()
    assert [shlex.split(line, comments=True) for line in batch.splitlines()] == [[], []]
    assert all(repr(str(det / f"frame_{i}.npy")) in batch for i in range(2))
    cat.close()
    shutil.rmtree(det)  # from now on only the copies can be read
    with runbroker.open(tmp_path / "p", root_map={str(det): str(copied)}) as packed:
        frames = packed[uid].primary.read()["img"].values
    assert frames.tolist() == [np.full((2, 2), 1).tolist(), np.full((2, 2), 0).tolist()]


def test_fill_packs_a_run_whose_frames_are_announced_late(tmp_path):
    """A stream detector announcing its frames after the events they belong to:
    --external fill still puts every frame in."""
    from runbroker.testing.detectors import late_frames_scan

    cat = runbroker.open(tmp_path / "runs.db")
    cat.ingest(late_frames_scan(tmp_path))
    run = cat[-1]
    names = [name for name, _ in run.store.documents(run.uid)]
    assert names.index("stream_datum") > names.index("event_page")  # late, as stored
    report = pack(cat, tmp_path / "p", external="fill", progress=False)
    assert report.copied == 1 and not report.failed, report
    with runbroker.open(tmp_path / "p", readonly=True) as packed:
        assert packed[run.uid].primary.read().identical(run.primary.read())


def test_ignore_leaves_the_files_out(source, tmp_path):
    pack(source, tmp_path / "p", external="ignore", progress=False)
    assert not any(f.startswith(("files/", "transfer/")) for f in _files_of(tmp_path / "p"))
    home = _unpacked(tmp_path / "p", tmp_path)
    run = source.search(Key("sample") == SAMPLES["h5"])[-1]

    # The documents are as they were (JSON Lines writes each descriptor before its events).
    def by_name(docs: Any) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for name, doc in docs:
            out.setdefault(name, []).append(doc)
        return out

    assert by_name(home[run.uid].documents()) == by_name(run.documents())


def _relative_root_catalog(
    source: runbroker.Catalog, folder: Path, kind: str = "npy"
) -> runbroker.Catalog:
    """A catalog holding the NPY run (or the stream_resource run, ``kind="sh5"``) with its
    frames beside it, under a relative root (or a relative ``file:`` URI)."""
    run = source.search(Key("sample") == SAMPLES[kind])[-1]
    if kind == "npy":
        (resource,) = [d for k, d in run.store.assets(run.uid) if k == "resource"]
        shutil.copytree(resource["root"], folder / "frames")
        relative = {"resource": {"root": "frames"}}
    else:
        (resource,) = [d for k, d in run.store.assets(run.uid) if k == "stream_resource"]
        path = Path(resource["uri"].removeprefix("file://localhost"))
        (folder / "frames").mkdir(parents=True)
        shutil.copy(path, folder / "frames" / path.name)
        relative = {"stream_resource": {"uri": f"file:frames/{path.name}"}}
    cat = runbroker.open(folder / "runs.db")
    cat.ingest((n, {**d, **relative.get(n, {})}) for n, d in run.documents())
    return cat


@pytest.mark.parametrize("kind", ["npy", "sh5"])
@pytest.mark.parametrize("external", ["manifest", "ignore"])
def test_relative_roots_point_at_the_files_left_outside(source, tmp_path, external, kind):
    # Relative to the source catalog's folder, the root would be taken from the pack's.
    facility = _relative_root_catalog(source, tmp_path / "facility", kind)
    run = facility[-1]
    pack(facility, tmp_path / "p", external=external, progress=False)
    with runbroker.open(tmp_path / "p", readonly=True) as packed:
        assert_same_run(packed[run.uid], run)
    assert_same_run(_unpacked(tmp_path / "p", tmp_path)[run.uid], run)
    facility.close()


def test_corrupt_byte_is_named_by_verify_and_unpack(source, tmp_path, capsys):
    pack(source, tmp_path / "p", progress=False)
    victim = next(f for f in _files_of(tmp_path / "p") if f.endswith(".h5"))
    path = tmp_path / "p" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify(tmp_path / "p")
    assert not report.ok and [p for p, _ in report.corrupt] == [victim]
    assert main(["verify", str(tmp_path / "p"), "-q"]) == 3
    assert victim in capsys.readouterr().out
    home = tmp_path / "home.db"
    with pytest.raises(PackCorruptError, match=victim):
        unpack(tmp_path / "p", into=str(home), progress=False)
    assert not home.exists()  # nothing was done


def test_missing_file_is_named(source, tmp_path, capsys):
    pack(source, tmp_path / "p", progress=False)
    victim = next(f for f in _files_of(tmp_path / "p") if f.endswith(".tiff"))
    (tmp_path / "p" / victim).unlink()
    report = verify(tmp_path / "p")
    assert report.missing == [victim]
    assert main(["unpack", str(tmp_path / "p"), "--into", str(tmp_path / "h.db"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "missing: " + victim in err and "nothing was done" in err


# Packs the catalog given, stopping the process by the signal given while the NPY run is being
# packed (its handler is asked for the files of its second datum: the run is half written).
_STOPPED = """
import os, signal, sys
import runbroker
from runbroker.assets.handlers import NpySeqHandler
from runbroker.assets.registry import register_handler
from runbroker.cli import main

class Stopping(NpySeqHandler):
    def get_file_list(self, datum_kwargs):
        if any(kw.get("index") == 1 for kw in datum_kwargs):
            if sys.argv[3] == "SIGINT":
                # What Ctrl-C becomes in the main thread, raised right here: a real SIGINT
                # is handled at the interpreter's next check, which load can delay.
                raise KeyboardInterrupt
            os.kill(os.getpid(), getattr(signal, sys.argv[3]))
        return super().get_file_list(datum_kwargs)

register_handler("NPY_SEQ", Stopping, overwrite=True)
sys.exit(main(["pack", sys.argv[1], sys.argv[2], "--all", "-q"]))
"""


@pytest.mark.parametrize("signal", ["SIGINT", "SIGKILL"])
def test_a_stopped_pack_keeps_whole_runs_and_append_finishes_it(source, tmp_path, signal):
    dest = tmp_path / "p"
    uri = source.store.uri.removeprefix("sqlite:///")
    command = [sys.executable, "-c", _STOPPED, uri, str(dest), signal]
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if signal == "SIGINT":  # Ctrl-C: told what is in the pack and how to go on
        assert stopped.returncode == 130, stopped.stderr
        assert "--append" in stopped.stderr and "Traceback" not in stopped.stderr
    else:
        assert stopped.returncode == -9
    # Only whole runs are in the pack: the one stopped midway left nothing under its name.
    # (Killed, the process wrote no manifest after the first: the runs it lists are whole,
    # and append packs the others again. Nor had it always written the runs before: their
    # files wait in memory for a worker thread.)
    assert verify(dest).ok
    with runbroker.open(dest, readonly=True) as partial:
        listed = json.loads((dest / "manifest.json").read_text())["runs"]
        assert set(listed) <= set(partial)
        samples = {run.start["sample"] for run in partial.values()}
        before = {SAMPLES["h5"], SAMPLES["tif"]}  # the two runs packed before it
        assert samples == before if signal == "SIGINT" else samples <= before
    report = pack(source, dest, append=True, progress=False)
    assert not report.failed and report.copied + report.skipped == len(source)
    report = verify(dest)
    assert report.ok and not report.extra, report
    with runbroker.open(dest, readonly=True) as packed:
        assert list(packed) == list(source)
        for run in source.values():
            assert_same_run(packed[run.uid], run)


def test_not_a_pack(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match=r"has no manifest\.json"):
        verify(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(PackError, match="manifest is corrupt"):
        verify(tmp_path / "empty")


def test_append_twice_adds_without_duplicates(source, tmp_path):
    dest = tmp_path / "p"
    first = pack(source, dest, query=Key("sample") == SAMPLES["h5"], progress=False)
    assert first.copied == 1
    with pytest.raises(FileExistsError, match="--append"):
        pack(source, dest, progress=False)
    second = pack(source, dest, append=True, progress=False)
    assert (second.copied, second.skipped) == (len(source) - 1, 1)
    third = pack(source, dest, append=True, progress=False)
    assert (third.copied, third.skipped) == (0, len(source))
    runs = [f for f in _files_of(dest) if f.endswith(".jsonl")]
    assert len(runs) == len(source)
    assert verify(dest).ok
    home = _unpacked(dest, tmp_path)
    assert sorted(home) == sorted(source)


def test_append_replaces_a_transfer_list_of_an_older_runbroker(source, tmp_path):
    """A pack made before the rsync list was NUL-separated holds transfer/rsync-files.txt;
    appending must not leave it behind, naming only the runs packed before."""
    dest = tmp_path / "p"
    pack(source, dest, query=Key("sample") == SAMPLES["h5"], external="manifest", progress=False)
    old = dest / "transfer" / "rsync-files.txt"
    old.write_text(
        "".join(f"{p}\n" for p in json.loads((dest / "manifest.json").read_text())["outside"])
    )
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"]["transfer/rsync-files.txt"] = {
        "size": old.stat().st_size,
        "sha256": hashlib.sha256(old.read_bytes()).hexdigest(),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest))
    assert verify(dest).ok
    pack(source, dest, append=True, external="manifest", progress=False)
    files = json.loads((dest / "manifest.json").read_text())["files"]
    assert sorted(f for f in files if f.startswith("transfer/")) == [
        "transfer/globus-batch.txt",
        "transfer/rsync-files.nul",
    ]
    assert not old.exists() and verify(dest).ok


def test_a_failing_run_is_reported_and_leaves_nothing(source, tmp_path):
    # A second catalog whose HDF5 run lost its file: that run fails, the others are packed.
    broken = runbroker.open(tmp_path / "broken.db")
    broken.ingest(source.search(Key("sample") == SAMPLES["scan"])[-1].documents())
    run = source.search(Key("sample") == SAMPLES["h5"])[-1]
    docs = list(run.documents())
    for name, doc in docs:
        if name == "resource":
            doc["root"] = str(tmp_path / "gone")
    broken.ingest(docs)
    report = pack(broken, tmp_path / "p", progress=False)
    assert report.copied == 1
    ((uid, message),) = report.failed
    assert uid == run.uid and str(tmp_path / "gone") in message
    assert not any(run.uid in f for f in _files_of(tmp_path / "p"))
    assert verify(tmp_path / "p").ok
    with pytest.raises(PackError, match="gone"):
        pack(broken, tmp_path / "strict", strict=True, progress=False)


def _npy_run(
    cat: runbroker.Catalog, root: Path, indexes: list[int], sample: str, spec: str = "NPY_SEQ"
) -> str:
    """A run reading the frames ``<root>/frame_<i>.npy`` of ``indexes`` (with ``spec``
    NPY_FOLDER: ``<root>/frame/<i>.npy``); its uid."""
    from event_model import compose_run

    bundle = compose_run(metadata={"sample": sample})
    resource = bundle.compose_resource(
        spec=spec, root=str(root), resource_path="frame", resource_kwargs={}
    )
    key = {"source": "cam", "dtype": "array", "shape": [2, 2], "external": "FILESTORE:"}
    desc = bundle.compose_descriptor(name="primary", data_keys={"img": key})
    docs = [("start", bundle.start_doc), ("resource", resource.resource_doc)]
    docs.append(("descriptor", desc.descriptor_doc))
    for seq, i in enumerate(indexes, 1):
        datum = resource.compose_datum(datum_kwargs={"index": i})
        event = desc.compose_event(
            data={"img": datum["datum_id"]}, timestamps={"img": 1.0}, seq_num=seq
        )
        docs += [("datum", datum), ("event", event)]
    cat.ingest([*docs, ("stop", bundle.compose_stop())])
    return bundle.start_doc["uid"]


_LIMITED = """
import json, resource, signal, sys
import runbroker
from runbroker.pack import pack

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
report = pack(runbroker.open(sys.argv[1], readonly=True), sys.argv[2], progress=False)
print(json.dumps(report.failed))
"""


def test_a_run_failing_late_takes_out_only_files_no_other_run_reads(tmp_path):
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        np.save(frames / f"frame_{i}.npy", np.full((2, 2), i))
    with open(frames / "frame_2.npy", "wb") as f:  # too big to copy: fails as a full disk does
        np.save(f, np.zeros((2, 2)))
        f.write(bytes(32 * 2**20))
    cat = runbroker.open(tmp_path / "runs.db")
    first = _npy_run(cat, frames, [0, 1, 2], "first")  # its copies start first
    second = _npy_run(cat, frames, [0, 1], "second")  # shares two frames with it
    cat.close()
    command = [sys.executable, "-c", _LIMITED, str(tmp_path / "runs.db"), str(tmp_path / "p")]
    done = subprocess.run([*command, str(16 * 2**20)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ((uid, message),) = json.loads(done.stdout)
    assert uid == first and "frame_2.npy" in message
    assert verify(tmp_path / "p").ok
    names = [Path(f).name for f in _files_of(tmp_path / "p") if f.startswith("files/")]
    assert sorted(names) == ["frame_0.npy", "frame_1.npy"]  # the second run's, kept
    source = runbroker.open(tmp_path / "runs.db", readonly=True)
    with runbroker.open(tmp_path / "p", readonly=True) as packed:
        assert list(packed) == [second]
        assert_same_run(packed[second], source[second])
    source.close()


def test_a_detector_path_used_twice_never_serves_another_run(tmp_path):
    import numpy as np

    frames, packs, cats = tmp_path / "det", {}, {}
    frames.mkdir()
    for year in (2024, 2025):  # the facility reuses the file names: other data, same paths
        for i in range(2):
            np.save(frames / f"frame_{i}.npy", np.full((2, 2), year))
        cats[year] = runbroker.open(tmp_path / f"{year}.db")
        _npy_run(cats[year], frames, [0, 1], str(year))
        packs[year] = tmp_path / f"pack{year}"
        pack(cats[year], packs[year], progress=False)
    # Merged into one pack: the second run is refused (it would read the first one's frames).
    report = pack(cats[2025], packs[2024], append=True, progress=False)
    ((uid, message),) = report.failed
    assert uid == cats[2025][-1].uid and "differs from files/" in message
    # Unpacked into one database: refused before anything is copied, unless put elsewhere.
    home = tmp_path / "home.db"
    unpack(packs[2024], into=str(home), progress=False)
    with pytest.raises(PackError, match=r"differ from files already there.*--files-root"):
        unpack(packs[2025], into=str(home), progress=False)
    assert len(runbroker.open(home)) == 1
    unpack(packs[2025], into=str(home), files_root=tmp_path / "files2025", progress=False)
    # Each run reads its own year's frames (at the facility, 2024's are gone by now).
    for cat, years in (
        (runbroker.open(home), (2024, 2025)),
        (runbroker.open(packs[2024]), (2024,)),
    ):
        assert len(cat) == len(years)
        for year in years:
            assert (cat[cats[year][-1].uid].primary.read()["img"].values == year).all()
        cat.close()


class NpyFolder:
    """Frames ``<folder>/<index>.npy`` of the folder a resource names, which is all it lists
    as its file (as the handler of a Zarr store would)."""

    def __init__(self, full_path: str, **_: Any) -> None:
        self.full_path = full_path

    def __call__(self, index: int = 0) -> Any:
        import numpy as np

        return np.load(os.path.join(self.full_path, f"{index}.npy"))

    def get_file_list(self, datum_kwargs: Any) -> list[str]:
        return [self.full_path]


@pytest.mark.parametrize("external", ["copy", "manifest"])
def test_a_detector_file_that_is_a_folder_goes_whole(tmp_path, external):
    import numpy as np

    det = tmp_path / 'det\'s "odd" name'  # quoted in the Globus list as a shell would
    frames = det / "frame"
    (frames / "attrs").mkdir(parents=True)
    for i in range(3):
        np.save(frames / f"{i}.npy", np.full((2, 2), i))
    (frames / "attrs" / ".zattrs").write_text("{}")
    handlers = {"NPY_FOLDER": NpyFolder}
    cat = runbroker.open(tmp_path / "runs.db", handlers=handlers)
    uid = _npy_run(cat, det, [0, 2], "folder", spec="NPY_FOLDER")
    report = pack(cat, tmp_path / "p", external=external, progress=False)
    assert report.copied == 1 and not report.failed, report
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    listed = manifest["files"] if external == "copy" else manifest["outside"]
    under = sorted(f.split("/frame/", 1)[1] for f in listed if "/frame/" in f)
    assert under == ["0.npy", "1.npy", "2.npy", "attrs/.zattrs"]  # all of it, once
    if external == "manifest":
        lines = (tmp_path / "p" / "transfer" / "globus-batch.txt").read_text().splitlines()
        assert [shlex.split(line) for line in lines] == [[p, p] for p in sorted(listed)]
    with runbroker.open(tmp_path / "p", readonly=True, handlers=handlers) as packed:
        assert_same_run(packed[uid], cat[uid])
    cat.close()


@pytest.mark.parametrize("suffix", [".tar", ".tar.zst"])
def test_archive(source, tmp_path, suffix):
    dest = tmp_path / f"beamtime{suffix}"
    report = pack(source, dest, archive=True, progress=False)
    assert report.path == dest and dest.is_file()
    assert verify(dest).ok
    renamed = dest.rename(tmp_path / f"renamed{suffix}")
    home = tmp_path / "home.db"
    unpack(renamed, into=str(home), to=tmp_path / "x", progress=False)
    assert (tmp_path / "x" / "renamed" / "manifest.json").exists()
    cat = runbroker.open(home)
    for run in source.values():
        assert_same_run(cat[run.uid], run)
    with pytest.raises(PackError, match="cannot be appended"):
        pack(source, renamed, archive=True, append=True, progress=False)


def test_corrupt_archive_is_named(source, tmp_path):
    dest = tmp_path / "p.tar"
    pack(source, dest, archive=True, progress=False)
    with tarfile.open(dest) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".npy"))
    data = bytearray(dest.read_bytes())
    data[member.offset_data + member.size - 1] ^= 0xFF
    dest.write_bytes(bytes(data))
    report = verify(dest)
    assert [p for p, _ in report.corrupt] == [member.name.partition("/")[2]]
    with pytest.raises(PackCorruptError, match=r"\.npy"):
        unpack(dest, into=str(tmp_path / "home.db"), progress=False)
    assert not (tmp_path / "p").exists()  # not even extracted


def _with_member(pack_dir: Path, dest: Path, member: tarfile.TarInfo) -> Path:
    """An archive of the pack, plus ``member`` (after every file: verification sees the
    manifest first and finds all the files it lists)."""
    import io

    with tarfile.open(dest, "w") as tar:
        tar.add(pack_dir / "manifest.json", arcname="p/manifest.json")
        for rel in _files_of(pack_dir):
            if rel != "manifest.json":
                tar.add(pack_dir / rel, arcname=f"p/{rel}")
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return dest


def _member(name: str, link: str | None = None) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    if link is None:
        member.size = 1
    else:
        member.type, member.linkname = tarfile.SYMTYPE, link
    return member


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (_member("p/../../evil.txt"), "climbs out"),
        (_member("/tmp/evil.txt"), "outside the pack folder 'p'"),
        (_member("other/evil.txt"), "outside the pack folder 'p'"),
        (_member("p/files/link", link="/etc"), "a link"),
    ],
)
def test_an_archive_member_escaping_the_pack_is_refused(source, tmp_path, member, says):
    from runbroker.pack.archive import extract

    pack(source, tmp_path / "p", query=Key("sample") == SAMPLES["npy"], progress=False)
    archive = _with_member(tmp_path / "p", tmp_path / "evil.tar", member)
    report = verify(archive)
    assert [(name, says in why) for name, why in report.corrupt] == [(member.name, True)]
    with pytest.raises(PackCorruptError, match=says):
        unpack(archive, into=str(tmp_path / "home.db"), to=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "home.db").exists()
    # Extraction on its own refuses it too, and leaves nothing half-extracted.
    with pytest.raises(PackError, match="refused"):
        extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_unpack_into_a_database_it_cannot_reach_shows_no_password(source, tmp_path, capsys):
    pack(source, tmp_path / "p", progress=False)
    url = "postgresql://u:hunter2secret@127.0.0.1:1/db"  # port 1: nothing listens there
    assert main(["unpack", str(tmp_path / "p"), "--into", url, "-q"]) == 1
    err = capsys.readouterr().err
    assert "cannot unpack into postgresql://u:***@127.0.0.1:1/db" in err
    assert "hunter2secret" not in err


def test_unpack_into_postgresql(source, tmp_path, postgres_url):
    from runbroker.testing.postgres import new_schema

    pack(source, tmp_path / "p", progress=False)
    url = new_schema(postgres_url, f"pack{os.getpid()}")
    with pytest.raises(PackError, match="--files-root"):
        unpack(tmp_path / "p", into=url, progress=False)
    unpack(tmp_path / "p", into=url, files_root=tmp_path / "shared", progress=False)
    assert (tmp_path / "shared").is_dir()
    cat = runbroker.open(url)
    try:
        for run in source.values():
            assert_same_run(cat[run.uid], run)
    finally:
        cat.close()


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "site"))
    monkeypatch.delenv("RUNBROKER_CATALOGS", raising=False)
    return tmp_path / "config" / "runbroker" / "catalogs"


def test_unpack_registers_a_name_and_merges(source, tmp_path, config_home):
    h5 = Key("sample") == SAMPLES["h5"]
    pack(source, tmp_path / "a", query=h5, progress=False)
    pack(source, tmp_path / "b", query=~h5, progress=False)
    report = unpack(tmp_path / "a", name="beamtime", progress=False)
    assert str(report).startswith(f"catalog 'beamtime' is the pack {tmp_path / 'a'}: 1 run, ")
    assert (config_home / "beamtime.yml").exists()
    assert len(runbroker.catalog["beamtime"]) == 1
    code = "import runbroker; print(len(runbroker.catalog['beamtime']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"  # usable at once in a new process
    # Merging the second pack into the same name adds its runs to the first, once.
    assert unpack(tmp_path / "b", name="beamtime", progress=False).copied == len(source) - 1
    assert unpack(tmp_path / "b", name="beamtime", progress=False).copied == 0
    assert verify(tmp_path / "a").ok
    merged = runbroker.catalog["beamtime"]
    assert sorted(merged) == sorted(source)
    for run in source.values():
        assert_same_run(merged[run.uid], run)


def test_an_unpacked_archive_opens_from_its_index(source, tmp_path, config_home):
    """An archive carries no index (derived data): unpack builds it, so the first open reads
    headers from it instead of every run file."""
    from runbroker.store.folderindex import FolderIndex

    pack(source, tmp_path / "beamtime.tar", archive=True, progress=False)
    unpack(tmp_path / "beamtime.tar", to=tmp_path / "home", progress=False)
    folder = tmp_path / "home" / "beamtime"
    index = FolderIndex(folder)
    try:
        indexed = {e.uid for e in index.entries().values() if not e.problem}
    finally:
        index.close()
    assert indexed == set(source)
    assert sorted(runbroker.catalog["beamtime"]) == sorted(source)


def test_unpack_merges_into_a_named_database(source, tmp_path, config_home, capsys):
    db = tmp_path / "laptop" / "runs.db"
    db.parent.mkdir()
    runbroker.open(db).close()
    assert main(["catalogs", "add", "laptop", str(db)]) == 0
    pack(source, tmp_path / "p", progress=False)
    assert main(["unpack", str(tmp_path / "p"), "--name", "laptop", "-q"]) == 0
    assert main(["unpack", str(tmp_path / "p"), "--name", "laptop", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(source)} already" in out
    cat = runbroker.open(db)
    assert sorted(cat) == sorted(source)
    for run in source.values():
        assert_same_run(cat[run.uid], run)
    assert (db.parent / "files").is_dir()  # detector files copied beside the database


def test_unpack_into_a_folder_and_merge_into_a_named_folder(source, tmp_path, config_home):
    pack(source, tmp_path / "p", progress=False)
    # A folder catalog takes relative roots from itself: the detector files go inside it.
    unpack(tmp_path / "p", into=f"{tmp_path / 'home'}/", progress=False)
    assert (tmp_path / "home" / "files").is_dir()
    runs = tmp_path / "runs"
    runs.mkdir()
    assert main(["catalogs", "add", "runs", str(runs)]) == 0
    assert unpack(tmp_path / "p", name="runs", progress=False).copied == len(source)
    shutil.move(tmp_path / "home", tmp_path / "moved")  # nothing points outside either
    for cat in (runbroker.open(tmp_path / "moved"), runbroker.catalog["runs"]):
        for run in source.values():
            assert_same_run(cat[run.uid], run)
        cat.close()


def test_unpack_into_with_a_name_taken_elsewhere_is_refused(source, tmp_path, config_home):
    pack(source, tmp_path / "p", progress=False)
    other = tmp_path / "other.db"
    runbroker.open(other).close()
    assert main(["catalogs", "add", "laptop", str(other)]) == 0
    home = tmp_path / "home.db"
    with pytest.raises(PackError, match=f"--name laptop: that name is taken by {other}"):
        unpack(tmp_path / "p", into=str(home), name="laptop", progress=False)
    assert not home.exists()  # nothing was done
    assert len(runbroker.catalog["laptop"]) == 0
    # The same catalog under another spelling is not "taken": the runs go in, once.
    report = unpack(tmp_path / "p", into=f"sqlite:///{other}", name="laptop", progress=False)
    assert report.copied == len(source)
    assert sorted(runbroker.catalog["laptop"]) == sorted(source)
    # A new name is registered for the database unpacked into.
    unpack(tmp_path / "p", into=str(home), name="home", progress=False)
    assert sorted(runbroker.catalog["home"]) == sorted(source)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("gopher://localhost:1/", "unknown scheme"),
        ("http://127.0.0.1:1/", "cannot reach the runbroker server at http://127.0.0.1:1"),
        ("postgresql://x@127.0.0.1:1/no", "127.0.0.1"),
    ],
)
def test_unpack_into_what_cannot_be_opened_names_it(source, tmp_path, capsys, uri, says):
    pack(source, tmp_path / "p", progress=False)
    files = tmp_path / "f"
    assert main(["unpack", str(tmp_path / "p"), "--into", uri, "--files-root", str(files)]) == 1
    err = capsys.readouterr().err
    assert f"cannot unpack into {uri}: " in err and says in err and "Traceback" not in err
    assert not files.exists()


def test_cli_pack_selection(source, tmp_path, capsys):
    uri = source.store.uri.removeprefix("sqlite:///")
    assert main(["pack", uri, str(tmp_path / "p")]) == 1
    assert "--all" in capsys.readouterr().err
    run = source.search(Key("sample") == SAMPLES["tif"])[-1]
    (tmp_path / "uids.txt").write_text(f"# chosen\n{run.uid}\n")
    assert main(["pack", uri, str(tmp_path / "p"), "--uids", str(tmp_path / "uids.txt"), "-q"]) == 0
    assert "packed 1 run" in capsys.readouterr().out
    query = (Key("sample") == SAMPLES["npy"]).to_json()
    args = ["pack", uri, str(tmp_path / "p"), "--query", query, "-q"]
    assert main(args) == 1 and "--append" in capsys.readouterr().err
    assert main([*args, "--append", "--external", "fill", "--format", "msgpack"]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert sorted(r["external"] for r in manifest["runs"].values()) == ["copy", "fill"]
    assert main(["pack", uri, str(tmp_path / "all.tar.zst"), "--all", "--archive", "-q"]) == 0
    assert main(["verify", str(tmp_path / "all.tar.zst"), "-q"]) == 0
    (tmp_path / "bad.txt").write_text("not-a-uid\n")
    assert main(["pack", uri, str(tmp_path / "q"), "--uids", str(tmp_path / "bad.txt")]) == 1
    assert "not-a-uid" in capsys.readouterr().err


def test_cli_packs_a_named_catalog_with_its_root_map(source, tmp_path, config_home):
    # The detector files moved: only the named catalog's root_map finds them.
    run = source.search(Key("sample") == SAMPLES["npy"])[-1]
    (resource,) = [d for k, d in run.store.assets(run.uid) if k == "resource"]
    moved = tmp_path / "moved"
    shutil.copytree(resource["root"], moved)
    facility = runbroker.open(tmp_path / "facility.db")
    facility.ingest(run.documents())
    facility.close()
    uri, option = str(tmp_path / "facility.db"), f"{resource['root']}={moved}"
    assert main(["catalogs", "add", "facility", uri, "--root-map", option]) == 0
    assert main(["pack", "facility", str(tmp_path / "p"), "--all", "-q"]) == 0
    assert any(
        f.startswith(f"files/{moved.as_posix().lstrip('/')}/") for f in _files_of(tmp_path / "p")
    )
    with runbroker.open(tmp_path / "p", readonly=True) as packed:
        assert_same_run(packed[run.uid], run)


def test_cli_says_what_is_wrong_and_writes_nothing(source, tmp_path, capsys):
    uri = source.store.uri.removeprefix("sqlite:///")
    afile = tmp_path / "afile"
    afile.write_text("not a pack")
    nothing = (Key("sample") == "no such sample").to_json()
    cases = [
        (["pack", uri, str(tmp_path / "p"), "--query", "{bad"], "--query '{bad': "),
        (["pack", uri, str(tmp_path / "p"), "--uids", str(tmp_path / "no")], "--uids "),
        (["pack", uri, str(tmp_path / "p"), "--query", nothing], "nothing was packed"),
        (["pack", uri, str(tmp_path / "p.tar"), "--archive", "--query", nothing], "no run"),
        (["pack", uri, str(afile), "--all"], "afile is a file; a pack is a folder"),
        (["pack", uri, str(afile), "--all", "--append"], "afile is a file"),
        (["unpack", str(afile)], "afile is a file, not a pack"),
        (["verify", str(afile)], "afile is a file, not a pack"),
        (["verify", str(tmp_path / "nowhere")], "no pack at"),
    ]
    for args, says in cases:
        assert main([*args, "-q"]) == 1, args
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (args, err)
    for options in ({"external": "link"}, {"format": "tar"}):
        with pytest.raises(ValueError, match=r"link|tar"):
            pack(source, tmp_path / "p", progress=False, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert afile.read_text() == "not a pack"


@pytest.mark.parametrize("external", ["copy", "fill"])
def test_run_files_past_the_memory_limit_are_written_as_encoded(
    source, tmp_path, monkeypatch, external
):
    # A run file larger than the limit is written straight to its staged file instead of
    # waiting in memory for a worker thread; with a 1 kB limit every run here is.
    from runbroker.pack import writer

    monkeypatch.setattr(writer, "_IN_MEMORY", 1000)
    dest = tmp_path / "p"
    report = pack(source, dest, external=external, progress=False)
    assert report.copied == len(source) and not report.failed
    assert verify(dest).ok
    assert not list((dest / ".runbroker" / "incoming").iterdir())  # every staged file moved
    with runbroker.open(dest, readonly=True) as packed:
        for run in source.values():
            assert_same_run(packed[run.uid], run)


def test_a_pack_being_written_by_another_process_is_refused(source, tmp_path):
    dest = tmp_path / "p"
    pack(source, dest, query=Key("sample") == SAMPLES["h5"], progress=False)
    # Another process adding runs to the pack holds its lock the whole time.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
            "lock.acquire(); print('held', flush=True); sys.stdin.read()",
            str(dest / ".runbroker" / "pack.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        before = (dest / "manifest.json").read_bytes()
        with pytest.raises(PackError, match="being written by another runbroker process"):
            pack(source, dest, append=True, progress=False)
        assert (dest / "manifest.json").read_bytes() == before  # nothing was touched
    finally:
        holder.communicate("")
    report = pack(source, dest, append=True, progress=False)  # once it is done
    assert (report.copied, report.skipped) == (len(source) - 1, 1)
    assert verify(dest).ok


_READ_ONLY_OPEN = """
import json, sys
import runbroker
import runbroker.store.folderindex as folderindex

def parse(path, *args, **kwargs):
    raise AssertionError(f"{path} was read to open the pack")

folderindex.parse = parse
cat = runbroker.open(sys.argv[1])
print(json.dumps({"index": str(cat.store.index_path), "uids": list(cat)}))
"""


def test_a_pack_on_read_only_media_opens_from_the_index_it_ships(source, tmp_path):
    """The pack's own index seeds the one kept in the cache folder: no run file is read."""
    dest, cache = tmp_path / "p", tmp_path / "cache"
    pack(source, dest, progress=False)
    cache.mkdir()
    result = run_read_only(
        dest,
        [sys.executable, "-c", _READ_ONLY_OPEN, str(dest)],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert Path(got["index"]).parent == cache / "runbroker" / "folders"
    assert got["uids"] == list(source)
    assert verify(dest).ok  # the pack itself was not touched


def test_cli_pack_takes_uid_prefixes_and_scan_ids_as_show_does(source, tmp_path, capsys):
    uri = source.store.uri.removeprefix("sqlite:///")
    run = source.search(Key("sample") == SAMPLES["tif"])[-1]
    (tmp_path / "uids.txt").write_text(f"{run.uid[:8]}  # a prefix\n-1\n")
    assert main(["pack", uri, str(tmp_path / "p"), "--uids", str(tmp_path / "uids.txt"), "-q"]) == 0
    assert "packed 2 runs" in capsys.readouterr().out
    with runbroker.open(tmp_path / "p", readonly=True) as packed:
        assert set(packed) == {run.uid, source[-1].uid}
