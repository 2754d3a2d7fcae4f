"""A document that fails after its first write undoes only itself, with or without a savepoint.

SQLite writes starts, and the stops of runs begun in the open transaction, without a
savepoint (see ``runbroker.store.dialects.SQLite.unguarded``): their rows are deleted by
their run instead. These tests make a write fail midway and check that nothing of the
failed document is left, that the documents before it (not yet committed) are kept, and that
sending the document again stores it whole.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from event_model import compose_run

import runbroker
from runbroker import ConflictError
from runbroker.queries import Field, Key
from runbroker.store import dialects, sqlwrite

NUMBER = {"x": {"source": "sim:x", "dtype": "number", "shape": []}}


class _Broken:
    """A statement that fails when run (a full disk, an I/O error), after writing the first
    ``rows`` rows it was given (``partly``: the real statement)."""

    def __init__(self, partly=None, rows: int = 0) -> None:
        self.partly, self.rows = partly, rows

    def execute(self, *args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    def executemany(self, conn, rows, **kwargs):
        if self.partly is not None:
            self.partly.executemany(conn, rows[: self.rows], **kwargs)
        raise sqlite3.OperationalError("disk I/O error")


def _run(cat: runbroker.Catalog, **md):
    bundle = compose_run(metadata={"sample": "Ni", **md})
    cat.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys=NUMBER)
    cat.insert("descriptor", desc.descriptor_doc)
    for i in range(1, 4):
        cat.insert("event", desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0}))
    return bundle


def _rows(path: Path, sql: str, *params) -> list:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.fixture
def cat(tmp_path):
    cat = runbroker.open(tmp_path / "runs.db")
    cat.store.create_index("sample")  # its metadata rows are copied into tags, too
    yield cat
    cat.close()


def test_a_start_failing_after_its_run_row_leaves_nothing(cat, tmp_path, monkeypatch):
    first = _run(cat)  # pending: not committed yet
    second = compose_run(metadata={"sample": "Cu"})
    monkeypatch.setattr(dialects, "_INSERT_FTS5", _Broken())  # after the run and meta rows
    _fails(cat, monkeypatch, "start", second.start_doc)
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT uid FROM runs") == [(first.start_doc["uid"],)]
    assert _rows(path, "SELECT count(*) FROM meta WHERE txt = 'Cu'") == [(0,)]
    assert _rows(path, "SELECT count(*) FROM tags WHERE txt = 'Cu'") == [(0,)]
    assert _rows(path, "SELECT count(*) FROM runs_fts") == [(1,)]
    # The run before it is whole, and the start goes in when sent again.
    assert cat[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0]
    cat.insert("start", second.start_doc)
    cat.flush()
    assert len(cat.search(Key("sample") == "Cu")) == 1
    assert _rows(path, "SELECT count(*) FROM tags WHERE txt = 'Cu'") == [(1,)]


def test_a_stop_failing_after_its_row_is_undone(cat, tmp_path, monkeypatch):
    """The stop of a run begun in an earlier transaction has its statistics written at
    once, under its savepoint: a failure there leaves the run without a stop."""
    bundle = _run(cat)
    cat.flush()

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlwrite, "stop_stats", broken)
    stop = bundle.compose_stop()
    _fails(cat, monkeypatch, "stop", stop)
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT stop, stop_time FROM runs") == [(None, None)]
    assert _rows(path, "SELECT count(*) FROM meta WHERE key LIKE 'stop.%'") == [(0,)]
    assert _rows(path, "SELECT count(*) FROM field_stats") == [(0,)]
    assert cat[-1].stop is None
    assert cat[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0]
    cat.insert("stop", stop)
    cat.flush()
    assert cat[-1].stop["exit_status"] == "success"
    assert cat.store.stats(bundle.start_doc["uid"])["primary"]["x"]["max"] == 3.0


def test_statistics_failing_at_the_commit_roll_it_back_whole(cat, tmp_path, monkeypatch):
    """The statistics of runs begun and stopped in one transaction are written with its
    commit. Failing there (a full disk), the commit fails: nothing of it is stored, the
    error is raised, and the same runs go in whole when sent again."""
    before = _run(cat)
    cat.insert("stop", before.compose_stop())
    cat.flush()
    docs = []
    bundle = compose_run(metadata={"sample": "Cu"})
    desc = bundle.compose_descriptor(name="primary", data_keys=NUMBER)
    docs += [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", desc.compose_event(data={"x": 5.0}, timestamps={"x": 0.0}))]
    docs += [("stop", bundle.compose_stop())]
    monkeypatch.setattr(sqlwrite, "write_stopped", _Broken().executemany)
    for name, doc in docs:
        cat.insert(name, doc)  # accepted: the statistics wait for the commit
    with pytest.raises(sqlite3.OperationalError):
        cat.flush()
    monkeypatch.undo()
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT uid FROM runs") == [(before.start_doc["uid"],)]
    assert _rows(path, "SELECT count(*) FROM field_stats") == [(1,)]
    for name, doc in docs:
        cat.insert(name, doc)
    cat.flush()
    assert cat.store.stats(bundle.start_doc["uid"])["primary"]["x"]["sum"] == 5.0
    assert len(cat.search(Field("primary", "x").max() > 4)) == 1


def test_a_stop_failing_in_its_metadata_rows_leaves_the_run_running(cat, tmp_path, monkeypatch):
    bundle = _run(cat)
    monkeypatch.setattr(dialects, "_INSERT_META", _Broken(dialects._INSERT_META, rows=3))
    stop = bundle.compose_stop()
    _fails(cat, monkeypatch, "stop", stop)
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT stop FROM runs") == [(None,)]
    assert _rows(path, "SELECT count(*) FROM meta WHERE key LIKE 'stop.%'") == [(0,)]
    assert cat[-1].stop is None
    cat.insert("stop", stop)
    cat.flush()
    assert len(cat.search(Key("stop.exit_status") == "success")) == 1


def test_refused_repeats_undo_nothing_of_what_they_repeat(cat):
    """A start or stop refused for differing from the stored one (same transaction) leaves
    the stored one as it was."""
    bundle = _run(cat)
    with pytest.raises(ConflictError):
        cat.insert("start", dict(bundle.start_doc, sample="Cu"))
    stop = bundle.compose_stop()
    cat.insert("stop", stop)
    with pytest.raises(ConflictError):
        cat.insert("stop", dict(stop, exit_status="abort"))
    cat.flush()
    run = cat[-1]
    assert run.start["sample"] == "Ni" and run.stop["exit_status"] == "success"
    assert len(cat.search(Key("stop.exit_status") == "success")) == 1
    assert cat.store.stats(bundle.start_doc["uid"])["primary"]["x"]["count"] == 3


def _refuse_descriptor(cat, monkeypatch, descriptor: dict) -> None:
    """Insert a descriptor that fails after its row and its facts' link are written (a full
    disk), and commit what the transaction holds after it."""

    def broken():
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlwrite, "Accumulator", broken)
    _fails(cat, monkeypatch, "descriptor", descriptor)


def _fails(cat, monkeypatch, name: str, doc: dict) -> None:
    """Insert ``doc``, which the patches in place make fail with an I/O error; take the
    patches away and commit what the transaction holds after it."""
    with pytest.raises(sqlite3.OperationalError):
        cat.insert(name, doc)
    monkeypatch.undo()
    cat.flush()


def test_a_descriptor_failing_after_its_rows_leaves_nothing(cat, tmp_path, monkeypatch):
    """Its facts are known (an earlier run had the same): no savepoint, rows deleted."""
    _run(cat)
    second = compose_run(metadata={"sample": "Cu"})
    cat.insert("start", second.start_doc)
    desc = second.compose_descriptor(name="primary", data_keys=NUMBER)
    _refuse_descriptor(cat, monkeypatch, desc.descriptor_doc)
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT count(*) FROM descriptors") == [(1,)]
    assert _rows(path, "SELECT run_id FROM run_facts") == [(1,)]
    cat.insert("descriptor", desc.descriptor_doc)
    cat.insert("event", desc.compose_event(data={"x": 5.0}, timestamps={"x": 0.0}))
    cat.insert("stop", second.compose_stop())
    cat.flush()
    assert _rows(path, "SELECT run_id FROM run_facts ORDER BY run_id") == [(1,), (2,)]
    assert cat[-1].primary.read()["x"].values.tolist() == [5.0]


def test_a_failing_descriptor_keeps_the_link_of_its_runs_other_descriptor(
    cat, tmp_path, monkeypatch
):
    bundle = _run(cat)
    again = bundle.compose_descriptor(name="primary", data_keys=NUMBER)  # the same facts
    _refuse_descriptor(cat, monkeypatch, again.descriptor_doc)
    path = tmp_path / "runs.db"
    assert _rows(path, "SELECT count(*) FROM descriptors") == [(1,)]
    assert _rows(path, "SELECT run_id FROM run_facts") == [(1,)]
    assert cat[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0]


def test_a_descriptor_of_new_facts_failing_is_rolled_back_whole(cat, tmp_path, monkeypatch):
    """New facts are many rows: the descriptor has a savepoint, which undoes them too."""
    bundle = compose_run(metadata={"sample": "Ni"})
    cat.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys=NUMBER)
    _refuse_descriptor(cat, monkeypatch, desc.descriptor_doc)
    path = tmp_path / "runs.db"
    for table in ("descriptors", "run_facts", "fact_sets", "facts"):
        assert _rows(path, f"SELECT count(*) FROM {table}") == [(0,)], table
    cat.insert("descriptor", desc.descriptor_doc)
    cat.flush()
    assert _rows(path, "SELECT count(*) FROM run_facts") == [(1,)]
    assert _rows(path, "SELECT count(*) FROM facts")[0][0] > 0
