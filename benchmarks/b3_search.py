"""B3 -- search at scale: lookups and queries on a catalog of 100,000 runs.

The catalog is built once with ``cat.ingest`` in batches (each run: start, descriptor, one
``event_page`` of 5 events, stop) and cached under ``$TMPDIR/runbroker-bench/`` keyed by
``VERSION``; later runs reuse it (set ``RUNBROKER_BENCH_REBUILD=1`` to force a rebuild, and
``RUNBROKER_BENCH_B3_RUNS`` to change the size). A JSON-lines file of the start documents is
cached next to it for the baseline: the naive, file-backed way of loading every start document
into a Python list and filtering it.

Metadata: ``sample`` from 50 names (skewed, as real beamtime is), a nested
``sample_info.temp`` number (``sample`` itself is the str that ``Key("sample") == x`` compares),
``operator``, ``proposal_id``, ``plan_name`` among 5, ``scan_id`` counting up with restarts
(duplicates) and start times spread over two years.

Run alone with ``python -m benchmarks b3``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import runbroker
from runbroker.queries import Key, TimeRange
from runbroker.store.schema import SCHEMA_VERSION

from .common import Result, best, median, paged_run, print_result, section, timed, timings

N_RUNS = int(os.environ.get("RUNBROKER_BENCH_B3_RUNS", "100000"))
VERSION = f"v2-{N_RUNS}runs-schema{SCHEMA_VERSION}"
BATCH = 2_000  # runs per ingest() call
REPEATS = 50  # timed lookups/queries (median)
NAIVE_REPEATS = 10  # the naive baseline is slow: fewer repeats (median)
WARMUP = 10

TARGET_LOOKUP_MS = 1.0
TARGET_QUERY_MS = 10.0
TARGET_OPEN_MS = 100.0

SAMPLES = [
    "Ni", "Cu", "Fe", "Si", "Au", "Ag", "Pt", "Pd", "Ti", "Al", "Zn", "Co", "Mn", "Cr", "Mo",
    "W", "Ta", "Nb", "Zr", "V", "LaB6", "CeO2", "Al2O3", "SiO2", "TiO2", "ZnO", "Fe2O3", "NiO",
    "CuO", "MgO", "BaTiO3", "SrTiO3", "LiFePO4", "LiCoO2", "graphite", "graphene", "MoS2",
    "WSe2", "GaAs", "InP", "GaN", "perovskite", "zeolite-Y", "MOF-5", "lysozyme", "insulin",
    "kapton", "water", "air", "empty-cell",
]  # fmt: skip
PROPOSALS = [f"P-{300000 + 17 * i}" for i in range(40)]
OPERATORS = [f"op{i:02d}" for i in range(1, 21)]
PLANS = ["count", "scan", "rel_scan", "grid_scan", "list_scan"]
T0 = 1_672_531_200.0  # 2023-01-01 UTC
SPAN = 2 * 365 * 86_400.0

_OPEN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import runbroker
t1 = time.perf_counter()
cat = runbroker.open(sys.argv[1])
n = len(cat)
t2 = time.perf_counter()
cat.close()
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "n": n}))
"""
_IMPORT_XARRAY = """
import json, time
t0 = time.perf_counter()
import xarray
print(json.dumps({"import": time.perf_counter() - t0}))
"""


# -- building the catalog ----------------------------------------------------------------------


def _zipf(n: int) -> list[float]:
    return [1.0 / (k + 1) for k in range(n)]


def _generate(n: int, seed: int = 42) -> Iterator[list[tuple[str, dict]]]:
    """Documents of ``n`` runs, one list per run, oldest first."""
    rng = random.Random(seed)
    sample_w, proposal_w = _zipf(len(SAMPLES)), _zipf(len(PROPOSALS))
    plan_w = [5, 3, 2, 1, 1]
    scan_id = 0
    for i in range(n):
        scan_id += 1
        if rng.random() < 0.005:  # counter set back (a restored config): some duplicates
            scan_id = max(1, scan_id - rng.randint(1, 20))
        sample = rng.choices(SAMPLES, sample_w)[0]
        md = {
            "plan_name": rng.choices(PLANS, plan_w)[0],
            "scan_id": scan_id,
            "sample": sample,
            "sample_info": {"temp": round(rng.uniform(4.0, 800.0), 1), "name": sample},
            "operator": rng.choice(OPERATORS),
            "proposal_id": rng.choices(PROPOSALS, proposal_w)[0],
            "detectors": ["det", "I0"],
            "motors": ["motor"],
        }
        start_time = T0 + SPAN * (i + rng.random()) / n
        seq = [1, 2, 3, 4, 5]
        data = {"det": [float(s) for s in seq], "I0": [1.0] * 5, "motor": [0.1 * s for s in seq]}
        yield paged_run(md, start_time, data)


