"""B7 -- PostgreSQL: the B1-B3 workloads on a PostgreSQL catalog, SQLite as the baseline.

Every PostgreSQL figure is measured in the same run as the same workload on an SQLite file
(the baseline), with the same documents:

* ingest (B1): single events through ``insert("event")``, ``event_page`` documents of 1,000
  events, small runs (start, descriptor, 5 events, stop) through ``insert``; target: within
  2x of SQLite (ratio PostgreSQL / SQLite >= 0.5);
* read (B2): ``run.primary.read()`` of a 100,000-event run; target: within 2x of SQLite;
* search (B3): a catalog of ``RUNBROKER_BENCH_B7_RUNS`` runs (default 1,000,000; 100,000
  for a quicker run) from B3's generator; ``Key("sample") == x`` first 100 hits under 20 ms,
  ``cat[scan_id]`` and ``cat[uid]`` under 5 ms. Those targets are set for 1,000,000 runs: at
  a smaller size the figures are printed but marked "not measured at this size", never PASS.
  The SQLite baseline is B3's cached catalog of the same size (built if missing with
  ``ingest()``, its indexes made at the end: 10 minutes for 1,000,000 runs on 2 idle cores).
  ``RUNBROKER_BENCH_B7_RUNS=0`` leaves the search part out (ingest and read only, ~1 minute).

PostgreSQL is a throwaway cluster from :mod:`runbroker.testing.postgres` with PostgreSQL's
default durability (fsync on); the store commits with ``synchronous_commit=off`` in its
default ``durability="batch"``, the promise SQLite's ``synchronous=NORMAL`` makes. The
cluster is reached through TCP on 127.0.0.1, as a server on another machine is (minus the
network); ``RUNBROKER_TEST_POSTGRES_SOCKET=1`` measures through its Unix-domain socket
instead, libpq's way to a server on the same machine. Or the server at
``RUNBROKER_TEST_POSTGRES`` if set (each part in its own schema, dropped afterwards).

``ingest()`` stores some 500-800 of B3's runs per second on PostgreSQL (a round trip per
document), so the search catalog is loaded with COPY from the rows the store itself writes
(:mod:`benchmarks.b7_build`, which first stores 2,000 runs both ways and compares every
table; about 7 minutes for 1,000,000 runs), then ``VACUUM ANALYZE``d, the state autovacuum
brings a long-lived catalog to (index-only scans need the visibility map). Lookups and
queries are timed as the median of many repeats of one statement, so psycopg's automatic
server-side preparation (after 5 executions) and PostgreSQL's generic plans are part of what
is measured, as in a long-lived process.

Run alone with ``python -m benchmarks b7``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

import runbroker
from runbroker.queries import Key
from runbroker.testing.postgres import ENV, Cluster, new_schema

from . import b3_search as b3
from . import b7_build
from .b1_ingest import _small_run
from .b2_read import _columns
from .common import (
    FIELDS,
    Result,
    best,
    compose_events,
    compose_pages,
    median,
    new_run,
    print_result,
    section,
    timed,
    timings,
)

N_EVENTS = 50_000  # single events per repeat
N_PAGES = 200  # event pages of PAGE_SIZE events per repeat
PAGE_SIZE = 1_000
N_SMALL_RUNS = 500  # runs of start, descriptor, 5 events, stop per repeat
N_READ = 100_000  # events in the run read back
REPEATS = 3
READ_REPEATS = 5

N_RUNS = int(os.environ.get("RUNBROKER_BENCH_B7_RUNS", "1000000"))
TARGET_RUNS = 1_000_000  # the catalog size the search targets are set for
BATCH = b3.BATCH  # progress is reported every this many runs (or a tenth) while loading
CHECK_RUNS = 2_000  # runs stored both with ingest() and with COPY, and compared
LOOKUPS = 50  # distinct keys per lookup figure (median)
QUERY_REPEATS = 50  # repeats per query figure (median)
WARMUP = 10

TARGET_RATIO_RATE = 0.5  # PostgreSQL rate / SQLite rate: "within 2x"
TARGET_RATIO_TIME = 2.0  # PostgreSQL time / SQLite time
TARGET_QUERY_MS = 20.0
TARGET_LOOKUP_MS = 5.0


@dataclass
class SizedResult(Result):
    """A figure whose target is set for a catalog of ``target_runs`` runs.

    Measured on a smaller catalog it is printed and kept, but it neither passes nor fails.
    """

    runs: int = 0
    target_runs: int = 0

    @property
    def full_size(self) -> bool:
        return self.runs >= self.target_runs

    @property
    def passed(self) -> bool | None:
        return super().passed if self.full_size else None

    @property
    def status(self) -> str:
        if self.target is not None and not self.full_size:
            return "not measured at this size"
        return super().status

    @property
    def target_text(self) -> str:
        text = super().target_text
        return text if self.target is None else f"{text} @ {self.target_runs:,} runs"


# -- the servers -------------------------------------------------------------------------------


class Backends:
    """Fresh catalogs of either kind: SQLite files in ``folder``, PostgreSQL schemas at ``url``."""

    def __init__(self, folder: Path | None, url: str, external: bool) -> None:
        self.folder, self.url, self.external = folder, url, external
        self.schemas: list[str] = []

    def schema(self, label: str) -> str:
        # The process id keeps two benchmark runs on one external server apart.
        name = f"rb_bench_{os.getpid()}_{label}".lower()
        self.schemas.append(name)
        return new_schema(self.url, name)

    def fresh(self, kind: str, label: str) -> runbroker.Catalog:
        if kind == "sqlite":
            assert self.folder is not None
            path = self.folder / f"{label}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return runbroker.open(path)
        return runbroker.open(self.schema(label))

    def drop(self) -> None:
        """Drop the schemas made on an external server (a throwaway cluster just stops)."""
        if not self.external or not self.schemas:
            return
        with psycopg.connect(_plain(self.url), autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _plain(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (psycopg.connect takes it, options included)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def postgres() -> Iterator[tuple[str, bool]]:
    """The URL of an empty PostgreSQL database and whether it is an external server."""
    external = os.environ.get(ENV)
    if external:
        print(f"  PostgreSQL: the server at ${ENV}", flush=True)
        yield external, True
        return
    # PostgreSQL's default durability (fsync on); the store commits with synchronous_commit=off
    # in its default durability="batch", the promise SQLite's synchronous=NORMAL makes.
    cluster = Cluster(durable=True)
    with timed() as t:
        url = cluster.start()
    with psycopg.connect(_plain(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    via = "its Unix-domain socket" if cluster.unix else "TCP on 127.0.0.1"
    print(
        f"  PostgreSQL {version}: throwaway cluster on port {cluster.port}, reached through "
        f"{via} (fsync on; the store commits with synchronous_commit=off, as SQLite's "
        f"synchronous=NORMAL), started in {t[0]:.1f} s",
        flush=True,
    )
    try:
        yield url, False
    finally:
        cluster.stop()


# -- ingest ------------------------------------------------------------------------------------


def _insert_all(cat: runbroker.Catalog, pairs: list[tuple[str, dict]]) -> tuple[float, float]:
    """Seconds until the last insert() returns, and until flush() has committed everything."""
    insert = cat.insert
    t0 = time.perf_counter()
    for name, doc in pairs:
        insert(name, doc)
    t1 = time.perf_counter()
    cat.flush()
    return t1 - t0, time.perf_counter() - t0


def _ingest_case(
    backends: Backends,
    label: str,
    head: list[tuple[str, dict]],
    body: list[tuple[str, dict]],
    check: Callable[[runbroker.Catalog], None],
) -> dict[str, tuple[list[float], list[float]]]:
    """Insert ``head`` untimed then ``body`` timed into fresh catalogs of both kinds.

    The two kinds alternate which goes first on each repeat, so that neither always meets a
    warmer machine. Returns, per kind, the queued and end-to-end seconds of every repeat.
    """
    out: dict[str, tuple[list[float], list[float]]] = {"sqlite": ([], []), "postgresql": ([], [])}
    for i in range(REPEATS):
        order = ("sqlite", "postgresql") if i % 2 == 0 else ("postgresql", "sqlite")
        for kind in order:
            cat = backends.fresh(kind, f"{label}{i}")
            for name, doc in head:
                cat.insert(name, doc)
            queued, end = _insert_all(cat, body)
            check(cat)
            cat.close()
            out[kind][0].append(queued)
            out[kind][1].append(end)
    return out


def _rate(name: str, n: int, unit: str, sq: float, pg: float, note: str) -> Result:
    return print_result(
        Result(
            "B7",
            name,
            n / pg,
            unit,
            n / sq,
            "SQLite",
            target=TARGET_RATIO_RATE,
            target_on="ratio",
            note=note,
        )
    )


def bench_ingest(backends: Backends) -> list[Result]:
    results = []
    # Single events.
    run, desc = new_run()
    uid = run.start_doc["uid"]
    events = [("event", e) for e in compose_events(desc, N_EVENTS)]
    head = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]

    def has_events(cat: runbroker.Catalog) -> None:
        assert len(cat[uid].primary) == N_EVENTS

    got = _ingest_case(backends, "events", head, events, has_events)
    note = f"best of {REPEATS}, same {N_EVENTS:,} events into each"
    results.append(
        _rate(
            f"PostgreSQL insert(event), {N_EVENTS:,} events, until the last insert() returns",
            N_EVENTS,
            "events/s",
            best(got["sqlite"][0]),
            best(got["postgresql"][0]),
            note,
        )
    )
    results.append(
        _rate(
            "PostgreSQL insert(event) end-to-end incl. final flush",
            N_EVENTS,
            "events/s",
            best(got["sqlite"][1]),
            best(got["postgresql"][1]),
            note + "; every event committed",
        )
    )

    # Event pages.
    run, desc = new_run()
    uid = run.start_doc["uid"]
    n = N_PAGES * PAGE_SIZE
    pages = [("event_page", p) for p in compose_pages(desc, n, PAGE_SIZE, seed=3)]
    head = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]

    def has_pages(cat: runbroker.Catalog) -> None:
        assert len(cat[uid].primary) == n

    got = _ingest_case(backends, "pages", head, pages, has_pages)
    results.append(
        _rate(
            f"PostgreSQL insert(event_page of {PAGE_SIZE:,} as lists) x {N_PAGES}, end-to-end",
            n,
            "events/s",
            best(got["sqlite"][1]),
            best(got["postgresql"][1]),
            f"best of {REPEATS}; inserts + flush(): every event committed",
        )
    )

    # Many small runs.
    flat = [pair for i in range(N_SMALL_RUNS) for pair in _small_run(i)]

    def has_runs(cat: runbroker.Catalog) -> None:
        assert len(cat) == N_SMALL_RUNS

    got = _ingest_case(backends, "small", [], flat, has_runs)
    results.append(
        _rate(
            f"PostgreSQL small runs (start, descriptor, 5 events, stop) x {N_SMALL_RUNS}",
            N_SMALL_RUNS,
            "runs/s",
            best(got["sqlite"][1]),
            best(got["postgresql"][1]),
            f"best of {REPEATS}; every document through insert(), flush() at the end",
        )
    )
    return results


# -- read --------------------------------------------------------------------------------------


def bench_read(backends: Backends) -> Result:
    cols = _columns(N_READ, seed=N_READ)
    run, desc = new_run()
    uid = run.start_doc["uid"]
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event_page", p) for p in compose_pages(desc, N_READ, PAGE_SIZE, columns=cols)]
    docs.append(("stop", run.compose_stop(validate=False)))
    best_s, first_s = {}, {}
    for kind in ("sqlite", "postgresql"):
        cat = backends.fresh(kind, "read")
        cat.ingest(docs)
        url = cat.store.uri
        cat.close()
        # The first read in a fresh catalog object: the database warm, Python cold.
        cat = runbroker.open(url)
        with timed() as t:
            ds = cat[uid].primary.read()
        first_s[kind] = t[0]
        for f in FIELDS:
            assert np.array_equal(ds[f].values, cols[f]), (kind, f)
        assert np.array_equal(ds["time"].values, cols["time"]), kind
        stream = cat[uid].primary
        best_s[kind] = best(timings(stream.read, READ_REPEATS, warmup=1))
        cat.close()
    return print_result(
        Result(
            "B7",
            f"PostgreSQL run.primary.read() {N_READ:,} events x 6 fields",
            best_s["postgresql"] * 1e3,
            "ms",
            best_s["sqlite"] * 1e3,
            "SQLite",
            target=TARGET_RATIO_TIME,
            target_on="ratio",
            higher_is_better=False,
            note=(
                f"warm, best of {READ_REPEATS}; first read in a fresh runbroker.open: "
                f"PostgreSQL {first_s['postgresql'] * 1e3:.1f} ms, "
                f"SQLite {first_s['sqlite'] * 1e3:.1f} ms"
            ),
        )
    )


# -- search ------------------------------------------------------------------------------------


@contextmanager
def _b3_size(n: int) -> Iterator[None]:
    """B3's cache helpers, sized for ``n`` runs (they read B3's module-level size)."""
    saved = b3.N_RUNS, b3.VERSION
    b3.N_RUNS = n
    b3.VERSION = saved[1].replace(f"-{saved[0]}runs-", f"-{n}runs-")
    try:
        yield
    finally:
        b3.N_RUNS, b3.VERSION = saved


def _sqlite_catalog(n: int) -> tuple[Path, list[tuple[float, str, Any, Any]]]:
    """B3's cached SQLite catalog of ``n`` runs (built if missing) and its start records."""
    with _b3_size(n):
        db, starts = b3._cache_paths()
        if b3._cached(db, starts):
            print(f"  SQLite baseline: B3's cached catalog {db}", flush=True)
        else:
            _build_sqlite(db, starts, n)
    recs = []
    with open(starts) as f:
        for line in f:
            doc = json.loads(line)
            recs.append((doc["time"], doc["uid"], doc.get("scan_id"), doc.get("sample")))
    return db, recs


