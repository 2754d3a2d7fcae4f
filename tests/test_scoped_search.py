"""Searches within a caller's scope: right answers, and plans that do not walk every run.

A caller's scope (``scope_for``: their proposals, or public) is ANDed into every search by
the access guard. The store compiles the scope's metadata tests into one list of run ids,
from which the database drives the search (some hundreds of runs), rather than walking the
runs by time and testing each against a dozen lists; it asks whether a test matches many
runs once and remembers the answer for a few seconds; and a lookup by uid within a scope
finds the run by its uid and asks the scope of that run alone. The answers are those of
``Query.matches``, the reference, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from event_model import compose_run

import runbroker
from runbroker.auth.guard import GuardedStore
from runbroker.auth.policy import scope_for
from runbroker.queries import And, In, Key, Not, Or, PartialUID, Query
from runbroker.testing.postgres import new_schema
from runbroker.testing.statements import statements

N_RUNS = 1500
PROPOSALS = [f"p{i:03d}" for i in range(100)]
MINE = ["p003", "p017", "p042", "p077", "p099"]
SCOPE = scope_for({"proposal_id": MINE})


def _starts() -> list[tuple[str, dict]]:
    rng = random.Random(17)
    docs = []
    for i in range(N_RUNS):
        md: dict = {"plan_name": rng.choice(["scan", "count", "grid_scan"]), "scan_id": i}
        if rng.random() > 0.02:
            md["proposal_id"] = rng.choice(PROPOSALS)
            md["beamline_id"] = f"bl{i % 4}"
        if rng.random() < 0.03:
            md["public"] = True
        if i % 97 == 0:
            md["public"] = "yes"  # not the boolean true: not public
        if i in (5, 6):
            md["big"] = 2**53 + i - 5  # equal as floats, not as integers
        # Some start times repeat: (time, uid) orders them.
        docs.append(("start", compose_run(metadata=md, time=1e9 + i // 3).start_doc))
    return docs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tagged(request, tmp_path_factory) -> Iterator[tuple[runbroker.Catalog, list[dict]]]:
    """A catalog of runs tagged by proposal (some public, some untagged), its access keys
    indexed, and its start documents newest first."""
    if request.param == "sqlite":
        cat = runbroker.open(tmp_path_factory.mktemp("scoped") / "runs.db")
    else:
        base = request.getfixturevalue("postgres_url")
        cat = runbroker.open(new_schema(base, f"scoped_{os.getpid()}"))
    docs = _starts()
    cat.ingest(docs)
    cat.store.create_index("proposal_id", "beamline_id", "public")
    if cat.store.dialect == "postgresql":
        with cat.store._engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    starts = sorted((d for _, d in docs), key=lambda s: (s["time"], s["uid"]), reverse=True)
    yield cat, starts
    cat.close()


def _matching(starts: list[dict], query: Query | None) -> list[str]:
    return [s["uid"] for s in starts if query is None or query.matches({"start": s, "stop": None})]


def _plan(store, sql: str, params: object) -> str:
    explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store._engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql, params))


EXTRA = [
    None,
    Key("plan_name") == "scan",
    Key("plan_name") != "scan",
    Key("beamline_id") == "bl1",
    Or(Key("plan_name") == "count", Key("beamline_id") == "bl2"),
    Not(In("proposal_id", ["p003", "p042"])),
]


@pytest.mark.parametrize("extra", EXTRA, ids=lambda q: repr(q)[:40])
def test_pages_within_a_scope_are_the_references(tagged, extra):
    cat, starts = tagged
    guard = GuardedStore(cat.store, SCOPE)
    full = And(SCOPE, extra) if extra is not None else SCOPE
    want = _matching(starts, full)
    assert 20 < len(want) < N_RUNS // 4  # a scope of a few percent, as a facility user has
    assert guard.count(extra) == len(want)
    assert [r.uid for r in guard.search(extra, limit=20)] == want[:20]
    # A later page, through the cursor of the last run of the first one.
    first = guard.search(extra, limit=20)
    cursor = (first[-1].start["time"], first[-1].uid)
    assert [r.uid for r in guard.search(extra, limit=20, before=cursor)] == want[20:40]
    oldest = guard.search(extra, limit=20, oldest_first=True)
    assert [r.uid for r in oldest] == want[::-1][:20]
    assert [r.uid for r in guard.search(extra)] == want


@pytest.mark.parametrize(
    "query",
    [
        In("public", [True, "yes", None, 1.5]),
        In("scan_id", [3, 4.0, "5", False]),
        In("big", [2**53 + 1, 0.5]),
        Or(Key("public") == "yes", In("proposal_id", MINE), Key("scan_id") > 1490),
        Or(In("proposal_id", []), Key("public") == True),  # noqa: E712 (a query)
        In("proposal_id", []),
        And(SCOPE, Not(SCOPE)),
    ],
    ids=[
        "mixed-values",
        "numbers",
        "big-integers",
        "or-of-three",
        "empty-in",
        "nothing",
        "contradiction",
    ],
)
def test_metadata_tests_joined_into_one_list_keep_their_meaning(tagged, query):
    cat, starts = tagged
    want = _matching(starts, query)
    assert [r.uid for r in cat.store.search(query, limit=10)] == want[:10]
    assert cat.store.count(query) == len(want)


def test_a_lookup_by_uid_within_a_scope(tagged):
    cat, starts = tagged
    visible = set(_matching(starts, SCOPE))
    mine = next(s["uid"] for s in starts if s["uid"] in visible)
    hidden = next(s["uid"] for s in starts if s["uid"] not in visible)
    assert GuardedStore(cat.store, SCOPE).get_run(mine).uid == mine
    assert GuardedStore(cat.store, SCOPE).get_run(hidden) is None
    assert cat.store.search(And(SCOPE, Key("uid") == hidden)) == []
    assert cat.store.count(Or(Key("uid") == hidden, Key("uid") == mine)) == 2
    assert cat.store.count(Not(Key("uid") == mine)) == N_RUNS - 1
    assert cat.store.count(Key("uid") == 5) == 0  # a uid is a str: nothing equals 5
    prefix = PartialUID(mine[:8])
    assert [r.uid for r in cat.store.search(And(SCOPE, prefix))] == [mine]


def test_the_scope_is_one_list_of_runs_the_search_starts_from(tagged):
    """The page's statement reads each of the scope's values' newest runs in time order from
    the tags index (the access keys are indexed, so kept in time order) and stops after the
    page; it neither walks the runs by time nor counts anything."""
    cat, _ = tagged
    store = cat.store
    with statements() as seen:
        GuardedStore(store, SCOPE).search(None, limit=100)
    assert len(seen) == 1, seen
    plan = _plan(store, *seen[0])
    assert "ix_tags_txt" in plan and "ix_tags_num" in plan, plan
    if store.dialect == "sqlite":
        assert "SCAN runs" not in plan and "SCAN tags" not in plan, plan
    else:  # (runs itself is small enough here for PostgreSQL to read it whole)
        assert "Seq Scan on tags" not in plan and "Index Only Scan Backward" in plan, plan


def test_a_lookup_by_uid_asks_the_scope_of_that_run_alone(tagged):
    cat, starts = tagged
    store = cat.store
    uid = _matching(starts, SCOPE)[7]
    with statements() as seen:
        assert [r.uid for r in store.search(And(SCOPE, Key("uid") == uid), limit=1)] == [uid]
    counts = [s for s, _ in seen if "count(" in s.lower()]
    assert not counts, counts  # one run: no need to know how many the scope holds
    plan = _plan(store, *seen[-1])
    if store.dialect == "sqlite":
        assert "sqlite_autoindex_runs_1 (uid=?)" in plan, plan
        # The scope's tests are probes of this run (the one list is the page's own ids).
        assert plan.count("LIST SUBQUERY") == 1 and "CORRELATED" in plan, plan
    else:
        assert "runs_uid_key" in plan and "Seq Scan" not in plan, plan