def _cache_paths() -> tuple[Path, Path]:
    folder = Path(os.environ.get("RUNBROKER_BENCH_CACHE") or tempfile.gettempdir())
    folder = folder / "runbroker-bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"b3-{VERSION}.db", folder / f"b3-{VERSION}.starts.jsonl"


def _cached(db: Path, starts: Path) -> bool:
    if os.environ.get("RUNBROKER_BENCH_REBUILD") or not (db.exists() and starts.exists()):
        return False
    try:
        with runbroker.open(db, readonly=True) as cat:
            return len(cat) == N_RUNS
    except Exception as err:  # an old schema, a half-written file ...
        print(f"  cached catalog unusable ({err!r}); rebuilding", flush=True)
        return False


def _build(db: Path, starts: Path) -> float:
    """Build the catalog into a scratch file and move it in place; return seconds spent."""
    scratch = db.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    print(f"  building {N_RUNS:,} runs into {db} (cached for later runs) ...", flush=True)
    runs = _generate(N_RUNS)
    ingest_s = 0.0
    done = 0
    with open(starts.with_suffix(".building"), "w") as jsonl:
        while done < N_RUNS:
            batch = list(itertools.islice(runs, BATCH))
            for docs in batch:
                jsonl.write(json.dumps(docs[0][1]) + "\n")
            pairs = [pair for docs in batch for pair in docs]
            # A fresh catalog object per batch, as separate import jobs would have: per-store
            # caches (descriptor states, run ids) cannot grow over the whole build.
            with runbroker.open(scratch, create=True) as cat, timed() as t:
                cat.ingest(pairs)
            ingest_s += t[0]
            done += len(batch)
            print(
                f"    {done:>7,} / {N_RUNS:,} runs, batch at {len(batch) / t[0]:,.0f} runs/s",
                flush=True,
            )
    os.replace(scratch, db)
    os.replace(starts.with_suffix(".building"), starts)
    return ingest_s


# -- measuring ---------------------------------------------------------------------------------


def _per_key(fn: Callable[[Any], Any], keys: list[Any]) -> float:
    """Median seconds of ``fn(key)`` over distinct keys."""
    out = []
    for key in keys:
        t0 = time.perf_counter()
        fn(key)
        out.append(time.perf_counter() - t0)
    return median(out)


