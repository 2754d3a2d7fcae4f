"""B14 -- pack: 1,000 runs of 100 events with 1 GB of detector files, then open the pack.

The catalog holds 1,000 runs; each has 100 events of six scalar fields and an image field
whose frames an AD_HDF5 resource keeps in one HDF5 file of 100 frames (~1 MB), 1 GB over all
runs. ``runbroker.pack.pack(..., external="copy")`` -- replaying every run from the catalog,
writing one JSON Lines file per run, copying every detector file into the pack and computing
the SHA-256 of every file -- must reach 50% of the throughput (bytes of detector files per
second) of ``cp -r`` copying the same detector files in the same run. Both run three times,
alternating, into fresh folders on the same disk, each after ``sync`` and with nothing
deleted in between (ext4 makes new files slowly right after many were deleted); the best of
each is kept. For scale, the least any checksummed copy does -- ``cp -r`` and then a SHA-256
of every copy -- is timed alongside (info), with the CPU time of the pack and of ``cp -r``,
and what ``cp -r`` takes for the pack's run files alone. The same gigabyte is packed again
as 100 runs of 10 MB (info): the per-run cost weighs ten times less there.

Then the pack is opened as a folder-of-files catalog: ``runbroker.open(pack)`` plus
``cat[-1]`` must take under 200 ms, and a search (``Key("sample") == ...``, 1 hit) under
50 ms, with the folder's index built (``pack`` builds it). Run alone with
``python -m benchmarks b14``.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import event_model
import h5py
import numpy as np

import runbroker
from runbroker.pack import pack
from runbroker.pack.manifest import hash_files
from runbroker.queries import Key

from .common import CORES, FIELDS, Result, parallel_capacity, print_result, section

N_RUNS = 1_000
EVENTS = 100
FRAME = (50, 100)  # uint16: 10,000 bytes a frame, 1 MB a run
TARGET_PACK_RATIO = 0.5
ROUNDS = 3
TARGET_OPEN_MS = 200.0
TARGET_SEARCH_MS = 50.0


def _run_docs(
    i: int, det_root: Path, t0: float, frame: tuple[int, int]
) -> Iterator[tuple[str, dict]]:
    """One run's documents, its detector file written on the way."""
    rel = f"{i // 100:02d}/{uuid.uuid4()}.h5"
    path = det_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = rng.integers(0, 4096, (EVENTS, *frame), dtype="uint16")
    run = event_model.compose_run(
        metadata={"plan_name": "count", "scan_id": i, "sample": f"s{i}"}, time=t0 + i
    )
    keys = {f: {"source": "sim", "dtype": "number", "shape": []} for f in FIELDS}
    keys["img"] = {
        "source": "sim",
        "dtype": "array",
        "shape": list(frame),
        "external": "FILESTORE:",
    }
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    res = run.compose_resource(
        spec="AD_HDF5",
        root=str(det_root),
        resource_path=rel,
        resource_kwargs={"frame_per_point": 1},
    )
    datums = res.compose_datum_page({"point_number": list(range(EVENTS))})
    times = [t0 + i + k * 1e-3 for k in range(EVENTS)]
    data: dict[str, list] = {f: rng.random(EVENTS).tolist() for f in FIELDS}
    data["img"] = datums["datum_id"]
    yield "start", run.start_doc
    yield "descriptor", desc.descriptor_doc
    yield "resource", res.resource_doc
    yield "datum_page", datums
    yield (
        "event_page",
        desc.compose_event_page(
            data=data,
            timestamps={k: times for k in data},
            seq_num=list(range(1, EVENTS + 1)),
            time=times,
            filled={"img": [False] * EVENTS},
            validate=False,
        ),
    )
    yield "stop", run.compose_stop()


def _build(folder: Path, n_runs: int, frame: tuple[int, int]) -> tuple[runbroker.Catalog, Path]:
    det_root = folder / "detector"
    cat = runbroker.open(folder / "facility.db")
    t0 = time.time() - n_runs
    for i in range(n_runs):
        cat.ingest(_run_docs(i, det_root, t0, frame))
    return cat, det_root


def _copy_and_hash(source: Path, copy: Path) -> None:
    """What any pack that checksums its files must do at least: the copy, and a SHA-256 of
    every file (on as many threads as the pack uses)."""
    subprocess.run(["cp", "-r", source, copy], check=True)
    hashed = hash_files((str(p), p) for p in copy.rglob("*") if p.is_file())
    assert not any(isinstance(e, OSError) for e in hashed.values())


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed_cpu(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, float]:
    """Wall and CPU time (this process and the processes it waited for) of ``fn``.

    Every step starts from a clean disk cache: the gigabyte the step before left dirty would
    otherwise be written back during this one, on the same cores.
    """
    os.sync()
    cpu = _cpu()
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t, _cpu() - cpu


