"""One SQLAlchemy Core schema for every SQL database runbroker stores runs in.

Event data never gets a row per event: ``pages`` holds one row per block of events of one
descriptor, with the block's columns encoded by :mod:`runbroker.store.pages`. ``meta`` is a
flattened, indexed view of each run's start and stop documents so that any metadata query is
an index lookup inside the database. Every row that is replayed by ``documents()`` carries
``ord``, its position in the run's insertion order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# Bumped by each migration in store/migrations/versions that older runbroker versions could
# not work with (which also records it in runbroker_info), so that opening a catalog needs no
# alembic machinery. Revision 0003 (no foreign key on meta) left it at 2.
SCHEMA_VERSION = 2

# Text compared with < and > (uids, metadata strings) sorts by code point in every database,
# as the query semantics say; PostgreSQL would otherwise follow the server's locale.
OrderedText = Text().with_variant(Text(collation="C"), "postgresql")


class ExactNumber(TypeDecorator):
    """A NUMERIC column whose values reach the driver untouched, so integers stay exact.

    SQLAlchemy's own Numeric turns bound ints into floats, and 2**53 + 1 would equal 2**53.
    """

    impl = Numeric
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None

    def result_processor(self, dialect: Any, coltype: Any) -> None:
        return None


metadata = MetaData()

info = Table(
    "runbroker_info",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "uid",
        String(128).with_variant(String(128, collation="C"), "postgresql"),
        nullable=False,
        unique=True,
    ),
    Column("time", Float, nullable=False),
    Column("scan_id", ExactNumber()),
    Column("start", LargeBinary, nullable=False),
    Column("stop", LargeBinary),
    Column("stop_time", Float),
    # The start as corrected by notes (runbroker.notes.corrected), NULL for a run never
    # corrected: read with ``start``, so searches need no join (migration 0005).
    Column("corrected", LargeBinary),
    Index("ix_runs_time_uid", "time", "uid"),
    Index("ix_runs_stop_time", "stop_time"),
    Index("ix_runs_scan_id", "scan_id", "time", "uid"),
)

descriptors = Table(
    "descriptors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(128), nullable=False, unique=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
    Column("ord", BigInteger, nullable=False),
    Column("name", String(256), nullable=False),
    Column("time", Float, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

pages = Table(
    "pages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("descriptor_id", Integer, ForeignKey("descriptors.id"), nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("ord", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("seq_min", BigInteger, nullable=False),
    Column("seq_max", BigInteger, nullable=False),
    # True when the page's seq_nums strictly increase: readers then need not sort it.
    Column("ordered", Boolean, nullable=False),
    # Columns read by stream.read(): time, seq_num and the data fields.
    Column("data", LargeBinary, nullable=False),
    # Columns only replay needs: uids, per-field timestamps, filled flags.
    Column("extra", LargeBinary, nullable=False),
    Index("ix_pages_descriptor", "descriptor_id", "seq_min"),
    Index("ix_pages_run_ord", "run_id", "ord"),
)

# resource, stream_resource, stream_datum and datum_page documents, stored whole.
documents = Table(
    "documents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(128), nullable=True, unique=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("ord", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_documents_run_ord", "run_id", "ord"),
)

# One row per datum so that datum ids are unique and can be resolved without a scan.
datums = Table(
    "datums",
    metadata,
    Column("datum_id", String(256), primary_key=True),
    Column("document_id", Integer, ForeignKey("documents.id"), nullable=False),
    Column("resource", String(128), nullable=False),
)

# Flattened start/stop metadata: one row per (nested) key, and one per list element.
meta = Table(
    "meta",
    metadata,
    # No foreign key: a run's rows are written by the statement that writes the run (or its
    # stop), and PostgreSQL would check each of them (migration 0003).
    Column("run_id", Integer, nullable=False),
    Column("key", String(512), nullable=False),
    Column("elem", Boolean, nullable=False),
    # s(tring) n(umber) b(ool) z(null) l(ist) d(ict)
    Column("typ", String(1), nullable=False),
    # NUMERIC, not FLOAT: integers stay exact integers (2**53 + 1 is not 2**53).
    Column("num", ExactNumber()),
    Column("txt", OrderedText),
    # Covering indexes: an equality or range test on a key never touches the table.
    Index("ix_meta_txt", "key", "txt", "typ", "elem", "run_id"),
    Index("ix_meta_num", "key", "num", "typ", "elem", "run_id"),
    Index("ix_meta_run", "run_id"),
)

# Time-ordered postings of the metadata keys that have an index of their own (tag_keys; see
# runbroker.store.tags): each of their meta rows again, with its run's time and uid, so that
# the newest runs holding one value (a proposal) are read in order and a page stops after
# its last run, however rare the value. Filled by a trigger on meta, whoever writes.
tags = Table(
    "tags",
    metadata,
    Column("run_id", Integer, nullable=False),
    Column("key", String(512), nullable=False),
    Column("elem", Boolean, nullable=False),
    Column("typ", String(1), nullable=False),
    Column("num", ExactNumber()),
    Column("txt", OrderedText),
    Column("time", Float, nullable=False),
    Column(
        "uid", String(128).with_variant(String(128, collation="C"), "postgresql"), nullable=False
    ),
    Index("ix_tags_txt", "key", "typ", "elem", "txt", "time", "uid", "run_id"),
    Index("ix_tags_num", "key", "typ", "elem", "num", "time", "uid", "run_id"),
    Index("ix_tags_run", "run_id"),
)

tag_keys = Table(
    "tag_keys",
    metadata,
    Column("key", String(512), primary_key=True),
)

# Every revision of every note on a run (runbroker.notes), one JSON record per row; the
# current notes' searchable rows are in ``meta`` under keys starting "@" (runbroker.store.notes).
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("note", String(128), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    # Two writers revising one note at once: the second is refused here at the latest.
    UniqueConstraint("note", "revision", name="uq_notes_note_revision"),
    Index("ix_notes_run", "run_id", "id"),
)

# Per-stream, per-field statistics of each stopped run (runbroker.store.stats), one row per
# field with a column per statistic (migration 0006): a run's stop writes a few rows, not a
# metadata row per statistic. ``field`` is a 64-bit hash of ``key``, the JSON list [stream,
# field] (runbroker.store.stats.field_key); field 0, key "", marks a run with statistics but
# no field, or computed with detector files read (count 1). The table is its primary key
# (run, field) alone: a stopping run's rows go at its end, into the page the previous run
# wrote. Every other index costs each stop its rows again, at places spread over the index
# (with text keys, several times the insert itself): a Field test probes a run's row by its
# primary key as the search walks the runs newest first, or, when few runs may match,
# reads the table.
field_stats = Table(
    "field_stats",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("field", BigInteger, primary_key=True, autoincrement=False),
    Column("key", String(512), nullable=False),
    # NUMERIC, like meta.num: integer statistics stay exact.
    Column("count", ExactNumber()),
    Column("nan", ExactNumber()),
    Column("sum", ExactNumber()),
    Column("min", ExactNumber()),
    Column("max", ExactNumber()),
    Column("mean", ExactNumber()),
    sqlite_with_rowid=False,
)

# Hardware facts of descriptors (runbroker.hardware: devices, configuration readings, data-key
# properties), kept once per distinct set (runbroker.store.hardwarerows). The runs of one plan
# have the same facts: a set's rows are written by the first descriptor that has them, and
# each further descriptor adds one row to ``run_facts``. A set's id is a 64-bit hash of its
# rows, so writers in different processes agree on it without asking each other.
fact_sets = Table(
    "fact_sets",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
)
facts = Table(
    "facts",
    metadata,
    Column("set_id", BigInteger, nullable=False),
    Column("key", String(512), nullable=False),
    Column("typ", String(1), nullable=False),
    Column("num", ExactNumber()),
    Column("txt", OrderedText),
    # A fact's sets by value (text facts have no number: their range is at NULL), and a
    # set's facts, for a search testing run by run.
    Index("ix_facts_value", "key", "typ", "num", "txt", "set_id"),
    Index("ix_facts_set", "set_id", "key"),
)
run_facts = Table(
    "run_facts",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("set_id", BigInteger, primary_key=True, autoincrement=False),
    Index("ix_run_facts_set", "set_id", "run_id"),
    sqlite_with_rowid=False,
)
