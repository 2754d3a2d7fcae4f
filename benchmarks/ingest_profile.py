"""Where ingest time goes (issue 20): the three ingest workloads, timed step by step.

``python -m benchmarks.ingest_profile`` prints, on a fresh SQLite catalog each:

* ``event_page`` ingest of 1,000-event pages (5 float fields, lists as event-model's
  ``compose_event_page`` makes them, then numpy arrays) at N = 10,000 and 100,000: time in the
  inserts, in the ``stop`` that follows, in the final ``flush``;
* the ``stop`` of a run whose pages are all committed (what the stop itself costs);
* small runs (start, descriptor, 5 events, stop), each flushed;
* the per-page steps alone: validation, columns from the page, joining, encoding.

``python -m benchmarks.ingest_profile cprofile`` adds a cProfile of the 100,000-event case.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
import timeit
from pathlib import Path

import runbroker
from runbroker.documents import validate
from runbroker.store import pages as codec
from runbroker.store.events import DescriptorState, _join

from .b1_ingest import _small_run
from .common import compose_pages, new_run

PAGE = 1_000
REPEATS = 3


def pages_case(folder: Path, n: int, numpy: bool) -> dict[str, float]:
    """Milliseconds in the inserts, the stop and the final flush of one paged run, and in
    the stop of a second run whose pages were committed before it."""
    cat = runbroker.open(folder / f"pages-{n}-{numpy}-{time.monotonic_ns()}.db")
    out: dict[str, float] = {}
    for label in ("", "committed "):
        run, desc = new_run()
        pages = list(compose_pages(desc, n, PAGE, seed=3, numpy=numpy))
        cat.insert("start", run.start_doc)
        cat.insert("descriptor", desc.descriptor_doc)
        t0 = time.perf_counter()
        for p in pages:
            cat.insert("event_page", p)
        if label:
            cat.flush()
        t1 = time.perf_counter()
        cat.insert("stop", run.compose_stop(validate=False))
        t2 = time.perf_counter()
        cat.flush()
        t3 = time.perf_counter()
        if not label:
            out.update(inserts=t1 - t0, stop=t2 - t1, flush=t3 - t2)
        else:
            out["stop of committed run"] = t2 - t1
    cat.close()
    return {k: 1e3 * v for k, v in out.items()}


def small_runs(folder: Path, k: int = 500) -> float:
    """Microseconds per small run, each run flushed."""
    runs = [_small_run(i) for i in range(k)]
    cat = runbroker.open(folder / f"small-{time.monotonic_ns()}.db")
    t0 = time.perf_counter()
    for docs in runs:
        for name, doc in docs:
            cat.insert(name, doc)
        cat.flush()
    elapsed = time.perf_counter() - t0
    cat.close()
    return 1e6 * elapsed / k


def steps(numpy: bool, n: int = 100_000) -> dict[str, float]:
    """Microseconds per page of each in-memory step of page ingest."""
    run, desc = new_run()
    pages = list(compose_pages(desc, n, PAGE, seed=3, numpy=numpy))
    state = DescriptorState.from_descriptor(1, 1, run.start_doc["uid"], desc.descriptor_doc, 0)
    batches = [state.page_batch(p) for p in pages]
    joined = _join(batches)

    def per_page(fn: object) -> float:
        return 1e6 * min(timeit.repeat(fn, number=1, repeat=5)) / len(pages)  # type: ignore[arg-type]

    return {
        "validate": per_page(lambda: [validate("event_page", p) for p in pages]),
        "columns (page_batch)": per_page(lambda: [state.page_batch(p) for p in pages]),
        "join per flush": per_page(lambda: _join(batches)),
        "encode (joined)": per_page(
            lambda: (codec.encode(joined.data), codec.encode(joined.extra))
        ),
    }


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="runbroker-prof-") as tmp:
        folder = Path(tmp)
        for numpy in (False, True):
            kind = "numpy" if numpy else "lists"
            for n in (10_000, 100_000):
                runs = [pages_case(folder, n, numpy) for _ in range(REPEATS)]
                best = {k: min(r[k] for r in runs) for k in runs[0]}
                shown = ", ".join(f"{k} {v:.2f} ms" for k, v in best.items())
                print(f"event_page {kind}, N={n:,}: {shown}")
            shown = ", ".join(f"{k} {v:.0f}" for k, v in steps(numpy).items())
            print(f"  per page (µs), {kind}: {shown}")
        best_run = min(small_runs(folder) for _ in range(REPEATS))
        print(f"small runs, each flushed: {best_run:.0f} µs/run ({1e6 / best_run:,.0f} runs/s)")
        if "cprofile" in argv:
            prof = cProfile.Profile()
            prof.enable()
            pages_case(folder, 100_000, False)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main(sys.argv[1:])
