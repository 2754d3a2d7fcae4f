"""B16 -- align: ``runbroker.align`` of a 100,000-event primary with two 1,000,000-event monitors.

One run: ``primary`` (field ``det``, 100,000 events at ~1 kHz) and monitors ``m1`` (``ring``)
and ``m2`` (``temp``), 1,000,000 events each at ~10 kHz, starting before the primary; written
as ``event_page`` documents and cached under ``$TMPDIR/runbroker-bench/`` (keyed by
``VERSION``; ``RUNBROKER_BENCH_REBUILD=1`` rebuilds it).

Measured, warm, best of ``REPEATS``:

- ``align(run, ["primary", "m1", "m2"], on="primary", method="asof")``, reads included,
  against the hand-written alignment (``numpy.searchsorted`` + ``take`` + NaN before the
  first sample) after the same three ``stream.read()`` calls. Targets: under 1 s, and at most
  2x the hand-written one (like with like: both include the reads).
- The split: ``align`` of the three Datasets already in memory against the hand-written
  alignment of the same numpy arrays already in memory (the part ``align`` adds; reported).
- ``align(..., lazy=True)``: building the graph, and building plus ``.compute()`` (reported).

Run alone with ``python -m benchmarks b16``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import runbroker
from runbroker.store.schema import SCHEMA_VERSION

from .common import Result, best, compose_pages, data_keys, print_result, section, timings

N_PRIMARY, N_MONITOR = 100_000, 1_000_000
PAGE_SIZE = 10_000
REPEATS = 7
VERSION = f"v1-{N_PRIMARY}-{N_MONITOR}-schema{SCHEMA_VERSION}"
TARGET_S = 1.0
TARGET_RATIO = 2.0
STREAMS = {"primary": "det", "m1": "ring", "m2": "temp"}
T0 = 1.7e9


def _columns() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(16)
    out = {}
    for name, field in STREAMS.items():
        n = N_PRIMARY if name == "primary" else N_MONITOR
        step = 100.0 / n  # every stream spans ~100 s; the monitors start 0.05 s earlier
        start = T0 if name == "primary" else T0 - 0.05
        times = start + np.cumsum(rng.uniform(0.5, 1.5, n) * step)
        out[name] = {"time": times, field: rng.standard_normal(n)}
    return out


def _documents(cols: dict[str, dict[str, np.ndarray]]) -> Any:
    import event_model

    run = event_model.compose_run(metadata={"plan_name": "b16"}, time=T0 - 1, validate=False)
    yield "start", run.start_doc
    for name, field in STREAMS.items():
        desc = run.compose_descriptor(
            data_keys=data_keys([field]), name=name, object_keys={field: [field]}, validate=False
        )
        yield "descriptor", desc.descriptor_doc
        n = len(cols[name]["time"])
        for page in compose_pages(desc, n, PAGE_SIZE, fields=[field], columns=cols[name]):
            yield "event_page", page
    yield "stop", run.compose_stop(validate=False)


def _catalog() -> tuple[runbroker.Catalog, str]:
    folder = Path(os.environ.get("RUNBROKER_BENCH_CACHE") or tempfile.gettempdir())
    folder = folder / "runbroker-bench"
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"b16-{VERSION}.db"
    if db.exists() and not os.environ.get("RUNBROKER_BENCH_REBUILD"):
        try:
            cat = runbroker.open(db, readonly=True)
            if len(cat) == 1 and len(cat[-1]["m2"]) == N_MONITOR:
                print(f"  using cached catalog {db}", flush=True)
                return cat, cat[-1].uid
            cat.close()
        except Exception as err:  # an old schema, a half-written file ...
            print(f"  cached catalog unusable ({err!r}); rebuilding", flush=True)
    scratch = db.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    print(f"  building the run into {db} (cached for later runs) ...", flush=True)
    t0 = time.perf_counter()
    with runbroker.open(scratch, create=True) as cat:
        cat.ingest(_documents(_columns()))
    for suffix in ("-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    scratch.rename(db)
    print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)
    cat = runbroker.open(db, readonly=True)
    return cat, cat[-1].uid


def hand_aligned(arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The alignment written by hand on numpy arrays: asof, NaN before a monitor's first
    sample, and each monitor's source time (what ``align`` gives, without its checks)."""
    t = arrays["primary"]["time"]
    out = {"det": arrays["primary"]["det"]}
    for name in ("m1", "m2"):
        src = arrays[name]["time"]
        i = np.searchsorted(src, t, side="right") - 1
        ok = i >= 0
        i = np.maximum(i, 0)
        field = STREAMS[name]
        out[field] = np.where(ok, arrays[name][field][i], np.nan)
        out[f"{name}_time"] = np.where(ok, src[i], np.nan)
    return out


