"""B1 -- ingest: single events, durable events, visibility latency, event pages, small runs.

Baselines, measured in the same run:

* ``JSON lines``: the same documents appended to a file with ``json.dumps`` + ``write`` per
  document, which is what a file-backed catalog does on its append path;
* ``compose``: the cost of building the documents themselves with event-model's
  validation-free ``compose_*`` helpers (the floor of any producer).

Run alone with ``python -m benchmarks b1``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import runbroker
from runbroker.documents import to_builtin
from runbroker.store import sqlstats, sqlwrite
from runbroker.store.stats import field_id

from .common import (
    FIELDS,
    Result,
    best,
    compose_events,
    compose_pages,
    new_run,
    print_result,
    section,
    timed,
)

N_EVENTS = 50_000  # single events per repeat
N_DURABLE = 1_000  # events with durability="event" (each one fsynced)
N_PAGES = 200  # event pages of PAGE_SIZE events per repeat
PAGE_SIZE = 1_000
N_SMALL_RUNS = 500  # runs of start, descriptor, 5 events, stop per repeat
REPEATS = 3
PAIRED_REPEATS = 10  # small runs: rounds with statistics and without, alternating
STORED_RUNS = 30_000  # small runs into a catalog already holding this many
COST_BLOCK = 50  # statistics' cost: runs per block ...
COST_ROUNDS = 200  # ... and rounds of one block of each variant, in one catalog

TARGET_EVENTS = 100_000  # events/s through insert("event")
TARGET_LATENCY_MS = 100.0
TARGET_PAGE_EVENTS = 3_000_000  # events/s through insert("event_page")
TARGET_RUNS = 2_000  # small runs/s


def _jsonl(path: Path, docs: list[tuple[str, dict]], fsync: bool = False) -> float:
    """Seconds to append ``docs`` as JSON lines (a file-backed catalog's append path)."""
    with timed() as t, open(path, "w") as f:
        for name, doc in docs:
            f.write(json.dumps({"name": name, "doc": doc}) + "\n")
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        f.flush()
    path.unlink()
    return t[0]


def _fresh(folder: Path, label: str, stats: bool = True, **options: Any) -> runbroker.Catalog:
    """A new catalog; ``stats=False``: one that keeps no per-field statistics (the figure
    statistics may cost at most 5% of, measured in the same run)."""
    path = folder / f"{label}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    cat = runbroker.open(path, **options)
    cat.store.stats_at_stop = stats
    return cat


def _without(stats: bool) -> str:
    return "" if stats else " [no statistics]"


# -- single events -----------------------------------------------------------------------------


def bench_events(folder: Path, stats: bool = True) -> list[Result]:
    run, desc = new_run()
    with timed() as t:
        events = compose_events(desc, N_EVENTS)
    compose_rate = N_EVENTS / t[0]
    pairs = [("event", e) for e in events]
    jsonl_rate = N_EVENTS / best([_jsonl(folder / "b.jsonl", pairs) for _ in range(REPEATS)])

    queued, end_to_end = [], []
    for i in range(REPEATS):
        cat = _fresh(folder, f"events{i}", stats)
        cat.insert("start", run.start_doc)
        cat.insert("descriptor", desc.descriptor_doc)
        insert = cat.insert
        t0 = time.perf_counter()
        for e in events:
            insert("event", e)
        t1 = time.perf_counter()
        cat.flush()
        t2 = time.perf_counter()
        queued.append(t1 - t0)
        end_to_end.append(t2 - t0)
        assert len(cat[run.start_doc["uid"]].primary) == N_EVENTS
        cat.close()
    base = {"compose (dict construction)": compose_rate}
    return [
        print_result(
            Result(
                "B1",
                f"insert(event), batch durability, {N_EVENTS:,} events" + _without(stats),
                N_EVENTS / best(queued),
                "events/s",
                jsonl_rate,
                "JSON lines",
                target=TARGET_EVENTS,
                extra_baselines=base,
                note=f"best of {REPEATS}; time until the last insert() returns",
            )
        ),
        print_result(
            Result(
                "B1",
                "insert(event) end-to-end incl. final flush" + _without(stats),
                N_EVENTS / best(end_to_end),
                "events/s",
                jsonl_rate,
                "JSON lines",
                extra_baselines=base,
                note=f"best of {REPEATS}; inserts + flush() so every event is on disk",
            )
        ),
    ]


def bench_durable(folder: Path) -> Result:
    run, desc = new_run()
    events = compose_events(desc, N_DURABLE, seed=1)
    pairs = [("event", e) for e in events]
    fsync_rate = N_DURABLE / _jsonl(folder / "d.jsonl", pairs, fsync=True)
    cat = _fresh(folder, "durable", durability="event")
    cat.insert("start", run.start_doc)
    cat.insert("descriptor", desc.descriptor_doc)
    with timed() as t:
        for e in events:
            cat.insert("event", e)
    cat.close()
    return print_result(
        Result(
            "B1",
            f'insert(event), durability="event", {N_DURABLE:,} events',
            N_DURABLE / t[0],
            "events/s",
            fsync_rate,
            "JSON lines + fsync per line",
            note="each event committed with synchronous=FULL before insert() returns; no target",
        )
    )


# -- visibility latency ------------------------------------------------------------------------


def _reader(path: str, run_uid: str, total: int, ready: Any, out: Any) -> None:
    """Poll the event count from another process, record (time, count) on every change.

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux (and system-wide on macOS and Windows),
    so its values can be compared between the two processes.
    """
    cat = runbroker.open(path)
    stream = cat[run_uid].primary
    len(stream)
    ready.set()
    seen, obs, polls = -1, [], 0
    t_start = time.perf_counter()
    deadline = t_start + 30.0
    while True:
        count = len(stream)
        now = time.perf_counter()
        polls += 1
        if count != seen:
            obs.append((now, count))
            seen = count
        if count >= total or now > deadline:
            break
    out.put({"obs": obs, "polls": polls, "elapsed": time.perf_counter() - t_start})
    cat.close()


def bench_visibility(folder: Path) -> Result:
    """Writer here, reader in a second process with its own ``runbroker.open``.

    Three phases: slow events (one per 20 ms, so each must be flushed by the timer), a steady
    ~1 kHz stream, then a burst as fast as insert() goes. Latency of an event is the first
    time the reader counts it minus the time its insert() was called.
    """
    run, desc = new_run()
    slow, steady, burst = 25, 2_000, 20_000
    total = slow + steady + burst
    events = compose_events(desc, total, seed=2)
    cat = _fresh(folder, "visibility")
    cat.insert("start", run.start_doc)
    cat.insert("descriptor", desc.descriptor_doc)
    cat.flush()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(
        target=_reader,
        args=(str(folder / "visibility.db"), run.start_doc["uid"], total, ready, out),
    )
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("reader process did not start")
    sent = np.empty(total)
    i = 0
    for e in events[:slow]:
        sent[i] = time.perf_counter()
        cat.insert("event", e)
        i += 1
        time.sleep(0.02)
    next_t = time.perf_counter()
    for e in events[slow : slow + steady]:
        # Sleep (releasing the GIL, as a RunEngine waiting on hardware does) until due.
        wait = next_t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[i] = time.perf_counter()
        cat.insert("event", e)
        i += 1
        next_t += 0.001
    for e in events[slow + steady :]:
        sent[i] = time.perf_counter()
        cat.insert("event", e)
        i += 1
    report = out.get(timeout=60)
    proc.join(30)
    cat.close()
    obs = np.array(report["obs"])
    times, counts = obs[:, 0], obs[:, 1]
    # Event k (1-based) is visible at the first observation whose count reaches k.
    idx = np.searchsorted(counts, np.arange(1, total + 1), side="left")
    visible = idx < len(counts)
    latency = np.full(total, np.inf)
    latency[visible] = times[idx[visible]] - sent[visible]
    lat_ms = latency * 1e3
    poll_ms = report["elapsed"] / max(1, report["polls"]) * 1e3
    phases = {
        "slow": lat_ms[:slow],
        "steady": lat_ms[slow : slow + steady],
        "burst": lat_ms[slow + steady :],
    }
    detail = ", ".join(f"{k} max {np.max(v):.1f}" for k, v in phases.items())
    return print_result(
        Result(
            "B1",
            "visibility latency insert() -> other process sees it (max)",
            float(np.max(lat_ms)),
            "ms",
            50.0,
            "flush_interval",
            target=TARGET_LATENCY_MS,
            higher_is_better=False,
            note=(
                f"{total:,} events; p50 {np.median(lat_ms):.1f} ms, p99 "
                f"{np.percentile(lat_ms, 99):.1f} ms; {detail} ms; reader polls every "
                f"{poll_ms:.2f} ms on average ({report['polls']:,} polls)"
            ),
        )
    )


# -- event pages -------------------------------------------------------------------------------


def bench_pages(folder: Path, numpy: bool = False, stats: bool = True) -> list[Result]:
    run, desc = new_run()
    n = N_PAGES * PAGE_SIZE
    with timed() as t:
        pages = list(compose_pages(desc, n, PAGE_SIZE, seed=3, numpy=numpy))
    compose_rate = n / t[0]
    pairs = [("event_page", p) for p in pages]
    if numpy:
        # JSON lines cannot hold arrays as they are: the baseline converts them, as it must.
        pairs = [("event_page", to_builtin(p)) for p in pages]
    jsonl_rate = n / best([_jsonl(folder / "p.jsonl", pairs) for _ in range(REPEATS)])
    queued, end_to_end = [], []
    for i in range(REPEATS):
        cat = _fresh(folder, f"pages{i}", stats)
        cat.insert("start", run.start_doc)
        cat.insert("descriptor", desc.descriptor_doc)
        insert = cat.insert
        t0 = time.perf_counter()
        for p in pages:
            insert("event_page", p)
        t1 = time.perf_counter()
        cat.flush()
        t2 = time.perf_counter()
        queued.append(t1 - t0)
        end_to_end.append(t2 - t0)
        assert len(cat[run.start_doc["uid"]].primary) == n
        cat.close()
    base = {"compose (dict construction)": compose_rate}
    kind = "numpy arrays" if numpy else "lists"
    if numpy:
        return [
            print_result(
                Result(
                    "B1",
                    f"insert(event_page of {PAGE_SIZE:,} as numpy arrays), {N_PAGES} pages",
                    n / best(end_to_end),
                    "events/s",
                    jsonl_rate,
                    "JSON lines",
                    target=TARGET_PAGE_EVENTS,
                    extra_baselines=base,
                    note=f"best of {REPEATS}; inserts + flush(): every event on disk",
                )
            )
        ]
    return [
        print_result(
            Result(
                "B1",
                f"insert(event_page of {PAGE_SIZE:,} as {kind}), {N_PAGES} pages" + _without(stats),
                n / best(queued),
                "events/s",
                jsonl_rate,
                "JSON lines",
                target=TARGET_PAGE_EVENTS,
                extra_baselines=base,
                note=f"best of {REPEATS}; time until the last insert() returns",
            )
        ),
        print_result(
            Result(
                "B1",
                "insert(event_page) end-to-end incl. final flush" + _without(stats),
                n / best(end_to_end),
                "events/s",
                jsonl_rate,
                "JSON lines",
                extra_baselines=base,
                note=f"best of {REPEATS}; inserts + flush() so every event is on disk",
            )
        ),
    ]


# -- many small runs ---------------------------------------------------------------------------


def _small_run(i: int) -> list[tuple[str, dict]]:
    run, desc = new_run({"plan_name": "count", "scan_id": i + 1})
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", e) for e in compose_events(desc, 5, seed=i)]
    docs.append(("stop", run.compose_stop(validate=False)))
    return docs


def bench_small_runs(folder: Path) -> list[Result]:
    """Small runs with and without statistics, alternating round by round: the two figures
    the statistics may cost at most 5% of share the machine's drift."""
    with timed() as t:
        runs = [_small_run(i) for i in range(N_SMALL_RUNS)]
    compose_rate = N_SMALL_RUNS / t[0]
    flat = [pair for docs in runs for pair in docs]
    jsonl_rate = N_SMALL_RUNS / best([_jsonl(folder / "r.jsonl", flat) for _ in range(REPEATS)])
    elapsed: dict[bool, list[float]] = {True: [], False: []}
    for i in range(PAIRED_REPEATS):
        for stats in (True, False) if i % 2 else (False, True):
            cat = _fresh(folder, f"small{i}{stats}", stats)
            insert = cat.insert
            with timed() as t:
                for name, doc in flat:
                    insert(name, doc)
                cat.flush()
            elapsed[stats].append(t[0])
            assert len(cat) == N_SMALL_RUNS
            cat.close()
    return [
        print_result(
            Result(
                "B1",
                f"small runs (start, descriptor, 5 events, stop) x {N_SMALL_RUNS}"
                + _without(stats),
                N_SMALL_RUNS / best(elapsed[stats]),
                "runs/s",
                jsonl_rate,
                "JSON lines",
                target=TARGET_RUNS,
                extra_baselines={"compose (dict construction)": compose_rate},
                note=(
                    f"best of {PAIRED_REPEATS}, rounds with and without statistics "
                    "alternating; every document through insert(), flush() at the end"
                ),
            )
        )
        for stats in (True, False)
    ]


def bench_statistics_cost(folder: Path) -> list[Result]:
    """What per-field statistics cost a small run, measured in blocks of ``COST_BLOCK`` runs
    of one catalog: each round times one block without statistics, one with, and one that
    writes only the statistics rows (the same six per run, precomputed, nothing summarised),
    in a random order. The figure is the median over rounds of each round's ratio.

    Blocks side by side share the machine's moment and the catalog's size, where whole
    rounds in fresh catalogs (``bench_small_runs``) moved by up to 15% from one round to
    the next here, three times the effect measured.
    """
    cat = _fresh(folder, "cost")
    store = cat.store
    insert = cat.insert
    rows_alone = _RowsAlone(store)
    times: dict[str, list[float]] = {"without": [], "with": [], "rows alone": []}
    rng = np.random.default_rng(0)
    first = 10**6  # the untimed warm-up's runs: other scan ids than the blocks'
    for name, doc in (pair for i in range(200) for pair in _small_run(first + i)):
        insert(name, doc)
    cat.flush()
    n = 0
    for _ in range(COST_ROUNDS):
        for variant in rng.permutation(list(times)).tolist():
            docs = [pair for i in range(n, n + COST_BLOCK) for pair in _small_run(i)]
            n += COST_BLOCK
            store.stats_at_stop = variant == "with"
            rows_alone.active = variant == "rows alone"
            with timed() as t:
                for name, doc in docs:
                    insert(name, doc)
                cat.flush()
            times[variant].append(t[0])
    rows_alone.restore()
    cat.close()
    base = times["without"]
    results = []
    labels = {"with": "with statistics", "rows alone": "statistics rows alone, precomputed"}
    for variant, target in (("with", 0.95), ("rows alone", None)):
        ratios = [b / t for b, t in zip(base, times[variant], strict=True)]
        q1, mid, q3 = np.percentile(ratios, [25, 50, 75]).tolist()
        results.append(
            print_result(
                Result(
                    "B1",
                    f"small runs {labels[variant]} / without, blocks of {COST_BLOCK}",
                    mid,
                    "x",
                    target=target,
                    note=(
                        f"median of {COST_ROUNDS} rounds' ratios (quartiles {q1:.3f}-{q3:.3f}); "
                        f"without statistics {COST_BLOCK / float(np.median(base)):,.0f} runs/s; "
                        "the catalog grows to "
                        f"{200 + 3 * COST_BLOCK * COST_ROUNDS:,} runs"
                    ),
                )
            )
        )
    return results


class _RowsAlone:
    """While ``active``, a store without statistics writes, for each run it stops, the rows
    its statistics would have (six fields of ``primary``) with fixed values: what the rows
    themselves cost, apart from summarising the data. Patches the writer; ``restore`` undoes.
    """

    def __init__(self, store: Any) -> None:
        self.active = False
        self._write_stopped = sqlwrite.write_stopped
        ids = sorted(field_id("primary", f) for f in FIELDS)
        rows = [(fid, key, 5, 0, 2.5, 0.1, 0.9, 0.5) for fid, key in ids]
        write_stop = store._write_stop

        def _write_stop(conn: Any, run_id: int, doc: dict) -> Any:
            found = write_stop(conn, run_id, doc)
            if self.active:
                store._stopped.append((run_id, None))
            return found

        def _write_stopped(conn: Any, stopped: list) -> None:
            fixed = [(run_id, *row) for run_id, parts in stopped if parts is None for row in rows]
            if fixed:
                sqlstats._INSERT.insert_rows(conn, fixed)
            else:
                self._write_stopped(conn, stopped)

        self._store = store
        store._write_stop = _write_stop
        sqlwrite.write_stopped = _write_stopped

    def restore(self) -> None:
        del self._store._write_stop  # the instance's patch: the class's method again
        sqlwrite.write_stopped = self._write_stopped


def bench_small_runs_stored(folder: Path) -> Result:
    """Small runs into a catalog that already holds ``STORED_RUNS`` (each index then spans
    many pages, and a run's uid-keyed rows land at random places of them)."""
    cat = _fresh(folder, "stored")
    for lo in range(0, STORED_RUNS, 2_000):
        cat.ingest(pair for i in range(lo, lo + 2_000) for pair in _small_run(i))
    flat = [pair for i in range(N_SMALL_RUNS) for pair in _small_run(STORED_RUNS + i)]
    parts = [
        flat[k * len(flat) // REPEATS : (k + 1) * len(flat) // REPEATS] for k in range(REPEATS)
    ]
    elapsed = []
    insert = cat.insert
    for part in parts:
        with timed() as t:
            for name, doc in part:
                insert(name, doc)
            cat.flush()
        elapsed.append(t[0])
    assert len(cat) == STORED_RUNS + N_SMALL_RUNS
    cat.close()
    return print_result(
        Result(
            "B1",
            f"small runs x {N_SMALL_RUNS} into a catalog of {STORED_RUNS:,} runs",
            N_SMALL_RUNS / REPEATS / best(elapsed),
            "runs/s",
            target=TARGET_RUNS,
            note=f"best of {REPEATS} parts; the catalog filled by ingest() first (untimed)",
        )
    )


def run() -> list[Result]:
    section("B1 ingest: a run with 6 numeric fields")
    with tempfile.TemporaryDirectory(prefix="runbroker-b1-") as tmp:
        folder = Path(tmp)
        results = bench_events(folder)
        results.append(bench_durable(folder))
        results.append(bench_visibility(folder))
        results.extend(bench_pages(folder))
        results.extend(bench_pages(folder, numpy=True))
        results.extend(bench_small_runs(folder))  # with and without statistics, alternating
        results.extend(bench_statistics_cost(folder))
        results.append(bench_small_runs_stored(folder))
        # The same without per-field statistics, for the "within 5%" comparison.
        results.extend(bench_events(folder, stats=False))
        results.extend(bench_pages(folder, stats=False))
    return results
