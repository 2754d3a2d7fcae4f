"""What the SQL store does differently on PostgreSQL (runbroker.store.pgsql), checked there.

On PostgreSQL a document's savepoint travels with the document's first statement, the hot
statements are prepared per connection, readers run in autocommit, and pooled connections
are checked for life only after idling. These tests are about those mechanisms, so they run
on PostgreSQL alone; the behaviour they protect is tested on every store elsewhere.
"""

from __future__ import annotations

import os
import time

import numpy as np
import psycopg
import pytest
from event_model import compose_run

import runbroker
from runbroker.store import pgsql
from runbroker.testing.stores import stores_except

POSTGRES_ONLY = stores_except(
    "sqlite",
    "folder",
    "http",
    reason="PostgreSQL's savepoints, prepared statements and pooled sessions",
)
DATA_KEYS = {"x": {"dtype": "number", "shape": [], "source": "sim:x"}}


def _run(cat: runbroker.Catalog, **md) -> tuple:
    run = compose_run(metadata=md)
    desc = run.compose_descriptor(name="primary", data_keys=DATA_KEYS)
    cat.insert("start", run.start_doc)
    cat.insert("descriptor", desc.descriptor_doc)
    return run, desc


def _sql(cat: runbroker.Catalog, query: str) -> list[tuple]:
    url = cat.store.uri.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


