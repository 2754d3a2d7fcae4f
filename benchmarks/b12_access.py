"""B12 -- access control at facility scale: a user's searches against the admin's.

A catalog of ``RUNBROKER_BENCH_B12_RUNS`` runs (default 100,000; B3's shape: start,
descriptor, one ``event_page`` of 5 events, stop) tagged as a facility tags them:
``proposal_id`` among 1,000 proposals ``p0000``..``p0999`` (about 100 runs each), a
``beamtime_id`` (3 per proposal) and a ``beamline_id`` (30 beamlines); 0.5% of the runs are
also ``public: true`` and 1% carry no access tag at all (only an admin sees those).

The user holds 10 of the 1,000 proposals: their scope is
``scope_for({"proposal_id": [10 proposals]})``, that is ``Or(In("proposal_id", ...),
Key("public") == True)``, some 1.5% of the runs. Store-level, as every route and the Python
API reach runs: the admin searches the store itself, the user a fresh
:class:`~runbroker.auth.guard.GuardedStore` over it (one per call, as the server makes one
per request). Each figure is the user's median time, its baseline the admin's median of the
same call measured interleaved with it in the same run; target: ratio <= 1.3.

* page 1: the 100 newest runs (``search(query, limit=100)``);
* page N: the 100 runs before a cursor (``before=(time, uid)`` of the catalog's median run,
  the same cursor for both);
* both again with an extra query, ``Key("plan_name") == "scan"`` (about 27% of the runs);
* ``cat[uid]``: ``Catalog(store)[uid]`` against ``Catalog(GuardedStore(store, scope))[uid]``
  over runs the user may see.

The access keys (``proposal_id``, ``beamtime_id``, ``data_session``, ``beamline_id``) and
``public`` have indexes of their own (``store.create_index``): made when missing and stated
in the output. The SQLite catalog is built once and cached under
``$TMPDIR/runbroker-bench/`` (``RUNBROKER_BENCH_REBUILD=1`` rebuilds it); PostgreSQL is a
throwaway cluster (or ``$RUNBROKER_TEST_POSTGRES``) loaded with COPY by
:mod:`benchmarks.b7_build` (about a minute), then ``VACUUM (ANALYZE)``d.
``RUNBROKER_BENCH_B12_ENGINES=sqlite`` measures SQLite alone.

Run alone with ``python -m benchmarks b12``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import runbroker
from runbroker.auth.guard import GuardedStore
from runbroker.auth.policy import ACCESS_KEYS, scope_for
from runbroker.catalog import Catalog
from runbroker.errors import RunNotFoundError
from runbroker.queries import Key, Query
from runbroker.store import migrations
from runbroker.store.schema import SCHEMA_VERSION
from runbroker.testing.postgres import new_schema
from runbroker.testing.statements import statements

from . import b7_build
from .b3_search import PLANS
from .b7_postgres import postgres
from .common import Result, median, paged_run, print_result, section
from .service import Served

N_RUNS = int(os.environ.get("RUNBROKER_BENCH_B12_RUNS", "100000"))
VERSION = f"v1-{N_RUNS}runs-schema{SCHEMA_VERSION}"
HTTP = os.environ.get("RUNBROKER_BENCH_B12_HTTP", "1") != "0"
ENGINES = os.environ.get("RUNBROKER_BENCH_B12_ENGINES", "sqlite,postgresql").split(",")
BATCH = 2_000
N_PROPOSALS = 1_000
USER_PROPOSALS = 10
BEAMTIMES = 3  # per proposal
BEAMLINES = 30
PUBLIC = 0.005  # share of runs marked public
UNTAGGED = 0.01  # share of runs with no access tag
PAGE = 100
REPEATS = 40  # timed calls per figure (median), admin and user interleaved
LOOKUPS = 40  # distinct uids for cat[uid]
WARMUP = 8
TARGET_RATIO = 1.3
# Indexes of their own for the access keys and the public flag (store.create_index).
INDEXED = (*ACCESS_KEYS, "public")
EXTRA = Key("plan_name") == "scan"
T0 = 1_672_531_200.0  # 2023-01-01 UTC
SPAN = 2 * 365 * 86_400.0


@dataclass(frozen=True)
class Rec:
    """What the checks need of a run's start document."""

    time: float
    uid: str
    proposal: str | None
    public: bool
    plan: str


