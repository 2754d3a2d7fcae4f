"""The PostgreSQL dialect of the SQL store (see :mod:`runbroker.store.dialects`).

PostgreSQL is a server, so every statement is a network round trip (tens of microseconds,
plus the driver's own work): a document that SQLite stores with five statements at no cost
costs five round trips here. :class:`PostgreSQL` does the same work in fewer of them:

* a start or stop document and its metadata rows (and full-text row) in one statement;
* statements prepared once per connection and sent through a
  :class:`~runbroker.store.pgwire.Session`, which sends what nobody waits for (page rows, a
  document's savepoint) with the next statement or COMMIT, in one round trip;
* the pages of a read a few per ``SELECT``, in binary format;
* readers in autocommit, checked for life only after they have been idle (see
  :meth:`PostgreSQL.engine`).

This module does not import the psycopg driver: :mod:`runbroker.store.pgwire` does, when the
first PostgreSQL connection is made.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, bindparam, create_engine, event, exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from ..errors import MissingDependencyError
from . import jsoncodec
from .flatten import fulltext, meta_rows
from .prepared import Prepared, session, sessions
from .tags import DDL as TAG_DDL

if TYPE_CHECKING:
    from .sql import SQLStore

__all__ = ["PING_AFTER", "PostgreSQL", "meta_arrays", "session"]

# A pooled connection idle for longer than this is checked with a round trip before use
# (a server restart or a dropped network link is noticed then); busier ones are not.
PING_AFTER = 1.0


class PostgreSQL:
    """A catalog in a PostgreSQL database, shared by many processes; the methods are those
    of :class:`~runbroker.store.dialects.SQLite`.

    Example:
        >>> PostgreSQL().max_savepoints
        60
    """

    name = "postgresql"
    # Documents per transaction at most (each has a savepoint): PostgreSQL keeps the first 64
    # subtransactions of a transaction where other sessions check them cheaply.
    max_savepoints = 60
    # Every document has its savepoint: it goes with the document's first statement, in the
    # same round trip, and costs the server no page copies.
    unguarded: dict = {}
    owns_database = False
    schema_ddl = (
        "CREATE TABLE IF NOT EXISTS runs_fts (run_id INTEGER PRIMARY KEY, content TEXT)",
        "CREATE INDEX IF NOT EXISTS ix_runs_fts ON runs_fts "
        "USING GIN (to_tsvector('simple', content))",
        # Page blobs are numbers that do not compress: spare PostgreSQL from trying.
        "ALTER TABLE pages ALTER COLUMN data SET STORAGE EXTERNAL, "
        "ALTER COLUMN extra SET STORAGE EXTERNAL",
        *TAG_DDL["postgresql"],
    )

    def engine(self, uri: str, writer: bool, store: SQLStore) -> Engine:
        """A pooled engine (a small pool per process: many processes share one server).

        Readers run every statement in autocommit: a single SELECT sees one consistent
        snapshot anyway, and a returned connection has no transaction to roll back (one
        ``ROLLBACK`` round trip less per read). Instead of ``pool_pre_ping`` (a round trip at
        every checkout), a connection idle for more than :data:`PING_AFTER` seconds is
        pinged, and one the driver knows is broken dropped. Writers commit with
        ``synchronous_commit`` off for ``durability="batch"``, on for ``"event"``.
        """
        # The driver comes with the `postgres` extra: without it SQLite and folder catalogs
        # work. It is imported here, when a PostgreSQL catalog is opened, not with runbroker.
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "opening a PostgreSQL catalog needs the psycopg driver, which is not installed: "
                "pip install 'runbroker[postgres]'"
            ) from None
        options: dict[str, Any] = {"pool_size": store.pool_size, "max_overflow": store.max_overflow}
        if writer:
            # psycopg deallocates every prepared statement of a connection after a ROLLBACK
            # (of a refused document, too) if it prepared any itself: let only the Session.
            options["connect_args"] = {"prepare_threshold": None}
        else:
            options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
        engine = create_engine(uri, **options)
        synchronous_commit = "on" if store.durability == "event" else "off"

        @event.listens_for(engine, "checkout")
        def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            idle_since = record.info.get("idle_since")
            if getattr(dbapi_conn, "broken", False):
                raise exc.DisconnectionError("connection lost")
            if idle_since is not None and time.monotonic() - idle_since > PING_AFTER:
                try:
                    dbapi_conn.execute("SELECT 1")
                    if not dbapi_conn.autocommit:
                        dbapi_conn.rollback()
                except Exception as err:
                    # The pool discards this connection and hands out another one.
                    raise exc.DisconnectionError(f"connection lost: {err}") from err

        @event.listens_for(engine, "checkin")
        def _checkin(_dbapi_conn: Any, record: Any) -> None:
            record.info["idle_since"] = time.monotonic()

        if writer:

            @event.listens_for(engine, "connect")
            def _connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.autocommit = True
                dbapi_conn.execute(f"SET synchronous_commit TO {synchronous_commit}")
                dbapi_conn.autocommit = False

            @event.listens_for(engine, "before_cursor_execute")
            @event.listens_for(engine, "commit")
            def _before(conn: Any, *_args: Any) -> None:
                # A statement that does not go through the connection's Session (SQLAlchemy's
                # own, COMMIT) must still come after what the Session holds back.
                found = sessions.get(conn.connection.driver_connection)
                if found is not None:
                    found.send_pending()

            @event.listens_for(engine, "rollback")
            def _rollback(conn: Any) -> None:
                found = sessions.get(conn.connection.driver_connection)
                if found is not None:
                    found.new_transaction()

        return engine

    def lock(self, conn: Connection, key: int) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")

    # Each statement is a round trip: a document's savepoint (and the release of the previous
    # one's) goes with its first statement, in the same round trip, and COMMIT releases the
    # last (see pgwire.Session).

    def begun(self, raw: Any) -> None:
        session(raw).new_transaction()

    def savepoint(self, raw: Any) -> None:
        session(raw).savepoint()

    def release(self, raw: Any) -> None:
        pass

    def undo(self, raw: Any) -> None:
        found = session(raw)
        if found.savepoint_pending:
            # Nothing of this document reached the server (refused before its first write).
            found.savepoint_pending = False
        elif found.savepoint_exists:
            raw.execute("ROLLBACK TO SAVEPOINT rb_document")
        # Otherwise the savepoint itself failed: the transaction is lost, and the error says
        # so at the next commit, as for any failed write outside a document.

    def commit(self, raw: Any) -> None:
        # The last pages and COMMIT in one round trip (SQLAlchemy's commit then finds the
        # transaction over and only closes its own books).
        session(raw).commit()

    def insert_start(self, conn: Connection, params: dict, doc: dict) -> int | None:
        # Run, metadata and full-text rows in one round trip.
        params.update(meta_arrays(meta_rows("start", doc)), fulltext=fulltext(doc))
        row = _INSERT_START.execute(conn, params).fetchone()
        return None if row is None else row[0]

    def set_stop(self, conn: Connection, run_id: int, doc: dict) -> bool:
        # Stop and metadata rows in one round trip.
        params = {"run_id": run_id, "stop": jsoncodec.dumps(doc), "time": doc["time"]}
        params.update(meta_arrays(meta_rows("stop", doc)))
        return _SET_STOP.execute(conn, params).fetchone() is not None

    def set_fulltext(self, conn: Connection, run_id: int, content: str) -> None:
        conn.execute(
            text("UPDATE runs_fts SET content = :c WHERE run_id = :r"), {"c": content, "r": run_id}
        )

    def stored_max(self, conn: Connection, descriptor_id: int) -> int:
        # Writers of one descriptor take turns (a lock held to the end of the transaction),
        # so the count sees every page. One round trip: the statements run one after the
        # other, and the second reads the database as it is once the lock is held.
        rows = session(conn.connection.driver_connection).run(
            [(_LOCK_DESCRIPTOR, [descriptor_id]), (_MAX_SEQ, [descriptor_id])]
        )
        return rows.fetchone()[0] or 0

    def pages_to_merge(
        self, conn: Connection, descriptor_id: int, below: int
    ) -> tuple[list[tuple[int, int]], dict[int, tuple]]:
        # The list and the blobs of the small pages in one round trip.
        found = session(conn.connection.driver_connection).execute(
            _PAGES_TO_MERGE, [descriptor_id, below]
        )
        rows = found.fetchall()
        return [(i, n) for i, n, *_ in rows], {r[0]: r[2:] for r in rows if r[1] < below}

    def delete_pages(self, conn: Connection, ids: list[int]) -> None:
        # Nothing waits for these: they go with the next round trip.
        session(conn.connection.driver_connection).defer(_DELETE_PAGES, [ids])

    def page_blobs(
        self, conn: Connection, run_uid: str, page_ids: list[int], extra: bool
    ) -> dict[int, tuple[bytes, ...]]:
        # A few pages per round trip, in binary format: a blob arrives as its bytes, not
        # hex-encoded at twice the size.
        raw = conn.connection.driver_connection
        out: dict[int, tuple[bytes, ...]] = {}
        with raw.cursor(binary=True) as cur:  # type: ignore[union-attr]
            for i in range(0, len(page_ids), _PAGES_PER_QUERY):
                batch = list(page_ids[i : i + _PAGES_PER_QUERY])
                cur.execute(_PAGE_BLOBS[extra], (batch, run_uid))
                out.update((row[0], row[1:]) for row in cur.fetchall())
        return out

    def probe(self, rows: Select) -> Select:
        # OFFSET 0 keeps PostgreSQL from turning the test into a join over every hit (which
        # it prefers when it underestimates them): it must probe run by run.
        return rows.offset(0)

    def regex(self, column: Any, pattern: str, case_sensitive: bool) -> ColumnElement[bool]:
        return column.op("~" if case_sensitive else "~*")(pattern)

    def fulltext(self, tokens: list[str]) -> Any:
        phrase = " & ".join("'" + t.replace("'", "''") + "'" for t in tokens)
        return text(
            "SELECT run_id FROM runs_fts "
            "WHERE to_tsvector('simple', content) @@ to_tsquery('simple', :fts)"
        ).bindparams(bindparam("fts", phrase, unique=True))


# Only pages of the named run are found (the Store contract: ids of another run are gone).
_IN_RUN = " AND run_id = (SELECT id FROM runs WHERE uid = %s)"
_PAGE_BLOBS = {
    False: "SELECT id, data FROM pages WHERE id = ANY(%s)" + _IN_RUN,
    True: "SELECT id, data, extra FROM pages WHERE id = ANY(%s)" + _IN_RUN,
}
# Pages fetched per query: the driver holds a query's whole result while it hands it over,
# so reading a long stream this many pages at a time bounds that copy (pages are <= 16 MB).
_PAGES_PER_QUERY = 4
# Writers of one descriptor take turns writing its pages (held to the end of the transaction).
_LOCK_DESCRIPTOR = "SELECT pg_advisory_xact_lock($1)"
_MAX_SEQ = "SELECT max(seq_max) FROM pages WHERE descriptor_id = $1"
# A descriptor's pages in seq order, with the blobs of those smaller than $2 events.
_PAGES_TO_MERGE = (
    "SELECT id, n, ord, n, CASE WHEN n < $2 THEN data END, CASE WHEN n < $2 THEN extra END "
    "FROM pages WHERE descriptor_id = $1 ORDER BY seq_min, id"
)
_DELETE_PAGES = "DELETE FROM pages WHERE id = ANY($1)"


# Flattened metadata rows (see runbroker.store.flatten) as arrays, one per column. Integers
# and floats travel apart and become NUMERIC as a row-by-row INSERT would make them: integers
# exactly, floats through PostgreSQL's own float8 -> numeric conversion.
_META_FROM_ARRAYS = (
    "INSERT INTO meta (run_id, key, elem, typ, num, txt) "
    "SELECT {source}.id, kv.key, kv.elem, kv.typ, coalesce(kv.i, kv.f::numeric), kv.txt "
    "FROM {source}, unnest(CAST(:keys AS text[]), CAST(:elems AS bool[]), "
    "CAST(:typs AS text[]), CAST(:ints AS numeric[]), CAST(:floats AS float8[]), "
    "CAST(:txts AS text[])) AS kv(key, elem, typ, i, f, txt)"
)

# A start document: its run, metadata and full-text rows in one statement. No row comes back
# when the uid is stored already (a repeat, or another writer at the same moment): the caller
# then compares with the stored copy.
_INSERT_START = Prepared(
    text(
        "WITH r AS (INSERT INTO runs (uid, time, scan_id, start) "
        "VALUES (:uid, :time, :scan_id, :start) ON CONFLICT (uid) DO NOTHING "
        "RETURNING id), "
        f"m AS ({_META_FROM_ARRAYS.format(source='r')}), "
        "f AS (INSERT INTO runs_fts (run_id, content) SELECT id, :fulltext FROM r) "
        "SELECT id FROM r"
    )
)

# A stop document and its metadata rows, unless the run has a stop already (no row back).
_SET_STOP = Prepared(
    text(
        "WITH s AS (UPDATE runs SET stop = :stop, stop_time = :time "
        "WHERE id = :run_id AND stop IS NULL RETURNING id), "
        f"m AS ({_META_FROM_ARRAYS.format(source='s')}) "
        "SELECT id FROM s"
    )
)


def meta_arrays(rows: Iterable[tuple[str, bool, str, Any, Any]]) -> dict[str, list]:
    """Flattened metadata rows as the column arrays of the statements storing a start or
    stop document with them.

    Example:
        >>> from runbroker.store.flatten import flatten
        >>> arrays = meta_arrays(flatten("start", {"a": 1, "b": 0.5, "c": "x"}))
        >>> arrays["keys"], arrays["ints"], arrays["floats"], arrays["txts"]
        (['start.a', 'start.b', 'start.c'], [1, None, None], [None, 0.5, None], [None, None, 'x'])
    """
    keys, elems, typs, nums, txts = (list(c) for c in list(zip(*rows, strict=True)) or [()] * 5)
    ints = [None if isinstance(n, float) else n for n in nums]
    floats = [n if isinstance(n, float) else None for n in nums]
    return {
        "keys": keys,
        "elems": elems,
        "typs": typs,
        "ints": ints,
        "floats": floats,
        "txts": txts,
    }