@POSTGRES_ONLY
def test_a_document_the_server_refuses_undoes_only_itself(catalog):
    """Refused by PostgreSQL itself (a uid longer than the column), mid-transaction."""
    first, desc = _run(catalog, sample="Ni")
    catalog.insert("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}))
    too_long = dict(compose_run().start_doc, uid="u" * 200)
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        catalog.insert("start", too_long)
    # The transaction goes on: later documents are stored, earlier ones are kept.
    catalog.insert("stop", first.compose_stop())
    second, _ = _run(catalog, sample="Cu")
    catalog.insert("stop", second.compose_stop())
    catalog.flush()
    other = runbroker.open(catalog.store.uri, readonly=True)
    try:
        assert [r.start["sample"] for r in other.values()] == ["Cu", "Ni"]
        assert other[first.start_doc["uid"]].primary.read()["x"].values.tolist() == [1.0]
        assert other[first.start_doc["uid"]].stop["exit_status"] == "success"
    finally:
        other.close()


@POSTGRES_ONLY
def test_a_document_refused_before_it_reaches_the_server_keeps_the_transaction(catalog):
    """A NUL character cannot be sent: nothing of the document (not even its savepoint)
    was sent, and the documents before and after it are stored."""
    first, _ = _run(catalog, sample="Ni")
    with pytest.raises(psycopg.DataError, match="NUL"):
        catalog.insert("start", compose_run(metadata={"sample": "a\x00b"}).start_doc)
    catalog.insert("stop", first.compose_stop())
    second, _ = _run(catalog, sample="Cu")
    catalog.flush()
    assert sorted(r.start["sample"] for r in catalog.values()) == ["Cu", "Ni"]
    assert catalog[first.start_doc["uid"]].stop is not None
    assert catalog[second.start_doc["uid"]].stop is None


@POSTGRES_ONLY
def test_a_parameter_that_cannot_be_sent_leaves_no_name_unprepared_and_no_row_behind(catalog):
    """A NUL stops a round trip while it is being built: the statement named for it was never
    prepared (its next use once failed with 'prepared statement "rb_5" does not exist', now
    and then, as the test above shows), and the rows deferred before it still go."""
    url = catalog.store.uri.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as raw:
        raw.execute("CREATE TEMP TABLE t (v text)")
        s = pgsql.session(raw)
        s.defer("INSERT INTO t VALUES ($1)", ["kept"])
        insert = "INSERT INTO t VALUES ($1) RETURNING v"
        with pytest.raises(psycopg.DataError, match="NUL"):
            s.execute(insert, ["a\x00b"])
        assert s.execute(insert, ["ok"]).fetchall() == [("ok",)]
        assert s.execute("SELECT v FROM t ORDER BY v", ()).fetchall() == [("kept",), ("ok",)]


@POSTGRES_ONLY
def test_many_documents_in_one_transaction_stay_within_the_subtransaction_cache(catalog):
    """Each document has a savepoint (a subtransaction): a transaction is committed before
    it holds more than PostgreSQL keeps where other sessions check them cheaply (64)."""
    catalog.store.flush_interval = 3600.0  # only the document count may end a transaction
    runs = [compose_run(metadata={"i": i}) for i in range(150)]
    for run in runs:
        catalog.insert("start", run.start_doc)
    other = runbroker.open(catalog.store.uri, readonly=True)
    try:
        # Committed in transactions of at most 60 documents; the rest is still pending.
        assert len(other) == 120
    finally:
        other.close()
    catalog.flush()
    assert len(catalog) == 150


@POSTGRES_ONLY
def test_metadata_rows_are_those_of_a_row_by_row_insert(catalog):
    """Start and stop metadata travel as arrays: values come out as one INSERT per row
    made them (integers exact, floats through PostgreSQL's float8 -> numeric)."""
    big = 2**62 + 1
    run = compose_run(
        metadata={
            "n": big,
            "f": 0.1,
            "inf": float("inf"),
            "nan": float("nan"),
            "flag": True,
            "s": 'quote " back\\slash, {brace}',
            "items": [1, "two", None, 2.5],
            "nested": {"deep": {"v": -3}},
        }
    )
    catalog.insert("start", run.start_doc)
    catalog.insert("stop", run.compose_stop())
    catalog.flush()
    rows = dict(
        ((key, elem, typ), (num, txt))
        for key, elem, typ, num, txt in _sql(
            catalog, "SELECT key, elem, typ, num::text, txt FROM meta"
        )
    )
    assert rows["start.n", False, "n"] == (str(big), None)
    assert rows["start.f", False, "n"] == ("0.1", None)
    assert rows["start.inf", False, "n"] == ("Infinity", None)
    assert rows["start.nan", False, "n"] == (None, None)
    assert rows["start.flag", False, "b"] == ("1", None)
    assert rows["start.s", False, "s"] == (None, 'quote " back\\slash, {brace}')
    assert rows["start.items", True, "s"] == (None, "two")
    assert rows["start.items", True, "z"] == (None, None)
    assert rows["start.items", True, "n"] in {("1", None), ("2.5", None)}
    assert rows["start.nested.deep.v", False, "n"] == ("-3", None)
    assert rows["stop.exit_status", False, "s"] == (None, "success")
    for query in (
        runbroker.queries.Key("n") == big,
        runbroker.queries.Key("s") == 'quote " back\\slash, {brace}',
        runbroker.queries.Contains("items", "two"),
        runbroker.queries.Key("nested.deep.v") < 0,
    ):
        assert len(catalog.search(query)) == 1, query


@POSTGRES_ONLY
def test_a_read_sends_its_selects_and_nothing_else(catalog, tmp_path):
    """Readers run in autocommit and are not pinged while busy: no BEGIN, ROLLBACK or
    SELECT 1 around the statements of a read (each would be one more round trip)."""
    run, desc = _run(catalog)
    catalog.insert("event_page", desc.compose_event_page(
        data={"x": list(np.arange(10.0))}, timestamps={"x": [0.0] * 10},
        seq_num=list(range(1, 11)), time=[0.0] * 10,
    ))  # fmt: skip
    catalog.insert("stop", run.compose_stop())
    catalog.flush()
    reader = runbroker.open(catalog.store.uri, readonly=True)
    try:
        uid = reader[-1].uid  # the pool now holds a connection
        with reader.store._engine.connect() as conn:
            pgconn = conn.connection.driver_connection.pgconn
        trace = tmp_path / "trace"
        with open(trace, "w") as f:
            pgconn.trace(f.fileno())
            try:
                values = reader[uid].primary.read()["x"].values.tolist()
            finally:
                pgconn.untrace()
        assert values == list(np.arange(10.0))
        sent = [line for line in trace.read_text().splitlines() if "\tF\t" in line]
        text = "\n".join(sent)
        assert "pages" in text, text  # the read went through this connection
        for word in ('"BEGIN"', '"ROLLBACK"', '"SELECT 1"'):
            assert word not in text, text
    finally:
        reader.close()


@POSTGRES_ONLY
def test_a_pooled_connection_the_server_dropped_is_replaced_after_idling(catalog, monkeypatch):
    _run(catalog, sample="Ni")
    catalog.flush()
    reader = runbroker.open(catalog.store.uri, readonly=True)
    try:
        assert len(reader) == 1  # a pooled connection now exists
        with reader.store._engine.connect() as conn:
            pid = conn.connection.driver_connection.info.backend_pid
        _sql(catalog, f"SELECT pg_terminate_backend({pid})")
        monkeypatch.setattr(pgsql, "PING_AFTER", 0.0)
        time.sleep(0.01)
        assert len(reader) == 1  # pinged, found dead, replaced: no error
        assert reader[-1].start["sample"] == "Ni"
    finally:
        reader.close()


@pytest.mark.parametrize("durability, setting", [("batch", "off"), ("event", "on")])
@POSTGRES_ONLY
def test_commits_promise_what_sqlite_does_in_the_same_mode(make_catalog, durability, setting):
    """batch: commits do not wait for the disk (SQLite: synchronous=NORMAL); event: they do
    (synchronous=FULL). Readers keep the server's own setting."""
    cat = make_catalog(durability=durability)
    conn = cat.store._conn().connection.driver_connection
    assert conn.execute("SHOW synchronous_commit").fetchone() == (setting,)
    with cat.store._engine.connect() as reader:
        assert reader.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


@POSTGRES_ONLY
def test_statements_deallocated_between_transactions_are_prepared_again(catalog):
    """The writer's statements, BEGIN and SAVEPOINT included, are prepared once per
    connection; a DEALLOCATE ALL between transactions (a pooler's reset) costs a retry,
    not a document."""
    first, desc = _run(catalog, sample="Ni")
    catalog.flush()
    raw = catalog.store._conn().connection.driver_connection
    raw.execute("DEALLOCATE ALL")
    raw.commit()
    catalog.insert("event", desc.compose_event(data={"x": 2.0}, timestamps={"x": 0.0}))
    catalog.insert("stop", first.compose_stop())
    second, _ = _run(catalog, sample="Cu")
    catalog.flush()
    assert sorted(r.start["sample"] for r in catalog.values()) == ["Cu", "Ni"]
    assert catalog[first.start_doc["uid"]].primary.read()["x"].values.tolist() == [2.0]
    assert catalog[second.start_doc["uid"]].stop is None


@POSTGRES_ONLY
def test_a_connection_with_a_descriptor_above_1023_reads_and_writes(make_catalog):
    """select() cannot watch descriptors from 1024 on; a process with many files open (a
    server) gives such numbers to its new connections, which must work all the same."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 1100, "the test needs 1100 descriptors"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    held = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        cat = make_catalog()  # its connections get descriptors above 1030
        run, desc = _run(cat, sample="Ni")
        cat.insert("event", desc.compose_event(data={"x": 1.5}, timestamps={"x": 0.0}, seq_num=1))
        cat.insert("stop", run.compose_stop())
        assert cat[run.start_doc["uid"]].primary.read()["x"].values.tolist() == [1.5]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
