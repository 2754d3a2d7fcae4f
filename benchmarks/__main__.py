"""Run the benchmarks: ``python -m benchmarks`` (all) or ``python -m benchmarks b2 [b3 ...]``."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

from .common import CORES, Result, busy, print_summary, write_json

BENCHMARKS = {
    "b1": "b1_ingest",
    "b2": "b2_read",
    "b3": "b3_search",
    "b5": "b5_detector:run_b5",
    "b6": "b5_detector:run_b6",
    "b7": "b7_postgres",
    "b8": "b8_writers",
    "b9": "b9_remote_read",
    "b10": "b10_remote_search",
    "b11": "b11_remote_write",
    "b12": "b12_access",
    "b13": "b13_export",
    "b14": "b14_pack",
    "b14f": "b14_folder",
    "b15": "b15_data_search",
    "b16": "b16_align",
    "b17": "b17_federated",
    "b20": "b20_ingest_race",
}
RESULTS = Path(__file__).with_name("results.json")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("benchmarks:", ", ".join(f"{k} ({v})" for k, v in BENCHMARKS.items()))
        return 0
    wanted = []
    for arg in argv or list(BENCHMARKS):
        key = arg.lower().split("_", 1)[0]
        if key not in BENCHMARKS:
            print(f"unknown benchmark {arg!r}; choose from {', '.join(BENCHMARKS)}")
            return 2
        wanted.append(key)
    busy_at_start = busy()
    print(
        f"runbroker benchmarks {' '.join(wanted)} on {CORES} cores"
        + ("" if busy_at_start is None else f" ({busy_at_start:.0f}% busy before starting)"),
        flush=True,
    )
    t0 = time.perf_counter()
    results: list[Result] = []
    crashed = []
    for key in wanted:
        # "module:function" runs one part of a module that holds several benchmarks.
        module_name, _, function = BENCHMARKS[key].partition(":")
        module = importlib.import_module(f".{module_name}", __package__)
        try:
            results.extend(getattr(module, function or "run")())
        except Exception:
            traceback.print_exc()
            crashed.append(key)
    wall = time.perf_counter() - t0
    print_summary(results)
    write_json(RESULTS, results, wanted, wall, busy_at_start)
    print(f"wrote {RESULTS} ({wall:.0f} s)")
    if crashed:
        print(f"benchmarks that crashed: {', '.join(crashed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
