"""Event-page ingest of an earlier commit and of the working tree, timed in one process.

``python -m benchmarks.paired_ingest BASE [ROUNDS]`` (BASE: a commit, e.g. ``HEAD~1``) copies
BASE's ``src/runbroker`` into a temporary package ``runbroker_base`` and times both codes
alternately, ROUNDS rounds (7 by default), on the workloads of issue 20: event pages of 1,000
events (6 float fields, as lists the way event-model's ``compose_event_page`` makes them, and
as numpy arrays), first step by step per page (validation, columns from the page, the join of
100 pages, the encoding of the joined page), then whole: N = 1,000 / 10,000 / 100,000 events
inserted into a fresh SQLite catalog, with and without the final ``flush``.

On a shared machine only such pairs mean something: figures from separate runs move by a
third or more. Printed: min / median over the rounds (per page: µs; whole: M events/s, the
best and the median rate).
"""

from __future__ import annotations

import gc
import importlib
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from io import BytesIO
from pathlib import Path
from types import ModuleType

from .common import compose_pages, new_run

PAGE = 1_000
STEPS = ("validate", "columns", "join", "encode")


def base_package(commit: str, into: Path) -> str:
    """Unpack ``commit``'s ``src/runbroker`` as package ``runbroker_base`` in ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src/runbroker"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "runbroker_base"
    (into / "src" / "runbroker").rename(package)
    absolute = re.compile(r"^(\s*)(from|import) runbroker([. ])", re.M)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(absolute.sub(r"\1\2 runbroker_base\3", text))
    sys.path.insert(0, str(into))
    return "runbroker_base"


def _modules(package: str) -> dict[str, ModuleType]:
    names = ("documents", "store.events", "store.pages", "opening")
    return {n: importlib.import_module(f"{package}.{n}") for n in names}


def _step_work(mods: dict[str, ModuleType], descriptor: dict, pages: list) -> dict:
    """The four steps of one code, each a callable over the 100 pages."""
    events, codec = mods["store.events"], mods["store.pages"]
    validate = mods["documents"].validate
    state = events.DescriptorState.from_descriptor(1, 1, "r", descriptor, 0)
    batches = [state.page_batch(p) for p in pages]
    joined = events._join(batches)
    return {
        "validate": lambda: [validate("event_page", p) for p in pages],
        "columns": lambda: [state.page_batch(p) for p in pages],
        "join": lambda: events._join(batches),
        "encode": lambda: (codec.encode(joined.data), codec.encode(joined.extra)),
    }


def steps(codes: dict[str, dict[str, ModuleType]], rounds: int, numpy: bool) -> dict:
    """µs per page of each in-memory step, per code, one figure per round."""
    _, desc = new_run()
    pages = list(compose_pages(desc, 100 * PAGE, PAGE, seed=3, numpy=numpy))
    out: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for label in list(codes) if r % 2 == 0 else list(codes)[::-1]:
            work = _step_work(codes[label], desc.descriptor_doc, pages)
            for step, fn in work.items():
                best = min(timeit.repeat(fn, number=1, repeat=3))
                out.setdefault((step, label), []).append(1e6 * best / len(pages))
    return out


def whole(codes: dict[str, dict[str, ModuleType]], rounds: int, folder: Path) -> dict:
    """M events/s of whole paged runs, per code and workload, one figure per round."""
    out: dict[tuple, list[float]] = {}
    count = 0
    for r in range(rounds):
        for numpy in (False, True):
            for n in (1_000, 10_000, 100_000):
                run, desc = new_run()
                pages = list(compose_pages(desc, n, PAGE, seed=3, numpy=numpy))
                for label in list(codes) if r % 2 == 0 else list(codes)[::-1]:
                    count += 1
                    store = codes[label]["opening"].open_sql(f"sqlite:///{folder}/c{count}.db")
                    store.insert("start", run.start_doc)
                    store.insert("descriptor", desc.descriptor_doc)
                    store.flush()
                    gc.collect()
                    t0 = time.perf_counter()
                    for p in pages:
                        store.insert("event_page", p)
                    t1 = time.perf_counter()
                    store.flush()
                    t2 = time.perf_counter()
                    store.close()
                    out.setdefault((numpy, n, "inserts", label), []).append(n / (t1 - t0) / 1e6)
                    out.setdefault((numpy, n, "+ flush", label), []).append(n / (t2 - t0) / 1e6)
    return out


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    rounds = int(argv[1]) if len(argv) > 1 else 7
    with tempfile.TemporaryDirectory(prefix="runbroker-paired-") as tmp:
        folder = Path(tmp)
        codes = {"base": _modules(base_package(argv[0], folder)), "new": _modules("runbroker")}
        for numpy in (False, True):
            kind = "numpy" if numpy else "lists"
            got = steps(codes, rounds, numpy)
            for step in STEPS:
                shown = "   ".join(
                    f"{label} {min(v):6.1f} / {statistics.median(v):6.1f}"
                    for label in codes
                    for v in [got[(step, label)]]
                )
                print(f"per page, {kind}, {step:8s} (µs, min / median): {shown}")
        got = whole(codes, rounds, folder)
        for (numpy, n, what, label), v in got.items():
            if label != "base":
                continue
            new = got[(numpy, n, what, "new")]
            print(
                f"{'numpy' if numpy else 'lists'} N={n:>7,} {what:8s} (M events/s, best / median):"
                f" base {max(v):.2f} / {statistics.median(v):.2f}"
                f"   new {max(new):.2f} / {statistics.median(new):.2f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
