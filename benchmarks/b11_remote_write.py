"""B11 -- remote write: documents through a runbroker server, against the same inserts into a
local SQLite catalog.

A fresh SQLite catalog is served by uvicorn (one worker, :class:`benchmarks.service.Served`)
on loopback; the writer is ``runbroker.open(url, api_key=...)``, whose HTTP store batches
events (``batch`` events or ``linger`` seconds, whichever comes first) and sends every other
document at once. Measured:

* a small run (start, descriptor, 5 events, stop), every document through ``insert()``: the
  time until ``insert("stop", ...)`` returns, median of ``SMALL_RUNS``;
* single ``event`` documents through ``insert()``, ``flush()`` at the end: events/s;
* visibility: events inserted one every 20 ms, then at 1 kHz, while a reader in another
  process polls ``len(run.primary)`` through the server (B1's reader): the time from
  ``insert()`` to the reader counting the event;
* a re-read of a run through the client's cache (``runbroker.open(url, cache=folder)``)
  against ``read()`` of a local SQLite file; skipped, saying so, while the client has no
  cache.

Run alone with ``python -m benchmarks b11``.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import runbroker

from .b1_ingest import _reader
from .b2_read import _build as build_columns
from .common import Result, best, compose_events, new_run, print_result, section, timed, timings
from .service import API_KEY, Served

SMALL_RUNS = 50
N_EVENTS = 20_000
REPEATS = 3
SLOW, STEADY = 25, 2_000  # visibility: events 20 ms apart, then at 1 kHz
CACHED_EVENTS = 100_000

TARGET_SMALL_RUN_MS = 10.0
TARGET_EVENTS = 10_000.0
TARGET_VISIBLE_MS = 200.0
TARGET_CACHED_RATIO = 1.5


def _small_run(i: int) -> list[tuple[str, dict]]:
    run, desc = new_run({"plan_name": "count", "scan_id": i + 1})
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", e) for e in compose_events(desc, 5, seed=i)]
    return [*docs, ("stop", run.compose_stop(validate=False))]


def _write_runs(cat: runbroker.Catalog, runs: list[list[tuple[str, dict]]]) -> list[float]:
    out = []
    for docs in runs:
        with timed() as t:
            for name, doc in docs:
                cat.insert(name, doc)
        out.append(t[0])
    return out


def bench_small_runs(remote: runbroker.Catalog, folder: Path) -> Result:
    runs = [_small_run(i) for i in range(SMALL_RUNS + 5)]
    before = remote.store.transport.requests
    remote_t = _write_runs(remote, runs[:5])[-1:] + _write_runs(remote, runs[5:])
    requests = (remote.store.transport.requests - before) / len(runs)
    with runbroker.open(folder / "small-local.db") as local:
        local_t = _write_runs(local, runs)
        local.flush()
    assert len(remote.search({"scan_id": SMALL_RUNS})) == 1  # the runs arrived
    return print_result(
        Result(
            "B11",
            "remote small run (start, descriptor, 5 events, stop) through insert()",
            statistics.median(remote_t) * 1e3,
            "ms",
            statistics.median(local_t) * 1e3,
            "local insert()",
            target=TARGET_SMALL_RUN_MS,
            higher_is_better=False,
            note=(
                f"median of {SMALL_RUNS} runs (p90 {np.percentile(remote_t, 90) * 1e3:.1f} ms); "
                f"{requests:.0f} requests a run"
            ),
        )
    )


def bench_events(remote: runbroker.Catalog, folder: Path) -> Result:
    times = []
    for i in range(REPEATS):
        # Each repeat writes a run of its own, remotely and into a fresh local file.
        run, desc = new_run()
        events = compose_events(desc, N_EVENTS, seed=i)
        local = runbroker.open(folder / f"events{i}.db")
        row = []
        for cat in (remote, local):
            cat.insert("start", run.start_doc)
            cat.insert("descriptor", desc.descriptor_doc)
            cat.flush()
            insert = cat.insert
            with timed() as t:
                for e in events:
                    insert("event", e)
                cat.flush()
            row.append(t[0])
        times.append(row)
        local.close()
    assert len(remote[run.start_doc["uid"]].primary) == N_EVENTS
    t_remote, t_local = best([r for r, _ in times]), best([loc for _, loc in times])
    return print_result(
        Result(
            "B11",
            f"remote single events through insert(), {N_EVENTS:,} then flush()",
            N_EVENTS / t_remote,
            "events/s",
            N_EVENTS / t_local,
            "local insert()",
            target=TARGET_EVENTS,
            note=f"best of {REPEATS}; the HTTP store's defaults (batch 1000, linger 50 ms)",
        )
    )


def bench_visibility(remote: runbroker.Catalog, url: str) -> Result:
    run, desc = new_run()
    uid = run.start_doc["uid"]
    total = SLOW + STEADY
    events = compose_events(desc, total, seed=2)
    remote.insert("start", run.start_doc)
    remote.insert("descriptor", desc.descriptor_doc)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    # The reader opens the URL with the key from the environment, as a user's script would.
    os.environ["RUNBROKER_API_KEY"], saved = API_KEY, os.environ.get("RUNBROKER_API_KEY")
    try:
        proc = ctx.Process(target=_reader, args=(url, uid, total, ready, out))
        proc.start()
    finally:
        if saved is None:
            del os.environ["RUNBROKER_API_KEY"]
        else:
            os.environ["RUNBROKER_API_KEY"] = saved
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("the reader process did not start")
    sent = np.empty(total)
    next_t = time.perf_counter()
    for i, e in enumerate(events):
        # Sleep (as a RunEngine waiting on hardware does) until due: 20 ms, then 1 ms apart.
        next_t += 0.02 if i < SLOW else 0.001
        wait = next_t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[i] = time.perf_counter()
        remote.insert("event", e)
    remote.flush()
    report = out.get(timeout=60)
    proc.join(30)
    obs = np.array(report["obs"])
    seen_at, counts = obs[:, 0], obs[:, 1]
    idx = np.searchsorted(counts, np.arange(1, total + 1), side="left")
    visible = idx < len(counts)
    lat = np.full(total, np.inf)
    lat[visible] = seen_at[idx[visible]] - sent[visible]
    lat *= 1e3
    poll_ms = report["elapsed"] / max(1, report["polls"]) * 1e3
    return print_result(
        Result(
            "B11",
            "remote visibility: insert() -> a reader in another process sees it (max)",
            float(np.max(lat)),
            "ms",
            50.0,
            "the store's linger",
            target=TARGET_VISIBLE_MS,
            higher_is_better=False,
            note=(
                f"{total:,} events; p50 {np.median(lat):.1f} ms, p99 "
                f"{np.percentile(lat, 99):.1f} ms; 20 ms apart max {np.max(lat[:SLOW]):.1f} ms, "
                f"1 kHz max {np.max(lat[SLOW:]):.1f} ms; the reader polls through the server "
                f"every {poll_ms:.1f} ms"
            ),
        )
    )


def bench_cached(url: str, folder: Path) -> list[Result]:
    if importlib.util.find_spec("runbroker.client.cache") is None:
        print(
            "  [B11] cached re-read: SKIPPED, the client has no cache yet "
            "(runbroker.client.cache); run B11 again once it is merged",
            flush=True,
        )
        return []
    local, uid, _, _ = build_columns(folder, CACHED_EVENTS)
    with runbroker.open(url, api_key=API_KEY, cache=False) as writer:
        writer.ingest(local[uid].documents(arrays=True))
    cached = runbroker.open(url, api_key=API_KEY, cache=folder / "cache")
    run, l_run = cached[uid], local[uid]
    first = best(timings(lambda: run.primary.read(), 1))  # fills the cache
    before = cached.store.transport.requests
    t_cached = best(timings(lambda: run.primary.read(), 5))
    requests = (cached.store.transport.requests - before) / 5
    t_local = best(timings(lambda: l_run.primary.read(), 5, warmup=1))
    cached.close()
    local.close()
    return [
        print_result(
            Result(
                "B11",
                f"cached re-read of {CACHED_EVENTS:,} events x 6 fields (cache=folder)",
                t_cached * 1e3,
                "ms",
                t_local * 1e3,
                "local SQLite read()",
                target=TARGET_CACHED_RATIO,
                target_on="ratio",
                higher_is_better=False,
                note=(
                    f"best of 5 after a first read of {first * 1e3:.0f} ms; "
                    f"{requests:.1f} requests a re-read"
                ),
            )
        )
    ]


def run() -> list[Result]:
    section("B11 remote write: documents through a server on loopback vs local insert()")
    with tempfile.TemporaryDirectory(prefix="runbroker-b11-") as tmp:
        folder = Path(tmp)
        db = folder / "served.db"
        runbroker.open(db, create=True).close()
        with Served(db) as server:
            remote = runbroker.open(server.url, api_key=API_KEY, cache=False)
            try:
                results = [
                    bench_small_runs(remote, folder),
                    bench_events(remote, folder),
                    bench_visibility(remote, server.url),
                ]
            finally:
                remote.close()
            results += bench_cached(server.url, folder)
    return results
