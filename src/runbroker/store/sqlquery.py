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

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    exists,
    false,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import replacement_traverse

from .. import hardware
from .. import queries as q
from . import notes as notestore
from .dialects import SQLITE, Dialect
from .flatten import IN_RUN_COLUMNS, scalar_row
from .keyindex import index_name, meta_key
from .schema import facts, field_stats, meta, run_facts, runs
from .stats import field_id

__all__ = [
    "compile_query",
    "has_facts",
    "has_stats",
    "indexed",
    "is_common",
    "is_uid",
    "uid_key_held",
]

_MAX_CHAR = "\U0010ffff"


# Set while compiling a search that wants only its first hits: tells whether a metadata
# test matches many runs (see _any_rows).
is_common: ContextVar[Callable[[Select], bool] | None] = ContextVar("is_common", default=None)
# Set while compiling for a catalog: the meta keys that have an index of their own there.
indexed: ContextVar[frozenset[str]] = ContextVar("indexed", default=frozenset())


def _meta_rows(key: str, *conds: Any, column: str = "txt") -> Select:
    """The ids of the runs having a metadata row at ``key`` that satisfies ``conds`` (the
    test is on ``column``, whose per-key index serves it when ``key`` has one)."""
    stored = meta_key(key)
    if stored in IN_RUN_COLUMNS:
        return _run_uid_rows(stored, conds)
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
    return rows


# The runs a key of IN_RUN_COLUMNS is searched in: its one value, a string, is the run's uid.
_UID_RUNS = runs.alias("uid_runs")


def _run_uid_rows(stored: str, conds: tuple) -> Select:
    """:func:`_meta_rows` for a key whose value is the run's uid (``start.uid``, and
    ``stop.run_start`` of a stopped run): the same tests, on ``runs`` as the one ``meta`` row
    the run would have (a string, not a list element)."""
    as_row = {
        id(meta.c.run_id): _UID_RUNS.c.id,
        id(meta.c.txt): _UID_RUNS.c.uid,
        id(meta.c.typ): literal("s"),
        id(meta.c.elem): false(),
        id(meta.c.num): null(),
    }
    tests = [replacement_traverse(c, {}, lambda element: as_row.get(id(element))) for c in conds]
    return select(_UID_RUNS.c.id).where(*tests, *uid_key_held(stored, _UID_RUNS))


def uid_key_held(stored: str, table: Any = runs) -> list[ColumnElement[bool]]:
    """When a run (a row of ``table``, ``runs`` or an alias of it) has key ``stored`` of
    IN_RUN_COLUMNS: always its start's uid; its stop's ``run_start`` once it has a stop.

    Example:
        >>> [str(c) for c in uid_key_held("stop.run_start")]
        ['runs.stop IS NOT NULL']
    """
    return [table.c.stop.is_not(None)] if stored == "stop.run_start" else []


def _any_rows(parts: list[Select], dialect: Dialect) -> ColumnElement[bool]:
    """Runs whose id is among those of any of ``parts`` (metadata tests, see _meta_rows).

    Two equivalent SQL forms, each fast in its own case: ``id IN (index ranges)`` reads the
    matching runs straight from the indexes (rare values, and counting), while correlated
    EXISTS tests let a newest-first search walk the time index and stop after its first
    hits (values shared by many runs). Several tests go into one ``IN (... UNION ALL ...)``:
    one list of ids, from which the planner drives the search (a caller's proposals and the
    public runs: some hundreds of runs, rather than a walk over every run by time testing
    each against a dozen lists).
    """
    if not parts:
        return false()
    common = is_common.get()
    ids = parts[0] if len(parts) == 1 else union_all(*parts)
    if common is not None and common(ids):
        tests = (exists(dialect.probe(p.where(p.selected_columns[0] == runs.c.id))) for p in parts)
        return or_(false(), *tests)
    return runs.c.id.in_(ids)


