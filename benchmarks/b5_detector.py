"""B5 / B6 -- detector files: ``run.primary.read()`` of AD HDF5 images against h5py directly.

B5: one run of 1,000 512x512 uint16 frames in ONE AD_HDF5 file (one ``resource``, 1,000
``datum``). ``read(["det_image"])`` must reach 50% of the throughput of h5py reading the same
dataset, ``f["/entry/data/data"][:]``; ``to_dask()`` must return in under 50 ms and read no
pixels (checked with the process's read byte counter, ``/proc/self/io`` ``rchar``).

B6: one run whose 100 AD_HDF5 resources hold 10 frames each (1,000 events, 100 files).
``read()`` must reach 30% of h5py opening each file, reading its dataset and concatenating.

The files and the ``resource`` / ``datum`` documents come from
``runbroker.testing.detectors.ADHDF5Detector`` (staged once per file, triggered once per
frame, without a RunEngine); the run, descriptor and event pages around them are made with
``event_model`` and stored with ``cat.ingest`` in a ``runbroker.temp()`` catalog. Both sides
are measured with a warm page cache: every file is read once before timing, then each side is
timed best of 3 after a warm-up call, the two sides alternating. Throughput is image bytes /
seconds.

Run alone with ``python -m benchmarks b5 b6`` (B6 alone: ``python -m benchmarks b6``).
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import event_model
import h5py
import numpy as np

import runbroker
from runbroker.testing.detectors import HDF5_DATASET, ADHDF5Detector

from .common import Result, best, print_result, section, timings

SHAPE = (512, 512)
DTYPE = "uint16"
FIELD = "det_image"
REPEATS = 3
TARGET_B5_RATIO = 0.5  # read() throughput / h5py throughput, one file
TARGET_B6_RATIO = 0.3  # the same over 100 files
TARGET_DASK_MS = 50.0


def _build(
    folder: Path, n_files: int, frames_per_file: int
) -> tuple[runbroker.Catalog, list[Path]]:
    """One run whose ``n_files`` AD_HDF5 resources each hold ``frames_per_file`` frames."""
    det = ADHDF5Detector("det", folder, shape=SHAPE, dtype=DTYPE)
    run = event_model.compose_run(metadata={"plan_name": "count", "detectors": ["det"]})
    desc = run.compose_descriptor(
        name="primary", data_keys=det.describe(), object_keys={"det": list(det.describe())}
    )

    def docs() -> Iterator[tuple[str, dict]]:
        yield "start", run.start_doc
        yield "descriptor", desc.descriptor_doc
        seq, t0 = 1, time.time()
        for _ in range(n_files):
            det.stage()
            datum_ids, totals = [], []
            for _ in range(frames_per_file):
                det.trigger()
                reading = det.read()
                datum_ids.append(reading[FIELD]["value"])
                totals.append(reading["det_stats_total"]["value"])
            det.unstage()
            for name, doc in det.collect_asset_docs():
                if name == "resource":
                    doc["run_start"] = run.start_doc["uid"]  # as the RunEngine fills it in
                yield name, doc
            # Distinct, increasing times: 1 ms per frame, as a 1 kHz detector.
            times = [t0 + k * 1e-3 for k in range(seq, seq + frames_per_file)]
            yield (
                "event_page",
                desc.compose_event_page(
                    data={FIELD: datum_ids, "det_stats_total": totals},
                    timestamps={FIELD: times, "det_stats_total": times},
                    seq_num=list(range(seq, seq + frames_per_file)),
                    time=times,
                    filled={FIELD: [False] * frames_per_file},
                    validate=False,
                ),
            )
            seq += frames_per_file
        yield "stop", run.compose_stop()

    cat = runbroker.temp()
    cat.ingest(docs())
    return cat, list(det.files_written)


def _h5py_one(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[HDF5_DATASET][:]


def _h5py_many(paths: list[Path]) -> np.ndarray:
    return np.concatenate([_h5py_one(p) for p in paths])


def _rchar() -> int | None:
    """Bytes this process has read through read(2)/pread(2), page cache hits included."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _read(cat: runbroker.Catalog) -> np.ndarray:
    return cat[-1].primary.read([FIELD])[FIELD].values


def _check_read(cat: runbroker.Catalog, wanted: np.ndarray) -> str | None:
    """None when runbroker's read() gives the images; otherwise why not (printed, not raised)."""
    try:
        got = _read(cat)
    except Exception as exc:
        traceback.print_exc()
        return f"run.primary.read() failed: {type(exc).__name__}: {exc}"
    if got.shape != wanted.shape or got.dtype != wanted.dtype:
        return (
            f"run.primary.read() gave {got.dtype} {got.shape}, not the filled images "
            f"{wanted.dtype} {wanted.shape} (external data not read yet?)"
        )
    if not np.array_equal(got, wanted):
        return "run.primary.read() gave images that differ from the files"
    return None


