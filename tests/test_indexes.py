"""Metadata searches are answered from indexes: EXPLAIN shows it, on SQLite and PostgreSQL.

Every key of every start and stop document is indexed (the ``meta`` table's covering
indexes), so the keys users search most -- sample, proposal_id, beamtime_id -- need no
per-key configuration. Keys can also get an index of their own (``indexes=`` of
``runbroker.open``, ``runbroker db index``); the plans of the statements the store really
runs, with their parameters, show that searches on those keys use it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from event_model import compose_run
from sqlalchemy import create_engine, inspect, select, text

import runbroker
from runbroker.queries import Contains, In, Key, KeyPresent, QueryError, ScanID, TimeRange
from runbroker.store.keyindex import index_name
from runbroker.store.schema import runs
from runbroker.store.sqlquery import compile_query
from runbroker.testing.postgres import new_schema
from runbroker.testing.statements import statements
from runbroker.testing.stores import stores_except


def _plan(catalog, query) -> str:
    store = catalog.store
    stmt = select(runs.c.id).where(compile_query(query, store._db))
    with store._engine.connect() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        if store.dialect == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            return "\n".join(str(r[-1]) for r in rows)
        conn.execute(text("ANALYZE"))
        return "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")).all())


def _starts(n: int = 3000) -> list[tuple[str, dict]]:
    docs = []
    for i in range(n):
        md = {
            "scan_id": i,
            "sample": f"sample{i % 50}",
            "proposal_id": f"p{i % 7}",
            "beamtime_id": f"b{i % 11}",
            "detectors": ["det", f"cam{i % 3}"],
            "temperature": float(i % 100),
        }
        docs.append(("start", compose_run(metadata=md, time=1e9 + i).start_doc))
    return docs


@pytest.fixture
def big_catalog(catalog):
    catalog.ingest(_starts())
    return catalog


@pytest.mark.parametrize(
    "query, index",
    [
        (Key("sample") == "sample3", "ix_meta_txt"),
        (Key("proposal_id") == "p1", "ix_meta_txt"),
        (Key("beamtime_id") == "b2", "ix_meta_txt"),
        (Key("temperature") > 95.0, "ix_meta_num"),
        (Contains("detectors", "cam1"), "ix_meta_txt"),
        (ScanID(42), "ix_runs_scan_id"),
        (TimeRange(since="@1000000010", until="@1000000020"), "ix_runs_time_uid"),
    ],
    ids=["sample", "proposal", "beamtime", "range", "contains", "scan_id", "time"],
)
@stores_except(
    "folder", "http", reason="SQL indexes on metadata keys: query plans, runbroker db index"
)
def test_search_uses_the_index(big_catalog, query, index):
    plan = _plan(big_catalog, query)
    assert index in plan, plan
    assert len(big_catalog.search(query)) > 0


# -- indexes on chosen keys ----------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runbroker.cli", *args], capture_output=True, text=True, timeout=120
    )


def _plans(catalog, run) -> list[str]:
    """The plans of the metadata statements the store runs for ``run(catalog)``."""
    store = catalog.store
    with statements() as seen:
        run(catalog)
    found = [(sql, params) for sql, params in seen if "FROM meta" in sql]
    assert found
    explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store._engine.connect() as conn:
        return [
            "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql, params))
            for sql, params in found
        ]


def _search(query):
    def run(catalog) -> None:
        assert len(catalog.search(query)) > 0
        assert catalog.search(query)[-3:]

    return run


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def indexed_catalog(request, tmp_path_factory) -> Iterator[runbroker.Catalog]:
    """A catalog of 3000 runs with indexes on chosen keys, built once per store (it takes
    seconds on PostgreSQL). Its planner statistics are fresh."""
    if request.param == "sqlite":
        cat = runbroker.open(tmp_path_factory.mktemp("indexed") / "runs.db")
    else:
        base = request.getfixturevalue("postgres_url")
        cat = runbroker.open(new_schema(base, f"indexed_{os.getpid()}"))
    cat.ingest(_starts())
    cat.store.create_index("sample", "temperature", "sample.name", "it's")
    if cat.store.dialect == "postgresql":
        with cat.store._engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    yield cat
    cat.close()


@pytest.mark.parametrize(
    "query, key, column",
    [
        (Key("sample") == "sample3", "start.sample", "txt"),
        (Key("sample") != "sample3", "start.sample", "txt"),
        (In("sample", ["sample3", "sample4"]), "start.sample", "txt"),
        (Key("sample") >= "sample48", "start.sample", "txt"),
        (Key("temperature") == 42, "start.temperature", "num"),
        (Key("temperature") > 95, "start.temperature", "num"),
        (KeyPresent("temperature"), "start.temperature", "txt"),
    ],
    ids=["eq", "ne", "in", "string-range", "number-eq", "number-range", "present"],
)
def test_searches_use_the_keys_own_index(indexed_catalog, query, key, column):
    store = indexed_catalog.store
    plans = _plans(indexed_catalog, _search(query))
    # The planner may pick either of the key's two indexes where both fit.
    name = index_name(key, column) if store.dialect == "sqlite" else index_name(key, "")
    for plan in plans:
        assert "ix_meta_txt" not in plan and "ix_meta_num" not in plan, plan
        assert "Seq Scan on meta" not in plan, plan
        if store.dialect == "postgresql" and _probes_run_by_run(plan):
            # With statistics, PostgreSQL may answer "the newest 3 hits" of a value many runs
            # have by walking the time index and looking each run up in meta by run id.
            continue
        assert name in plan, plan
    # Counting reads every hit: from the key's index.
    assert any(name in plan for plan in plans), plans


def _probes_run_by_run(plan: str) -> bool:
    return (
        "ix_runs_time_uid" in plan
        and re.search(r"ix_meta_run on meta[^\n]*\n *Index Cond: \(run_id = ", plan) is not None
    )


def test_keys_with_dots_and_quotes_are_indexed_and_found(indexed_catalog):
    cat = indexed_catalog
    cat.ingest(
        [("start", compose_run(metadata={"sample": {"name": "Ni"}, "it's": "x'y"}).start_doc)]
    )
    for query, key in [
        (Key("sample.name") == "Ni", "start.sample.name"),
        (Key("it's") == "x'y", "start.it's"),
    ]:
        assert [r.start["sample"] for r in cat.search(query).values()] == [{"name": "Ni"}]
        # On PostgreSQL either of the key's two indexes serves a key that few runs have.
        name = index_name(key, "txt" if cat.store.dialect == "sqlite" else "")
        for plan in _plans(cat, _search(query)):
            assert name in plan, plan
    assert cat.store.indexed_keys() == ["it's", "sample", "sample.name", "temperature"]


@pytest.mark.parametrize("indexed_catalog", ["postgresql"], indirect=True)  # PostgreSQL's cache
def test_postgresql_generic_plans_use_the_index(indexed_catalog):
    """A statement prepared once and run many times (psycopg prepares after five runs) gets
    a plan made without its parameter values: the key, inlined, still matches the index."""
    store = indexed_catalog.store
    with statements() as seen:
        len(indexed_catalog.search(Key("sample") == "sample3"))
    sql, params = next((s, p) for s, p in seen if "FROM meta" in s)
    names = list(params)
    numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql)
    with store._engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE rb_probe AS {numbered}")
        values = ", ".join(f"'{params[n]}'" for n in names)
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN EXECUTE rb_probe({values})"))
    assert "$1" in plan or "$2" in plan, plan  # the plan really is the generic one
    assert index_name("start.sample", "txt") in plan, plan


@stores_except(
    "folder", "http", reason="SQL indexes on metadata keys: query plans, runbroker db index"
)
def test_open_creates_missing_indexes_once(catalog):
    uri = catalog.store.uri
    catalog.close()
    with runbroker.open(uri, indexes=["sample", "proposal_id"]) as cat:
        assert cat.store.indexed_keys() == ["proposal_id", "sample"]
    with statements() as seen:
        again = runbroker.open(uri, indexes=["proposal_id", "sample"])
    assert not [sql for sql, _ in seen if "CREATE" in sql.upper()]
    assert again.store.create_index("sample") == []
    assert again.store.create_index("beamtime_id", "sample") == ["beamtime_id"]
    assert again.store.indexed_keys() == ["beamtime_id", "proposal_id", "sample"]
    again.close()


@stores_except(
    "folder", "http", reason="SQL indexes on metadata keys: query plans, runbroker db index"
)
def test_readonly_open_refuses_to_create_and_names_the_command(catalog):
    uri = catalog.store.uri
    catalog.store.create_index("sample")
    catalog.close()
    with runbroker.open(uri, readonly=True, indexes=["sample"]) as cat:
        assert cat.store.indexed_keys() == ["sample"]
    with pytest.raises(PermissionError, match=r"runbroker db index .* 'proposal_id'"):
        runbroker.open(uri, readonly=True, indexes=["sample", "proposal_id"])
    with pytest.raises(QueryError):
        runbroker.open(uri, indexes=["a..b"])


@stores_except(
    "folder", "http", reason="SQL indexes on metadata keys: query plans, runbroker db index"
)
def test_cli_indexes_an_existing_catalog_for_other_processes(big_catalog):
    uri = big_catalog.store.uri
    big_catalog.close()
    done = _cli("db", "index", uri, "sample", "beamtime_id")
    assert done.returncode == 0, done.stderr
    assert "beamtime_id, sample" in done.stdout
    assert _cli("db", "index", uri, "sample").stdout.strip() == "already indexed"
    listed = _cli("db", "index", uri, "--list")
    assert listed.returncode == 0 and listed.stdout.split() == ["beamtime_id", "sample"]
    with runbroker.open(uri) as cat:  # another process than the one that made the index
        assert cat.store.indexed_keys() == ["beamtime_id", "sample"]
        if cat.store.dialect == "postgresql":
            with cat.store._engine.connect() as conn:
                conn.execute(text("ANALYZE"))
        for plan in _plans(cat, _search(Key("beamtime_id") == "b2")):
            assert index_name("start.beamtime_id", "txt") in plan, plan


def test_cli_index_names_what_is_wrong(tmp_path):
    missing = _cli("db", "index", str(tmp_path / "nothing.db"), "sample")
    assert missing.returncode == 1 and "no catalog at" in missing.stderr
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    refused = _cli("db", "index", str(other), "sample")
    assert refused.returncode == 1 and "not a runbroker catalog" in refused.stderr
    engine = create_engine(f"sqlite:///{other}")
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == []  # nothing was created in it
    engine.dispose()
    nothing = _cli("db", "index", str(other))
    assert nothing.returncode == 1 and "--list" in nothing.stderr