def proposals() -> list[str]:
    """The 1,000 proposals of the facility."""
    return [f"p{i:04d}" for i in range(N_PROPOSALS)]


def user_proposals() -> list[str]:
    """The 10 proposals the user belongs to (fixed, spread over the range)."""
    return sorted(random.Random(12).sample(proposals(), USER_PROPOSALS))


def _generate(n: int, seed: int = 12) -> Iterator[list[tuple[str, dict]]]:
    """Documents of ``n`` tagged runs, one list per run, oldest first."""
    rng = random.Random(seed)
    names = proposals()
    for i in range(n):
        md: dict[str, Any] = {
            "plan_name": rng.choices(PLANS, [5, 3, 2, 1, 1])[0],
            "scan_id": i + 1,
            "detectors": ["det"],
        }
        if rng.random() >= UNTAGGED:
            k = rng.randrange(N_PROPOSALS)
            md["proposal_id"] = names[k]
            md["beamtime_id"] = f"bt-{names[k]}-{rng.randrange(BEAMTIMES)}"
            md["beamline_id"] = f"bl{k % BEAMLINES:02d}"
            if rng.random() < PUBLIC / (1 - UNTAGGED):
                md["public"] = True
        start_time = T0 + SPAN * (i + rng.random()) / n
        yield paged_run(md, start_time, {"det": [1.0, 2.0, 3.0, 4.0, 5.0]})


def _rec(start: dict) -> Rec:
    return Rec(
        start["time"],
        start["uid"],
        start.get("proposal_id"),
        start.get("public") is True,
        start["plan_name"],
    )


