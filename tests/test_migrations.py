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
from ophyd.sim import det, motor
from sqlalchemy import create_engine, inspect, text

import runbroker
from runbroker.store.migrations import downgrade, upgrade
from runbroker.testing.stores import stores_except


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runbroker.cli", *args], capture_output=True, text=True, timeout=120
    )


@stores_except("folder", reason="SQL schema migrations (alembic) of a catalog database")
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
    assert "0002" in done.stdout
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


@stores_except("folder", reason="SQL schema migrations (alembic) of a catalog database")
def test_upgrading_a_current_catalog_changes_nothing(catalog):
    uri = catalog.store.uri
    catalog.close()
    assert upgrade(uri) == "0002"
    assert upgrade(uri) == "0002"
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