def _cpu() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run() -> list[Result]:
    section("B14 pack and open a pack")
    results = []
    with tempfile.TemporaryDirectory(prefix="b14-") as tmp:
        folder = Path(tmp) / "target"
        results += _pack_vs_cp(folder, N_RUNS, FRAME, TARGET_PACK_RATIO)
        results += _open(folder / "pack1")
    with tempfile.TemporaryDirectory(prefix="b14-") as tmp:
        # The same gigabyte in runs ten times as large: how the per-run cost weighs.
        results += _pack_vs_cp(Path(tmp), N_RUNS // 10, (FRAME[0] * 10, FRAME[1]), None)
    capacity = parallel_capacity()
    results.append(
        print_result(
            Result(
                "B14",
                f"cores' worth of work {CORES} processes do at once",
                capacity,
                "cores",
                note="info: what the copy, checksum and document threads share",
            )
        )
    )
    return results


def _pack_vs_cp(
    folder: Path, n_runs: int, frame: tuple[int, int], target: float | None
) -> list[Result]:
    """Pack ``n_runs`` runs of 100 frames of ``frame`` with their files, against ``cp -r``
    of the files and against copying and hashing them; the pack is left in pack1/."""
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cat, det_root = _build(folder, n_runs, frame)
    size = _du(det_root)
    mb = size // n_runs / 1e6
    print(
        f"  built {n_runs} runs, {size / 1e9:.2f} GB of detector files "
        f"in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    t_pack, t_cp, t_floor = float("inf"), float("inf"), float("inf")
    cpu_pack, cpu_cp = float("inf"), float("inf")
    for k in range(ROUNDS):
        copy = folder / f"cp{k}"
        t, cpu = _timed_cpu(subprocess.run, ["cp", "-r", det_root, copy], check=True)
        t_cp, cpu_cp = min(t_cp, t), min(cpu_cp, cpu)
        t_floor = min(t_floor, _timed_cpu(_copy_and_hash, det_root, folder / f"floor{k}")[0])
        dest = folder / f"pack{k}"
        t, cpu = _timed_cpu(pack, cat, dest, progress=False)
        t_pack, cpu_pack = min(t_pack, t), min(cpu_pack, cpu)
    # What the runs alone cost (documents, no detector files): the part that does not
    # scale with bytes, so it sets how close to cp -r a pack of small runs can come.
    t_docs = _timed_cpu(pack, cat, folder / "docs-only", external="ignore", progress=False)[0]
    # Creating the run files is part of that part: what cp -r takes for them alone.
    t_runs = _timed_cpu(
        subprocess.run, ["cp", "-r", folder / "docs-only", folder / "cp-runs"], check=True
    )[0]
    for path in folder.iterdir():
        if path.name != "pack1" and path.is_dir() and path != det_root:
            shutil.rmtree(path)
    cat.close()
    return [
        print_result(
            Result(
                "B14",
                f"pack {n_runs:,} runs of {mb:.0f} MB, {size / 1e9:.2f} GB (copy)",
                size / t_pack / 1e6,
                "MB/s",
                size / t_cp / 1e6,
                "cp -r",
                target=target,
                target_on="ratio",
                note=f"{'' if target else 'info: '}pack {t_pack:.2f} s, cp -r {t_cp:.2f} s",
            )
        ),
        print_result(
            Result(
                "B14",
                f"cp -r, then SHA-256 of every copy (threads), {n_runs:,} files",
                size / t_floor / 1e6,
                "MB/s",
                size / t_cp / 1e6,
                "cp -r",
                note=f"info: the least a checksummed copy does, {t_floor:.2f} s",
            )
        ),
        print_result(
            Result(
                "B14",
                "CPU time of the pack, all its processes",
                cpu_pack,
                "s",
                note=f"info: cp -r {cpu_cp:.2f} s; {CORES} cores, so the pack takes at least "
                f"{cpu_pack / CORES:.2f} s",
            )
        ),
        print_result(
            Result(
                "B14",
                f"pack {n_runs:,} runs, documents only (--external ignore)",
                t_docs * 1e3 / n_runs,
                "ms/run",
                note="info: the per-run cost inside the pack figure",
            )
        ),
        print_result(
            Result(
                "B14",
                f"cp -r of the {n_runs:,} run files alone",
                t_runs * 1e3 / n_runs,
                "ms/run",
                note=f"info: {t_runs:.2f} s; a pack creates these files as well as the copies",
            )
        ),
    ]


def _open(dest: Path) -> list[Result]:
    best_open, best_search = float("inf"), float("inf")
    for _ in range(5):
        t = time.perf_counter()
        cat = runbroker.open(dest)
        last = cat[-1]
        best_open = min(best_open, time.perf_counter() - t)
        assert last.metadata["start"]["scan_id"] == N_RUNS - 1
        t = time.perf_counter()
        hits = cat.search(Key("sample") == "s500")
        n = len(hits)
        (uid,) = list(hits)
        best_search = min(best_search, time.perf_counter() - t)
        assert n == 1 and uid
        cat.close()
    return [
        print_result(
            Result(
                "B14",
                f"open the pack ({N_RUNS:,} runs) + cat[-1]",
                best_open * 1e3,
                "ms",
                target=TARGET_OPEN_MS,
                higher_is_better=False,
            )
        ),
        print_result(
            Result(
                "B14",
                "search the pack, Key('sample') == ..., 1 hit",
                best_search * 1e3,
                "ms",
                target=TARGET_SEARCH_MS,
                higher_is_better=False,
            )
        ),
    ]
