"""Shared pieces of the benchmarks: results, timing, document generation, printing.

Documents are made with ``event_model.compose_run`` and its ``compose_*`` helpers with
``validate=False``: they are real event-model documents, built in microseconds. Going through a
bluesky ``RunEngine`` would give the same documents but is far too slow to produce hundreds of
thousands of events (or 100,000 runs) in a benchmark that must finish in minutes.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import event_model
import numpy as np

__all__ = [
    "CORES",
    "FIELDS",
    "Result",
    "best",
    "compose_events",
    "compose_pages",
    "data_keys",
    "machine",
    "median",
    "new_run",
    "paged_run",
    "parallel_capacity",
    "print_result",
    "print_summary",
    "section",
    "timed",
    "timings",
    "write_json",
]

CORES = os.cpu_count() or 1
FIELDS = tuple(f"f{i}" for i in range(6))


# -- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    """One measured figure, its same-run baseline and its target.

    ``ratio`` is always ``value / baseline`` in the figure's own unit: for a rate (events/s)
    above 1 means faster than the baseline, for a time (ms) below 1 means faster.
    ``target_on`` says whether the target applies to ``value`` or to ``ratio``.
    """

    bench: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: float | None = None
    target_on: str = "value"  # or "ratio"
    higher_is_better: bool = True
    note: str = ""
    extra_baselines: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        got = self.value if self.target_on == "value" else self.ratio
        if got is None or not np.isfinite(got):
            return False
        return got >= self.target if self.higher_is_better else got <= self.target

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        sign = ">=" if self.higher_is_better else "<="
        if self.target_on == "ratio":
            return f"ratio {sign} {self.target:g}x"
        return f"{sign} {fmt(self.target)} {self.unit}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, status=self.status, target_text=self.target_text)
        return out


def fmt(x: float | None) -> str:
    """Readable number: thousands separators for big ones, 3 significant digits for small."""
    if x is None:
        return "-"
    if not np.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}x"


def load() -> float | None:
    """1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy(interval: float = 0.3) -> float | None:
    """Percent of all cores busy over ``interval`` seconds while the benchmarks are idle.

    Measured between benchmarks, so it is what other processes use (psutil, a dev
    dependency; None without it).
    """
    try:
        import psutil
    except ImportError:
        return None
    return psutil.cpu_percent(interval=interval)


def section(title: str) -> float | None:
    """Print a benchmark's heading and warn if other processes keep the CPU busy."""
    print(f"\n=== {title}  (cores: {CORES}) ===", flush=True)
    pct = busy()
    if pct is not None and pct > 20:
        print(
            f"  warning: other processes keep {pct:.0f}% of the {CORES} cores busy; "
            "the figures below will be noisy",
            flush=True,
        )
    return pct


def print_result(r: Result) -> Result:
    """Print one figure as soon as it is measured; return it for collecting."""
    parts = [f"[{r.bench}] {r.name}: {fmt(r.value)} {r.unit}"]
    if r.baseline is not None:
        parts.append(
            f"baseline {r.baseline_name} {fmt(r.baseline)} {r.unit} -> ratio {fmt_ratio(r.ratio)}"
        )
    for name, value in r.extra_baselines.items():
        ratio = r.value / value if value else None
        parts.append(f"vs {name} {fmt(value)} {r.unit} -> {fmt_ratio(ratio)}")
    parts.append(f"target {r.target_text}: {r.status}")
    parts.append(f"cores={CORES}")
    line = " | ".join(parts)
    if r.note:
        line += f"\n      ({r.note})"
    print(line, flush=True)
    return r


def print_summary(results: Sequence[Result]) -> None:
    headers = ["bench", "measurement", "value", "unit", "baseline", "ratio", "target", "result"]
    rows = [
        [
            r.bench,
            r.name,
            fmt(r.value),
            r.unit,
            f"{fmt(r.baseline)} ({r.baseline_name})" if r.baseline is not None else "-",
            fmt_ratio(r.ratio),
            r.target_text,
            r.status,
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(f"\nSummary (cores: {CORES}; ratio = value / baseline, same run)")
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    passed = sum(r.passed is True for r in results)
    failed = sum(r.passed is False for r in results)
    print(f"\n{passed} PASS, {failed} FAIL, {len(results) - passed - failed} info-only", flush=True)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def parallel_capacity(seconds: float = 0.5) -> float:
    """How many cores' worth of pure-Python work this machine does at once: the time of one
    process spinning, times ``CORES``, over the time of ``CORES`` processes each spinning as
    much at the same moment. ``CORES`` on dedicated cores; less on virtual cores that share
    physical ones, which bounds every figure comparing several workers with one.

    Example:
        >>> 0.5 < parallel_capacity(0.1) <= CORES * 1.1
        True
    """
    from concurrent.futures import ProcessPoolExecutor

    n = 1_000_000
    t = time.perf_counter()
    _spin(n)
    n = max(n, int(n * seconds / (time.perf_counter() - t)))
    with ProcessPoolExecutor(CORES) as pool:
        list(pool.map(_spin, [1000] * CORES))  # the workers started before timing
        t = time.perf_counter()
        list(pool.map(_spin, [n]))
        one = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(_spin, [n] * CORES))
        every = time.perf_counter() - t
    return CORES * one / every


def machine() -> dict[str, Any]:
    import runbroker

    return {
        "cpu_count": CORES,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
        "event_model": event_model.__version__,
        "runbroker": getattr(runbroker, "__version__", "?"),
        "load_average_1min": load(),
    }


def write_json(
    path: Path,
    results: Sequence[Result],
    selected: Sequence[str],
    wall: float,
    busy_at_start: float | None = None,
) -> None:
    payload = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "cpu_busy_percent_at_start": busy_at_start,
        "benchmarks": list(selected),
        "wall_seconds": round(wall, 1),
        "results": [r.to_dict() for r in results],
    }
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