def _recorded(runs: Iterator[list[tuple[str, dict]]], into: list[Rec]) -> Iterator[list]:
    """``runs``, each run's record appended to ``into`` as it passes, with progress."""
    for i, docs in enumerate(runs, 1):
        into.append(_rec(docs[0][1]))
        if i % max(BATCH, N_RUNS // 10) == 0:
            print(f"    {i:>9,} / {N_RUNS:,} runs", flush=True)
        yield docs


# -- the catalogs ------------------------------------------------------------------------------


def _sqlite_catalog() -> tuple[Path, list[Rec]]:
    """The cached SQLite catalog (built if missing) and its runs' records."""
    folder = Path(os.environ.get("RUNBROKER_BENCH_CACHE") or tempfile.gettempdir())
    folder = folder / "runbroker-bench"
    folder.mkdir(parents=True, exist_ok=True)
    db, starts = folder / f"b12-{VERSION}.db", folder / f"b12-{VERSION}.starts.jsonl"
    if not os.environ.get("RUNBROKER_BENCH_REBUILD") and db.exists() and starts.exists():
        with open(starts) as f:
            recs = [Rec(**json.loads(line)) for line in f]
        if len(recs) == N_RUNS:
            print(f"  SQLite: using cached catalog {db}", flush=True)
            return db, recs
    print(f"  SQLite: building {N_RUNS:,} runs into {db} (cached for later runs) ...")
    scratch = db.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    recs: list[Rec] = []
    seconds = b7_build.build_sqlite(scratch, _recorded(_generate(N_RUNS), recs), BATCH)
    os.replace(scratch, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    with open(starts.with_suffix(".building"), "w") as f:
        for r in recs:
            f.write(json.dumps(r.__dict__) + "\n")
    os.replace(starts.with_suffix(".building"), starts)
    print(f"  built in {seconds:.0f} s", flush=True)
    return db, recs


def _postgres_catalog(url: str) -> list[Rec]:
    """Load the tagged runs into the empty PostgreSQL catalog at ``url``; their records."""
    print(f"  PostgreSQL: loading {N_RUNS:,} runs with COPY ...", flush=True)
    recs: list[Rec] = []
    _, seconds = b7_build.load(url, _recorded(_generate(N_RUNS), recs))
    print(f"  loaded in {seconds:.0f} s", flush=True)
    return recs


def _with_indexes(cat: runbroker.Catalog, engine: str) -> None:
    # A catalog cached by an older runbroker lacks the tags table (migration 0004): add it.
    migrations.upgrade(cat.store.uri)
    made = cat.store.create_index(*INDEXED)
    state = f"created now: {made}" if made else "already there"
    print(f"  {engine}: indexes of their own on {list(INDEXED)}: {state}", flush=True)


def _vacuum(url: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE)")


# -- measuring ---------------------------------------------------------------------------------


def _pair(
    admin: Callable[[Any], Any], user: Callable[[Any], Any], args: list[Any]
) -> tuple[float, float]:
    """Median seconds of ``admin(arg)`` and ``user(arg)``, called in turn over ``args``
    (which goes first alternates), after a warmup."""
    for arg in args[:WARMUP]:
        admin(arg), user(arg)
    times: dict[str, list[float]] = {"admin": [], "user": []}
    for i, arg in enumerate(args[WARMUP:]):
        order = (("admin", admin), ("user", user))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(arg)
            times[name].append(time.perf_counter() - t0)
    return median(times["admin"]), median(times["user"])


def _result(engine: str, label: str, admin_s: float, user_s: float, note: str) -> Result:
    return print_result(
        Result(
            "B12",
            f"{engine} {label}: user in {USER_PROPOSALS} of {N_PROPOSALS:,} proposals",
            user_s * 1e3,
            "ms",
            admin_s * 1e3,
            "admin",
            target=TARGET_RATIO,
            target_on="ratio",
            higher_is_better=False,
            note=note,
        )
    )


def _database_share(engine: str, label: str, store: Any, admin: Callable, user: Callable) -> Result:
    """The page's statement alone, run on a connection of the store's (no query building,
    no decoding): what the database itself spends on the user's page and on the admin's."""
    timed = {}
    for name, fn in (("admin", admin), ("user", user)):
        with statements(store._engine) as seen:
            fn(None)
        timed[name] = seen[-1]  # the page's (a count of a test's runs comes first)
    with store._engine.connect() as conn:

        def run(name: str) -> None:
            conn.exec_driver_sql(*timed[name]).all()

        admin_s, user_s = _pair(lambda _: run("admin"), lambda _: run("user"), [0] * 48)
    return print_result(
        Result(
            "B12",
            f"{engine} {label}: the page's SQL statement alone",
            user_s * 1e3,
            "ms",
            admin_s * 1e3,
            "admin's",
            note=(
                "no target: the database's share of the figure above; the user's statement "
                "reads the scope's runs from the access keys' indexes and looks each up by id "
                "for its time (the admin's reads 100 entries of the time index)"
            ),
        )
    )


def _time_ordered_bound(engine: str, store: Any, mine: list[str], want: list[str]) -> Result:
    """What a schema change would give: the user's page ids from a table of access tags that
    also holds each run's (time, uid), indexed in that order (which the catalog does not
    have; built here as a temporary table), one index range per tag merged by time. Against
    the admin's page ids from the time index, on one connection. ``want``: the user's page."""
    tags = "('start.proposal_id', 'start.public')"
    order = " ORDER BY time DESC, uid DESC LIMIT 100"
    arm = "SELECT run_id, time, uid FROM acc WHERE key = '{}' AND typ = '{}' AND {}"
    tests = [("start.proposal_id", "s", f"txt = '{p}'") for p in mine]
    tests.append(("start.public", "b", "num = 1"))
    arms = [arm.format(*test) for test in tests]
    if store.dialect == "postgresql":
        # PostgreSQL merges nothing here: each tag's newest 100, then the newest of those
        # (SQLite merges the ranges, each read in time order, as they are).
        arms = [f"SELECT * FROM ({a}{order}) AS a{i}" for i, a in enumerate(arms)]
    user_sql = " UNION ALL ".join(arms) + order
    admin_sql = "SELECT id, time, uid FROM runs" + order
    with store._engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE acc AS SELECT m.key, m.typ, m.txt, m.num, r.time, r.uid, "
            f"m.run_id FROM meta m JOIN runs r ON r.id = m.run_id WHERE m.key IN {tags} "
            "AND NOT m.elem"
        )
        for column in ("txt", "num"):
            conn.exec_driver_sql(
                f"CREATE INDEX acc_{column} ON acc (key, {column}, typ, time, uid, run_id)"
            )
        conn.exec_driver_sql("ANALYZE acc")
        assert [r.uid for r in conn.exec_driver_sql(user_sql)] == want, engine

        def run(sql: str) -> None:
            conn.exec_driver_sql(sql).all()

        admin_s, user_s = _pair(lambda _: run(admin_sql), lambda _: run(user_sql), [0] * 48)
        conn.exec_driver_sql("DROP TABLE acc")
        conn.commit()
    return print_result(
        Result(
            "B12",
            f"{engine} page 1's ids from a time-ordered access index (a schema the store "
            "does not have)",
            user_s * 1e3,
            "ms",
            admin_s * 1e3,
            "admin's page ids",
            note=(
                "no target: the bound a table of (access key, value, time, uid, run id) "
                "would lift, each tag's index range read newest first"
            ),
        )
    )


@dataclass(frozen=True)
class Callers:
    """How the admin and the user reach the catalog (a fresh store each call, as a server
    makes a guard per request) and how the figures say so."""

    admin: Callable[[], Any]
    user: Callable[[], Any]
    via: str  # "" (store level) or " over HTTP"
    how: str  # what is compared, for the notes


def _cursor_and_visible(recs: list[Rec]) -> tuple[list[Rec], list[Rec], tuple[float, str]]:
    """Every run newest first, the user's runs newest first, and the median run's cursor."""
    mine = set(user_proposals())
    newest = sorted(recs, key=lambda r: (r.time, r.uid), reverse=True)
    visible = [r for r in newest if r.proposal in mine or r.public]
    mid = newest[len(newest) // 2]
    return newest, visible, (mid.time, mid.uid)


def _expect(pool: list[Rec], query: Query | None, before: tuple | None) -> list[str]:
    out = [
        r.uid
        for r in pool
        if (query is None or r.plan == "scan") and (before is None or (r.time, r.uid) < before)
    ]
    return out[:PAGE]


PAGES = (
    ("page 1 (100 newest)", None, False),
    ("page N (100 before the median run)", None, True),
    ("page 1 with Key('plan_name') == 'scan'", EXTRA, False),
    ("page N with Key('plan_name') == 'scan'", EXTRA, True),
)


def _figures(engine: str, callers: Callers, recs: list[Rec], database: Any = None) -> list[Result]:
    """Search pages and ``cat[uid]``, the user's against the admin's, each checked against
    the records; with ``database`` (the SQL store), each page's statement alone too."""
    newest, visible, cursor = _cursor_and_visible(recs)
    results = []
    for label, query, later in PAGES:
        before = cursor if later else None
        got_admin = callers.admin().search(query, limit=PAGE, before=before)
        got_user = callers.user().search(query, limit=PAGE, before=before)
        assert [r.uid for r in got_admin] == _expect(newest, query, before), (engine, label)
        assert [r.uid for r in got_user] == _expect(visible, query, before), (engine, label)

        def admin(_: Any, q: Any = query, b: Any = before) -> Any:
            return callers.admin().search(q, limit=PAGE, before=b)

        def user(_: Any, q: Any = query, b: Any = before) -> Any:
            return callers.user().search(q, limit=PAGE, before=b)

        admin_s, user_s = _pair(admin, user, list(range(WARMUP + REPEATS)))
        note = f"{callers.how}: search(); median of {REPEATS}, interleaved"
        results.append(_result(engine, label + callers.via, admin_s, user_s, note))
        if database is not None and not later:
            results.append(_database_share(engine, label, database, admin, user))

    uids = [r.uid for r in random.Random(7).sample(visible, WARMUP + LOOKUPS)]
    assert Catalog(callers.user())[uids[0]].uid == uids[0]
    seen = set(visible)
    hidden = next(r.uid for r in newest if r not in seen)
    try:
        Catalog(callers.user())[hidden]
    except RunNotFoundError:
        pass
    else:
        raise AssertionError(f"{engine}: the user can see run {hidden}, outside their scope")
    admin_s, user_s = _pair(
        lambda uid: Catalog(callers.admin())[uid], lambda uid: Catalog(callers.user())[uid], uids
    )
    note = f"{callers.how}: Catalog(store)[uid]; median over {LOOKUPS} distinct visible uids"
    results.append(_result(engine, "cat[uid]" + callers.via, admin_s, user_s, note))
    return results


def measure(engine: str, cat: runbroker.Catalog, recs: list[Rec]) -> list[Result]:
    """The store-level figures of one engine, the bounds found, and the HTTP figures."""
    store = cat.store
    mine = user_proposals()
    scope = scope_for({"proposal_id": mine})
    _, visible, _ = _cursor_and_visible(recs)
    print(
        f"  {engine}: the user sees {len(visible):,} of {len(recs):,} runs "
        f"({100 * len(visible) / len(recs):.1f}%); scope {scope!r}",
        flush=True,
    )
    callers = Callers(
        lambda: store,
        lambda: GuardedStore(store, scope),
        "",
        "the store against a fresh GuardedStore(store, scope) each call",
    )
    results = _figures(engine, callers, recs, database=store)
    # The guard's two statements for cat[uid] (is it visible? then get_run), each alone.
    uids = [r.uid for r in visible[:40]]
    get_s, visible_s = _pair(
        lambda u: store.get_run(u), lambda u: store.search(scope & (Key("uid") == u), limit=1), uids
    )
    results[-1].note += (
        f"; the guard asks the database twice: its visibility search {visible_s * 1e3:.2f} ms, "
        f"then get_run {get_s * 1e3:.2f} ms (the admin's one call)"
    )
    results.append(_time_ordered_bound(engine, store, mine, _expect(visible, None, None)))
    if HTTP:
        results.extend(_over_http(engine, store._url, recs))
    return results


def _over_http(engine: str, url: str, recs: list[Rec]) -> list[Result]:
    """The same figures through a server with access control (uvicorn in a process of its
    own, one worker): an admin's API key against the user's, both from the server's
    identity directory (a scratch SQLite file), clients without a cache."""
    from runbroker.auth.directory import Directory

    with tempfile.TemporaryDirectory(prefix="runbroker-b12-") as tmp:
        directory = Directory(f"sqlite:///{tmp}/auth.db")
        directory.add_principal("root", admin=True)
        directory.add_principal("user")
        for proposal in user_proposals():
            directory.add_member("user", "proposal", proposal)
        keys = {name: directory.create_key(name, "read:metadata")[1] for name in ("root", "user")}
        directory.close()
        config = Path(tmp) / "access.yaml"
        config.write_text(json.dumps({"directory": f"sqlite:///{tmp}/auth.db"}))  # YAML too
        with Served(url, access=config) as server:
            admin = runbroker.open(server.url, api_key=keys["root"], cache=False)
            user = runbroker.open(server.url, api_key=keys["user"], cache=False)
            callers = Callers(
                lambda: admin.store,
                lambda: user.store,
                " over HTTP",
                "an admin's API key against the user's, one server worker, no client cache",
            )
            try:
                return _figures(engine, callers, recs)
            finally:
                admin.close()
                user.close()


def run() -> list[Result]:
    section(f"B12 access control: a user in {USER_PROPOSALS} of {N_PROPOSALS:,} proposals")
    results: list[Result] = []
    if "sqlite" in ENGINES:
        db, recs = _sqlite_catalog()
        with runbroker.open(db) as cat:
            _with_indexes(cat, "SQLite")
            results.extend(measure("SQLite", cat, recs))
    if "postgresql" in ENGINES:
        with postgres() as (url, external):
            if external:
                url = new_schema(url, f"rb_bench_b12_{os.getpid()}")
            recs = _postgres_catalog(url)
            with runbroker.open(url) as cat:
                _with_indexes(cat, "PostgreSQL")
                _vacuum(url)
                results.extend(measure("PostgreSQL", cat, recs))
    return results
