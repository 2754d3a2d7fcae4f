"""SQLAlchemy Core statements compiled once and run straight on the DBAPI cursor.

The schema and the SQL stay in SQLAlchemy Core (one definition for every database), but the
ingest hot path cannot afford SQLAlchemy's per-execution work (~100 µs: cache keys, result
objects) when a run of a few documents must be stored in well under a millisecond. A
``Prepared`` statement is compiled for the connection's dialect the first time it is used;
after that an execution costs what the driver costs.

Only statements whose parameters need no type conversion belong here (ints, floats,
strings, bytes, bools).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement

if TYPE_CHECKING:
    from .pgwire import Session

__all__ = ["Prepared", "numbered", "session", "sessions"]


class Prepared:
    """A Core statement with named parameters, run on the raw driver connection.

    Example:
        >>> from sqlalchemy import create_engine, insert, select, bindparam
        >>> from runbroker.store.schema import info, metadata
        >>> engine = create_engine("sqlite://")
        >>> metadata.create_all(engine)
        >>> put = Prepared(insert(info), ["key", "value"])
        >>> get = Prepared(select(info.c.value).where(info.c.key == bindparam("key")))
        >>> with engine.begin() as conn:
        ...     _ = put.execute(conn, {"key": "a", "value": "1"})
        ...     get.execute(conn, {"key": "a"}).fetchone()
        ('1',)
    """

    def __init__(self, statement: ClauseElement, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.keys = list(keys) if keys is not None else None
        self._compiled: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {}
        # dialect -> what turns a tuple in ``keys`` order into the driver's parameters
        self._from_tuple: dict[str, Callable[[tuple], Any] | None] = {}

    def _sql(self, conn: Connection) -> tuple[str, Callable[[dict[str, Any]], Any]]:
        """The SQL for the connection's dialect, and what turns named parameters into the
        driver's (a tuple in the statement's order, for positional drivers and PostgreSQL's
        numbered ``$1``)."""
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.keys)
            order: tuple[str, ...] | None = None
            if dialect.name == "postgresql":
                sql, names = numbered(compiled.string)
                order = tuple(names)
                found = (sql, _getter(order))
            elif compiled.positional:
                order = tuple(compiled.positiontup)
                found = (compiled.string, _getter(order))
            else:
                found = (compiled.string, lambda params: params)
            if self.keys is not None:
                self._from_tuple[dialect.name] = _reorder(self.keys, order)
            self._compiled[dialect.name] = found
        return found

    def execute(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Run once; returns a DBAPI cursor or alike (``fetchone()``, ``fetchall()``,
        ``rowcount``).

        On PostgreSQL the statement runs through the connection's
        :class:`~runbroker.store.pgwire.Session` (prepared on first use, after a pending
        savepoint) and its rows come back already fetched.
        """
        raw = conn.connection.driver_connection
        sql, arguments = self._sql(conn)
        if conn.dialect.name == "postgresql":
            return session(raw).execute(sql, arguments(params))
        cur = raw.cursor()  # type: ignore[union-attr]
        cur.execute(sql, arguments(params))
        return cur

    def executemany(
        self, conn: Connection, rows: Sequence[dict[str, Any]] | Sequence[tuple], ordered=False
    ) -> None:
        """Run once per row of parameters (``ordered``: each row a tuple of the values of
        ``keys``, in their order, which saves building a dict per row).

        On PostgreSQL the rows go with the connection's next round trip (the next statement
        or COMMIT), and an error they cause is raised there.
        """
        raw = conn.connection.driver_connection
        sql, arguments = self._sql(conn)
        if ordered:
            arguments = self._from_tuple[conn.dialect.name]
        params = rows if arguments is None else map(arguments, rows)
        if conn.dialect.name == "postgresql":
            found = session(raw)
            for p in params:
                found.defer(sql, p)
            return
        cur = raw.cursor()  # type: ignore[union-attr]
        cur.executemany(sql, params)
        cur.close()

    def insert_rows(self, conn: Connection, rows: Sequence[tuple], per_statement: int = 64) -> None:
        """Run an ``INSERT ... VALUES`` for ``rows`` (tuples of the values of ``keys``, in
        their order); on SQLite ``per_statement`` rows to a statement, whose one execution
        costs about what one row's does (a fifth less per row of the ``field_stats`` table).

        Example:
            >>> from sqlalchemy import create_engine, insert, select
            >>> from runbroker.store.schema import info, metadata
            >>> engine = create_engine("sqlite://")
            >>> metadata.create_all(engine)
            >>> put = Prepared(insert(info), ["key", "value"])
            >>> with engine.begin() as conn:
            ...     put.insert_rows(conn, [(str(i), "v") for i in range(5)], per_statement=2)
            ...     conn.execute(select(info.c.key)).scalars().all()
            ['0', '1', '2', '3', '4']
        """
        sql, _ = self._sql(conn)
        full = len(rows) // per_statement * per_statement
        if conn.dialect.name != "sqlite" or self._from_tuple["sqlite"] is not None or not full:
            self.executemany(conn, rows, ordered=True)
            return
        head, values = sql.rsplit(" VALUES ", 1)
        many = f"{head} VALUES {', '.join([values] * per_statement)}"
        chunks = (
            list(chain.from_iterable(rows[i : i + per_statement]))
            for i in range(0, full, per_statement)
        )
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.executemany(many, chunks)
        cur.close()
        if full < len(rows):
            self.executemany(conn, rows[full:], ordered=True)


def _reorder(keys: Sequence[str], order: tuple[str, ...] | None) -> Callable[[tuple], Any] | None:
    """What turns a tuple of values in ``keys`` order into the driver's parameters; None:
    the tuple itself (the statement takes them in that order)."""
    if order is None:  # named parameters
        return lambda row: dict(zip(keys, row, strict=True))
    if order == tuple(keys):
        return None
    where = {key: i for i, key in enumerate(keys)}
    return _getter(tuple(where[name] for name in order))  # type: ignore[arg-type]


def _getter(order: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple]:
    """Named parameters as a tuple in ``order`` (built by ``itemgetter`` in C: thousands of
    rows an ingest)."""
    if not order:
        return lambda params: ()
    if len(order) == 1:
        key = order[0]
        return lambda params: (params[key],)
    return itemgetter(*order)


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


#: The :class:`~runbroker.store.pgwire.Session` of each psycopg connection that has one.
sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session(raw: Any) -> Session:
    """The :class:`~runbroker.store.pgwire.Session` of a psycopg connection (made on first
    use)."""
    found = sessions.get(raw)
    if found is None or found.pg is not raw.pgconn:
        from .pgwire import Session  # imports psycopg: only once a connection exists

        found = sessions[raw] = Session(raw)
    return found
