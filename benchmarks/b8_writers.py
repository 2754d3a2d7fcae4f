"""B8 -- concurrent writers: 4 processes inserting into ONE PostgreSQL catalog.

Each writer is a separate process (multiprocessing, spawn) with its own ``runbroker.open`` of
the same catalog, writing its own runs the way a RunEngine does: start, descriptor, 100 single
``event`` documents, stop, every document through ``insert``, then ``flush``. The baseline is
one writer doing the same total work alone (all the runs, in one process), measured in the
same run. Target: 4 writers together reach at least 2x the runs/s of the single writer.

Every writer builds its documents and opens the catalog before a common start signal; the
clock runs from that signal until the last writer's ``flush`` has returned
(``time.perf_counter`` is CLOCK_MONOTONIC, comparable between processes on Linux). Each
scenario gets a fresh schema; the best of ``REPEATS`` is kept. Afterwards every document is
checked to be stored exactly once: runs, descriptors, stops and events are counted in SQL, and
every run is replayed with ``documents()`` and its uids compared with what was sent.

PostgreSQL is a throwaway cluster from :mod:`runbroker.testing.postgres` (fsync on; the store
commits with ``synchronous_commit=off``, the promise of SQLite's ``synchronous=NORMAL``), or the
server at ``RUNBROKER_TEST_POSTGRES``. Run alone with ``python -m benchmarks b8``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

import runbroker

from .b7_postgres import Backends, _plain, postgres
from .common import (
    CORES,
    Result,
    compose_events,
    new_run,
    parallel_capacity,
    print_result,
    section,
)

WRITERS = 4
RUNS_PER_WRITER = 50
EVENTS_PER_RUN = 100
REPEATS = 5
TARGET_SPEEDUP = 2.0


def _documents(writer: int, n_runs: int) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    for i in range(n_runs):
        run, desc = new_run({"plan_name": "count", "scan_id": i + 1, "writer": writer})
        docs += [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
        docs += [("event", e) for e in compose_events(desc, EVENTS_PER_RUN, seed=i)]
        docs.append(("stop", run.compose_stop(validate=False)))
    return docs


def _writer(url: str, writer: int, n_runs: int, ready: Any, go: Any, out: Any) -> None:
    """One writer process: prepare, wait for the signal, insert everything, report."""
    try:
        docs = _documents(writer, n_runs)
        cat = runbroker.open(url)
        len(cat)  # connected
    except BaseException as err:
        ready.put(f"writer {writer} could not start: {err!r}")
        raise
    ready.put(None)
    go.wait()
    try:
        insert = cat.insert
        cpu0, t0 = time.process_time(), time.perf_counter()
        for name, doc in docs:
            insert(name, doc)
        cat.flush()
        t1, cpu1 = time.perf_counter(), time.process_time()
        cat.close()
    except BaseException as err:
        out.put({"writer": writer, "error": repr(err)})
        raise
    out.put(
        {
            "writer": writer,
            "t0": t0,
            "t1": t1,
            "cpu": cpu1 - cpu0,
            "uids": Counter(doc["uid"] for _, doc in docs),
        }
    )


def _cpu_busy() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.cpu_times()


def _server_cpu(url: str) -> float | None:
    """CPU seconds used so far by the PostgreSQL server on ``url``'s port (None if not local).

    The postmaster, its live children, and the children it has reaped (ended backends).
    """
    try:
        import psutil
    except ImportError:
        return None
    parts = urlsplit(_plain(url))
    # A Unix-socket URL names its port in the query (?host=/dir&port=N).
    port = parts.port or int(parse_qs(parts.query).get("port", ["5432"])[0])
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] != "postgres" or "-p" not in cmd:
            continue
        if cmd[cmd.index("-p") + 1 :][:1] != [str(port)]:
            continue
        try:
            t = proc.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    c = child.cpu_times()
                    total += c.user + c.system
            return total
        except psutil.Error:
            return None
    return None


def _busy_percent(before: Any, after: Any) -> float | None:
    """Percent of all cores busy between two ``psutil.cpu_times()`` (None without psutil)."""
    if before is None or after is None:
        return None
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 100.0 * (1 - idle / total) if total > 0 else None


def _scenario(url: str, runs_per_writer: list[int]) -> dict[str, Any]:
    """Run one writer process per entry, all started together; return timings and uids."""
    # The catalog (its tables) exists before the writers start, as at a beamline.
    runbroker.open(url).close()
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(url, w, n, ready, go, out))
        for w, n in enumerate(runs_per_writer)
    ]
    for p in procs:
        p.start()
    ok = False
    try:
        failed = [e for e in (ready.get(timeout=120) for _ in procs) if e is not None]
        if failed:
            raise RuntimeError("; ".join(failed))
        cpu_before, server_before = _cpu_busy(), _server_cpu(url)
        go.set()
        reports = [out.get(timeout=600) for _ in procs]
        cpu_after = _cpu_busy()
        time.sleep(0.2)  # the writers have closed their connections: let the backends end
        server_after = _server_cpu(url)
        ok = True
    finally:
        for p in procs:
            p.join(60 if ok else 1)  # after a failure, writers may wait for a signal forever
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"writer processes failed: {errors}")
    start = min(r["t0"] for r in reports)
    end = max(r["t1"] for r in reports)
    sent: Counter = Counter()
    for r in reports:
        sent.update(r["uids"])
    return {
        "wall": end - start,
        "cpu": sum(r["cpu"] for r in reports),
        "busy": _busy_percent(cpu_before, cpu_after),
        "server": None
        if server_before is None or server_after is None
        else server_after - server_before,
        "runs": sum(runs_per_writer),
        "sent": sent,
    }


def _verify(url: str, sent: Counter, n_runs: int) -> list[str]:
    """Problems found: counts in SQL and a replay of every run against the uids sent."""
    problems = []
    if any(c != 1 for c in sent.values()):
        problems.append("a uid was generated twice")
    n_events = n_runs * EVENTS_PER_RUN
    with psycopg.connect(_plain(url)) as conn:
        checks = {
            "runs": ("SELECT count(*), count(DISTINCT uid) FROM runs", (n_runs, n_runs)),
            "stops": ("SELECT count(*) FROM runs WHERE stop IS NOT NULL", (n_runs,)),
            "descriptors": ("SELECT count(*), count(DISTINCT uid) FROM descriptors", None),
            "events": ("SELECT coalesce(sum(n), 0) FROM pages", (n_events,)),
            "event seq_nums": (
                "SELECT count(*) FROM (SELECT descriptor_id FROM pages GROUP BY descriptor_id "
                f"HAVING sum(n) = {EVENTS_PER_RUN} AND min(seq_min) = 1 "
                f"AND max(seq_max) = {EVENTS_PER_RUN}) d",
                (n_runs,),
            ),
        }
        for label, (sql, want) in checks.items():
            got = tuple(conn.execute(sql).fetchone())
            want = want or (n_runs, n_runs)
            if got != want:
                problems.append(f"{label}: {got} in SQL, expected {want}")
    stored: Counter = Counter()
    with runbroker.open(url) as cat:
        if len(cat) != n_runs:
            problems.append(f"len(cat) is {len(cat)}, expected {n_runs}")
        for run in cat.values():
            stored.update(doc["uid"] for _, doc in run.documents(pages=False))
    missing = set(sent) - set(stored)
    extra = set(stored) - set(sent)
    twice = [u for u, c in stored.items() if c > 1]
    if missing or extra or twice:
        problems.append(
            f"replay: {len(missing)} documents missing, {len(extra)} unexpected, "
            f"{len(twice)} stored more than once (of {len(sent)})"
        )
    return problems


def run() -> list[Result]:
    section(
        f"B8 concurrent writers: {WRITERS} processes x {RUNS_PER_WRITER} runs "
        f"(start, descriptor, {EVENTS_PER_RUN} events, stop) into one PostgreSQL catalog"
    )
    total_runs = WRITERS * RUNS_PER_WRITER
    docs_per_run = EVENTS_PER_RUN + 3
    with postgres() as (url, external):
        backends = Backends(None, url, external)
        try:
            best: dict[str, dict[str, Any]] = {}
            problems: dict[str, list[str]] = {}
            for i in range(REPEATS):
                # Alternate which scenario goes first, so neither always meets a warmer server.
                order = ("one", "many") if i % 2 == 0 else ("many", "one")
                for which in order:
                    split = [total_runs] if which == "one" else [RUNS_PER_WRITER] * WRITERS
                    url_i = backends.schema(f"b8_{which}{i}")
                    got = _scenario(url_i, split)
                    found = _verify(url_i, got["sent"], total_runs)
                    print(
                        f"  repeat {i + 1}, {len(split)} writer(s): {total_runs / got['wall']:,.0f}"
                        f" runs/s ({got['wall']:.2f} s); "
                        + ("every document stored once" if not found else "; ".join(found)),
                        flush=True,
                    )
                    problems.setdefault(which, []).extend(found)
                    if which not in best or got["wall"] < best[which]["wall"]:
                        best[which] = got
        finally:
            backends.drop()

    one, many = best["one"], best["many"]

    def cpu_note(g: dict[str, Any]) -> str:
        text = f"writers {g['cpu'] / g['wall']:.2f} cores"
        if g["server"] is not None:
            text += f" + server {g['server'] / g['wall']:.2f} cores"
        if g["busy"] is not None:
            text += f", machine {g['busy']:.0f}% of {CORES} cores busy"
        return text

    note = (
        f"best of {REPEATS}; {total_runs} runs x {docs_per_run} documents, "
        f"{total_runs * EVENTS_PER_RUN:,} events; CPU while writing, 1 writer: "
        f"{cpu_note(one)}; {WRITERS} writers: {cpu_note(many)}"
    )
    if one["server"] is not None:
        # CPU seconds one run costs (client + server): what the cores allow at best.
        per_run = (one["cpu"] + one["server"]) / total_runs
        capacity = parallel_capacity()
        note += (
            f"; one run costs {per_run * 1e3:.1f} ms of CPU (writer + server), so {CORES} "
            f"cores allow at most {CORES / per_run:,.0f} runs/s = "
            f"{CORES / per_run * one['wall'] / total_runs:.2f}x the single writer; measured "
            f"now, {CORES} processes do {capacity:.2f} cores' worth of work at once, which "
            f"allows {capacity / per_run * one['wall'] / total_runs:.2f}x"
        )
    results = [
        print_result(
            Result(
                "B8",
                f"{WRITERS} writer processes, one PostgreSQL catalog",
                total_runs / many["wall"],
                "runs/s",
                total_runs / one["wall"],
                "1 writer alone",
                target=TARGET_SPEEDUP,
                target_on="ratio",
                note=note,
            )
        )
    ]
    n_problems = len(problems["many"])
    results.append(
        print_result(
            Result(
                "B8",
                f"exactly-once checks failed after {WRITERS} writers",
                float(n_problems),
                "checks",
                float(len(problems["one"])),
                "1 writer alone",
                target=0,
                higher_is_better=False,
                note=(
                    f"{REPEATS} repeats each; checked: runs, stops, descriptors, events and "
                    "seq_nums counted in SQL, every run replayed and its uids compared"
                    + ("" if not n_problems else ": " + "; ".join(problems["many"]))
                ),
            )
        )
    )
    return results
