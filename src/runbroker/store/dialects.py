"""What differs between the databases the SQL store keeps runs in: one object per database.

:class:`~runbroker.store.sql.SQLStore` picks its dialect once, from its URL
(:func:`dialect_of`), and asks it for whatever is not the same SQL everywhere: engines,
savepoints, storing start and stop documents with their metadata rows, reading and merging
pages, regular expressions and full-text search. :class:`SQLite` here is the reference;
:class:`~runbroker.store.pgsql.PostgreSQL` has the same methods.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import (
    Connection,
    Select,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler as SQLiteBaseCompiler
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from ..errors import ReadOnlyMediumError, UnknownSchemeError
from . import jsoncodec
from .flatten import fulltext, meta_rows
from .hardwarerows import fact_set
from .pgsql import PostgreSQL
from .prepared import Prepared
from .schema import meta, pages, runs
from .tags import DDL as TAG_DDL

if TYPE_CHECKING:
    from .sql import SQLStore

__all__ = ["SQLITE", "Dialect", "SQLite", "dialect_of"]

# "ON CONFLICT DO NOTHING" (the same in SQLite and PostgreSQL): when two writers store the same
# run at once (a retried RunEngine), the second finds the first's row -- after waiting for its
# commit -- and compares, instead of failing on the unique index.
#
# "OR FAIL": a statement that fails stops where it is instead of undoing itself, so SQLite
# keeps no statement journal for it (a copy of each 16 KiB page the statement changes, taken
# anew for every row: a start's metadata rows cost three times their insert). Each such
# statement writes one row, checked before anything is written, or is undone by the caller
# (SQLite.insert_start, SQLite.set_stop, SQLite.unguarded) or by a savepoint around it.
_INSERT_RUN = Prepared(
    text(
        "INSERT OR FAIL INTO runs (uid, time, scan_id, start) "
        "VALUES (:uid, :time, :scan_id, :start) ON CONFLICT (uid) DO NOTHING RETURNING id"
    )
)
_INSERT_META = Prepared(
    insert(meta).prefix_with("OR FAIL"), ["run_id", "key", "elem", "typ", "num", "txt"]
)
_SET_STOP = Prepared(
    update(runs)
    .prefix_with("OR FAIL")
    .where(runs.c.id == bindparam("rid"), runs.c.stop.is_(None))
    .values(stop=bindparam("new_stop"), stop_time=bindparam("new_time"))
)
#: The highest seq_num stored for a descriptor.
MAX_SEQ = Prepared(select(func.max(pages.c.seq_max)).where(pages.c.descriptor_id == bindparam("d")))
_INSERT_FTS5 = Prepared(
    text("INSERT OR FAIL INTO runs_fts(rowid, content) VALUES (:run_id, :content)")
)

# What a WAL file is cut back to when a checkpoint lets it start over: without a limit it
# keeps the size of the largest transaction ever written, and the writer, which judges the
# checkpoint it owes by the file's size, would checkpoint at every commit after a big ingest.
WAL_KEPT = 64 * 2**20

# Undoing a start or a stop without a savepoint: its rows are found by their run. The
# metadata rows of indexed keys that the trigger on meta copied into tags go with them.
_STOP_KEYS = "key >= 'stop.' AND key < 'stop/'"  # '/' follows '.': every key "stop.*"
_UNDO_START = [
    Prepared(text(sql))
    for sql in (
        "DELETE FROM meta WHERE run_id = :r",
        "DELETE FROM tags WHERE run_id = :r",
        "DELETE FROM runs_fts WHERE rowid = :r",
        "DELETE FROM runs WHERE id = :r",
    )
]
_UNSET_STOP = [
    Prepared(text(sql))
    for sql in (
        "UPDATE runs SET stop = NULL, stop_time = NULL WHERE id = :r",
        f"DELETE FROM meta WHERE run_id = :r AND {_STOP_KEYS}",
        f"DELETE FROM tags WHERE run_id = :r AND {_STOP_KEYS}",
    )
]
_DELETE_STATS = Prepared(text("DELETE FROM field_stats WHERE run_id = :r"))
_DELETE_DESCRIPTOR = Prepared(text("DELETE FROM descriptors WHERE id = :d"))
_DESCRIPTOR_BODIES = Prepared(text("SELECT body FROM descriptors WHERE run_id = :r"))
_DELETE_LINK = Prepared(text("DELETE FROM run_facts WHERE run_id = :r AND set_id = :s"))


def _insert_meta(conn: Connection, run_id: int, rows: list[tuple]) -> None:
    if rows:
        _INSERT_META.executemany(conn, [(run_id, *row) for row in rows], ordered=True)


def _undo(conn: Connection, statements: list[Prepared], run_id: int) -> None:
    """Run ``statements`` to undo a document's writes to run ``run_id``, unless SQLite has
    rolled the whole transaction back (an I/O error, a full disk): the undoing is done then,
    and writing now would write outside the transaction."""
    if conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        for statement in statements:
            statement.execute(conn, {"r": run_id}).close()


def _undo_start(conn: Connection, run_id: int) -> None:
    """Delete run ``run_id`` and its rows: its start was refused or failed after its run row
    was written (a run new in this document: every row of it is the start's)."""
    _undo(conn, _UNDO_START, run_id)


def _undo_stop(conn: Connection, run_id: int) -> None:
    """Undo the stop of run ``run_id`` and its statistics, the run having begun in the open
    transaction (so no other writer, nor a note, wrote statistics for it)."""
    _undo(conn, [*_UNSET_STOP, _DELETE_STATS], run_id)


def _undo_descriptor(conn: Connection, written: tuple[int, int, dict | None]) -> None:
    """Delete descriptor ``written[1]`` of run ``written[0]``, and the run's link to the
    facts of ``written[2]`` (None: it has none) unless another descriptor of the run has the
    same. Its facts' set was stored before it (see SQLWriting._undo_for): it stays."""
    run_id, descriptor_id, doc = written
    if not conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        return  # SQLite rolled everything back (see _undo)
    _DELETE_DESCRIPTOR.execute(conn, {"d": descriptor_id}).close()
    if doc is None:
        return
    set_id = fact_set(doc)[0]
    bodies = _DESCRIPTOR_BODIES.execute(conn, {"r": run_id}).fetchall()
    if all(fact_set(jsoncodec.loads(body))[0] != set_id for (body,) in bodies):
        _DELETE_LINK.execute(conn, {"r": run_id, "s": set_id}).close()


class SQLiteCompiler(SQLiteBaseCompiler):
    """SQLAlchemy's SQLite compiler, plus table hints (``INDEXED BY``), which it drops."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class SQLite:
    """A catalog in one SQLite file (or in memory), written by one process at a time.

    Its methods are what every dialect has; write connections are passed as ``conn``
    (SQLAlchemy's) or ``raw`` (the driver's).

    Example:
        >>> dialect_of("sqlite:///runs.db").name
        'sqlite'
    """

    name = "sqlite"
    #: Documents written per transaction at most (each has a savepoint of its own).
    max_savepoints = math.inf
    #: Documents written without a savepoint, and how to undo one from what the store noted
    #: it wrote (``SQLWriting._written``): a savepoint copies every page the document changes
    #: (16 KiB each) into a journal, most of a small run's ingest time, while the rows of a
    #: start, a descriptor (of known facts) and a stop (in a run begun in the open
    #: transaction) are found again by their run. The store decides when a document
    #: qualifies (:meth:`~runbroker.store.sqlwrite.SQLWriting._undo_for`).
    unguarded = {"start": _undo_start, "descriptor": _undo_descriptor, "stop": _undo_stop}
    #: A database that holds a catalog holds nothing else: other tables mean it is not one.
    owns_database = True
    #: Statements that complete a new catalog's schema.
    schema_ddl = (
        "CREATE VIRTUAL TABLE IF NOT EXISTS runs_fts USING fts5("
        "content, tokenize='unicode61 remove_diacritics 0')",
        *TAG_DDL["sqlite"],
    )

    def engine(self, uri: str, writer: bool, store: SQLStore) -> Engine:
        """An engine for ``store``'s catalog at ``uri``: one that writes, or one that reads."""
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 60}}
        memory, readonly = uri == "sqlite://", store.readonly
        if readonly and uri.startswith("sqlite:///"):
            uri = _readonly_url(Path(uri.removeprefix("sqlite:///")))
        if memory:
            kwargs["poolclass"] = StaticPool
        if not writer:
            # Reads run in autocommit, so a returned connection has nothing to roll back.
            kwargs["pool_reset_on_return"] = None
        engine = create_engine(uri, **kwargs)
        engine.dialect.statement_compiler = SQLiteCompiler  # renders INDEXED BY
        sync = "FULL" if store.durability == "event" else "NORMAL"

        # The listeners must not hold the store: the committer thread keeps a connection of
        # this engine, and through it the store would never be freed if it were not closed.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin hook (below) decide how transactions start.
            dbapi_conn.isolation_level = None
            dbapi_conn.create_function("regexp", 2, _regexp, deterministic=True)
            cur = dbapi_conn.cursor()
            if not memory and not readonly:
                # Only takes effect when the file is created: 16 KiB pages read page blobs
                # several times faster than the 4 KiB default (shorter overflow chains).
                cur.execute("PRAGMA page_size=16384")
                cur.execute("PRAGMA journal_mode=WAL")
            for pragma in (
                f"synchronous={sync}",
                "busy_timeout=60000",
                "cache_size=-65536",
                # Readers map the file; the writer does not: the file grows at every
                # checkpoint, and each growth remapped it and faulted its pages in again
                # (small-run ingest was ~10% slower with the map).
                f"mmap_size={2**30 if not writer else 0}",
                "temp_store=MEMORY",
                # Checkpoints (copying the WAL into the database, with fsync) are run by
                # the committer thread, beside ingest, instead of inside a commit.
                "wal_autocheckpoint=0",
                f"journal_size_limit={WAL_KEPT}",
            ):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock up front so two writers never deadlock on upgrade;
            # readers run each statement in autocommit (a single SELECT is consistent).
            if writer or memory:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def lock(self, conn: Connection, key: int) -> None:
        """Make other writers taking lock ``key`` wait until this transaction ends (SQLite's
        writers take the whole database's lock as they begin)."""

    # -- a document's savepoint, and the write transaction around it ---------------------------

    def begun(self, raw: Any) -> None:
        """A transaction began on the write connection."""

    def savepoint(self, raw: Any) -> None:
        """Mark where the next document's writes begin."""
        raw.execute("SAVEPOINT rb_document")

    def release(self, raw: Any) -> None:
        """The document is written: forget its savepoint."""
        raw.execute("RELEASE rb_document")

    def undo(self, raw: Any) -> None:
        """Roll back what the document being written wrote, after it was refused."""
        raw.execute("ROLLBACK TO rb_document")
        raw.execute("RELEASE rb_document")

    def commit(self, raw: Any) -> None:
        """Called before the write transaction commits."""

    # -- writing ---------------------------------------------------------------------------------

    def insert_start(self, conn: Connection, params: dict, doc: dict) -> int | None:
        """Insert a run (``params``: its uid, time, scan_id, start) with its metadata and
        full-text rows; return its id, or None if the uid is stored already (a repeat, or
        another writer at the same moment). A failure leaves nothing written."""
        # The rows first: whatever fails in them fails before the document's first write.
        rows, content = meta_rows("start", doc), fulltext(doc)
        row = _INSERT_RUN.execute(conn, params).fetchone()
        if row is None:
            return None
        try:
            _insert_meta(conn, row[0], rows)
            _INSERT_FTS5.execute(conn, {"run_id": row[0], "content": content})
        except BaseException:
            _undo_start(conn, row[0])
            raise
        return row[0]

    def set_stop(self, conn: Connection, run_id: int, doc: dict) -> bool:
        """Store the run's stop document and its metadata rows; False if it has one. A
        failure leaves nothing written."""
        rows = meta_rows("stop", doc)  # before the first write, as in insert_start
        params = {"rid": run_id, "new_stop": jsoncodec.dumps(doc), "new_time": doc["time"]}
        if _SET_STOP.execute(conn, params).rowcount == 0:
            return False
        try:
            _insert_meta(conn, run_id, rows)
        except BaseException:
            _undo(conn, _UNSET_STOP, run_id)
            raise
        return True

    def set_fulltext(self, conn: Connection, run_id: int, content: str) -> None:
        """Replace the run's full-text row (its start was corrected)."""
        conn.execute(text("DELETE FROM runs_fts WHERE rowid = :r"), {"r": run_id})
        _INSERT_FTS5.execute(conn, {"run_id": run_id, "content": content})

    def stored_max(self, conn: Connection, descriptor_id: int) -> int:
        """The highest seq_num stored for the descriptor, once no other writer can add one
        until this transaction ends (SQLite: the writer holds the database's lock)."""
        return MAX_SEQ.execute(conn, {"d": descriptor_id}).fetchone()[0] or 0

    def pages_to_merge(
        self, conn: Connection, descriptor_id: int, below: int
    ) -> tuple[list[tuple[int, int]], dict[int, tuple]]:
        """The descriptor's pages (id, n) in seq order, and (ord, n, data, extra) of those
        smaller than ``below`` events if they come with the list at no cost (else none)."""
        listing = conn.execute(
            select(pages.c.id, pages.c.n)
            .where(pages.c.descriptor_id == descriptor_id)
            .order_by(pages.c.seq_min, pages.c.id)
        ).all()
        return listing, {}

    def delete_pages(self, conn: Connection, ids: list[int]) -> None:
        """Delete pages ``ids`` (merged into another)."""
        conn.execute(delete(pages).where(pages.c.id.in_(ids)))

    # -- reading and searching -------------------------------------------------------------------

    def page_blobs(
        self, conn: Connection, run_uid: str, page_ids: list[int], extra: bool
    ) -> dict[int, tuple[bytes, ...]] | None:
        """page id -> (data,) or (data, extra) of those of ``page_ids`` that are pages of run
        ``run_uid``, if reading several at once pays; None: read them one by one."""
        return None

    def probe(self, rows: Select) -> Select:
        """``rows``, a metadata test, made for a search to run run by run."""
        return rows

    def regex(self, column: Any, pattern: str, case_sensitive: bool) -> ColumnElement[bool]:
        """``column`` matches the regular expression ``pattern`` (Python's syntax)."""
        # The regexp() function is registered on every connection (Python's re).
        return column.op("REGEXP")(("" if case_sensitive else "(?i)") + pattern)

    def fulltext(self, tokens: list[str]) -> Any:
        """The ids of the runs whose text holds every word of ``tokens``."""
        phrase = " AND ".join('"' + t.replace('"', '""') + '"' for t in tokens)
        # unique=True: two searches of words in one statement must not share a parameter.
        return text("SELECT rowid FROM runs_fts WHERE runs_fts MATCH :fts").bindparams(
            bindparam("fts", phrase, unique=True)
        )


