"""B13 -- export: a 100,000-event scalar run to CSV, raw HDF5 and NeXus, and 1,000 frames to HDF5.

Scalar: one run of 100,000 events of six float fields (``event_page`` documents from
``event_model``, stored in a SQLite catalog). ``run.export(fmt, folder)`` -- reading the run's
documents from the catalog, converting, writing the file -- must take at most 3x the time the
reference library needs to write the same arrays (``time``, ``seq_num`` and the six fields)
directly from memory: ``pandas.DataFrame.to_csv`` for CSV, ``h5py`` ``create_dataset`` per
array for raw HDF5 and NeXus.

Images: 1,000 512x512 uint16 frames kept by an AD_HDF5 detector in one file (as in B5).
``run.export("hdf5", folder)`` -- reading the frames from the detector file and writing them
into the export -- must reach 70% of the throughput of h5py doing the same directly: reading
the detector's dataset and writing it into a new file (``create_dataset(data=frames)``). The
throughput of h5py writing frames already in memory is printed beside it.

Each side is timed best of 3, the two alternating, into fresh files in one temporary folder.
Run alone with ``python -m benchmarks b13``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

import runbroker

from .b5_detector import _build as build_frames
from .common import FIELDS, Result, best, compose_pages, new_run, print_result, section, timings

N_EVENTS = 100_000
PAGE = 1_000
REPEATS = 3
TARGET_SCALAR_RATIO = 3.0  # export time / direct write time, at most
TARGET_FRAMES_RATIO = 0.7  # export throughput / h5py write throughput, at least

_fresh = itertools.count()


def _scalar_run(folder: Path) -> tuple[runbroker.Catalog, dict[str, np.ndarray]]:
    rng = np.random.default_rng(13)
    columns = {f: rng.random(N_EVENTS) for f in FIELDS}
    columns["time"] = 1.7e9 + np.arange(N_EVENTS) * 1e-3
    run, desc = new_run({"plan_name": "count", "scan_id": 13, "detectors": ["sim"]})
    cat = runbroker.open(folder / "scalar.db")
    cat.ingest(
        [
            ("start", run.start_doc),
            ("descriptor", desc.descriptor_doc),
            *(("event_page", p) for p in compose_pages(desc, N_EVENTS, PAGE, columns=columns)),
            ("stop", run.compose_stop()),
        ]
    )
    arrays = {"time": columns["time"], "seq_num": np.arange(1, N_EVENTS + 1)}
    arrays.update({f: columns[f] for f in FIELDS})
    return cat, arrays


def _arrays_in(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, once each (HDF5 visits a hard-linked object once)."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name.replace("/", "_")] = np.asarray(obj[()])

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def _same_as_export(run: runbroker.Run, fmt: str, out: Path) -> dict[str, np.ndarray]:
    (path,) = run.export(fmt, out / f"probe-{fmt}")
    return _arrays_in(path)


def _pandas_csv(arrays: dict[str, np.ndarray], out: Path) -> None:
    pd.DataFrame(arrays).to_csv(out / f"pandas{next(_fresh)}.csv", index=False)


def _h5py_write(arrays: dict[str, np.ndarray], out: Path) -> None:
    with h5py.File(out / f"h5py{next(_fresh)}.h5", "w") as f:
        for name, values in arrays.items():
            f.create_dataset(name, data=values)


def _export(run: runbroker.Run, fmt: str, out: Path) -> None:
    run.export(fmt, out / f"rb{next(_fresh)}")


def _alternate(ours: Callable[[], None], theirs: Callable[[], None]) -> tuple[float, float]:
    ours()  # warm-up: imports, catalog look-ups
    theirs()
    t_ours, t_theirs = float("inf"), float("inf")
    for _ in range(REPEATS):
        t_theirs = min(t_theirs, best(timings(theirs, 1)))
        t_ours = min(t_ours, best(timings(ours, 1)))
    return t_ours, t_theirs


def _failed(name: str, unit: str, exc: Exception) -> Result:
    traceback.print_exc()
    return print_result(
        Result("B13", name, float("nan"), unit, note=f"failed: {type(exc).__name__}: {exc}")
    )


def _scalar(run: runbroker.Run, arrays: dict[str, np.ndarray], out: Path) -> list[Result]:
    results = []
    for fmt, baseline, baseline_name, same in [
        ("csv", _pandas_csv, "pandas to_csv", arrays),
        ("hdf5", _h5py_write, "h5py create_dataset", _same_as_export(run, "hdf5", out)),
        ("nexus", _h5py_write, "h5py create_dataset", _same_as_export(run, "nexus", out)),
    ]:
        name = f"export {N_EVENTS:,}-event scalar run to {fmt}"
        try:
            t_ours, t_theirs = _alternate(
                lambda fmt=fmt: _export(run, fmt, out),
                lambda baseline=baseline, same=same: baseline(same, out),
            )
        except Exception as exc:
            results.append(_failed(name, "ms", exc))
            continue
        results.append(
            print_result(
                Result(
                    "B13",
                    name,
                    t_ours * 1e3,
                    "ms",
                    t_theirs * 1e3,
                    baseline_name,
                    target=TARGET_SCALAR_RATIO,
                    target_on="ratio",
                    higher_is_better=False,
                    note=(
                        f"best of {REPEATS}, alternating; baseline writes the {len(same)} "
                        f"arrays the export holds ({sum(a.nbytes for a in same.values()):,} B)"
                    ),
                )
            )
        )
    return results


def _frames(folder: Path, out: Path) -> Result:
    name = "export 1,000 512x512 uint16 frames (AD_HDF5 file) to hdf5"
    try:
        cat, files = build_frames(folder, n_files=1, frames_per_file=1000)
        run = cat[-1]
        with h5py.File(files[0], "r") as f:
            frames = f["/entry/data/data"][:]
        mb = frames.nbytes / 1e6

        def clean() -> None:
            for p in out.glob("h5py*.h5"):
                p.unlink()

        def from_memory() -> None:
            with h5py.File(out / f"h5py{next(_fresh)}.h5", "w") as f:
                f.create_dataset("data", data=frames)
            clean()

        def read_and_write() -> None:
            # The same job done with h5py directly: the frames come from the detector's file.
            with h5py.File(files[0], "r") as src:
                data = src["/entry/data/data"][:]
            with h5py.File(out / f"h5py{next(_fresh)}.h5", "w") as f:
                f.create_dataset("data", data=data)
            clean()

        def ours() -> None:
            target = out / f"rb{next(_fresh)}"
            run.export("hdf5", target)
            shutil.rmtree(target)  # keep the folder small: 500 MB a file

        t_ours, t_theirs = _alternate(ours, read_and_write)
        _, t_memory = _alternate(lambda: None, from_memory)
        cat.close()
    except Exception as exc:
        return _failed(name, "MB/s", exc)
    return print_result(
        Result(
            "B13",
            name,
            mb / t_ours,
            "MB/s",
            mb / t_theirs,
            "h5py reading the detector file and writing the frames",
            target=TARGET_FRAMES_RATIO,
            target_on="ratio",
            extra_baselines={"h5py writing frames already in memory": mb / t_memory},
            note=(
                f"{mb:,.0f} MB; export {t_ours * 1e3:.0f} ms, h5py read+write "
                f"{t_theirs * 1e3:.0f} ms, h5py write only {t_memory * 1e3:.0f} ms; "
                f"best of {REPEATS}, alternating"
            ),
        )
    )


def run() -> list[Result]:
    section("B13 export: 100k-event scalar run to CSV / raw HDF5 / NeXus; 1,000 frames to HDF5")
    with tempfile.TemporaryDirectory(prefix="runbroker-b13-") as tmp:
        folder = Path(tmp)
        out = folder / "out"
        out.mkdir()
        cat, arrays = _scalar_run(folder)
        try:
            results = _scalar(cat[-1], arrays, out)
        finally:
            cat.close()
        shutil.rmtree(out)
        out.mkdir()
        results.append(_frames(folder / "frames", out))
    return results
