"""What the SQL store does differently on PostgreSQL: connections, batched writes, page reads.

The schema and most SQL are shared with SQLite (:mod:`runbroker.store.sql`). PostgreSQL is a
server, so every statement is a network round trip (tens of microseconds, plus the driver's
own work): a document that SQLite stores with five statements at no cost costs five round
trips here. This module holds the PostgreSQL forms that do the same work in fewer of them:

* a start or stop document and its flattened metadata rows (and the full-text row) in one
  statement (a data-modifying ``WITH``, the rows passed as arrays);
* the store's statements prepared once per connection and sent through a :class:`Session`,
  which sends what nobody waits for (page rows, a document's savepoint) together with the
  next statement or COMMIT, in one round trip (libpq pipeline mode);
* the pages of a read a few per ``SELECT ... WHERE id = ANY(...)``, in binary format;
* reader connections in autocommit (no ``BEGIN``/``ROLLBACK`` around each read) and checked
  for life only after they have been idle (see :func:`make_engine`).
"""

from __future__ import annotations

import re
import select
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine

from ..errors import MissingDependencyError

try:
    import psycopg
    from psycopg import pq
    from psycopg.adapt import Transformer
except ImportError:
    # The driver comes with the `postgres` extra: without it SQLite and folder catalogs work,
    # and opening a postgresql:// URL says what to install (make_engine).
    psycopg = None

__all__ = [
    "INSERT_START",
    "LOCK_DESCRIPTOR",
    "PING_AFTER",
    "SET_STOP",
    "Rows",
    "Session",
    "dump",
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
    if psycopg is None:
        raise MissingDependencyError(
            "opening a PostgreSQL catalog needs the psycopg driver, which is not installed: "
            "pip install 'runbroker[postgres]'"
        )
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


_PAGE_BLOBS = {
    False: "SELECT id, data FROM pages WHERE id = ANY(%s)",
    True: "SELECT id, data, extra FROM pages WHERE id = ANY(%s)",
}


# Pages fetched per query: the driver holds a query's whole result while it hands it over,
# so reading a long stream this many pages at a time bounds that copy (pages are <= 16 MB).
_PAGES_PER_QUERY = 4


def page_blobs(conn: Any, page_ids: list[int], extra: bool) -> dict[int, tuple[bytes, ...]]:
    """page id -> (data,) or (data, extra) of those of ``page_ids`` that exist.

    A few pages per round trip, in binary format: a blob arrives as its bytes, not
    hex-encoded at twice the size.
    """
    raw = conn.connection.driver_connection
    out: dict[int, tuple[bytes, ...]] = {}
    with raw.cursor(binary=True) as cur:
        for i in range(0, len(page_ids), _PAGES_PER_QUERY):
            cur.execute(_PAGE_BLOBS[extra], (list(page_ids[i : i + _PAGES_PER_QUERY]),))
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


# -- statements on the wire ------------------------------------------------------------------
#
# psycopg's cursors spend about as long in Python per statement as a local round trip takes,
# and cannot send a savepoint together with the statement it protects. The store's hot
# statements therefore run through a Session: prepared once per connection, parameters sent
# in text (bytes in binary), results read in binary, and a pending savepoint sent in the same
# round trip (libpq pipeline mode) as the first statement that follows it.

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


def _array(values: Iterable[Any]) -> str:
    """A one-dimensional PostgreSQL array literal."""
    items = []
    for v in values:
        if v is None:
            items.append("NULL")
        elif isinstance(v, str):
            items.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(v, bool):
            items.append("t" if v else "f")
        else:
            items.append(_number(v))
    return "{" + ",".join(items) + "}"


def _number(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))  # shortest exact form; "inf", "nan" are read as such
    if isinstance(v, np.generic):
        return _number(v.item())
    raise TypeError(f"cannot send {v!r} ({type(v).__name__}) to PostgreSQL as a number")


def dump(value: Any) -> tuple[bytes | None, int]:
    """A parameter as (bytes, format): text (0), or binary (1) for bytes.

    Example:
        >>> dump(3), dump(0.1), dump(True), dump(None), dump(b"ab"), dump(["a\\"b", None, 1])
        ((b'3', 0), (b'0.1', 0), (b't', 0), (None, 0), (b'ab', 1), (b'{"a\\\\"b",NULL,1}', 0))
    """
    if value is None:
        return None, 0
    if isinstance(value, str):
        if "\x00" in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode(), 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), 1
    if isinstance(value, (bool, np.bool_)):
        return (b"t" if value else b"f"), 0
    if isinstance(value, (list, tuple)):
        text = _array(value)
        if "\x00" in text:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return text.encode(), 0
    return _number(value).encode(), 0


