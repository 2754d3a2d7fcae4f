"""What the SQL store does differently on PostgreSQL: connections, batched writes, page reads.

The schema and most SQL are shared with SQLite (:mod:`runbroker.store.sql`). PostgreSQL is a
server, so every statement is a network round trip (tens of microseconds, plus the driver's
own work): a document that SQLite stores with five statements at no cost costs five round
trips here. This module holds the PostgreSQL forms that do the same work in fewer of them:

* a start or stop document and its flattened metadata rows (and the full-text row) in one
  statement (a data-modifying ``WITH``, the rows passed as arrays);
* the store's statements prepared once per connection and sent through a
  :class:`~runbroker.store.pgwire.Session`, which sends what nobody waits for (page rows, a
  document's savepoint) together with the next statement or COMMIT, in one round trip (libpq
  pipeline mode);
* the pages of a read a few per ``SELECT ... WHERE id = ANY(...)``, in binary format;
* reader connections in autocommit (no ``BEGIN``/``ROLLBACK`` around each read) and checked
  for life only after they have been idle (see :func:`make_engine`).

This module does not import the psycopg driver: :mod:`runbroker.store.pgwire` does, when the
first PostgreSQL connection is made.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine

from ..errors import MissingDependencyError

if TYPE_CHECKING:
    from .pgwire import Session

__all__ = [
    "INSERT_START",
    "LOCK_DESCRIPTOR",
    "PING_AFTER",
    "SET_STOP",
    "make_engine",
    "meta_arrays",
    "numbered",
    "page_blobs",
    "session",
]

# A pooled connection idle for longer than this is checked with a round trip before use
# (a server restart or a dropped network link is noticed then); busier ones are not.
PING_AFTER = 1.0


def make_engine(
    uri: str, *, writer: bool, pool_size: int, max_overflow: int, synchronous_commit: str = "on"
) -> Engine:
    """A pooled engine for a PostgreSQL catalog.

    Readers run every statement in autocommit: a single SELECT sees one consistent snapshot
    anyway, and a returned connection then has no transaction to roll back (SQLAlchemy would
    otherwise send ``ROLLBACK``, one more round trip per read). Instead of SQLAlchemy's
    ``pool_pre_ping`` (a round trip at every checkout), a connection is pinged when it has
    been idle for more than :data:`PING_AFTER` seconds, and dropped if the driver already
    knows it is broken. Writers' sessions commit with ``synchronous_commit`` set as given
    (``"off"`` for the store's ``durability="batch"``, see :class:`~runbroker.store.sql.SQLStore`).

    Example:
        >>> engine = make_engine("postgresql+psycopg://u@h/db", writer=False,
        ...                      pool_size=2, max_overflow=0)
        >>> engine.pool.size()
        2
    """
    # The driver comes with the `postgres` extra: without it SQLite and folder catalogs work.
    # It is imported here, when a PostgreSQL catalog is opened, not with runbroker.
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "opening a PostgreSQL catalog needs the psycopg driver, which is not installed: "
            "pip install 'runbroker[postgres]'"
        ) from None
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow}
    if writer:
        # psycopg deallocates every prepared statement of a connection after a ROLLBACK (of a
        # refused document, too) if it prepared any itself: let only the Session prepare.
        options["connect_args"] = {"prepare_threshold": None}
    else:
        options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    engine = create_engine(uri, **options)

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
            found = _sessions.get(conn.connection.driver_connection)
            if found is not None:
                found.send_pending()

        @event.listens_for(engine, "rollback")
        def _rollback(conn: Any) -> None:
            found = _sessions.get(conn.connection.driver_connection)
            if found is not None:
                found.new_transaction()

    return engine


# Only pages of the named run are found (the Store contract: ids of another run are gone).
_IN_RUN = " AND run_id = (SELECT id FROM runs WHERE uid = %s)"
_PAGE_BLOBS = {
    False: "SELECT id, data FROM pages WHERE id = ANY(%s)" + _IN_RUN,
    True: "SELECT id, data, extra FROM pages WHERE id = ANY(%s)" + _IN_RUN,
}


# Pages fetched per query: the driver holds a query's whole result while it hands it over,
# so reading a long stream this many pages at a time bounds that copy (pages are <= 16 MB).
_PAGES_PER_QUERY = 4


def page_blobs(
    conn: Any, run_uid: str, page_ids: list[int], extra: bool
) -> dict[int, tuple[bytes, ...]]:
    """page id -> (data,) or (data, extra) of those of ``page_ids`` that are pages of run
    ``run_uid``.

    A few pages per round trip, in binary format: a blob arrives as its bytes, not
    hex-encoded at twice the size.
    """
    raw = conn.connection.driver_connection
    out: dict[int, tuple[bytes, ...]] = {}
    with raw.cursor(binary=True) as cur:
        for i in range(0, len(page_ids), _PAGES_PER_QUERY):
            batch = list(page_ids[i : i + _PAGES_PER_QUERY])
            cur.execute(_PAGE_BLOBS[extra], (batch, run_uid))
            out.update((row[0], row[1:]) for row in cur.fetchall())
    return out


# Statements in SQLAlchemy's text() form (":name" parameters), for runbroker.store.prepared.
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
INSERT_START = (
    "WITH r AS (INSERT INTO runs (uid, time, scan_id, start) "
    "VALUES (:uid, :time, :scan_id, :start) ON CONFLICT (uid) DO NOTHING "
    "RETURNING id), "
    f"m AS ({_META_FROM_ARRAYS.format(source='r')}), "
    "f AS (INSERT INTO runs_fts (run_id, content) SELECT id, :fulltext FROM r) "
    "SELECT id FROM r"
)

# A stop document and its metadata rows, unless the run has a stop already (no row back).
SET_STOP = (
    "WITH s AS (UPDATE runs SET stop = :stop, stop_time = :time "
    "WHERE id = :run_id AND stop IS NULL RETURNING id), "
    f"m AS ({_META_FROM_ARRAYS.format(source='s')}) "
    "SELECT id FROM s"
)


# Writers of one descriptor take turns writing its pages (held to the end of the transaction).
LOCK_DESCRIPTOR = "SELECT pg_advisory_xact_lock($1)"


def meta_arrays(rows: Iterable[tuple[str, bool, str, Any, Any]]) -> dict[str, list]:
    """Flattened metadata rows as the column arrays of :data:`INSERT_START`/:data:`SET_STOP`.

    Example:
        >>> from runbroker.store.flatten import flatten
        >>> arrays = meta_arrays(flatten("start", {"a": 1, "b": 0.5, "c": "x"}))
        >>> arrays["keys"], arrays["ints"], arrays["floats"], arrays["txts"]
        (['start.a', 'start.b', 'start.c'], [1, None, None], [None, 0.5, None], [None, None, 'x'])
    """
    keys, elems, typs, ints, floats, txts = [], [], [], [], [], []
    for key, elem, typ, num, txt in rows:
        keys.append(key)
        elems.append(elem)
        typs.append(typ)
        is_float = isinstance(num, float)
        ints.append(None if is_float else num)
        floats.append(num if is_float else None)
        txts.append(txt)
    return {
        "keys": keys,
        "elems": elems,
        "typs": typs,
        "ints": ints,
        "floats": floats,
        "txts": txts,
    }


_PARAM = re.compile(r"%\((\w+)\)s|%%")


def numbered(sql: str) -> tuple[str, list[str]]:
    """A pyformat statement (``%(name)s``) in PostgreSQL's own form (``$1``), and the names
    of its parameters in order.

    Example:
        >>> numbered("SELECT %(a)s, %(b)s, %(a)s, 100 %% 7")
        ('SELECT $1, $2, $1, 100 % 7', ['a', 'b'])
    """
    names: list[str] = []

    def number(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, sql), names


_sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session(raw: Any) -> Session:
    """The :class:`~runbroker.store.pgwire.Session` of a psycopg connection (made on first
    use)."""
    found = _sessions.get(raw)
    if found is None or found.pg is not raw.pgconn:
        from .pgwire import Session  # imports psycopg: only once a connection exists

        found = _sessions[raw] = Session(raw)
    return found