def _subprocess(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _result(
    name: str,
    value_s: float,
    naive_s: float,
    target_ms: float | None,
    note: str = "",
    baseline_name: str = "naive list scan",
) -> Result:
    return print_result(
        Result(
            "B3",
            name,
            value_s * 1e3,
            "ms",
            naive_s * 1e3,
            baseline_name,
            target=target_ms,
            higher_is_better=False,
            note=note,
        )
    )


def run() -> list[Result]:
    section(f"B3 search: a catalog of {N_RUNS:,} runs")
    results: list[Result] = []
    db, starts = _cache_paths()
    if _cached(db, starts):
        print(f"  using cached catalog {db}", flush=True)
    else:
        ingest_s = _build(db, starts)
        results.append(
            print_result(
                Result(
                    "B3",
                    f"build: ingest() of {N_RUNS:,} small runs, {BATCH:,} per call",
                    N_RUNS / ingest_s,
                    "runs/s",
                    note=f"{ingest_s:.0f} s in ingest(); only measured when the cache is rebuilt",
                )
            )
        )

    # The naive, file-backed way: every start document in a list, newest first.
    def load_naive() -> list[dict]:
        with open(starts) as f:
            recs = [json.loads(line) for line in f]
        recs.sort(key=lambda r: (r["time"], r["uid"]), reverse=True)
        return recs

    naive_load = best(timings(load_naive, 3))
    recs = load_naive()

    # -- opening, in fresh subprocesses
    opens = [_subprocess(_OPEN_SCRIPT, str(db)) for _ in range(5)]
    assert all(o["n"] == N_RUNS for o in opens)
    xr_import = median([_subprocess(_IMPORT_XARRAY)["import"] for _ in range(3)])
    results.append(
        _result(
            "runbroker.open(path) + len(cat), fresh process",
            median([o["open"] for o in opens]),
            naive_load,
            TARGET_OPEN_MS,
            "median of 5 subprocesses; baseline: json.loads every line of the start-document "
            "file into a list, sorted",
            baseline_name="naive load of all starts",
        )
    )
    results.append(
        print_result(
            Result(
                "B3",
                "import runbroker, fresh process",
                median([o["import"] for o in opens]) * 1e3,
                "ms",
                xr_import * 1e3,
                "import xarray alone",
                note="median of 5; no target",
            )
        )
    )

    cat = runbroker.open(db)
    rng = random.Random(7)
    prefix_count = Counter(r["uid"][:8] for r in recs)
    picks = rng.sample(recs, WARMUP + REPEATS)
    keys = picks[WARMUP:]
    naive_keys = keys[:NAIVE_REPEATS]

    def by_scan_id(r: dict) -> Any:
        return cat[r["scan_id"]]

    def by_uid(r: dict) -> Any:
        return cat[r["uid"]]

    def by_prefix(r: dict) -> Any:
        return cat[r["uid"][:8]]

    unique = [r for r in keys if prefix_count[r["uid"][:8]] == 1]
    for r in picks[:WARMUP]:
        by_scan_id(r), by_uid(r), by_prefix(r)
    assert by_uid(keys[0]).uid == keys[0]["uid"]
    assert by_scan_id(keys[0]).start["scan_id"] == keys[0]["scan_id"]

    def naive_scan_id(r: dict) -> Any:
        return next(x for x in recs if x.get("scan_id") == r["scan_id"])

    def naive_uid(r: dict) -> Any:
        return next(x for x in recs if x["uid"] == r["uid"])

    def naive_prefix(r: dict) -> Any:
        p = r["uid"][:8]
        return [x for x in recs if x["uid"].startswith(p)]  # all of them: ambiguity check

    for label, fn, naive in (
        ("cat[scan_id]", by_scan_id, naive_scan_id),
        ("cat[uid]", by_uid, naive_uid),
        ("cat[uid[:8]] (prefix)", by_prefix, naive_prefix),
    ):
        key_set = unique if "prefix" in label else keys
        results.append(
            _result(
                label,
                _per_key(fn, key_set),
                _per_key(naive, naive_keys),
                TARGET_LOOKUP_MS,
                f"median over {len(key_set)} distinct keys, warm; baseline median of "
                f"{len(naive_keys)}",
            )
        )

    # -- queries
    common = Counter((r["sample"], r["proposal_id"]) for r in recs)
    (s_pop, p_pop), _ = common.most_common(1)[0]
    s_rare, p_rare = SAMPLES[-1], PROPOSALS[-1]
    mid = T0 + SPAN / 2
    since, until = mid, mid + 30 * 86_400.0
    cases: list[tuple[str, Any, Callable[[dict], bool]]] = [
        (
            "eq sample & proposal_id (common pair)",
            (Key("sample") == s_pop) & (Key("proposal_id") == p_pop),
            lambda r: r.get("sample") == s_pop and r.get("proposal_id") == p_pop,
        ),
        (
            "eq sample & proposal_id (rare pair)",
            (Key("sample") == s_rare) & (Key("proposal_id") == p_rare),
            lambda r: r.get("sample") == s_rare and r.get("proposal_id") == p_rare,
        ),
        (
            "TimeRange, 30-day window",
            TimeRange(since=f"@{since}", until=f"@{until}"),  # "@": epoch seconds
            lambda r: since <= r["time"] < until,
        ),
    ]
    for label, query, pred in cases:
        expected = sum(1 for r in recs if pred(r))
        hits = cat.search(query)
        first = hits[-100:]
        want = list(itertools.islice((r["uid"] for r in recs if pred(r)), 100))
        assert [r.uid for r in first] == want, label
        assert len(hits) == expected, label

        def slice100(q: Any = query) -> Any:
            return cat.search(q)[-100:]

        def islice100(q: Any = query) -> Any:
            return list(itertools.islice(cat.search(q).values(), 100))

        def count(q: Any = query) -> Any:
            return len(cat.search(q))

        def naive100(p: Callable = pred) -> Any:
            return list(itertools.islice((r for r in recs if p(r)), 100))

        def naive_count(p: Callable = pred) -> Any:
            return sum(1 for r in recs if p(r))

        naive_first = median(timings(naive100, NAIVE_REPEATS, warmup=1))
        note = f"{query!r}: {expected:,} hits; median of {REPEATS} repeats, warm"
        results.append(
            _result(
                f"{label}: hits[-100:]",
                median(timings(slice100, REPEATS, warmup=3)),
                naive_first,
                TARGET_QUERY_MS,
                note,
            )
        )
        results.append(
            _result(
                f"{label}: islice(values(), 100)",
                median(timings(islice100, REPEATS, warmup=3)),
                naive_first,
                TARGET_QUERY_MS,
                note,
            )
        )
        results.append(
            _result(
                f"{label}: len(hits)",
                median(timings(count, REPEATS, warmup=3)),
                median(timings(naive_count, NAIVE_REPEATS, warmup=1)),
                None,
                note + "; no target",
            )
        )
    cat.close()
    return results
