"""B2 -- read: ``run.primary.read()`` against ``np.load`` of the same columns.

A run of 6 float fields is ingested as ``event_page`` documents of 1,000 events (the shape
``Run.documents()`` replays). The baseline writes the same 7 columns (time + 6 fields) as
``.npy`` files in a temp dir and loads them with ``np.load``; both are measured warm, best of 5.
Peak memory of ``read()`` is measured with ``tracemalloc`` (numpy traces its buffers), against
the size of the result, ``ds.nbytes``.

Run alone with ``python -m benchmarks b2``.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import runbroker

from .common import FIELDS, Result, best, compose_pages, new_run, print_result, section, timings

SMALL, LARGE = 100_000, 1_000_000
PAGE_SIZE = 1_000
REPEATS = 5
TARGET_RATIO = 3.0  # read() time / np.load time
TARGET_LARGE_S = 0.5
TARGET_MEMORY_RATIO = 3.0  # peak traced memory / ds.nbytes


def _columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {"time": 1.7e9 + np.cumsum(rng.random(n) * 1e-3)}
    cols.update({f: rng.standard_normal(n) for f in FIELDS})
    return cols


def _build(folder: Path, n: int) -> tuple[runbroker.Catalog, str, dict[str, np.ndarray], float]:
    cols = _columns(n, seed=n)
    run, desc = new_run()

    def docs() -> Any:
        yield "start", run.start_doc
        yield "descriptor", desc.descriptor_doc
        for page in compose_pages(desc, n, PAGE_SIZE, columns=cols):
            yield "event_page", page
        yield "stop", run.compose_stop(validate=False)

    cat = runbroker.open(folder / f"read{n}.db")
    t0 = time.perf_counter()
    cat.ingest(docs())
    return cat, run.start_doc["uid"], cols, time.perf_counter() - t0


def _peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak traced bytes allocated while ``fn`` runs (tracemalloc, numpy included)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, out


def _bench_size(folder: Path, n: int) -> list[Result]:
    cat, uid, cols, build_s = _build(folder, n)
    npy = folder / f"npy{n}"
    npy.mkdir()
    for name, arr in cols.items():
        np.save(npy / f"{name}.npy", arr)
    names = list(cols)

    def load_npy() -> dict[str, np.ndarray]:
        return {name: np.load(npy / f"{name}.npy") for name in names}

    # The first read in a fresh catalog object: page cache warm (just written), Python cold.
    fresh = runbroker.open(folder / f"read{n}.db")
    t0 = time.perf_counter()
    ds = fresh[uid].primary.read()
    first = time.perf_counter() - t0
    fresh.close()

    run = cat[uid]
    ds = run.primary.read()
    for f in FIELDS:  # the benchmark reads the right numbers
        assert np.array_equal(ds[f].values, cols[f]), f
    assert np.array_equal(ds["time"].values, cols["time"])

    t_read = best(timings(lambda: run.primary.read(), REPEATS, warmup=1))
    t_npy = best(timings(load_npy, REPEATS, warmup=1))
    peak_read, ds = _peak(lambda: run.primary.read())
    peak_npy, _ = _peak(load_npy)
    nbytes = ds.nbytes
    cat.close()
    label = f"{n:,} events x 6 fields"
    note = (
        f"warm, best of {REPEATS}; first read in a fresh runbroker.open {first * 1e3:.1f} ms; "
        f"built by ingest() in {build_s:.2f} s ({n / build_s:,.0f} events/s)"
    )
    if n < LARGE:
        # Target: at most 3x the time numpy needs to load the same columns.
        timing = Result(
            "B2",
            f"run.primary.read() {label}",
            t_read * 1e3,
            "ms",
            t_npy * 1e3,
            "np.load 7 .npy",
            target=TARGET_RATIO,
            target_on="ratio",
            higher_is_better=False,
            note=note,
        )
    else:
        # Target: under 0.5 s; the ratio to numpy is reported, not judged.
        timing = Result(
            "B2",
            f"run.primary.read() {label}",
            t_read * 1e3,
            "ms",
            t_npy * 1e3,
            "np.load 7 .npy",
            target=TARGET_LARGE_S * 1e3,
            higher_is_better=False,
            note=note,
        )
    results = [print_result(timing)]
    results.append(
        print_result(
            Result(
                "B2",
                f"read() peak memory / ds.nbytes, {label}",
                peak_read / nbytes,
                "x nbytes",
                peak_npy / nbytes,
                "np.load peak",
                target=TARGET_MEMORY_RATIO,
                higher_is_better=False,
                note=(
                    f"tracemalloc peak {peak_read / 2**20:.1f} MiB for a result of "
                    f"{nbytes / 2**20:.1f} MiB; np.load peak {peak_npy / 2**20:.1f} MiB"
                ),
            )
        )
    )
    return results


def run() -> list[Result]:
    section("B2 read: run.primary.read() vs np.load of the same columns")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="runbroker-b2-") as tmp:
        for n in (SMALL, LARGE):
            results.extend(_bench_size(Path(tmp), n))
    return results
