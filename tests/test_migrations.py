"""Schema migrations: an older catalog is refused with advice, upgraded in place, read back.

The catalog "at the first schema version" is made the way an old catalog came to be: runs
are written, then the schema is taken down to revision 0001 (alembic's downgrade, which the
migration scripts provide) -- the stop times the newer schema indexes are then gone.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import det, motor
from sqlalchemy import create_engine, inspect, text

import runbroker
from runbroker.queries import Field, In, Key
from runbroker.store.migrations import downgrade, upgrade
from runbroker.testing.stores import stores_except


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runbroker.cli", *args], capture_output=True, text=True, timeout=120
    )


@stores_except(
    "folder", "http", reason="SQL schema migrations (alembic) of a catalog database file"
)
def test_old_catalog_is_refused_upgraded_and_read_back(catalog, RE):
    RE(count([det], 3), sample="Ni")
    RE(scan([det], motor, -1, 1, 5), sample="Cu")
    uri = catalog.store.uri
    before = {uid: (run.start, run.stop, run.primary.read()) for uid, run in catalog.items()}
    catalog.close()

    assert downgrade(uri, "0001") == "0001"  # the first schema version
    engine = create_engine(uri)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("runs")}
        assert "stop_time" not in columns
    with pytest.raises(runbroker.SchemaVersionError) as info:
        runbroker.open(uri)
    assert f"runbroker db upgrade {uri}" in str(info.value)

    done = _cli("db", "upgrade", uri)
    assert done.returncode == 0, done.stderr
    assert "0007" in done.stdout
    with engine.connect() as conn:
        stop_times = dict(conn.execute(text("SELECT uid, stop_time FROM runs")).all())
    engine.dispose()

    again = runbroker.open(uri)
    try:
        assert len(again) == len(before)
        for uid, (start, stop, ds) in before.items():
            run = again[uid]
            assert run.start == start and run.stop == stop
            assert run.primary.read().identical(ds)
            assert stop_times[uid] == stop["time"]  # filled in by the migration
        # The upgraded catalog takes new runs as usual.
        again.insert("start", dict(next(iter(before.values()))[0], uid="new-run", scan_id=9))
        again.flush()
        assert again[9].uid == "new-run"
    finally:
        again.close()


@stores_except(
    "folder", "http", reason="SQL schema migrations (alembic) of a catalog database file"
)
def test_upgrading_a_current_catalog_changes_nothing(catalog):
    uri = catalog.store.uri
    catalog.close()
    assert upgrade(uri) == "0007"
    assert upgrade(uri) == "0007"
    assert len(runbroker.open(uri)) == 0


def test_upgrade_names_what_is_wrong(tmp_path):
    missing = _cli("db", "upgrade", str(tmp_path / "nothing.db"))
    assert missing.returncode == 1 and "no catalog at" in missing.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    other = _cli("db", "upgrade", str(tmp_path / "other.db"))
    assert other.returncode == 1 and "not a runbroker catalog" in other.stderr


@stores_except(
    "folder", "http", reason="SQL schema migrations (alembic) of a catalog database file"
)
def test_meta_foreign_key_is_dropped_by_0003_and_restored_by_its_downgrade(catalog, RE):
    """PostgreSQL checked every meta row against runs; 0003 drops the key (SQLite never
    enforced it and keeps its tables as they are), and data stays readable either way."""
    RE(count([det], 3), sample="Ni")
    uri = catalog.store.uri
    catalog.close()
    engine = create_engine(uri)
    postgres = engine.dialect.name == "postgresql"

    def meta_keys() -> list[str]:
        with engine.connect() as conn:
            return [fk["referred_table"] for fk in inspect(conn).get_foreign_keys("meta")]

    if postgres:
        assert meta_keys() == []
    assert downgrade(uri, "0002") == "0002"
    if postgres:
        assert meta_keys() == ["runs"]
    with runbroker.open(uri) as cat:  # revision 0002 opens and works as before
        run = compose_run(metadata={"sample": "Cu"})
        cat.insert("start", run.start_doc)
        cat.insert("stop", run.compose_stop())
        assert [r.start["sample"] for r in cat.values()] == ["Cu", "Ni"]
    assert upgrade(uri) == "0007"
    if postgres:
        assert meta_keys() == []
    with runbroker.open(uri) as cat:
        assert len(cat.search(Key("sample") == "Cu")) == 1
        assert cat[-1].stop["exit_status"] == "success"
    engine.dispose()


@stores_except(
    "folder", "http", reason="SQL schema migrations (alembic) of a catalog database file"
)
def test_0004_keeps_the_indexed_keys_in_time_order_from_then_on(catalog, RE):
    """A catalog of revision 0003 (no tags table) works as before; upgraded, its indexed
    keys' rows are copied into tags, new runs reach it through the trigger, and a page of a
    scope read from it is the one the plain search gives."""
    for proposal in ("p1", "p2", "p1"):
        RE(count([det], 1), proposal_id=proposal)
    catalog.store.create_index("proposal_id")
    uri = catalog.store.uri
    catalog.close()
    assert downgrade(uri, "0003") == "0003"
    with runbroker.open(uri) as cat:  # 0003: searches as before, writes without tags
        cat.insert("start", compose_run(metadata={"proposal_id": "p1"}).start_doc)
        cat.flush()
        assert len(cat.search(Key("proposal_id") == "p1")) == 3
    assert upgrade(uri) == "0007"
    engine = create_engine(uri)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tags")).scalar() == 4
    engine.dispose()
    with runbroker.open(uri) as cat:
        cat.insert("start", compose_run(metadata={"proposal_id": "p1"}).start_doc)
        cat.flush()
        scope = In("proposal_id", ["p1"])
        everything = [r.uid for r in cat.store.search(scope)]
        assert len(everything) == 4
        assert [r.uid for r in cat.store.search(scope, limit=2)] == everything[:2]
        assert [r.uid for r in cat.store.search(scope, offset=1, limit=2)] == everything[1:3]


@stores_except(
    "folder", "http", reason="SQL schema migrations (alembic) of a catalog database file"
)
def test_0006_moves_statistics_kept_in_meta_to_their_table(catalog, RE):
    """A catalog of revision 0005 works without statistics (none written, no Field hit);
    upgraded, the statistics rows earlier versions kept in ``meta`` are moved over."""
    RE(scan([det], motor, -1, 1, 5))
    uri = catalog.store.uri
    uid = catalog[-1].uid
    expected = catalog.store.stats(uid)
    assert expected["primary"]["motor"]["min"] == -1.0
    catalog.close()
    assert downgrade(uri, "0005") == "0005"
    engine = create_engine(uri)
    with engine.begin() as conn:  # the rows a 0005 catalog's writer gave the run
        run_id = conn.execute(text("SELECT id FROM runs WHERE uid = :u"), {"u": uid}).scalar()
        rows = [("@stat", 0)]
        for field, values in expected["primary"].items():
            rows += [
                (f'@stat.{stat}.["primary","{field}"]', value)
                for stat, value in values.items()
                if value is not None
            ]
        conn.execute(
            text("INSERT INTO meta (run_id, key, elem, typ, num) VALUES (:r, :k, false, 'n', :n)"),
            [{"r": run_id, "k": k, "n": n} for k, n in rows],
        )
    between = Field("primary", "motor").between(-1, 1)
    with runbroker.open(uri) as cat:  # 0005: no statistics, runs written as before
        assert cat.store.stats(uid) is None
        assert len(cat.search(between)) == 0
        run = compose_run()
        cat.insert("start", run.start_doc)
        cat.insert("stop", run.compose_stop())
        assert len(cat) == 2
    assert upgrade(uri) == "0007"
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM meta WHERE key LIKE '@stat%'")).scalar()
    engine.dispose()
    assert left == 0
    with runbroker.open(uri) as cat:
        # PostgreSQL's NUMERIC keeps what a float became there (15 digits when bound as text).
        moved = cat.store.stats(uid)["primary"]
        assert moved.keys() == expected["primary"].keys()
        for field, values in expected["primary"].items():
            assert moved[field] == pytest.approx(values, rel=1e-12)
        assert list(cat.search(between)) == [uid]
        assert cat.store.unsummarised() == [run.start_doc["uid"]]