class Rows:
    """The rows of one statement, as a DBAPI cursor would give them."""

    def __init__(self, rows: list[tuple], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows


# Transaction control, prepared like the store's statements: the server then parses and
# plans none of them again (a document's savepoint and release cost it ~3 µs less).
_BEGIN: list[tuple[str, Sequence[Any]]] = [("BEGIN", ())]
_COMMIT: list[tuple[str, Sequence[Any]]] = [("COMMIT", ())]
_SAVEPOINT: list[tuple[str, Sequence[Any]]] = [("SAVEPOINT rb_document", ())]
_RELEASE: list[tuple[str, Sequence[Any]]] = [("RELEASE SAVEPOINT rb_document", ())]


class Session:
    """One psycopg connection's prepared statements, and what waits to go with the next
    round trip: statements whose results nobody waits for (page rows), and the savepoint of
    the document being written.

    Use :func:`session` to get the one of a connection. Everything that runs a statement on
    the connection some other way must call :meth:`send_pending` first (the store's writer
    engine does so for SQLAlchemy's statements).
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.pg = raw.pgconn
        self._names: dict[str, bytes] = {}  # statement -> name of its prepared form
        self._loader = Transformer(raw)
        self._deferred: list[tuple[str, Sequence[Any]]] = []
        # The savepoint of the document being written: asked for and not yet sent, and
        # whether one exists in the open transaction (the previous document's).
        self.savepoint_pending = False
        self.savepoint_exists = False

    def new_transaction(self) -> None:
        """Forget what belonged to a transaction that has ended."""
        self.savepoint_pending = self.savepoint_exists = False
        self._deferred.clear()

    def savepoint(self) -> None:
        """Mark where the next document's writes begin. Sent with its first statement."""
        self.savepoint_pending = True

    def defer(self, sql: str, params: Sequence[Any]) -> None:
        """Run ``sql`` with the next round trip (its errors are raised by that one)."""
        self._deferred.append((sql, params))

    def send_pending(self) -> None:
        """Send deferred statements and a pending savepoint now, unless the transaction has
        failed already (then nothing more can run in it: it will be rolled back)."""
        if not (self._deferred or self.savepoint_pending):
            return
        if self.pg.transaction_status == pq.TransactionStatus.INERROR:
            self.new_transaction()
            return
        self._run([])

    def commit(self) -> None:
        """Commit, with the deferred statements in the same round trip."""
        self.savepoint_pending = False  # nothing follows it
        if self._deferred or self.pg.transaction_status != pq.TransactionStatus.IDLE:
            self._run([], commit=True)
        self.new_transaction()

    def execute(self, sql: str, params: Sequence[Any]) -> Rows:
        """Run ``sql`` (``$n`` parameters) after what is pending, in one round trip."""
        return self.run([(sql, params)])

    def run(self, statements: list[tuple[str, Sequence[Any]]]) -> Rows:
        """Run statements one after the other in one round trip; the last one's rows."""
        out = self._run(statements)
        assert out is not None
        return out

    def _run(
        self,
        statements: list[tuple[str, Sequence[Any]]],
        retried: bool = False,
        commit: bool = False,
    ) -> Rows | None:
        pg = self.pg
        # One entry per command of the pipeline: what it is, how to send it, its statement.
        commands: list[tuple[str, Callable[..., None], tuple, str | None]] = []
        if not self.raw.autocommit and pg.transaction_status == pq.TransactionStatus.IDLE:
            if (self.raw.isolation_level, self.raw.read_only, self.raw.deferrable) != (None,) * 3:
                raise NotImplementedError("transaction options on a runbroker write connection")
            self._statements(commands, "begin", _BEGIN)
        deferred, self._deferred = self._deferred, []
        try:
            self._statements(commands, "deferred", deferred)
            if self.savepoint_pending:
                if self.savepoint_exists:
                    self._statements(commands, "release", _RELEASE)
                self._statements(commands, "savepoint", _SAVEPOINT)
            self._statements(commands, "statement", statements)
            if commit:
                self._statements(commands, "commit", _COMMIT)
        except BaseException:
            # A parameter that cannot be sent (a NUL in text) stops the round trip before
            # anything goes: the statements named for it were never prepared on the server
            # (a later use of the name would fail), and the deferred rows still wait.
            self._forget_unsent(commands)
            self._deferred = deferred + self._deferred
            raise
        results = self._pipeline(commands)
        failed = None
        for i, r in enumerate(results):
            if r.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
                failed = i
                break
        kinds = [c[0] for c in commands]
        if "savepoint" in kinds and (failed is None or failed > kinds.index("savepoint")):
            self.savepoint_pending, self.savepoint_exists = False, True
        if failed is not None:
            self._forget_unsent(commands[failed:])  # never made by the server
            error = psycopg.errors.error_from_result(
                results[failed], encoding=self.raw.info.encoding
            )
            if isinstance(error, psycopg.errors.InvalidSqlStatementName):
                # Deallocated behind our back (DEALLOCATE ALL, DISCARD ALL): prepare anew,
                # and run again if nothing has run yet (the BEGIN failed, or the first
                # statement in autocommit).
                self._names.clear()
                if not retried and (
                    kinds[failed] == "begin" or (self.raw.autocommit and not deferred)
                ):
                    self._deferred = deferred + self._deferred
                    return self._run(statements, retried=True, commit=commit)
            raise error
        if not statements:
            return None
        last = results[len(kinds) - 1 - kinds[::-1].index("statement")]
        if not last.ntuples:
            return Rows([], int(last.command_tuples or 0))
        self._loader.set_pgresult(last)
        return Rows(self._loader.load_rows(0, last.ntuples, tuple), int(last.command_tuples or 0))

    def _forget_unsent(self, commands: list) -> None:
        """Forget the prepared names that ``commands`` would have made: they were not sent."""
        for kind, _, _, sql in commands:
            if kind == "prepare":
                self._names.pop(sql, None)

    def _statements(
        self, commands: list, kind: str, statements: list[tuple[str, Sequence[Any]]]
    ) -> None:
        """Add the commands that prepare (first time) and run ``statements``."""
        pg = self.pg
        names = self._names
        for sql, params in statements:
            name = names.get(sql)
            if name is None:
                name = names[sql] = f"rb_{len(names)}".encode()
                commands.append(("prepare", pg.send_prepare, (name, sql.encode()), sql))
            if params:
                values, formats = [], []
                for p in params:
                    v, f = dump(p)
                    values.append(v)
                    formats.append(f)
                commands.append((kind, pg.send_query_prepared, (name, values, formats, 1), sql))
            else:
                commands.append((kind, pg.send_query_prepared, (name, None, None, 1), sql))

    def _pipeline(self, commands: list[tuple[str, Callable[..., None], tuple, Any]]) -> list[Any]:
        """Send commands in one pipeline and return one result per command."""
        pg = self.pg
        pg.enter_pipeline_mode()
        try:
            for _, send, args, _ in commands:
                send(*args)
            pg.pipeline_sync()
            if pg.flush():
                self._flush()
            results = []
            get_result = pg.get_result
            for _ in commands:
                result = self._next()
                results.append(result)
                # The end of this command's results: one None, once the input holds it.
                if pg.is_busy() or get_result() is not None:
                    while self._next() is not None:
                        pass
            sync = self._next()
            assert sync is not None and sync.status == pq.ExecStatus.PIPELINE_SYNC
            return results
        finally:
            pg.exit_pipeline_mode()

    def _flush(self) -> None:
        pg = self.pg
        while pg.flush():  # more to send: wait without holding the GIL
            if _wait(pg.socket, write=True):
                pg.consume_input()

    def _next(self) -> Any:
        pg = self.pg
        while pg.is_busy():
            _wait(pg.socket)
            pg.consume_input()
        return pg.get_result()


if hasattr(select, "poll"):

    def _wait(fd: int, write: bool = False) -> bool:
        """Wait until ``fd`` can be read (or written, with ``write``); whether it can be
        read. poll(), unlike select(), takes descriptors numbered 1024 and above (a process
        with many files open)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
        while True:
            ready = 0
            for _, happened in poller.poll():
                ready |= happened
            if ready:
                # A closed or failed socket counts as readable: libpq reads what happened.
                return bool(ready & (select.POLLIN | select.POLLHUP | select.POLLERR))

else:  # Windows, whose select() takes any socket

    def _wait(fd: int, write: bool = False) -> bool:
        readable, _, _ = select.select([fd], [fd] if write else [], [])
        return bool(readable)


_sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session(raw: Any) -> Session:
    """The :class:`Session` of a psycopg connection (made on first use)."""
    found = _sessions.get(raw)
    if found is None or found.pg is not raw.pgconn:
        found = _sessions[raw] = Session(raw)
    return found