# -- timing ----------------------------------------------------------------------------------


def timings(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> list[float]:
    """Wall times (perf_counter) of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def best(ts: Sequence[float]) -> float:
    return min(ts)


def median(ts: Sequence[float]) -> float:
    return statistics.median(ts)


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed perf_counter time."""
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


# -- documents -------------------------------------------------------------------------------


def data_keys(fields: Sequence[str] = FIELDS) -> dict[str, dict]:
    return {
        f: {"source": f"sim:{f}", "dtype": "number", "shape": [], "units": "mm"} for f in fields
    }


def new_run(
    metadata: dict | None = None,
    fields: Sequence[str] = FIELDS,
    *,
    time_: float | None = None,
) -> tuple[Any, Any]:
    """A run bundle and its ``primary`` descriptor bundle, made with ``compose_run``."""
    run = event_model.compose_run(
        metadata=dict(metadata or {"plan_name": "count"}), time=time_, validate=False
    )
    desc = run.compose_descriptor(
        data_keys=data_keys(fields),
        name="primary",
        object_keys={"sim": list(fields)},
        validate=False,
    )
    return run, desc


def paged_run(
    metadata: dict, start_time: float, data: dict[str, list[float]]
) -> list[tuple[str, dict]]:
    """A whole small run: start, ``primary`` descriptor, one ``event_page`` holding ``data``
    (its events 0.1 s apart from ``start_time``) and a stop 1 s after the start.

    Example:
        >>> [name for name, _ in paged_run({"plan_name": "count"}, 0.0, {"det": [1.0, 2.0]})]
        ['start', 'descriptor', 'event_page', 'stop']
    """
    run, desc = new_run(metadata, tuple(data), time_=start_time)
    seq = list(range(1, len(next(iter(data.values()))) + 1))
    times = [start_time + 0.1 * s for s in seq]
    page = desc.compose_event_page(
        data=data,
        timestamps={k: times for k in data},
        seq_num=seq,
        time=times,
        validate=False,
    )
    stop = run.compose_stop(time=start_time + 1.0, validate=False)
    return [
        ("start", run.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event_page", page),
        ("stop", stop),
    ]


def compose_events(desc: Any, n: int, fields: Sequence[str] = FIELDS, seed: int = 0) -> list[dict]:
    """``n`` single event documents with float readings of every field."""
    values = np.random.default_rng(seed).random((n, len(fields))).tolist()
    now = time.time()
    compose = desc.compose_event
    return [
        compose(
            data=dict(zip(fields, row, strict=True)),
            timestamps=dict.fromkeys(fields, now),
            seq_num=i + 1,
            validate=False,
        )
        for i, row in enumerate(values)
    ]


def compose_pages(
    desc: Any,
    n: int,
    page_size: int,
    fields: Sequence[str] = FIELDS,
    columns: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    numpy: bool = False,
) -> Iterator[dict]:
    """``event_page`` documents holding ``n`` events, ``page_size`` per page.

    ``columns`` (field -> array of length n, plus optional ``"time"``) fixes the values;
    otherwise they are random floats. ``numpy=True`` gives numpy arrays instead of lists (as
    flyers whose ``collect_pages`` returns arrays produce).
    """
    if columns is None:
        rng = np.random.default_rng(seed)
        columns = {f: rng.random(n) for f in fields}
    times = columns.get("time")
    if times is None:
        times = time.time() + np.arange(n) * 1e-3
    compose = desc.compose_event_page
    for lo in range(0, n, page_size):
        hi = min(n, lo + page_size)
        t = times[lo:hi] if numpy else times[lo:hi].tolist()
        yield compose(
            data={f: columns[f][lo:hi] if numpy else columns[f][lo:hi].tolist() for f in fields},
            timestamps={f: t for f in fields},
            seq_num=np.arange(lo + 1, hi + 1) if numpy else list(range(lo + 1, hi + 1)),
            time=t,
            validate=False,
        )