def _value_rows(key: str, values: Any, elem: bool) -> list[Select]:
    """Tests of the runs whose ``key`` equals one of ``values`` (``elem``: has it as a list
    element): one per type of value, each an index range per value.

    Example:
        >>> [str(t.whereclause).count(" IN ") for t in _value_rows("x", ["a", "b", 1, 2.5], False)]
        [1, 0, 0]
    """
    by_type: dict[tuple[str, type], list[Any]] = {}
    for value in values:
        typ, num, txt = scalar_row(value)  # type: ignore[misc]
        if typ in "nb" and num is None:  # NaN equals nothing
            continue
        # Integers and floats in lists of their own: PostgreSQL compares a list of both as
        # floats, and 2**53 + 1 would equal 2**53.
        by_type.setdefault((typ, type(num)), []).append(txt if typ == "s" else num)
    out = []
    for (typ, _), found in by_type.items():
        conds: list[Any] = [meta.c.elem.is_(elem), meta.c.typ == typ]
        column = "num" if typ in "nb" else "txt"
        if typ in "snb":
            col = meta.c[column]
            # One value as "=": a prepared statement keeps one shape for every value.
            conds.append(col == found[0] if len(found) == 1 else col.in_(found))
        out.append(_meta_rows(key, *conds, column=column))
    return out


def is_uid(query: Any) -> bool:
    """Whether ``query`` is ``Key("uid") == a str``: one run at most, found by its uid."""
    return (
        isinstance(query, q.Comparison)
        and query.op == "eq"
        and isinstance(query.value, str)
        and meta_key(query.key) == "start.uid"
    )


@singledispatch
def _rows(query: Any, dialect: Dialect) -> list[Select] | None:
    """``query`` as metadata tests whose runs it matches (any of them), or None when it is
    not a test of metadata rows."""
    return None


@_rows.register
def _(query: q.Comparison, dialect: Dialect) -> list[Select] | None:
    if query.op == "eq":
        return None if is_uid(query) else _value_rows(query.key, [query.value], False)
    if query.op == "ne":
        return None
    typ, num, txt = scalar_row(query.value)  # type: ignore[misc]
    if typ == "n":
        column = meta.c.num
        bound: Any = num
    elif typ == "s":
        column, bound = meta.c.txt, txt
    else:  # ordering is only defined between numbers and between strings
        return []
    if bound is None:
        return []
    op = {"lt": column < bound, "le": column <= bound, "gt": column > bound, "ge": column >= bound}
    conds = (meta.c.elem.is_(False), meta.c.typ == typ, op[query.op])
    return [_meta_rows(query.key, *conds, column=column.name)]


@_rows.register
def _(query: q.In, dialect: Dialect) -> list[Select] | None:
    return _value_rows(query.key, query.values, False)


@_rows.register
def _(query: q.Contains, dialect: Dialect) -> list[Select] | None:
    return _value_rows(query.key, [query.value], True)


@_rows.register
def _(query: q.KeyPresent, dialect: Dialect) -> list[Select] | None:
    return [_meta_rows(query.key, meta.c.elem.is_(False))]


@_rows.register
def _(query: q.Regex, dialect: Dialect) -> list[Select] | None:
    match = dialect.regex(meta.c.txt, query.pattern, query.case_sensitive)
    return [_meta_rows(query.key, meta.c.elem.is_(False), meta.c.typ == "s", match)]


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


