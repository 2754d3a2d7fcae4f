"""B15 -- search by what runs hold and what was said about them, on 100,000 runs.

Each run of the catalog: a start document, a ``primary`` descriptor whose ``det`` device
carries the configuration reading ``det_exposure`` (0.01-1.0 s), one ``event_page`` of 5
events of ``theta`` and ``det``, and a stop, so its per-field statistics are stored at its stop;
5 % of the runs are tagged ``calibration`` and 0.1 % ``rare``. Built once with
``cat.ingest`` and cached under ``$TMPDIR/runbroker-bench/`` keyed by ``VERSION``
(``RUNBROKER_BENCH_REBUILD=1`` rebuilds it; ``RUNBROKER_BENCH_B15_RUNS`` changes the size).

Measured, warm, median of ``REPEATS``: the time to the first 100 hits (``cat.search(q)``
iterated to its 100th uid, newest first) of

- ``Field("primary", "theta").between(0, 5)`` (about a third of the runs) and a rare one;
- ``Config("det", "exposure") > 0.5`` (about half) and a rare one;
- ``Tag("calibration")`` (5 %) and ``Tag("rare")`` (0.1 %).

Targets (issue 18): ``Field`` and ``Config`` under 20 ms, ``Tag`` under 10 ms. B1 measures
ingest with and without the statistics in one run (``python -m benchmarks b1``).

Run alone with ``python -m benchmarks b15``.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import event_model

import runbroker
from runbroker.notes import new_note
from runbroker.queries import Config, Field, Query, Tag
from runbroker.store.base import annotating
from runbroker.store.schema import SCHEMA_VERSION

from .common import Result, median, print_result, section, timings

N_RUNS = int(os.environ.get("RUNBROKER_BENCH_B15_RUNS", "100000"))
VERSION = f"v2-{N_RUNS}runs-schema{SCHEMA_VERSION}"  # v2: hardware fact sets
BATCH = 2_000
REPEATS = 30
T0 = 1_672_531_200.0
TARGETS_MS = {"field": 20.0, "config": 20.0, "tag": 10.0}

QUERIES: list[tuple[str, str, Query]] = [
    ("field", "Field(primary, theta).between(0, 5)", Field("primary", "theta").between(0, 5)),
    (
        "field",
        "Field(primary, theta).between(9.9, 10) (rare)",
        Field("primary", "theta").between(9.9, 10),
    ),
    ("config", "Config(det, exposure) > 0.5", Config("det", "exposure") > 0.5),
    ("config", "Config(det, exposure) > 0.995 (rare)", Config("det", "exposure") > 0.995),
    ("tag", "Tag(calibration)", Tag("calibration")),
    ("tag", "Tag(rare)", Tag("rare")),
]


def _runs(rng: random.Random) -> Iterator[tuple[str, dict]]:
    data_keys = {
        "theta": {"dtype": "number", "shape": [], "source": "sim:theta", "object_name": "theta"},
        "det": {"dtype": "number", "shape": [], "source": "sim:det", "object_name": "det"},
    }
    for i in range(N_RUNS):
        t = T0 + i * 60.0
        run = event_model.compose_run(metadata={"scan_id": i + 1}, time=t, validate=False)
        yield "start", run.start_doc
        exposure = rng.uniform(0.01, 1.0)
        config = {
            "det": {
                "data": {"det_exposure": exposure},
                "timestamps": {"det_exposure": t},
                "data_keys": {"det_exposure": {"dtype": "number", "shape": [], "source": "x"}},
            }
        }
        desc = run.compose_descriptor(
            name="primary",
            data_keys=data_keys,
            object_keys={"theta": ["theta"], "det": ["det"]},
            configuration=config,
            time=t,
            validate=False,
        )
        yield "descriptor", desc.descriptor_doc
        lo = rng.uniform(-10.0, 10.0)
        theta = [lo + rng.uniform(0.0, 1.0) * j / 4 for j in range(5)]
        page = desc.compose_event_page(
            data={"theta": theta, "det": [rng.random() for _ in range(5)]},
            timestamps={"theta": [t] * 5, "det": [t] * 5},
            seq_num=list(range(1, 6)),
            time=[t + j for j in range(5)],
            validate=False,
        )
        yield "event_page", page
        yield "stop", run.compose_stop(time=t + 10, validate=False)


def _tag_notes(uids: list[str], rng: random.Random) -> dict[str, list[dict]]:
    notes: dict[str, list[dict]] = {}
    for uid in uids:
        draw = rng.random()
        labels = ["calibration"] if draw < 0.05 else []
        if draw < 0.001:
            labels.append("rare")
        if labels:
            notes[uid] = [new_note(uid, "tag", author="bench", tags=labels)]
    return notes


def _catalog() -> runbroker.Catalog:
    folder = Path(os.environ.get("RUNBROKER_BENCH_CACHE") or tempfile.gettempdir())
    folder = folder / "runbroker-bench"
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"b15-{VERSION}.db"
    if db.exists() and not os.environ.get("RUNBROKER_BENCH_REBUILD"):
        cat = runbroker.open(db, readonly=True)
        if len(cat) == N_RUNS:
            print(f"  using cached catalog {db}", flush=True)
            return cat
        cat.close()
    scratch = db.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    print(f"  building {N_RUNS:,} runs into {db} (cached for later runs) ...", flush=True)
    t0 = time.perf_counter()
    rng = random.Random(15)
    with runbroker.open(scratch, create=True) as cat:
        docs = _runs(rng)
        while True:
            batch = list(itertools.islice(docs, 4 * BATCH))
            if not batch:
                break
            cat.ingest(batch)
        uids = [r.uid for r in cat.store.search(None, oldest_first=True)]
        store = annotating(cat.store)
        for uid, revisions in _tag_notes(uids, rng).items():
            store.add_notes(uid, revisions)
    for suffix in ("-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    scratch.rename(db)
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return runbroker.open(db, readonly=True)


def _first(cat: runbroker.Catalog, query: Query, n: int = 100) -> list[str]:
    return list(itertools.islice(cat.search(query), n))


def run() -> list[Result]:
    section(f"B15 data, hardware and tag search, {N_RUNS:,} runs")
    cat = _catalog()
    results = []
    for kind, name, query in QUERIES:
        hits = _first(cat, query)  # warm
        ms = median(timings(lambda q=query: _first(cat, q), REPEATS)) * 1e3
        results.append(
            print_result(
                Result(
                    bench="B15",
                    name=f"{name}: first {len(hits)} hits",
                    value=ms,
                    unit="ms",
                    target=TARGETS_MS[kind],
                    higher_is_better=False,
                )
            )
        )
    cat.close()
    return results
