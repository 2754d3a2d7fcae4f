"""B17 -- federated search: ``runbroker.merge`` of 3 catalogs of 100,000 runs each returns its
first 100 hits within 1.5x of one catalog's time (same query, same process).

The first catalog is B3's (built once and cached under ``$TMPDIR/runbroker-bench/``); the
other two are built by B3's generator with other seeds (other uids and metadata over the same
two years: the three interleave in time), start and stop documents only, and cached beside
it. Each query is timed on one catalog and on the merge of the three, alternating, median of
``REPEATS``; the merged answer is checked against the union of the three separate answers
first.

Run alone with ``python -m benchmarks b17``.
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import runbroker
from runbroker.queries import Key, TimeRange

from . import b3_search as b3
from .common import Result, median, print_result, section, timings

REPEATS = 30
TARGET_RATIO = 1.5


def _catalog(k: int) -> Path:
    """Catalog ``k`` (0: B3's own), built if it is not cached yet."""
    db, starts = b3._cache_paths()
    if k:
        db = db.with_name(f"b17-{k}-{b3.VERSION}.db")
        starts = db.with_suffix(".starts.jsonl")
    if b3._cached(db, starts):
        return db
    generate = b3._generate

    def headers(n: int, seed: int = 42) -> Any:
        # other seeds: other metadata (compose_run gives fresh uids anyway); start and stop
        # only: a search reads no events, and the build takes a quarter of B3's time
        for docs in generate(n, seed=seed + 1000 * k):
            yield [docs[0], docs[-1]]

    if k:
        b3._generate = headers  # type: ignore[assignment]
    try:
        b3._build(db, starts)
    finally:
        b3._generate = generate
    return db


def _first100(cat: runbroker.Catalog) -> list[str]:
    return [run.uid for run in itertools.islice(cat.values(), 100)]


def run() -> list[Result]:
    section(f"B17 federated search: 3 catalogs of {b3.N_RUNS:,} runs")
    cats = [runbroker.open(_catalog(k), readonly=True) for k in range(3)]
    merged = runbroker.merge(*cats)
    rng = random.Random(17)
    mid = b3.T0 + b3.SPAN * rng.random()
    queries: list[tuple[str, Any]] = [
        ("every run", None),
        ("eq sample", Key("sample") == "Cu"),
        ("eq sample & proposal_id (rare pair)", (Key("sample") == b3.SAMPLES[-1]) & (
            Key("proposal_id") == b3.PROPOSALS[-1]
        )),
        ("TimeRange, 30-day window", TimeRange(since=f"@{mid}", until=f"@{mid + 30 * 86_400}")),
    ]  # fmt: skip
    results = []
    for label, query in queries:
        one = cats[0] if query is None else cats[0].search(query)
        fed = merged if query is None else merged.search(query)
        # the merged first 100 are the newest 100 of the three separate first 100s
        separate = [(r.start["time"], r.uid) for c in cats for r in itertools.islice(
            (c if query is None else c.search(query)).values(), 100
        )]  # fmt: skip
        want = [uid for _, uid in sorted(separate, reverse=True)[:100]]
        assert _first100(fed) == want, label
        single, federated = [], []
        for _ in range(REPEATS):  # alternating, so both see the same machine load
            single += timings(lambda c=one: _first100(c), 1)
            federated += timings(lambda c=fed: _first100(c), 1)
        t1, t3 = median(single), median(federated)
        results.append(
            print_result(
                Result(
                    "B17",
                    f"first 100 hits, {label}: merge of 3 vs one catalog",
                    t3 * 1e3,
                    "ms",
                    t1 * 1e3,
                    "one catalog",
                    target=TARGET_RATIO,
                    target_on="ratio",
                    higher_is_better=False,
                    note=f"{query!r}; median of {REPEATS}, alternating, warm",
                )
            )
        )
    merged.close()
    for cat in cats:
        cat.close()
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    run()
