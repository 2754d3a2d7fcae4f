"""B20 -- ingest against the file appenders users know (issue 20), measured in one run.

* ``event_page`` documents of 1,000 events (5 float fields and their timestamps), N = 1,000,
  10,000 and 100,000 events, given as lists exactly as event-model's ``compose_event_page``
  makes them and as numpy arrays: runbroker's ``insert`` + ``flush()`` (validation on, every
  event committed) against suitcase-msgpack's ``Serializer`` writing the same pages to a file
  (``close()`` included, so every byte is written).
* small runs (start, descriptor, 5 events, stop): runbroker's ``insert`` of every document,
  each run committed by the group commit within its 100 ms (one ``flush()`` at the end),
  against suitcase-jsonl's ``Serializer``, one per run, closed after its stop.

The start and descriptor of a paged run are written before the clock starts, for both. Each
figure is the best of ``REPEATS``, runbroker and the baselines alternating.

A third figure, the SQLite floor (``benchmarks/sqlite_floor.py``), stores the same documents in
bare ``sqlite3`` with the least a SQLite catalog must do (columns to bytes, one row per page,
one commit). Where the floor itself is slower than the appender, the target is bounded by
SQLite, not by runbroker's code.

Run alone with ``python -m benchmarks b20`` (needs the ``bench`` extra: suitcase-msgpack and
suitcase-jsonl).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import runbroker

from .b1_ingest import _small_run
from .common import Result, best, compose_pages, new_run, print_result, section
from .sqlite_floor import floor_pages, floor_small_runs

SIZES = (1_000, 10_000, 100_000)
PAGE = 1_000
SMALL_RUNS = 500
REPEATS = 5


def _fresh(folder: Path) -> runbroker.Catalog:
    return runbroker.open(folder / f"c{time.monotonic_ns()}.db", create=True)


def _runbroker_pages(folder: Path, run: object, desc: object, pages: list[dict]) -> float:
    with _fresh(folder) as cat:
        cat.insert("start", run.start_doc)  # type: ignore[attr-defined]
        cat.insert("descriptor", desc.descriptor_doc)  # type: ignore[attr-defined]
        cat.flush()
        insert = cat.insert
        t0 = time.perf_counter()
        for page in pages:
            insert("event_page", page)
        cat.flush()
        return time.perf_counter() - t0


def _msgpack_pages(folder: Path, run: object, desc: object, pages: list[dict]) -> float:
    from suitcase.msgpack import Serializer

    target = Path(tempfile.mkdtemp(dir=folder))
    serializer = Serializer(target)
    serializer("start", run.start_doc)  # type: ignore[attr-defined]
    serializer("descriptor", desc.descriptor_doc)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for page in pages:
        serializer("event_page", page)
    serializer.close()
    return time.perf_counter() - t0


def _runbroker_small(folder: Path, runs: list[list[tuple[str, dict]]]) -> float:
    with _fresh(folder) as cat:
        insert = cat.insert
        t0 = time.perf_counter()
        for docs in runs:
            for name, doc in docs:
                insert(name, doc)
        cat.flush()
        return time.perf_counter() - t0


def _jsonl_small(folder: Path, runs: list[list[tuple[str, dict]]]) -> float:
    from suitcase.jsonl import Serializer

    target = Path(tempfile.mkdtemp(dir=folder))
    t0 = time.perf_counter()
    for docs in runs:
        serializer = Serializer(target)
        for name, doc in docs:
            serializer(name, doc)
        serializer.close()
    return time.perf_counter() - t0


def _race(*contenders: Callable[[], float]) -> list[float]:
    """The best time of each contender, run in turn ``REPEATS`` times."""
    times: list[list[float]] = [[] for _ in contenders]
    for _ in range(REPEATS):
        for timed_, contender in zip(times, contenders, strict=True):
            timed_.append(contender())
    return [best(t) for t in times]


def run() -> list[Result]:
    section("B20 ingest against suitcase-msgpack and suitcase-jsonl")
    results = []
    with tempfile.TemporaryDirectory(prefix="runbroker-b20-") as tmp:
        folder = Path(tmp)
        for numpy in (False, True):
            kind = "numpy arrays" if numpy else "lists"
            for n in SIZES:
                run_, desc = new_run()
                pages = list(compose_pages(desc, n, PAGE, seed=n, numpy=numpy))
                ours, theirs, floor = _race(
                    lambda r=run_, d=desc, p=pages: _runbroker_pages(folder, r, d, p),
                    lambda r=run_, d=desc, p=pages: _msgpack_pages(folder, r, d, p),
                    lambda r=run_, d=desc, p=pages: floor_pages(
                        folder, r.start_doc, d.descriptor_doc, p
                    ),
                )
                results.append(
                    print_result(
                        Result(
                            "B20",
                            f"event_page of {PAGE:,} as {kind}, N = {n:,}: insert + flush",
                            n / ours,
                            "events/s",
                            n / theirs,
                            "suitcase-msgpack",
                            target=1.0,
                            target_on="ratio",
                            extra_baselines={"SQLite floor": n / floor},
                            note=f"best of {REPEATS}, alternating",
                        )
                    )
                )
        runs = [_small_run(i) for i in range(SMALL_RUNS)]
        ours, theirs, floor = _race(
            lambda: _runbroker_small(folder, runs),
            lambda: _jsonl_small(folder, runs),
            lambda: floor_small_runs(folder, runs),
        )
        results.append(
            print_result(
                Result(
                    "B20",
                    f"small runs (start, descriptor, 5 events, stop) x {SMALL_RUNS}",
                    SMALL_RUNS / ours,
                    "runs/s",
                    SMALL_RUNS / theirs,
                    "suitcase-jsonl",
                    target=1.0,
                    target_on="ratio",
                    extra_baselines={"SQLite floor": SMALL_RUNS / floor},
                    note=f"best of {REPEATS}, alternating; group commit, one flush() at the end",
                )
            )
        )
    return results
