"""Time-ordered postings of indexed metadata keys: the newest runs holding a value, in order.

A caller's scope (its proposals, beamtimes, public runs) matches a small share of a large
catalog, spread over all of it. The ``meta`` index finds those runs, but not in time order:
a newest-first page of them would read every one of them and sort, or walk the runs by
time testing each. ``tags`` holds the ``meta`` rows of the keys that have an index of their
own (``runbroker db index``, recorded in ``tag_keys``) again, each with its run's time and
uid, indexed (key, type, value, time, uid): a page reads each value's newest runs in order,
stops after the page's length, and merges the few lists.

A trigger on ``meta`` fills ``tags`` as metadata rows are written, whoever writes them (any
runbroker version, any write path); :func:`enable` adds keys and backfills their rows.

Example:
    >>> from runbroker.store.sql import SQLStore
    >>> store = SQLStore("sqlite://")
    >>> store.create_index("proposal_id")
    ['proposal_id']
    >>> with store._engine.connect() as conn:
    ...     sorted(tagged(conn))
    ['start.proposal_id']
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    exists,
    insert,
    literal,
    select,
    text,
    tuple_,
    union,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TextualSelect

from .. import queries as q
from .flatten import IN_RUN_COLUMNS, scalar_row
from .keyindex import meta_key
from .schema import meta, runs, tag_keys, tags

__all__ = ["DDL", "MAX_VALUES", "enable", "page", "taggable", "tagged"]

# Statements that keep ``tags`` in step with ``meta``, per database.
DDL = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS tags_from_meta AFTER INSERT ON meta "
        "WHEN NEW.key IN (SELECT key FROM tag_keys) BEGIN "
        "INSERT INTO tags (run_id, key, elem, typ, num, txt, time, uid) "
        "SELECT NEW.run_id, NEW.key, NEW.elem, NEW.typ, NEW.num, NEW.txt, runs.time, runs.uid "
        "FROM runs WHERE runs.id = NEW.run_id; END",
    ),
    # One call per statement (its new rows as a table), not one per row: a run's start
    # writes its metadata rows in one statement.
    "postgresql": (
        "CREATE OR REPLACE FUNCTION runbroker_tags_from_meta() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO tags (run_id, key, elem, typ, num, txt, time, uid) "
        "SELECT n.run_id, n.key, n.elem, n.typ, n.num, n.txt, r.time, r.uid "
        "FROM new_rows n JOIN runs r ON r.id = n.run_id "
        "WHERE n.key IN (SELECT key FROM tag_keys); RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS tags_from_meta ON meta",
        "CREATE TRIGGER tags_from_meta AFTER INSERT ON meta "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION runbroker_tags_from_meta()",
    ),
}

#: A page is read from ``tags`` for at most this many values (one index range each).
MAX_VALUES = 64


def tagged(conn: Connection) -> frozenset[str]:
    """The ``meta`` keys whose rows ``tags`` holds (none in a catalog without the table)."""
    if not conn.dialect.has_table(conn, "tag_keys"):
        return frozenset()
    # Keys searched in a column of runs have no meta rows to copy (the uid's own index
    # serves them).
    return frozenset(conn.execute(select(tag_keys.c.key)).scalars()) - IN_RUN_COLUMNS


def enable(conn: Connection, stored_keys: Iterable[str]) -> None:
    """Keep the rows of these ``meta`` keys in ``tags`` from now on, and copy those written
    already (inside the caller's write transaction). A catalog without the table (not yet
    upgraded) is left as it is."""
    if not conn.dialect.has_table(conn, "tag_keys"):
        return
    new = sorted(set(stored_keys) - tagged(conn))
    if new and conn.dialect.name == "postgresql":
        # Writers of metadata wait until the copy is committed: none slips between the copy
        # and the trigger's first use of the new keys.
        conn.exec_driver_sql("LOCK TABLE meta IN SHARE MODE")
    for key in new:
        conn.execute(insert(tag_keys).values(key=key))
        rows = (
            select(
                meta.c.run_id,
                meta.c.key,
                meta.c.elem,
                meta.c.typ,
                meta.c.num,
                meta.c.txt,
                runs.c.time,
                runs.c.uid,
            )
            .join(runs, runs.c.id == meta.c.run_id)
            .where(meta.c.key == key)
        )
        conn.execute(
            insert(tags).from_select(
                ["run_id", "key", "elem", "typ", "num", "txt", "time", "uid"], rows
            )
        )


# A value test: (stored key, type letter, column, value).
Test = tuple[str, str, str, object]


def taggable(query: q.Query, keys: frozenset[str]) -> list[Test] | None:
    """``query`` as equality tests of tagged keys whose runs it matches (any of them), or
    None when it is not such a test (or has too many values).

    Example:
        >>> taggable(q.In("proposal_id", ("p1", 7)), frozenset({"start.proposal_id"}))
        [('start.proposal_id', 's', 'txt', 'p1'), ('start.proposal_id', 'n', 'num', 7)]
        >>> taggable(q.Key("sample") == "Ni", frozenset({"start.proposal_id"})) is None
        True
    """
    if isinstance(query, q.Or):
        found: list[Test] = []
        for part in query.queries:
            tests = taggable(part, keys)
            if tests is None:
                return None
            found += tests
        return found if len(found) <= MAX_VALUES else None
    if isinstance(query, q.In):
        key, values = query.key, query.values
    elif isinstance(query, q.Comparison) and query.op == "eq":
        key, values = query.key, (query.value,)
    else:
        return None
    stored = meta_key(key)
    if stored not in keys or stored == "start.uid":
        return None
    out: list[Test] = []
    for value in values:
        typ, num, txt = scalar_row(value)  # type: ignore[misc]
        if typ in "nb":
            if num is not None:  # NaN equals nothing
                out.append((stored, typ, "num", num))
        elif typ == "s":
            out.append((stored, typ, "txt", txt))
        else:
            return None  # null, lists, dicts: not index values
    return out if len(out) <= MAX_VALUES else None


def page(
    tests: list[Test],
    rest: ColumnElement[bool],
    wanted: int,
    before: tuple[float, str] | None,
    oldest_first: bool,
) -> tuple[object, ...]:
    """The ids of the first ``wanted`` runs matching any of ``tests`` (and ``rest``, a
    condition on ``runs``), in search order, as (select of ids, its time, its uid) columns
    of a subquery: each key's runs read from its index ranges, at most ``wanted`` of them,
    the lists merged."""
    # One branch per key and type: its values in one IN (an index range each, whose runs
    # the database sorts: few, as a caller's values hold few runs each).
    groups: dict[tuple[str, str, str], list[object]] = {}
    for stored, typ, column, value in tests:
        groups.setdefault((stored, typ, column), []).append(value)
    branches = []
    for (stored, typ, column), values in groups.items():
        col = tags.c[column]
        conds = [
            tags.c.key == literal(stored),
            tags.c.typ == typ,
            tags.c.elem.is_(False),
            col == values[0] if len(values) == 1 else col.in_(values),
        ]
        key = tuple_(tags.c.time, tags.c.uid)
        if before is not None:
            conds.append(key > tuple_(*before) if oldest_first else key < tuple_(*before))
        conds.append(exists(select(runs.c.id).where(runs.c.id == tags.c.run_id, rest)))
        order = (
            (tags.c.time.asc(), tags.c.uid.asc())
            if oldest_first
            else (tags.c.time.desc(), tags.c.uid.desc())
        )
        inner = (
            select(tags.c.run_id, tags.c.time, tags.c.uid)
            .where(and_(*conds))
            .order_by(*order)
            .limit(wanted)
            .subquery()
        )
        branches.append(select(inner.c.run_id, inner.c.time, inner.c.uid))
    merged = union(*branches).subquery()
    return merged, merged.c.run_id, merged.c.time, merged.c.uid


def scope_page(
    tests: list[Test], offset: int, limit: int, before: tuple[float, str] | None, oldest: bool
) -> TextualSelect:
    """The ids of a page of the runs matching any of ``tests`` and nothing else (a caller's
    scope, the common case): each value's newest runs read in order from its index range,
    at most ``offset + limit`` of them, merged. Its SQL is made once per shape (how many
    values, of which types): a page costs the database's work and little of Python's."""
    sql = _scope_sql(
        tuple((typ, column) for _, typ, column, _ in tests), before is not None, oldest
    )
    params: dict[str, object] = {"n": offset + limit, "lim": limit, "off": offset, "f": False}
    for i, (stored, _, _, value) in enumerate(tests):
        params[f"k{i}"], params[f"v{i}"] = stored, value
    if before is not None:
        params["bt"], params["bu"] = before
    return text(sql).bindparams(**params).columns(run_id=Integer)


@lru_cache(maxsize=512)
def _scope_sql(shape: tuple[tuple[str, str], ...], before: bool, oldest: bool) -> str:
    way, past = ("ASC", ">") if oldest else ("DESC", "<")
    branches = []
    for i, (typ, column) in enumerate(shape):
        # typ is a letter of runbroker.store.flatten's; numbers compare as NUMERIC, as stored
        value = f"CAST(:v{i} AS NUMERIC)" if column == "num" else f":v{i}"
        where = f"key = :k{i} AND typ = '{typ}' AND elem = :f AND {column} = {value}"
        if before:
            where += f" AND (time, uid) {past} (:bt, :bu)"
        branches.append(
            f"SELECT run_id, time, uid FROM (SELECT run_id, time, uid FROM tags WHERE {where} "
            f"ORDER BY time {way}, uid {way} LIMIT :n) AS b{i}"
        )
    return (
        f"SELECT run_id FROM ({' UNION '.join(branches)}) AS merged "
        f"ORDER BY time {way}, uid {way} LIMIT :lim OFFSET :off"
    )
