"""MongoDB-style dict queries, as databroker users wrote them, translated to query objects.

The translation gives ordinary :mod:`runbroker.queries` objects, so a dict query runs exactly
as the equivalent hand-written query does (inside the database, on its indexes).

>>> from_mongo({"plan_name": "scan", "num_points": {"$gt": 20}})
And(Or(Key('plan_name') == 'scan', Contains(key='plan_name', value='scan')), Key('num_points') > 20)

Meaning, as in MongoDB:

- ``{"k": v}`` and ``{"k": {"$eq": v}}``: the value at ``k`` equals ``v``, or is a list holding
  ``v``. ``{"k": None}`` also matches runs without ``k``.
- ``$ne`` and ``$nin`` are exactly NOT ``$eq`` and ``$in`` (so they match runs without ``k``).
- ``$gt $gte $lt $lte`` compare numbers with numbers and strings with strings.
- ``$in``: ``$eq`` any of the values. ``$exists``: ``true`` or ``false``.
- ``$regex`` (a str or a compiled ``re`` pattern), with ``$options`` ``"i"`` or ``""``.
- ``$and``, ``$or``, ``$nor``: lists of dict queries; ``$not`` negates a field's operators
  (``{"k": {"$not": {"$gt": 5}}}``), or, as a convenience, a whole dict query.
- Dotted keys reach into nested dicts: ``{"sample.name": "Cu"}``; ``stop.`` reaches the stop
  document.

- A dict as a value, ``{"sample": {"name": "Cu"}}``, asks that the whole sub-document equals
  it: the same fields (in any order, where MongoDB also wants the same order) and values
  (:class:`~runbroker.queries.SubDocument`). ``{"sample.name": "Cu"}`` asks only for the one
  field.

A list as a value means in MongoDB that the whole array equals it: that is not searchable
here and is refused, naming ``$in`` instead. So is any other operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .queries import (
    And,
    Comparison,
    Contains,
    In,
    Key,
    KeyPresent,
    Not,
    Or,
    Query,
    QueryError,
    SubDocument,
    is_query_form,
)
from .queries import Regex as RegexQuery

__all__ = ["OPERATORS", "from_mongo", "is_query_form", "parse_query"]

_ORDER = {"$gt": "gt", "$gte": "ge", "$lt": "lt", "$lte": "le"}
_LOGICAL = ("$and", "$or", "$nor", "$not")
_FIELD = ("$eq", "$ne", *_ORDER, "$in", "$nin", "$exists", "$regex", "$options", "$not")
#: The operators understood, in dict queries.
OPERATORS: tuple[str, ...] = tuple(dict.fromkeys((*_FIELD, *_LOGICAL)))


def from_mongo(spec: Mapping[str, Any]) -> Query:
    """The query object for a MongoDB-style dict query.

    Raises :class:`QueryError` naming the key and operator for anything it cannot translate.

    >>> from_mongo({"sample": {"$in": ["Ni", "Cu"]}, "scan_id": {"$gte": 10, "$lt": 20}})
    ... # doctest: +NORMALIZE_WHITESPACE
    And(Or(In(key='sample', values=('Ni', 'Cu')), Contains(key='sample', value='Ni'),
           Contains(key='sample', value='Cu')),
        And(Key('scan_id') >= 10, Key('scan_id') < 20))
    >>> from_mongo({"$or": [{"stop.exit_status": {"$ne": "success"}}, {"temp": {"$exists": 0}}]})
    Traceback (most recent call last):
    ...
    runbroker.errors.QueryError: key 'temp': $exists takes true or false, got 0
    """
    return _filter(spec, "query")


def _filter(spec: Any, where: str) -> Query:
    if not isinstance(spec, Mapping):
        raise QueryError(
            f"{where} must be a dict such as {{'plan_name': 'scan'}}, "
            f"got {type(spec).__name__} {spec!r}"
        )
    parts = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise QueryError(f"{where}: keys must be str, got {key!r}")
        parts.append(_logical(key, value) if key.startswith("$") else _field(key, value))
    return parts[0] if len(parts) == 1 else And(*parts)


def _logical(op: str, value: Any) -> Query:
    if op == "$not":
        return Not(_filter(value, "$not"))
    if op not in _LOGICAL:
        raise _unsupported(op, "at the top level of a query")
    if not isinstance(value, list) or not value:
        raise QueryError(f"{op} takes a non-empty list of dict queries, got {value!r}")
    subs = [_filter(v, f"{op}[{i}]") for i, v in enumerate(value)]
    if op == "$and":
        return And(*subs)
    return Or(*subs) if op == "$or" else Not(Or(*subs))


def _field(key: str, value: Any) -> Query:
    Key(key)  # a bad key is reported as such, before its value
    if isinstance(value, re.Pattern):
        return _regex(key, value, None)
    if isinstance(value, Mapping):
        ops = [op for op in value if isinstance(op, str) and op.startswith("$")]
        if not ops:
            return _equal_any(key, [value])
        if len(ops) != len(value):
            raise QueryError(
                f"key {key!r}: {dict(value)!r} mixes operators and field names; "
                f"write nested fields as dotted keys ({key}.field)"
            )
        return _operators(key, value)
    return _equal_any(key, [value])


def _operators(key: str, ops: Mapping[str, Any]) -> Query:
    parts: list[Query] = []
    for op, arg in ops.items():
        if op in ("$eq", "$ne"):
            equal = _equal_any(key, [arg])
            parts.append(equal if op == "$eq" else Not(equal))
        elif op in _ORDER:
            if isinstance(arg, Mapping | list):
                raise QueryError(f"key {key!r}: {op} takes a number or a str, got {arg!r}")
            parts.append(Comparison(key, _ORDER[op], arg))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list | tuple):
                raise QueryError(f"key {key!r}: {op} takes a list of values, got {arg!r}")
            equal = _equal_any(key, list(arg))
            parts.append(equal if op == "$in" else Not(equal))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise QueryError(f"key {key!r}: $exists takes true or false, got {arg!r}")
            parts.append(KeyPresent(key) if arg else Not(KeyPresent(key)))
        elif op == "$regex":
            parts.append(_regex(key, arg, ops.get("$options")))
        elif op == "$options":
            if "$regex" not in ops:
                raise QueryError(f"key {key!r}: $options goes with $regex")
        elif op == "$not":
            if isinstance(arg, re.Pattern):
                parts.append(Not(_regex(key, arg, None)))
            elif isinstance(arg, Mapping) and arg and all(str(o).startswith("$") for o in arg):
                parts.append(Not(_operators(key, arg)))
            else:
                raise QueryError(
                    f"key {key!r}: $not takes operators, e.g. {{'$not': {{'$gt': 5}}}}, got {arg!r}"
                )
        else:
            raise _unsupported(op, f"on key {key!r}")
    return parts[0] if len(parts) == 1 else And(*parts)


def _equal_any(key: str, values: list[Any]) -> Query:
    # MongoDB's equality also matches a list holding the value, and a null matches a
    # missing key: both are habits of databroker queries ({"detectors": "det"}).
    parts: list[Query] = [SubDocument(key, v) for v in values if isinstance(v, Mapping)]
    scalars = [v for v in values if not isinstance(v, Mapping)]
    for v in scalars:
        if isinstance(v, list | tuple):
            raise _whole_array(key, v)
    if scalars:
        parts.append(Comparison(key, "eq", scalars[0]) if len(scalars) == 1 else In(key, scalars))
        parts.extend(Contains(key, v) for v in scalars)
    if None in scalars:
        parts.append(Not(KeyPresent(key)))
    return parts[0] if len(parts) == 1 else Or(*parts)


def _regex(key: str, pattern: Any, options: Any) -> Query:
    if isinstance(pattern, re.Pattern):
        if options is not None:
            raise QueryError(f"key {key!r}: give $options in the pattern's flags, not both")
        ignore_case = bool(pattern.flags & re.IGNORECASE)
        if pattern.flags & ~(re.IGNORECASE | re.UNICODE):
            raise QueryError(f"key {key!r}: of the regex flags only re.IGNORECASE is supported")
        pattern = pattern.pattern
    else:
        if options not in (None, "", "i"):
            raise QueryError(
                f"key {key!r}: $options {options!r} is not supported; use 'i' (ignore case) "
                "or inline flags in the pattern"
            )
        ignore_case = options == "i"
    if not isinstance(pattern, str):
        raise QueryError(f"key {key!r}: $regex takes a str pattern, got {pattern!r}")
    return RegexQuery(key, pattern, case_sensitive=not ignore_case)


def _whole_array(key: str, value: Any) -> QueryError:
    return QueryError(
        f"key {key!r}: a list value {list(value)!r} asks for exact array equality, which "
        f"runbroker does not search; use {{{json.dumps(key)}: {{'$in': [...]}}}} for any of "
        f"the values, or {{{json.dumps(key)}: value}} for a list holding value"
    )


def _unsupported(op: str, where: str) -> QueryError:
    return QueryError(
        f"operator {op!r} {where} is not supported; supported operators: {', '.join(OPERATORS)}"
    )


def parse_query(text: str, option: str = "--query") -> Query:
    """A query from JSON text: a MongoDB-style dict, or the JSON form of a query object.

    This is what the command line's ``--query`` takes. Errors name ``option``.

    >>> parse_query('{"num_points": {"$gt": 20}}')
    Key('num_points') > 20
    >>> parse_query('{"type": "key_present", "key": "sample"}')
    KeyPresent(key='sample')
    """
    try:
        data = json.loads(text)
    except ValueError as err:
        raise QueryError(f"{option} {text!r}: not valid JSON: {err}") from None
    try:
        return Query.from_dict(data) if is_query_form(data) else from_mongo(data)
    except QueryError as err:
        raise QueryError(f"{option} {text!r}: {err}") from None