def _throughput(
    bench: str,
    label: str,
    cat: runbroker.Catalog,
    baseline: Callable[[], np.ndarray],
    baseline_name: str,
    target: float,
) -> Result:
    wanted = baseline()  # also the page-cache warm-up of every file, for both sides
    mb = wanted.nbytes / 1e6
    problem = _check_read(cat, wanted)  # also the warm-up call of read()
    if problem is not None:
        print(f"  [{bench}] cannot measure runbroker: {problem}", flush=True)
        t_h5 = best(timings(baseline, REPEATS))
        value, note = float("nan"), problem
    else:
        # Alternate the two so a change in machine load between them hits both alike.
        t_h5, t_read = float("inf"), float("inf")
        for _ in range(REPEATS):
            t_h5 = min(t_h5, best(timings(baseline, 1)))
            t_read = min(t_read, best(timings(lambda: _read(cat), 1)))
        value = mb / t_read
        note = (
            f"warm page cache (each file read once before timing both), best of {REPEATS} "
            f"alternating; {mb:,.0f} MB; read() {t_read * 1e3:.0f} ms, h5py {t_h5 * 1e3:.0f} ms"
        )
    return print_result(
        Result(
            bench,
            f"run.primary.read() {label}",
            value,
            "MB/s",
            mb / t_h5,
            baseline_name,
            target=target,
            target_on="ratio",
            note=note,
        )
    )


def _to_dask(cat: runbroker.Catalog, frame_bytes: int) -> Result:
    run = cat[-1]
    try:
        run.primary.to_dask()  # warm-up: catalog look-ups, imports
        before = _rchar()
        t0 = time.perf_counter()
        ds = run.primary.to_dask()
        elapsed = time.perf_counter() - t0
        after = _rchar()
    except Exception as exc:
        traceback.print_exc()
        problem = f"run.primary.to_dask() failed: {type(exc).__name__}: {exc}"
        print(f"  [B5] cannot measure runbroker: {problem}", flush=True)
        return print_result(
            Result("B5", "run.primary.to_dask() 1,000 frames", float("nan"), "ms", note=problem)
        )
    lazy = hasattr(ds[FIELD].data, "dask")
    read = None if before is None or after is None else after - before
    # Pixels read would show as at least one frame's bytes in rchar; the database reads are less.
    pixels_read = not lazy or (read is not None and read >= frame_bytes)
    note = (
        f"{FIELD} is {'a dask array' if lazy else type(ds[FIELD].data).__name__}; "
        f"bytes read during the call: {'unknown' if read is None else f'{read:,}'} "
        f"(one frame is {frame_bytes:,})"
    )
    if pixels_read:
        note += "; FAIL: it read pixels"
    return print_result(
        Result(
            "B5",
            "run.primary.to_dask() 1,000 frames",
            float("nan") if pixels_read else elapsed * 1e3,
            "ms",
            target=TARGET_DASK_MS,
            higher_is_better=False,
            note=note,
        )
    )


def run_b5() -> list[Result]:
    section("B5 detector files: read() of 1,000 512x512 uint16 frames in one AD_HDF5 file vs h5py")
    with tempfile.TemporaryDirectory(prefix="runbroker-b5-") as tmp:
        cat, files = _build(Path(tmp), n_files=1, frames_per_file=1000)
        try:
            results = [
                _throughput(
                    "B5",
                    "1,000 frames, 1 AD_HDF5 file",
                    cat,
                    lambda: _h5py_one(files[0]),
                    "h5py dataset[:]",
                    TARGET_B5_RATIO,
                ),
                _to_dask(cat, frame_bytes=int(np.prod(SHAPE)) * np.dtype(DTYPE).itemsize),
            ]
        finally:
            cat.close()
    return results


def run_b6() -> list[Result]:
    section("B6 detector files: read() of 100 AD_HDF5 files x 10 frames (one run) vs h5py")
    with tempfile.TemporaryDirectory(prefix="runbroker-b6-") as tmp:
        cat, files = _build(Path(tmp), n_files=100, frames_per_file=10)
        try:
            return [
                _throughput(
                    "B6",
                    "1,000 frames in 100 AD_HDF5 files",
                    cat,
                    lambda: _h5py_many(files),
                    "h5py per file + concatenate",
                    TARGET_B6_RATIO,
                )
            ]
        finally:
            cat.close()


def run() -> list[Result]:
    return run_b5() + run_b6()
