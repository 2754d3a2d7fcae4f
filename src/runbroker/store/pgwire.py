"""The wire protocol of the PostgreSQL store: statements prepared once per connection and sent
in libpq pipeline mode, with what nobody waits for (page rows, a document's savepoint) going
along with the next round trip.

This is the one module that imports the psycopg driver; :func:`runbroker.store.prepared.session`
imports it when the first PostgreSQL connection needs its :class:`Session`, so that
``import runbroker`` (and every command of the CLI) does not pay for a driver that SQLite
and folder catalogs never use.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

__all__ = ["Rows", "Session", "dump"]

# -- statements on the wire ------------------------------------------------------------------------
#
# psycopg's cursors spend about as long in Python per statement as a local round trip takes,
# and cannot send a savepoint together with the statement it protects. The store's hot
# statements therefore run through a Session: prepared once per connection, parameters sent
# in text (bytes in binary), results read in binary, and a pending savepoint sent in the same
# round trip (libpq pipeline mode) as the first statement that follows it.


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


# What makes the connection's socket worth reading: data, or an error or hang-up that
# consume_input then reports.
_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP


def _wait(fd: int, events: int) -> int:
    """Wait until ``fd`` is ready for ``events``; the events that came. poll, not select:
    select() refuses a descriptor numbered 1024 or more, which a process holding many files
    (a server, a long test run) hands to its new connections."""
    poller = select.poll()
    poller.register(fd, events)
    return poller.poll()[0][1]


class Rows:
    """The rows of one statement, as a DBAPI cursor would give them."""

    def __init__(self, rows: list[tuple], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)


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
            if _wait(pg.socket, select.POLLIN | select.POLLOUT) & _READABLE:
                pg.consume_input()

    def _next(self) -> Any:
        pg = self.pg
        while pg.is_busy():
            _wait(pg.socket, select.POLLIN)
            pg.consume_input()
        return pg.get_result()