def _arrays(datasets: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {
        name: {"time": ds["time"].values, STREAMS[name]: ds[STREAMS[name]].values}
        for name, ds in datasets.items()
    }


def run() -> list[Result]:
    section(f"B16 align: primary of {N_PRIMARY:,} events with two monitors of {N_MONITOR:,} events")
    cat, uid = _catalog()
    bench_run = cat[uid]
    names = list(STREAMS)

    def align_run() -> Any:
        return runbroker.align(bench_run, names, on="primary", method="asof")

    def read_then_hand() -> dict[str, np.ndarray]:
        return hand_aligned(_arrays({s: bench_run[s].read() for s in names}))

    datasets = {s: bench_run[s].read() for s in names}
    arrays = _arrays(datasets)

    def align_lazy() -> Any:
        return runbroker.align(bench_run, names, on="primary", method="asof", lazy=True)

    def align_memory() -> Any:
        return runbroker.align(datasets, names, on="primary", method="asof")

    def hand_memory() -> dict[str, np.ndarray]:
        return hand_aligned(arrays)

    got, want = align_run(), hand_memory()  # the benchmark measures the right numbers
    for name, values in want.items():
        assert np.array_equal(got[name].values, values, equal_nan=True), name

    t_align = best(timings(align_run, REPEATS, warmup=1))
    t_hand = best(timings(read_then_hand, REPEATS, warmup=1))
    t_align_mem = best(timings(align_memory, REPEATS, warmup=1))
    t_hand_mem = best(timings(hand_memory, REPEATS, warmup=1))
    t_reads = best(timings(lambda: [bench_run[s].read() for s in names], REPEATS, warmup=1))
    t_lazy = best(timings(lambda: align_lazy().compute(), REPEATS, warmup=1))
    t_graph = best(timings(align_lazy, REPEATS, warmup=1))
    cat.close()
    label = f"{N_PRIMARY:,} + 2 x {N_MONITOR:,} events, asof"
    results = [
        print_result(
            Result(
                "B16",
                f"align(run) incl. reads, {label}",
                t_align * 1e3,
                "ms",
                target=TARGET_S * 1e3,
                higher_is_better=False,
                note=f"warm, best of {REPEATS}; the 3 stream.read() alone {t_reads * 1e3:.0f} ms",
            )
        ),
        print_result(
            Result(
                "B16",
                f"align(run) / hand-written searchsorted, both incl. reads, {label}",
                t_align * 1e3,
                "ms",
                t_hand * 1e3,
                "3 x read() + numpy",
                target=TARGET_RATIO,
                target_on="ratio",
                higher_is_better=False,
            )
        ),
        print_result(
            Result(
                "B16",
                f"align(Datasets in memory) / hand-written on arrays in memory, {label}",
                t_align_mem * 1e3,
                "ms",
                t_hand_mem * 1e3,
                "numpy on arrays",
                note="the part align adds on top of the reads (checks, sort test, Dataset)",
            )
        ),
        print_result(
            Result(
                "B16",
                f"align(run, lazy=True) then .compute(), {label}",
                t_lazy * 1e3,
                "ms",
                t_align * 1e3,
                "align(run) eager",
                note=f"building the graph alone (times read, index made) {t_graph * 1e3:.0f} ms",
            )
        ),
    ]
    return results