def _build_sqlite(db: Path, starts: Path, n: int) -> None:
    """B3's catalog of ``n`` runs at B3's cache paths, built with b7_build.build_sqlite."""
    print(f"  building {n:,} runs into {db} with ingest(), indexes made at the end ...")
    scratch = db.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    t_start = time.perf_counter()

    def runs() -> Iterator[list[tuple[str, dict]]]:
        with open(starts.with_suffix(".building"), "w") as jsonl:
            for i, docs in enumerate(b3._generate(n), 1):
                jsonl.write(json.dumps(docs[0][1]) + "\n")
                if i % max(BATCH, n // 10) == 0:
                    elapsed = time.perf_counter() - t_start
                    print(f"    {i:>9,} / {n:,} runs, {elapsed:.0f} s", flush=True)
                yield docs

    seconds = b7_build.build_sqlite(scratch, runs(), BATCH)
    os.replace(scratch, db)
    for suffix in ("-wal", "-shm"):  # checkpointed and empty: the catalog is the file alone
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    os.replace(starts.with_suffix(".building"), starts)
    print(f"  built in {seconds:.0f} s", flush=True)


def _build_postgres(url: str, n: int) -> tuple[float, list[tuple[float, str, Any, Any]]]:
    """Load ``n`` runs of B3's generator with COPY (see b7_build); return the seconds it took
    (indexes and statistics included) and the runs' start records."""
    print(f"  loading {n:,} runs into PostgreSQL with COPY (rows as the store writes them) ...")
    recs: list[tuple[float, str, Any, Any]] = []
    t_start = time.perf_counter()

    def runs() -> Iterator[list[tuple[str, dict]]]:
        for i, docs in enumerate(b3._generate(n), 1):
            s = docs[0][1]
            recs.append((s["time"], s["uid"], s["scan_id"], s["sample"]))
            if i % max(BATCH, n // 10) == 0:
                elapsed = time.perf_counter() - t_start
                print(f"    {i:>9,} / {n:,} runs, {elapsed:.0f} s", flush=True)
            yield docs

    _, seconds = b7_build.load(url, runs())
    return seconds, recs


def _ingest_rates(backends: Backends) -> tuple[float, float]:
    """runs/s of one ingest() of CHECK_RUNS of B3's runs into a fresh PostgreSQL catalog and
    into a fresh SQLite file; the PostgreSQL one is also checked against b7_build's COPY."""
    runs = list(b3._generate(CHECK_RUNS, seed=1))
    assert backends.folder is not None
    with runbroker.open(backends.folder / "build-rate.db") as cat, timed() as t:
        cat.ingest(pair for docs in runs for pair in docs)
    pg = b7_build.check_same_rows(
        backends.schema("check_ingest"), backends.schema("check_copy"), runs
    )
    return pg, CHECK_RUNS / t[0]


def _vacuum(url: str) -> float:
    with psycopg.connect(_plain(url), autocommit=True) as conn, timed() as t:
        conn.execute("VACUUM (ANALYZE)")
    return t[0]


def _measure_search(
    cat: runbroker.Catalog, recs: list[tuple[float, str, Any, Any]]
) -> dict[str, tuple[float, str]]:
    """Median seconds of each lookup and query on ``cat``, checked against ``recs``."""
    recs = sorted(recs, reverse=True)  # newest first, as the catalog orders runs
    rng = random.Random(7)
    picks = rng.sample(recs, WARMUP + LOOKUPS)
    keys = picks[WARMUP:]
    out: dict[str, tuple[float, str]] = {}

    def by_scan_id(r: tuple) -> Any:
        return cat[r[2]]

    def by_uid(r: tuple) -> Any:
        return cat[r[1]]

    for r in picks[:WARMUP]:
        by_scan_id(r), by_uid(r)
    assert by_uid(keys[0]).uid == keys[0][1]
    newest_with_scan_id = next(r for r in recs if r[2] == keys[0][2])
    assert by_scan_id(keys[0]).uid == newest_with_scan_id[1]
    note = f"median over {LOOKUPS} distinct keys, warm"
    out["cat[scan_id]"] = (b3._per_key(by_scan_id, keys), note)
    out["cat[uid]"] = (b3._per_key(by_uid, keys), note)

    counts: dict[Any, int] = {}
    for r in recs:
        counts[r[3]] = counts.get(r[3], 0) + 1
    common = max(counts, key=counts.__getitem__)
    rare = min(counts, key=counts.__getitem__)
    for which, sample in (("common", common), ("rare", rare)):
        query = Key("sample") == sample
        want = [r[1] for r in recs if r[3] == sample][:100]
        hits = cat.search(query)
        assert [r.uid for r in hits[-100:]] == want, query
        assert [r.uid for r in itertools.islice(hits.values(), 100)] == want, query
        note = f"{query!r}: {counts[sample]:,} hits; median of {QUERY_REPEATS} repeats, warm"

        def slice100(q: Any = query) -> Any:
            return cat.search(q)[-100:]

        def islice100(q: Any = query) -> Any:
            return list(itertools.islice(cat.search(q).values(), 100))

        out[f"Key('sample') == x ({which} x): hits[-100:]"] = (
            median(timings(slice100, QUERY_REPEATS, warmup=3)),
            note,
        )
        out[f"Key('sample') == x ({which} x): islice(values(), 100)"] = (
            median(timings(islice100, QUERY_REPEATS, warmup=3)),
            note,
        )
    return out


def bench_search(backends: Backends) -> list[Result]:
    n = N_RUNS
    size_note = (
        f"catalog of {n:,} runs"
        if n >= TARGET_RUNS
        else f"catalog of {n:,} runs, NOT the {TARGET_RUNS:,} the target is set for "
        "(unset RUNBROKER_BENCH_B7_RUNS to measure it)"
    )
    print(f"  search: {size_note}", flush=True)
    results: list[Result] = []
    db, sqlite_recs = _sqlite_catalog(n)
    pg_rate, sqlite_rate = _ingest_rates(backends)
    url = backends.schema("search")
    load_s, pg_recs = _build_postgres(url, n)
    vacuum_s = _vacuum(url)
    results.append(
        print_result(
            Result(
                "B7",
                f"PostgreSQL ingest() of {CHECK_RUNS:,} of B3's runs (start, descriptor, "
                "page, stop) in one call",
                pg_rate,
                "runs/s",
                sqlite_rate,
                "SQLite",
                note=(
                    f"no target; the same rows as b7_build's COPY (every table compared); "
                    f"the {n:,}-run catalog was loaded with COPY in {load_s:.0f} s "
                    f"(ingest() would take ~{n / pg_rate / 60:.0f} min), "
                    f"then VACUUM (ANALYZE) {vacuum_s:.1f} s"
                ),
            )
        )
    )
    with runbroker.open(url) as cat:
        assert len(cat) == n
        pg = _measure_search(cat, pg_recs)
    with runbroker.open(db, readonly=True) as cat:
        sq = _measure_search(cat, sqlite_recs)
    for label, (value, note) in pg.items():
        target = TARGET_LOOKUP_MS if label.startswith("cat[") else TARGET_QUERY_MS
        r = SizedResult(
            "B7",
            f"PostgreSQL {label}, {n:,} runs",
            value * 1e3,
            "ms",
            sq[label][0] * 1e3,
            f"SQLite, {n:,} runs",
            target=target,
            higher_is_better=False,
            note=note,
            runs=n,
            target_runs=TARGET_RUNS,
        )
        if not r.full_size:
            within = "within" if value * 1e3 <= target else "OVER"
            r.note += (
                f"; at {n:,} runs this is {within} the {target:g} ms set for "
                f"{TARGET_RUNS:,} runs, which was not measured"
            )
        results.append(print_result(r))
    return results


def run() -> list[Result]:
    search = f"search ({N_RUNS:,}-run catalog)" if N_RUNS > 0 else "no search"
    section(f"B7 PostgreSQL vs SQLite: ingest, read, {search}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="runbroker-b7-") as tmp, postgres() as (url, ext):
        backends = Backends(Path(tmp), url, ext)
        try:
            results.extend(bench_ingest(backends))
            results.append(bench_read(backends))
            if N_RUNS > 0:
                results.extend(bench_search(backends))
        finally:
            backends.drop()
    return results