def _readonly_url(path: Path) -> str:
    """The URL that reads the catalog file ``path`` without writing it: on read-only folders
    and media as ``immutable`` (SQLite then needs no ``-shm`` file beside it).

    Example:
        >>> _readonly_url(Path("/data/runs.db"))
        'sqlite:///file:/data/runs.db?mode=ro&uri=true'
    """
    target = f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true"
    try:
        medium = os.statvfs(path.parent).f_flag & os.ST_RDONLY
    except OSError:
        return target
    if not medium and os.access(path.parent, os.W_OK):
        return target
    wal = Path(f"{path}-wal")
    if wal.is_file() and wal.stat().st_size and not Path(f"{path}-shm").is_file():
        raise ReadOnlyMediumError(
            f"{str(path)!r} is on a read-only folder and its log {wal.name!r} holds commits "
            f"not yet copied into it, which SQLite cannot read without writing {path.name}-shm "
            "beside it: open it once where it can be written (closing it folds the log in), "
            "or copy the catalog with its -wal file to a writable folder"
        )
    # Nothing is written there, so nothing changes under us: immutable skips all locking.
    return target + "&immutable=1"


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _regexp(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and _regex(pattern).search(value) is not None


SQLITE = SQLite()
#: What every dialect is (they have the same methods).
Dialect = SQLite | PostgreSQL
_DIALECTS: dict[str, Dialect] = {"sqlite": SQLITE, "postgresql": PostgreSQL()}


def dialect_of(uri: str) -> Dialect:
    """The dialect of the database at ``uri`` (a SQLAlchemy URL).

    Example:
        >>> dialect_of("sqlite://").name, dialect_of("postgresql://h/db").name
        ('sqlite', 'postgresql')
    """
    name = uri.split(":", 1)[0].split("+", 1)[0]
    found = _DIALECTS.get(name)
    if found is None:
        raise UnknownSchemeError(
            f"runbroker keeps SQL catalogs in SQLite or PostgreSQL, not {name!r} "
            "(a URL starting sqlite:// or postgresql://)"
        )
    return found
