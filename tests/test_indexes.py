"""Metadata searches are answered from indexes: EXPLAIN shows it, on SQLite and PostgreSQL.

Every key of every start and stop document is indexed (the ``meta`` table's covering
indexes), so the keys users search most -- sample, proposal_id, beamtime_id -- need no
per-key configuration.
"""

from __future__ import annotations

import pytest
from event_model import compose_run
from sqlalchemy import select, text

from runbroker.queries import Contains, Key, ScanID, TimeRange
from runbroker.store.schema import runs
from runbroker.store.sqlquery import compile_query


def _plan(catalog, query) -> str:
    store = catalog.store
    stmt = select(runs.c.id).where(compile_query(query, store.dialect))
    with store._engine.connect() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        if store.dialect == "sqlite":
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            return "\n".join(str(r[-1]) for r in rows)
        conn.execute(text("ANALYZE"))
        return "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")).all())


@pytest.fixture
def big_catalog(catalog):
    docs = []
    for i in range(3000):
        md = {
            "scan_id": i,
            "sample": f"sample{i % 50}",
            "proposal_id": f"p{i % 7}",
            "beamtime_id": f"b{i % 11}",
            "detectors": ["det", f"cam{i % 3}"],
            "temperature": float(i % 100),
        }
        docs.append(("start", compose_run(metadata=md, time=1e9 + i).start_doc))
    catalog.ingest(docs)
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
        (TimeRange(since=1e9 + 10, until=1e9 + 20), "ix_runs_time_uid"),
    ],
    ids=["sample", "proposal", "beamtime", "range", "contains", "scan_id", "time"],
)
def test_search_uses_the_index(big_catalog, query, index):
    plan = _plan(big_catalog, query)
    assert index in plan, plan
    assert len(big_catalog.search(query)) > 0
