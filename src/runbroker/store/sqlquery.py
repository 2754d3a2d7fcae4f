"""Compile :mod:`runbroker.queries` objects into SQL over the ``runs`` and ``meta`` tables.

Each query type becomes an indexed condition inside the database; nothing is filtered in
Python. The semantics are those of ``Query.matches`` (the reference), which the tests check
against this compiler on generated runs and queries.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from functools import singledispatch
from typing import Any

from sqlalchemy import Select, and_, bindparam, exists, false, not_, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from .. import queries as q
from .dialects import SQLITE, Dialect
from .flatten import scalar_row
from .keyindex import index_name, meta_key
from .schema import meta, runs

__all__ = ["compile_query", "indexed", "is_common"]

_MAX_CHAR = "\U0010ffff"


# Set while compiling a search that wants only its first hits: tells whether a metadata
# test matches many runs (see _meta_exists).
is_common: ContextVar[Callable[[Select], bool] | None] = ContextVar("is_common", default=None)
# Set while compiling for a catalog: the meta keys that have an index of their own there.
indexed: ContextVar[frozenset[str]] = ContextVar("indexed", default=frozenset())


def _meta_exists(
    key: str, *conds: Any, dialect: Dialect = SQLITE, column: str = "txt"
) -> ColumnElement[bool]:
    """Runs having a metadata row at ``key`` that satisfies ``conds`` (on ``column``).

    Two equivalent SQL forms, each fast in its own case: ``id IN (index range)`` reads the
    matching runs straight from the index (rare values, and counting), while a correlated
    EXISTS lets a newest-first search walk the time index and stop after its first hits
    (values shared by many runs).
    """
    stored = meta_key(key)
    # The key goes into the SQL as a literal (escaped by SQLAlchemy): only then can the
    # planner match it to a per-key partial index -- a bound parameter matches none in a
    # PostgreSQL generic plan, nor in SQLite.
    rows = select(meta.c.run_id).where(
        meta.c.key == bindparam(None, stored, type_=meta.c.key.type, literal_execute=True),
        *conds,
    )
    if stored in indexed.get():
        # SQLite's planner ranks the covering (key, value) index as high as the key's own
        # index, which is smaller: name the latter (other databases ignore the hint).
        rows = rows.with_hint(meta, f"INDEXED BY {index_name(stored, column)}", "sqlite")
    common = is_common.get()
    if common is not None and common(rows):
        return exists(dialect.probe(rows.where(meta.c.run_id == runs.c.id)))
    return runs.c.id.in_(rows)


def _value_exists(key: str, value: Any, elem: bool, dialect: Dialect) -> ColumnElement[bool]:
    """Runs whose ``key`` equals ``value`` (``elem``: has it as a list element)."""
    typ, num, txt = scalar_row(value)  # type: ignore[misc]
    conds: list[Any] = [meta.c.elem.is_(elem), meta.c.typ == typ]
    if typ == "s":
        conds.append(meta.c.txt == txt)
    elif typ in "nb":
        if num is None:  # NaN equals nothing
            conds = [false()]
        else:
            conds.append(meta.c.num == num)
    column = "num" if typ in "nb" else "txt"
    return _meta_exists(key, *conds, dialect=dialect, column=column)


@singledispatch
def compile_query(query: Any, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    """A SQL condition on ``runs`` that is true for the runs ``query`` matches.

    Example:
        >>> print(compile_query(q.ScanIDRange(1, 3)))
        runs.scan_id IS NOT NULL AND runs.scan_id >= :scan_id_1 AND runs.scan_id < :scan_id_2
    """
    raise TypeError(f"cannot search with {query!r}: not a runbroker query")


@compile_query.register
def _(query: None, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return true()


@compile_query.register
def _(query: q.Comparison, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    if query.op == "eq":
        return _value_exists(query.key, query.value, False, dialect)
    if query.op == "ne":
        return not_(_value_exists(query.key, query.value, False, dialect))
    typ, num, txt = scalar_row(query.value)  # type: ignore[misc]
    if typ == "n":
        column = meta.c.num
        bound: Any = num
    elif typ == "s":
        column, bound = meta.c.txt, txt
    else:  # ordering is only defined between numbers and between strings
        return false()
    if bound is None:
        return false()
    op = {"lt": column < bound, "le": column <= bound, "gt": column > bound, "ge": column >= bound}
    return _meta_exists(
        query.key,
        meta.c.elem.is_(False),
        meta.c.typ == typ,
        op[query.op],
        dialect=dialect,
        column=column.name,
    )


@compile_query.register
def _(query: q.In, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    if not query.values:
        return false()
    return or_(*(compile_query(q.Key(query.key) == v, dialect) for v in query.values))


@compile_query.register
def _(query: q.NotIn, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return not_(compile_query(q.In(query.key, query.values), dialect))


@compile_query.register
def _(query: q.Contains, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return _value_exists(query.key, query.value, True, dialect)


@compile_query.register
def _(query: q.KeyPresent, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return _meta_exists(query.key, meta.c.elem.is_(False), dialect=dialect)


@compile_query.register
def _(query: q.SubDocument, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    leaves = query.leaves()
    conds = [
        _meta_exists(key, meta.c.elem.is_(False), meta.c.typ == "d", dialect=dialect)
        if isinstance(value, dict)
        else _value_exists(key, value, False, dialect)
        for key, value in leaves
    ]
    # No field beyond those asked for, at any depth (list elements share their list's key).
    inside = meta_key(query.key) + "."
    extra = select(meta.c.run_id).where(
        meta.c.run_id == runs.c.id,
        meta.c.key.startswith(inside, autoescape=True),
        meta.c.key.not_in([meta_key(key) for key, _ in leaves]),
    )
    return and_(*conds, ~exists(extra))


@compile_query.register
def _(query: q.Regex, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    match = dialect.regex(meta.c.txt, query.pattern, query.case_sensitive)
    return _meta_exists(
        query.key, meta.c.elem.is_(False), meta.c.typ == "s", match, dialect=dialect
    )


@compile_query.register
def _(query: q.FullText, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return runs.c.id.in_(dialect.fulltext(q.text_tokens(query.text)))


@compile_query.register
def _(query: q.TimeRange, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    conds = []
    if query.since is not None:
        conds.append(runs.c.time >= query.since)
    if query.until is not None:
        conds.append(runs.c.time < query.until)
    return and_(true(), *conds)


@compile_query.register
def _(query: q.ScanID, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    # "IS NOT NULL" keeps the condition two-valued, so that Not() of it is exact.
    return and_(runs.c.scan_id.is_not(None), runs.c.scan_id.in_(list(query.scan_ids)))


@compile_query.register
def _(query: q.ScanIDRange, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return and_(
        runs.c.scan_id.is_not(None), runs.c.scan_id >= query.start_id, runs.c.scan_id < query.end_id
    )


@compile_query.register
def _(query: q.PartialUID, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    # A range on the uid index: anchored prefix match without a scan.
    return or_(*(and_(runs.c.uid >= p, runs.c.uid < p + _MAX_CHAR) for p in query.prefixes))


@compile_query.register
def _(query: q.And, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return and_(true(), *(compile_query(sub, dialect) for sub in query.queries))


@compile_query.register
def _(query: q.Or, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return or_(false(), *(compile_query(sub, dialect) for sub in query.queries))


@compile_query.register
def _(query: q.Not, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return not_(compile_query(query.query, dialect))
