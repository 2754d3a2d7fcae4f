"""B10 -- remote search: pages of run summaries and single runs' metadata from a server with
two worker processes, under concurrent clients.

The catalog is B3's 100,000 runs (built once and cached by :mod:`benchmarks.b3_search`),
served by uvicorn with 2 worker processes (:class:`benchmarks.service.Served`) on loopback.
Clients are separate processes, each with its own ``runbroker.open(url, api_key=...)``:

* pages: ``cat[-(k + 1) * 100 : -k * 100]``, page ``k`` of 100 run summaries (start and stop
  documents), newest first, ``k`` random among the first 100 pages (one ``POST /search``);
* metadata: ``cat[uid]`` for uids drawn at random from the whole catalog (one
  ``GET /runs/{uid}``).

Each is measured twice: ``CLIENTS`` clients sending as fast as answers come back (the
throughput), then the same clients sending at the target rate in all, each on a fixed
schedule (the latency at that load: a request is timed from when it was due, so a late start
counts). The baseline is the same loop run locally on the same file in one process.

Run alone with ``python -m benchmarks b10``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

import runbroker

from .b3_search import N_RUNS, _build, _cache_paths, _cached
from .common import CORES, Result, print_result, section
from .service import API_KEY, Served

WORKERS = 2
CLIENTS = 4
SECONDS = 5.0
PAGE = 100
PAGES = 100  # pages asked for are among the first PAGES

TARGET_PAGES_RATE = 200.0  # requests/s
TARGET_PAGES_P99_MS = 50.0
TARGET_METADATA_RATE = 500.0


def _ask(cat: runbroker.Catalog, kind: str, rng: random.Random, uids: list[str]) -> None:
    if kind == "pages":
        k = rng.randrange(PAGES)
        runs = cat[-(k + 1) * PAGE : -k * PAGE if k else None]
        assert len(runs) == PAGE
    else:
        uid = rng.choice(uids)
        assert cat[uid].uid == uid


def _client(
    url: str, kind: str, uids: list[str], start: float, seconds: float, rate: float, seed: int
) -> list[float]:
    """Latencies (s) of the requests one client sends between ``start`` and ``start +
    seconds``: back to back when ``rate`` is 0, else one every ``1 / rate`` s, each timed
    from when it was due."""
    rng = random.Random(seed)
    cat = runbroker.open(url, api_key=API_KEY, cache=False)
    _ask(cat, kind, rng, uids)  # connects; the first request is not timed
    out = []
    due = start
    while time.perf_counter() < start:
        time.sleep(0.001)
    while True:
        if rate:
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        t0 = time.perf_counter()
        if t0 >= start + seconds:
            break
        _ask(cat, kind, rng, uids)
        out.append(time.perf_counter() - (due if rate else t0))
        due += 1.0 / rate if rate else 0.0
    cat.close()
    return out


def _load(url: str, kind: str, uids: list[str], rate: float) -> tuple[float, np.ndarray]:
    """Requests/s and latencies (ms) of ``CLIENTS`` client processes over ``SECONDS``."""
    ctx = mp.get_context("fork")  # the clients import nothing new
    start = time.perf_counter() + 1.0  # perf_counter is system-wide on Linux
    args = [(url, kind, uids, start, SECONDS, rate / CLIENTS, i) for i in range(CLIENTS)]
    with ctx.Pool(CLIENTS) as pool:
        lat = pool.starmap(_client, args)
    every = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    return len(every) / SECONDS, every


def _local(db: Path, kind: str, uids: list[str]) -> float:
    """Requests/s of the same loop on the file itself, one process."""
    rng = random.Random(0)
    with runbroker.open(db, readonly=True) as cat:
        _ask(cat, kind, rng, uids)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < SECONDS / 2:
            _ask(cat, kind, rng, uids)
            n += 1
        return n / (time.perf_counter() - t0)


def _pcts(lat: np.ndarray) -> str:
    p50, p99 = np.percentile(lat, [50, 99])
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat.max():.1f} ms"


def _measure(url: str, db: Path, kind: str, uids: list[str], target_rate: float) -> list[Result]:
    what = f"{PAGE} run summaries a page" if kind == "pages" else "cat[uid], GET /runs/{uid}"
    local = _local(db, kind, uids)
    rate, lat = _load(url, kind, uids, 0.0)
    results = [
        print_result(
            Result(
                "B10",
                f"remote {kind}: {what}, {CLIENTS} clients, {WORKERS} server workers",
                rate,
                "requests/s",
                local,
                "local, 1 process",
                target=target_rate,
                note=f"as fast as answers come, {SECONDS:.0f} s; {_pcts(lat)}",
            )
        )
    ]
    if kind == "pages":
        _, paced = _load(url, kind, uids, target_rate)
        results.append(
            print_result(
                Result(
                    "B10",
                    f"remote pages: p99 latency at {target_rate:.0f} requests/s",
                    float(np.percentile(paced, 99)),
                    "ms",
                    float(np.percentile(lat, 99)),
                    "p99 at full speed",
                    target=TARGET_PAGES_P99_MS,
                    higher_is_better=False,
                    note=(
                        f"{CLIENTS} clients on fixed schedules, {len(paced):,} requests in "
                        f"{SECONDS:.0f} s; {_pcts(paced)}; client and server share {CORES} cores"
                    ),
                )
            )
        )
    return results


def run() -> list[Result]:
    section(f"B10 remote search: {N_RUNS:,} runs served by {WORKERS} uvicorn workers")
    db, starts = _cache_paths()
    if _cached(db, starts):
        print(f"  using B3's cached catalog {db}", flush=True)
    else:
        _build(db, starts)
    with open(starts) as f:
        uids = [json.loads(line)["uid"] for line in f]
    results: list[Any] = []
    with Served(db, workers=WORKERS) as server:
        results += _measure(server.url, db, "pages", uids, TARGET_PAGES_RATE)
        results += _measure(server.url, db, "metadata", uids, TARGET_METADATA_RATE)
    return results
