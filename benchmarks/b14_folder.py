"""B14 (folder half) -- opening and searching a folder of 1,000 run files.

A folder holds 1,000 runs of 100 events each as JSON Lines files, as ``run.export("jsonl", ...)``
(and ``runbroker pack``) writes them. It is built once through an SQLite catalog and
``cat.export`` and cached under ``$TMPDIR/runbroker-bench/`` keyed by ``VERSION``
(``RUNBROKER_BENCH_REBUILD=1`` forces a rebuild, ``RUNBROKER_BENCH_B14_RUNS`` changes the size).

Measured, each in fresh processes (a user opening a pack in a new session):

- the first open, which builds the folder's index (reads every file once);
- ``runbroker.open(folder)`` + ``cat[-1]`` with the index built (target: under 200 ms);
- a search, ``Key("sample") == x``, listing the hits (target: under 50 ms).

The baseline is what a file-backed catalog without an index does on every open: read every
file's documents (here with ``read_jsonl``).

Run alone with ``python -m benchmarks b14_folder`` (the pack half is ``b14_pack``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import runbroker
from runbroker.store.folderindex import FOLDER

from .common import Result, median, new_run, print_result, section

N_RUNS = int(os.environ.get("RUNBROKER_BENCH_B14_RUNS", "1000"))
EVENTS = 100
VERSION = f"v1-{N_RUNS}runs-{EVENTS}events"
SAMPLES = [f"sample{i:02d}" for i in range(20)]
REPEATS = 5  # fresh processes per figure (median)
TARGET_OPEN_MS = 200.0
TARGET_SEARCH_MS = 50.0

# One process: open, cat[-1] (its metadata), then searches for several samples.
_SCRIPT = """
import json, sys, time
import runbroker
from runbroker.queries import Key
t0 = time.perf_counter()
cat = runbroker.open(sys.argv[1])
last = cat[-1]
uid = last.uid
t1 = time.perf_counter()
searches = []
for sample in json.loads(sys.argv[2]):
    s0 = time.perf_counter()
    hits = list(cat.search(Key("sample") == sample))
    searches.append((time.perf_counter() - s0, len(hits)))
print(json.dumps({"open": t1 - t0, "searches": searches, "n": len(cat), "uid": uid}))
"""
_NAIVE = """
import json, sys, time
from pathlib import Path
from runbroker.export.jsondoc import read_jsonl
t0 = time.perf_counter()
runs = [list(read_jsonl(p)) for p in sorted(Path(sys.argv[1]).glob("*.jsonl"))]
runs.sort(key=lambda docs: (docs[0][1]["time"], docs[0][1]["uid"]))
print(json.dumps({"open": time.perf_counter() - t0, "n": len(runs)}))
"""


def _folder() -> Path:
    base = Path(os.environ.get("RUNBROKER_BENCH_CACHE") or tempfile.gettempdir())
    return base / "runbroker-bench" / f"b14-folder-{VERSION}"


def _build(folder: Path) -> None:
    print(f"  writing {N_RUNS:,} runs of {EVENTS} events into {folder} (cached) ...", flush=True)
    scratch = folder.with_name(folder.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rng = np.random.default_rng(14)
    fields = ("det", "I0", "motor")
    with runbroker.open(scratch / "source.db") as cat:
        for i in range(N_RUNS):
            md = {"scan_id": i + 1, "plan_name": "scan", "sample": SAMPLES[i % len(SAMPLES)]}
            run, desc = new_run(md, fields, time_=1.7e9 + 60.0 * i)
            seq = np.arange(1, EVENTS + 1)
            times = run.start_doc["time"] + 0.1 * seq
            page = desc.compose_event_page(
                data={f: rng.random(EVENTS) for f in fields},
                timestamps={f: times for f in fields},
                seq_num=seq,
                time=times,
                validate=False,
            )
            cat.ingest(
                [
                    ("start", run.start_doc),
                    ("descriptor", desc.descriptor_doc),
                    ("event_page", page),
                    ("stop", run.compose_stop(time=times[-1] + 0.1, validate=False)),
                ]
            )
        cat.export("jsonl", scratch / "runs")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(scratch / "runs", folder)
    shutil.rmtree(scratch)


def _run(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ms(
    name: str,
    seconds: float,
    baseline: float | None,
    target: float | None = None,
    note: str = "",
) -> Result:
    return print_result(
        Result(
            "B14",
            name,
            seconds * 1e3,
            "ms",
            None if baseline is None else baseline * 1e3,
            "read every file (no index)",
            target=target,
            higher_is_better=False,
            note=note,
        )
    )


def run() -> list[Result]:
    section(f"B14 folder store: {N_RUNS:,} run files of {EVENTS} events")
    folder = _folder()
    ready = folder.is_dir() and len(list(folder.glob("*.jsonl"))) == N_RUNS
    if os.environ.get("RUNBROKER_BENCH_REBUILD") or not ready:
        _build(folder)
    else:
        print(f"  using cached folder {folder}", flush=True)
    samples = json.dumps(SAMPLES[:10])
    naive = median([_run(_NAIVE, str(folder))["open"] for _ in range(3)])
    results = []

    first = []
    for _ in range(2):
        shutil.rmtree(folder / FOLDER, ignore_errors=True)
        got = _run(_SCRIPT, str(folder), samples)
        assert got["n"] == N_RUNS, got
        first.append(got["open"])
    results.append(
        _ms("first open + cat[-1] (builds the index)", median(first), naive, note="once")
    )

    warm = [_run(_SCRIPT, str(folder), samples) for _ in range(REPEATS)]
    opens = median([w["open"] for w in warm])
    results.append(
        _ms("open + cat[-1], index built", opens, naive, TARGET_OPEN_MS, "fresh process")
    )
    # The first search of a process pays for compiling and caching; the rest are the usual.
    searches = list(itertools.chain.from_iterable(w["searches"][1:] for w in warm))
    hits = warm[0]["searches"][1][1]
    results.append(
        _ms(
            f'search Key("sample") == x, listing {hits} hits',
            median([s for s, _ in searches]),
            naive,
            TARGET_SEARCH_MS,
        )
    )
    results.append(
        _ms(
            "first search of a process",
            median([w["searches"][0][0] for w in warm]),
            naive,
            TARGET_SEARCH_MS,
        )
    )
    return results