def _metadata_test(query: Any, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    rows = _rows(query, dialect)
    assert rows is not None, query
    return _any_rows(rows, dialect)


for _kind in (q.In, q.Contains, q.KeyPresent, q.Regex):
    compile_query.register(_kind, _metadata_test)


@compile_query.register
def _(query: q.Comparison, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    if is_uid(query):
        # The uid column's unique index, not a metadata row: the same run (a run's uid is its
        # start document's), found first by the planner in any combination.
        return runs.c.uid == query.value
    if query.op == "ne":
        return not_(compile_query(q.Key(query.key) == query.value, dialect))
    return _metadata_test(query, dialect)


@compile_query.register
def _(query: q.NotIn, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return not_(compile_query(q.In(query.key, query.values), dialect))


@compile_query.register
def _(query: q.SubDocument, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    leaves = query.leaves()
    conds = [
        _any_rows(
            [_meta_rows(key, meta.c.elem.is_(False), meta.c.typ == "d")]
            if isinstance(value, dict)
            else _value_rows(key, [value], False),
            dialect,
        )
        for key, value in leaves
    ]
    # No field beyond those asked for, at any depth (list elements share their list's key).
    inside = meta_key(query.key) + "."
    extra = select(meta.c.run_id).where(
        meta.c.run_id == runs.c.id,
        meta.c.key.startswith(inside, autoescape=True),
        meta.c.key.not_in([meta_key(key) for key, _ in leaves]),
    )
    # Nor one whose value lives in a column of runs (no meta row says the run has it).
    named = {meta_key(key) for key, _ in leaves}
    unnamed = sorted(k for k in IN_RUN_COLUMNS if k.startswith(inside) and k not in named)
    absent = [not_(compile_query(q.KeyPresent(k), dialect)) for k in unnamed]
    return and_(*conds, ~exists(extra), *absent)


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
    if not any(is_uid(sub) for sub in query.queries):
        return and_(true(), *(compile_query(sub, dialect) for sub in query.queries))
    # One run at most: the other tests are asked of it alone, each an index probe (neither
    # a list of all their runs nor a count of them to choose between the two forms).
    token = is_common.set(_always)
    try:
        return and_(true(), *(compile_query(sub, dialect) for sub in query.queries))
    finally:
        is_common.reset(token)


def _always(rows: Select) -> bool:
    return True


@compile_query.register
def _(query: q.Or, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    # The metadata tests among the alternatives become one test (see _any_rows).
    tests: list[Select] = []
    others = []
    for sub in query.queries:
        rows = _rows(sub, dialect)
        if rows is None:
            others.append(compile_query(sub, dialect))
        else:
            tests.extend(rows)
    if tests:
        others.append(_any_rows(tests, dialect))
    return or_(false(), *others)


@compile_query.register
def _(query: q.Not, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return not_(compile_query(query.query, dialect))


# --- notes


def _note_rows(prefix: str, viewer: Any, *conds: Any) -> Select:
    """The ids of the runs with a current note row under ``prefix`` (``@tag``, ``@note``)
    that ``viewer`` may see and that satisfies ``conds``: one range of meta's (key, txt)
    index per audience of the viewer (see runbroker.store.notes)."""
    keys = [f"{prefix}.{audience}" for audience in notestore.audiences_of(viewer)]
    return select(meta.c.run_id).where(
        meta.c.key.in_(keys), meta.c.typ == "s", meta.c.elem.is_(False), *conds
    )


@_rows.register
def _(query: q.Tag, dialect: Dialect) -> list[Select] | None:
    return [_note_rows(notestore.TAG, query.viewer, meta.c.txt == query.tag)]


@_rows.register
def _(query: q.Annotation, dialect: Dialect) -> list[Select] | None:
    # Texts are stored case-folded: a substring test of the folded words, within the rows
    # of annotations alone (never the rest of meta).
    match = meta.c.txt.contains(query.text.casefold(), autoescape=True)
    return [_note_rows(notestore.TEXT, query.viewer, match)]


for _kind in (q.Tag, q.Annotation):
    compile_query.register(_kind, _metadata_test)
# --- statistics

_STAT_OPS = {
    "eq": lambda c, v: c == v,
    "ne": lambda c, v: c != v,
    "lt": lambda c, v: c < v,
    "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v,
    "ge": lambda c, v: c >= v,
}


def _stat_rows(query: q.FieldStat) -> Select:
    """The ids of the runs whose statistics row (see runbroker.store.stats) satisfies the
    comparison."""
    field, _ = field_id(query.stream, query.field)
    _, num, _ = scalar_row(query.value)  # type: ignore[misc]
    return select(field_stats.c.run_id).where(
        field_stats.c.field == field, _STAT_OPS[query.op](field_stats.c[query.stat], num)
    )


#: Whether the catalog has the statistics table (migration 0006): without, no run matches.
has_stats: ContextVar[bool] = ContextVar("has_stats", default=True)


@compile_query.register
def _(query: q.FieldStat, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    if not has_stats.get():
        return false()
    rows = _stat_rows(query)
    common = is_common.get()
    if common is None or not common(rows):
        return runs.c.id.in_(rows)  # few runs: read from the table
    # Many runs, newest first: each run walked by time is probed by its primary key (run,
    # field), one row, until the page is full.
    return exists(dialect.probe(rows.where(field_stats.c.run_id == runs.c.id)))


# --- hardware
# Device, Config and DataKey look up the sets of facts holding what they test (``facts``, a
# few rows per distinct set), then the runs linked to those sets (``run_facts``); see
# runbroker.store.hardwarerows.

#: Whether the catalog has the hardware tables (migration 0007): without, no run matches.
has_facts: ContextVar[bool] = ContextVar("has_facts", default=True)


Fact = tuple[str, tuple[Any, ...]]  # a key of runbroker.hardware, tests on its facts' values


def _fact(stored: str, *conds: Any) -> Fact:
    return stored, conds


def _fact_sets(fact: Fact) -> Select:
    """The sets holding ``fact``."""
    stored, conds = fact
    key = bindparam(None, stored, type_=facts.c.key.type, literal_execute=True)  # see _meta_rows
    return select(facts.c.set_id).where(facts.c.key == key, *conds)


def _fact_equal(stored: str, values: Any) -> list[Fact]:
    """Tests of the runs with a fact at ``stored`` equal to one of ``values`` (by type, as
    in _value_rows)."""
    out = []
    for value in values:
        typ, num, txt = scalar_row(value)  # type: ignore[misc]
        if typ in "nb" and num is None:
            continue
        column = facts.c.txt if typ == "s" else facts.c.num
        test = column == (txt if typ == "s" else num)
        out.append(_fact(stored, facts.c.typ == typ, *(() if typ == "z" else (test,))))
    return out


def _fact_test(parts: list[Fact], dialect: Dialect) -> ColumnElement[bool]:
    """Runs having one of the facts ``parts``, in the two forms of _any_rows: the runs of
    the sets found by value, or, when many runs may match, a probe of each run walked: its
    links (``run_facts``' primary key, one per stream) and each linked set's facts of the
    key (``ix_facts_set``). Thousands of sets may hold a common value; the probe never
    gathers them.
    """
    if not parts or not has_facts.get():
        return false()
    common = is_common.get()
    found = [select(run_facts.c.run_id).where(run_facts.c.set_id.in_(_fact_sets(p))) for p in parts]
    ids = found[0] if len(found) == 1 else union_all(*found)
    if common is None or not common(ids):
        return runs.c.id.in_(ids)
    probes = []
    for part in parts:
        held = _fact_sets(part).where(facts.c.set_id == run_facts.c.set_id)
        held = held.with_hint(facts, "INDEXED BY ix_facts_set", "sqlite")
        linked = select(run_facts.c.run_id).where(run_facts.c.run_id == runs.c.id, exists(held))
        probes.append(exists(dialect.probe(linked)))
    return or_(false(), *probes)


@compile_query.register
def _(query: q.Device, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    return _fact_test(_fact_equal(hardware.device_key(query.stream), [query.name]), dialect)


@compile_query.register
def _(query: q.ConfigReading, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    if query.op == "ne":
        equal = q.Config(query.device, query.name, query.stream) == query.value
        return not_(compile_query(equal, dialect))
    if query.op in ("eq", "in"):
        values = query.value if query.op == "in" else [query.value]
        return _fact_test([r for key in query.keys for r in _fact_equal(key, values)], dialect)
    typ, num, txt = scalar_row(query.value)  # type: ignore[misc]
    if typ not in "ns":  # ordering is only defined between numbers and between strings
        return false()
    column, bound = (facts.c.num, num) if typ == "n" else (facts.c.txt, txt)
    op = {"lt": column < bound, "le": column <= bound, "gt": column > bound, "ge": column >= bound}
    rows = [_fact(key, facts.c.typ == typ, op[query.op]) for key in query.keys]
    return _fact_test(rows, dialect)


@compile_query.register
def _(query: q.DataKey, dialect: Dialect = SQLITE) -> ColumnElement[bool]:
    tests = []
    for stored, wanted in query.tests():
        if isinstance(wanted, bool):  # a property held (any value), or not
            held = _fact_test([_fact(stored)], dialect)
            tests.append(held if wanted else not_(held))
        else:
            tests.append(_fact_test(_fact_equal(stored, [wanted]), dialect))
    return and_(true(), *tests)
