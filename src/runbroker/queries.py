"""Immutable, composable, serialisable queries over Bluesky runs.

A *record* is a mapping ``{"start": dict, "stop": dict | None}``. Queries combine with ``&``,
``|`` and ``~``, round-trip through :meth:`Query.to_dict`, :meth:`Query.to_json` and
:meth:`Query.to_url`, and evaluate in pure Python with :meth:`Query.matches`. That evaluator
is the reference semantics: any other backend (e.g. SQL) must return the same runs.

>>> q = (Key("sample") == "Ni") & (Key("temp") > 300)
>>> q.matches({"start": {"sample": "Ni", "temp": 310.5}, "stop": None})
True

Reference semantics
-------------------
Keys: ``"a.b"`` is field ``b`` of the dict in field ``a`` of the start document; a leading
``start.`` or ``stop.`` segment picks the document (default start). Only nested dicts are
walked: a path through a list or a scalar, or into a stop of None, is *missing*. Field names
containing dots cannot be addressed.

Scalar classes are str, number (int or float, never bool), bool and None. Two values are
``scalar_equal`` when both are scalars of the same class and ``==`` (so ``1`` equals ``1.0``,
``True`` differs from ``1`` and ``"1"`` differs from ``1``). NumPy scalars count as the
equivalent Python scalars. Query values must be scalars; floats must be finite.

- ``eq``: the value at key is scalar_equal to v. ``ne`` is exactly NOT ``eq``, so it also
  matches runs that lack the key or hold a list/dict there.
- ``lt le gt ge``: both numbers, or both str (code-point order); anything else, including a
  missing key or NaN, is False.
- ``In(key, vs)``: ``eq`` to any of vs (none: False). ``NotIn`` is exactly NOT ``In``.
- ``Contains(key, v)``: the value is a list with an element scalar_equal to v.
- ``Regex(key, p, case_sensitive)``: the value is a str and ``re.search(p, value)`` finds a
  match (Python ``re`` syntax; ``re.IGNORECASE`` when not case sensitive).
- ``SubDocument(key, d)``: the value is a dict with exactly the fields of d, each equal
  (scalar_equal, or SubDocument again for a dict); d holds no lists.
- ``KeyPresent(key)``: the key is not missing (any value, None included).
- ``FullText(text)``: every token of text equals some token of some str value anywhere in the
  start document (through nested dicts and lists; values only, not field names). Tokens are
  ``re.findall(r"[^\\W_]+", s.lower())``: runs of letters and digits, like SQLite FTS5's
  unicode61 tokenizer with diacritics kept.
- ``TimeRange(since, until)``: start ``time`` is a number and since <= time < until; a None
  bound is open.
- ``ScanID(*ids)``: start ``scan_id`` is a number equal to one of ids. ``ScanIDRange(a, b)``:
  it is a number with a <= scan_id < b.
- ``PartialUID(*ps)``: start ``uid`` is a str starting (case sensitively) with one of ps.
- ``And``/``Or``/``Not``: logical combination; an empty And matches every run, an empty Or none.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING as _NO_DEFAULT
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import QueryError
from .notes import Viewer, visible

__all__ = [
    "MISSING",
    "And",
    "Annotation",
    "Comparison",
    "Contains",
    "EmptySearchWarning",
    "FullText",
    "In",
    "Key",
    "KeyPresent",
    "Not",
    "NotIn",
    "Or",
    "PartialUID",
    "Query",
    "QueryError",
    "Regex",
    "ScanID",
    "ScanIDRange",
    "SubDocument",
    "Tag",
    "TimeRange",
    "bind",
    "epoch",
    "is_query_form",
    "lookup",
    "parse_time",
    "scalar_equal",
    "split_key",
    "text_tokens",
]

_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_ORDER = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}
_TIME_EXAMPLES = (
    "'2021', '2021-12', '2021-12-06', '2021-12-06 15:46', '2021-12-06 15:46:30', "
    "'2021-12-06T15:46:30+02:00' or '@1638805560' (epoch seconds)"
)
# A year, or a year and month: databroker's shortest time strings, which ISO parsing refuses.
_YEAR_MONTH = re.compile(r"(\d{4})(?:-(\d{2}))?")


class EmptySearchWarning(UserWarning):
    """A search found nothing, and a key or a value of its query may be why.

    Raised (as a warning, once per catalog and key) when no run has a key the query names,
    or when a comparison's value is of a type the key never holds (``"108"`` for a number).

    >>> issubclass(EmptySearchWarning, UserWarning)
    True
    """


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What :func:`lookup` returns for an absent key; distinct from a stored None.
MISSING: Any = _Missing()


def _plain(value: Any) -> Any:
    # NumPy scalars are not int/float/bool subclasses (except float64), so unwrap them
    # without importing numpy just for an isinstance check.
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str" if isinstance(value, str) else None


def _is_number(value: Any) -> bool:
    return _kind(_plain(value)) == "number"


def scalar_equal(a: Any, b: Any) -> bool:
    """True if a and b are scalars of the same class (str, number, bool, None) and equal.

    >>> scalar_equal(1, 1.0), scalar_equal(True, 1), scalar_equal("1", 1)
    (True, False, False)
    """
    a, b = _plain(a), _plain(b)
    kind = _kind(a)
    return kind is not None and kind == _kind(b) and a == b


def _scalar(key: str, value: Any) -> str | int | float | bool | None:
    value = _plain(value)
    kind = _kind(value)
    if kind is None:
        raise QueryError(
            f"key {key!r}: value must be a JSON scalar (str, int, float, bool or None), "
            f"got {type(value).__name__} {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"key {key!r}: value must be a finite number, got {value!r}")
    # Normalise subclasses (enums, numpy str_) so equality and JSON output are plain.
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return None


def split_key(key: str) -> tuple[str, tuple[str, ...]]:
    """Split a dotted key into (document name, path within that document).

    >>> split_key("sample.temp"), split_key("stop.exit_status")
    (('start', ('sample', 'temp')), ('stop', ('exit_status',)))
    """
    if not isinstance(key, str) or not key:
        raise QueryError(f"key must be a non-empty str, got {key!r}")
    parts = key.split(".")
    if not all(parts):
        raise QueryError(f"key {key!r} has an empty segment")
    if len(parts) > 1 and parts[0] in ("start", "stop"):
        return parts[0], tuple(parts[1:])
    return "start", tuple(parts)


def lookup(record: Mapping[str, Any], key: str) -> Any:
    """Return the value at a dotted key in a run record, or MISSING.

    >>> lookup({"start": {"a": {"b": 1}}, "stop": None}, "a.b")
    1
    >>> lookup({"start": {}, "stop": None}, "stop.exit_status")
    MISSING
    """
    document, path = split_key(key)
    value = record.get(document)
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def text_tokens(s: str) -> list[str]:
    """Lower-cased runs of letters and digits; underscores and punctuation separate tokens.

    >>> text_tokens("Ni_foil, 300K-scan")
    ['ni', 'foil', '300k', 'scan']
    """
    return re.findall(r"[^\W_]+", s.lower())


def _zone(timezone: str | None) -> ZoneInfo | None:
    if timezone is None:
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as err:
        raise QueryError(f"unknown timezone {timezone!r}; use an IANA name like 'UTC'") from err


def epoch(seconds: float) -> str:
    """Mark epoch seconds for a time bound: ``TimeRange(since=epoch(time.time() - 3600))``.

    A bare number is refused as a time (a year or epoch seconds?); this says which it is.

    >>> epoch(1638805560), parse_time(epoch(0.1 + 0.2)) == 0.1 + 0.2
    ('@1638805560.0', True)
    """
    value = _plain(seconds)
    if _kind(value) != "number" or not math.isfinite(value):
        raise QueryError(f"epoch seconds must be a finite number, got {seconds!r}")
    return f"@{float(value)!r}"


def _parse_text(text: str) -> datetime | float:
    if text.startswith("@"):
        try:
            seconds = float(text[1:])
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise QueryError(f"time {text!r}: '@' must be followed by epoch seconds, e.g. '@1.7e9'")
        return seconds
    try:
        partial = _YEAR_MONTH.fullmatch(text)
        if partial:
            return datetime(int(partial[1]), int(partial[2] or 1), 1)
        return datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"cannot parse time {text!r}; expected a datetime or a string like {_TIME_EXAMPLES}"
        ) from None


def parse_time(value: Any, timezone: str | None = None) -> float:
    """Convert a datetime/date, an ISO 8601 string or ``"@<epoch seconds>"`` to epoch seconds.

    ``"2021"`` and ``"2021-12"`` mean the start of that year or month, as in databroker.
    Naive datetimes and strings without an offset are read in ``timezone`` (an IANA name),
    or in the machine's local timezone when it is None. A bare number is refused: it could
    be a year or epoch seconds. Mark epoch seconds as ``"@1638805560"``, or pass
    ``datetime.fromtimestamp(seconds)``.

    >>> parse_time("2021-12-06 15:46", timezone="UTC")
    1638805560.0
    >>> parse_time("2021", timezone="UTC") == parse_time("2021-01-01", timezone="UTC")
    True
    >>> parse_time("@1638805560.5")
    1638805560.5
    """
    value = _plain(value)
    zone = _zone(timezone)
    if isinstance(value, str):
        value = _parse_text(value.strip())
        if isinstance(value, float):
            return value
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime):
        if value.tzinfo is None and zone is not None:
            value = value.replace(tzinfo=zone)
        try:
            return value.timestamp()
        except (OverflowError, OSError, ValueError) as err:  # e.g. year 1 in a +hh zone
            raise QueryError(f"time {value!r} is out of range: {err}") from None
    if _kind(value) == "number":
        year = isinstance(value, int) and 1000 <= value <= 9999
        raise QueryError(
            f"time {value!r} is a bare number, which could be a year or epoch seconds: "
            + (f"write the year as a string, '{value}', or " if year else "")
            + f"mark epoch seconds as '@{value}' or pass datetime.fromtimestamp({value})"
        )
    raise QueryError(
        f"time must be a datetime or a string like {_TIME_EXAMPLES}; "
        f"got {type(value).__name__} {value!r}"
    )


_REGISTRY: dict[str, type[Query]] = {}


def is_query_form(data: Any) -> bool:
    """True for the JSON form of a query object (:meth:`Query.to_dict`), told apart from a
    dict query by its ``"type"`` tag naming a query type.

    >>> is_query_form({"type": "key_present", "key": "sample"}), is_query_form({"type": "x"})
    (True, False)
    """
    return (
        isinstance(data, Mapping)
        and isinstance(data.get("type"), str)
        and data["type"] in _REGISTRY
    )


class Query:
    """Base of all queries: combine with ``&``, ``|``, ``~``; serialise; evaluate.

    >>> q = ~(Key("sample") == "Ni") | ScanID(3)
    >>> Query.from_url(q.to_url()) == q
    True
    """

    type_tag: ClassVar[str]
    # Name of the field filled from positional arguments (``ScanID(1, 2)``), if any.
    _varargs: ClassVar[str | None] = None

    def __init_subclass__(cls, tag: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tag is not None:  # private shared bases have no tag and are not deserialisable
            cls.type_tag = tag
            _REGISTRY[tag] = cls

    def matches(self, record: Mapping[str, Any]) -> bool:
        """True if the run ``{"start": ..., "stop": ...}`` satisfies this query.

        >>> ScanID(7).matches({"start": {"scan_id": 7}, "stop": None})
        True
        """
        raise NotImplementedError

    def __and__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return And(*_flat(self, And), *_flat(other, And))

    def __or__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return Or(*_flat(self, Or), *_flat(other, Or))

    def __invert__(self) -> Query:
        return self.query if isinstance(self, Not) else Not(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with a ``"type"`` tag; inverse of :meth:`from_dict`.

        >>> (Key("a") == 1).to_dict()
        {'type': 'comparison', 'key': 'a', 'op': 'eq', 'value': 1}
        """
        out: dict[str, Any] = {"type": self.type_tag}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Query):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Query) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Query:
        """Rebuild a query from :meth:`to_dict` output, validating it.

        >>> Query.from_dict({"type": "scan_id", "scan_ids": [1, 2]})
        ScanID(1, 2)
        """
        if not isinstance(data, Mapping):
            raise QueryError(f"query must be a dict, got {type(data).__name__}")
        tag = data.get("type")
        if not isinstance(tag, str) or tag not in _REGISTRY:
            raise QueryError(f"unknown query type {tag!r}; known: {sorted(_REGISTRY)}")
        target = _REGISTRY[tag]
        names = [f.name for f in fields(target)]  # type: ignore[arg-type]
        extra = set(data) - {"type", *names}
        if extra:
            raise QueryError(f"query type {tag!r} has unknown field(s) {sorted(extra)}")
        kwargs = {}
        for f in fields(target):  # type: ignore[arg-type]
            if f.name not in data:
                if f.default is _NO_DEFAULT:
                    raise QueryError(f"query type {tag!r} is missing field {f.name!r}")
                continue  # hand-written dicts may leave out fields that have defaults
            value = data[f.name]
            if f.name == "query":
                value = Query.from_dict(value)
            elif f.name == "queries":
                if not isinstance(value, list | tuple):
                    raise QueryError(f"query type {tag!r}: 'queries' must be a list")
                value = [Query.from_dict(v) for v in value]
            kwargs[f.name] = value
        kwargs = target._decode(kwargs)
        if target._varargs is not None:
            values = kwargs[target._varargs]
            if not isinstance(values, list | tuple):
                raise QueryError(f"query type {tag!r}: {target._varargs!r} must be a list")
            return target(*values)
        return target(**kwargs)

    @classmethod
    def _decode(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Where a field's serialised form differs from what the constructor takes.
        return kwargs

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`.

        >>> KeyPresent("sample").to_json()
        '{"type":"key_present","key":"sample"}'
        """
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Query:
        """Inverse of :meth:`to_json`.

        >>> Query.from_json('{"type":"key_present","key":"sample"}')
        KeyPresent(key='sample')
        """
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as err:
            raise QueryError(f"query is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def to_url(self) -> str:
        """URL-safe text: unpadded base64url of the compact JSON.

        >>> KeyPresent("a").to_url()
        'eyJ0eXBlIjoia2V5X3ByZXNlbnQiLCJrZXkiOiJhIn0'
        """
        return base64.urlsafe_b64encode(self.to_json().encode()).rstrip(b"=").decode("ascii")

    @classmethod
    def from_url(cls, text: str) -> Query:
        """Inverse of :meth:`to_url`.

        >>> Query.from_url('eyJ0eXBlIjoia2V5X3ByZXNlbnQiLCJrZXkiOiJhIn0')
        KeyPresent(key='a')
        """
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return cls.from_json(raw.decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, TypeError) as err:
            raise QueryError(f"query URL text {text!r} is not valid base64url: {err}") from None


def _flat(query: Query, kind: type[And] | type[Or]) -> tuple[Query, ...]:
    return query.queries if type(query) is kind else (query,)


def _check_query(query: Any, where: str) -> None:
    if not isinstance(query, Query):
        raise QueryError(f"{where} takes queries, got {type(query).__name__} {query!r}")


class Key:
    """Builder for keyed queries: comparison operators return :class:`Comparison`.

    >>> Key("sample.temp") >= 300
    Key('sample.temp') >= 300
    >>> Key("sample").in_(["Ni", "Cu"])
    In(key='sample', values=('Ni', 'Cu'))
    """

    __slots__ = ("key",)
    __hash__ = None  # type: ignore[assignment]  # == builds a query, so hashing is meaningless

    def __init__(self, key: str) -> None:
        split_key(key)
        self.key = key

    def __repr__(self) -> str:
        return f"Key({self.key!r})"

    def __eq__(self, value: Any) -> Comparison:  # type: ignore[override]
        return Comparison(self.key, "eq", value)

    def __ne__(self, value: Any) -> Comparison:  # type: ignore[override]
        return Comparison(self.key, "ne", value)

    def __lt__(self, value: Any) -> Comparison:
        return Comparison(self.key, "lt", value)

    def __le__(self, value: Any) -> Comparison:
        return Comparison(self.key, "le", value)

    def __gt__(self, value: Any) -> Comparison:
        return Comparison(self.key, "gt", value)

    def __ge__(self, value: Any) -> Comparison:
        return Comparison(self.key, "ge", value)

    def in_(self, values: Iterable[Any]) -> In:
        """``In(key, values)``."""
        return In(self.key, values)

    def not_in(self, values: Iterable[Any]) -> NotIn:
        """``NotIn(key, values)``."""
        return NotIn(self.key, values)

    def contains(self, value: Any) -> Contains:
        """``Contains(key, value)``."""
        return Contains(self.key, value)

    def regex(self, pattern: str, case_sensitive: bool = True) -> Regex:
        """``Regex(key, pattern, case_sensitive)``."""
        return Regex(self.key, pattern, case_sensitive)

    def present(self) -> KeyPresent:
        """``KeyPresent(key)``."""
        return KeyPresent(self.key)


@dataclass(frozen=True, repr=False)
class Comparison(Query, tag="comparison"):
    """``key <op> value`` with op in eq, ne, lt, le, gt, ge; usually built with :class:`Key`.

    >>> Comparison("sample", "eq", "Ni") == (Key("sample") == "Ni")
    True
    """

    key: str
    op: str
    value: str | int | float | bool | None

    def __post_init__(self) -> None:
        split_key(self.key)
        if self.op not in _OPS:
            raise QueryError(f"key {self.key!r}: unknown op {self.op!r}; use one of {list(_OPS)}")
        object.__setattr__(self, "value", _scalar(self.key, self.value))

    def __repr__(self) -> str:
        return f"Key({self.key!r}) {_OPS[self.op]} {self.value!r}"

    def __bool__(self) -> bool:
        # Catches ``1 < Key("a") < 5`` and ``if Key("a") == 1``, which would silently
        # drop half of the condition.
        raise TypeError(f"{self!r} has no truth value; combine queries with & | ~")

    def matches(self, record: Mapping[str, Any]) -> bool:
        value = _plain(lookup(record, self.key))
        if self.op in ("eq", "ne"):
            return scalar_equal(value, self.value) == (self.op == "eq")
        kind = _kind(value)
        if kind not in ("number", "str") or kind != _kind(self.value):
            return False
        return _ORDER[self.op](value, self.value)


def _values(key: str, values: Any) -> tuple[Any, ...]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise QueryError(f"key {key!r}: values must be a list of scalars, got {values!r}")
    return tuple(_scalar(key, v) for v in values)


# Shared bases stay private so that ``isinstance(q, In)`` never matches a NotIn (nor And an Or).
@dataclass(frozen=True)
class _Membership(Query):
    key: str
    values: tuple[str | int | float | bool | None, ...]

    def __post_init__(self) -> None:
        split_key(self.key)
        object.__setattr__(self, "values", _values(self.key, self.values))

    def _any_equal(self, record: Mapping[str, Any]) -> bool:
        value = lookup(record, self.key)
        return any(scalar_equal(value, v) for v in self.values)


@dataclass(frozen=True)
class In(_Membership, tag="in"):
    """The value at key equals (scalar_equal) one of values.

    >>> In("sample", ["Ni", "Cu"]).matches({"start": {"sample": "Cu"}, "stop": None})
    True
    """

    def matches(self, record: Mapping[str, Any]) -> bool:
        return self._any_equal(record)


@dataclass(frozen=True)
class NotIn(_Membership, tag="not_in"):
    """Exactly NOT :class:`In`: also matches runs lacking the key.

    >>> NotIn("sample", ["Ni"]).matches({"start": {}, "stop": None})
    True
    """

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self._any_equal(record)


@dataclass(frozen=True)
class Contains(Query, tag="contains"):
    """The value at key is a list with an element equal (scalar_equal) to value.

    >>> Contains("motors", "th").matches({"start": {"motors": ["th", "tth"]}, "stop": None})
    True
    """

    key: str
    value: str | int | float | bool | None

    def __post_init__(self) -> None:
        split_key(self.key)
        object.__setattr__(self, "value", _scalar(self.key, self.value))

    def matches(self, record: Mapping[str, Any]) -> bool:
        value = lookup(record, self.key)
        return isinstance(value, list | tuple) and any(scalar_equal(v, self.value) for v in value)


def _subdocument(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise QueryError(f"key {key!r}: SubDocument takes a dict, got {value!r}")
    out: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name or "." in name:
            raise QueryError(f"key {key!r}: field {name!r} of a sub-document must be a dotless str")
        path = f"{key}.{name}"
        out[name] = _subdocument(path, item) if isinstance(item, Mapping) else _scalar(path, item)
    return out


def _same_document(stored: Any, wanted: Mapping[str, Any]) -> bool:
    return (
        isinstance(stored, Mapping)
        and set(stored) == set(wanted)
        and all(
            _same_document(stored[k], v) if isinstance(v, Mapping) else scalar_equal(stored[k], v)
            for k, v in wanted.items()
        )
    )


@dataclass(frozen=True, eq=False)
class SubDocument(Query, tag="sub_document"):
    """The value at key is a dict with exactly these fields and values (in any order), as
    MongoDB's ``{"sample": {"name": "Cu"}}`` asks.

    >>> q = SubDocument("sample", {"name": "Cu"})
    >>> q.matches({"start": {"sample": {"name": "Cu"}}}), q.matches({"start": {"sample": {}}})
    (True, False)
    """

    key: str
    value: dict[str, Any]

    def __post_init__(self) -> None:
        split_key(self.key)
        object.__setattr__(self, "value", _subdocument(self.key, self.value))

    def _canonical(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)  # fields in any order are equal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubDocument) and other._canonical() == self._canonical()

    def __hash__(self) -> int:
        return hash(self._canonical())

    def leaves(self) -> list[tuple[str, Any]]:
        """Every (dotted key, value) of the sub-document, dicts before their fields.

        >>> SubDocument("s", {"a": {"b": 1}}).leaves()
        [('s', {'a': {'b': 1}}), ('s.a', {'b': 1}), ('s.a.b', 1)]
        """
        out, stack = [], [(self.key, self.value)]
        while stack:
            key, value = stack.pop(0)
            out.append((key, value))
            if isinstance(value, Mapping):
                stack[:0] = [(f"{key}.{k}", v) for k, v in value.items()]
        return out

    def matches(self, record: Mapping[str, Any]) -> bool:
        return _same_document(lookup(record, self.key), self.value)


@dataclass(frozen=True)
class Regex(Query, tag="regex"):
    """The value at key is a str in which ``re.search(pattern)`` finds a match.

    >>> Regex("sample", "^ni", case_sensitive=False).matches({"start": {"sample": "Ni"}})
    True
    """

    key: str
    pattern: str
    case_sensitive: bool = True

    def __post_init__(self) -> None:
        split_key(self.key)
        if not isinstance(self.pattern, str):
            raise QueryError(f"key {self.key!r}: pattern must be a str, got {self.pattern!r}")
        if not isinstance(self.case_sensitive, bool):
            raise QueryError(f"key {self.key!r}: case_sensitive must be a bool")
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise QueryError(f"key {self.key!r}: invalid regex {self.pattern!r}: {err}") from None

    def matches(self, record: Mapping[str, Any]) -> bool:
        value = lookup(record, self.key)
        flags = 0 if self.case_sensitive else re.IGNORECASE
        return isinstance(value, str) and re.search(self.pattern, value, flags) is not None


@dataclass(frozen=True)
class FullText(Query, tag="full_text"):
    """Every token of text is a token of some str value in the start document.

    >>> FullText("nickel foil").matches({"start": {"notes": ["Nickel_foil!"]}, "stop": None})
    True
    """

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not text_tokens(self.text):
            raise QueryError(f"full-text search {self.text!r} has no letters or digits")

    def matches(self, record: Mapping[str, Any]) -> bool:
        found: set[str] = set()
        stack = [record.get("start")]
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                found.update(text_tokens(value))
            elif isinstance(value, Mapping):
                stack.extend(value.values())
            elif isinstance(value, list | tuple):
                stack.extend(value)
        return found.issuperset(text_tokens(self.text))


@dataclass(frozen=True)
class KeyPresent(Query, tag="key_present"):
    """The key exists (its value may be anything, None included).

    >>> KeyPresent("stop.exit_status").matches({"start": {}, "stop": None})
    False
    """

    key: str

    def __post_init__(self) -> None:
        split_key(self.key)

    def matches(self, record: Mapping[str, Any]) -> bool:
        return lookup(record, self.key) is not MISSING


@dataclass(frozen=True, repr=False)
class TimeRange(Query, tag="time_range"):
    """Start ``time`` in [since, until); bounds are resolved to epoch seconds by parse_time.

    >>> q = TimeRange(since="2021-12-06", timezone="UTC")
    >>> q, q.since
    (TimeRange(since='2021-12-06 00:00:00+00:00', until=None, timezone='UTC'), 1638748800.0)
    """

    since: float | None = None
    until: float | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        if self.timezone is not None and not isinstance(self.timezone, str):
            raise QueryError(f"timezone must be an IANA name str, got {self.timezone!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                try:
                    seconds = parse_time(value, self.timezone)
                except QueryError as err:
                    raise QueryError(f"TimeRange {name}: {err}") from None
                object.__setattr__(self, name, seconds)
        if self.since is not None and self.until is not None and self.since > self.until:
            raise QueryError(f"{self!r}: since is after until")

    @classmethod
    def _decode(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The JSON form holds epoch seconds, which the constructor takes only when marked.
        return {
            name: epoch(value) if name in ("since", "until") and _is_number(value) else value
            for name, value in kwargs.items()
        }

    def _show(self, t: float | None) -> str:
        if t is None:
            return "None"
        try:
            zone = _zone(self.timezone)
            text = datetime.fromtimestamp(t, zone).astimezone(zone).isoformat(" ")
        except (OverflowError, OSError, ValueError):
            return repr(epoch(t))
        # Show the readable form only if it parses back to exactly the same float.
        return repr(text) if parse_time(text) == t else repr(epoch(t))

    def __repr__(self) -> str:
        since, until = self._show(self.since), self._show(self.until)
        return f"TimeRange(since={since}, until={until}, timezone={self.timezone!r})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        t = _plain(lookup(record, "time"))
        return (
            _is_number(t)
            and (self.since is None or self.since <= t)
            and (self.until is None or t < self.until)
        )


def _int(value: Any, what: str) -> int:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueryError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


@dataclass(frozen=True, init=False, repr=False)
class ScanID(Query, tag="scan_id"):
    """Start ``scan_id`` equals one of the given ints.

    >>> ScanID(3, 4).matches({"start": {"scan_id": 4}, "stop": None})
    True
    """

    _varargs = "scan_ids"
    scan_ids: tuple[int, ...]

    def __init__(self, *scan_ids: int) -> None:
        if not scan_ids:
            raise QueryError("ScanID needs at least one scan id")
        object.__setattr__(self, "scan_ids", tuple(_int(s, "scan id") for s in scan_ids))

    def __repr__(self) -> str:
        return f"ScanID({', '.join(map(repr, self.scan_ids))})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        scan_id = _plain(lookup(record, "scan_id"))
        return _is_number(scan_id) and scan_id in self.scan_ids


@dataclass(frozen=True)
class ScanIDRange(Query, tag="scan_id_range"):
    """Start ``scan_id`` in [start_id, end_id), like databroker's ``ScanIDRange``.

    >>> ScanIDRange(10, 20).matches({"start": {"scan_id": 20}, "stop": None})
    False
    """

    start_id: int
    end_id: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_id", _int(self.start_id, "start_id"))
        object.__setattr__(self, "end_id", _int(self.end_id, "end_id"))
        if self.start_id > self.end_id:
            raise QueryError(f"ScanIDRange start_id {self.start_id} > end_id {self.end_id}")

    def matches(self, record: Mapping[str, Any]) -> bool:
        scan_id = _plain(lookup(record, "scan_id"))
        return _is_number(scan_id) and self.start_id <= scan_id < self.end_id


@dataclass(frozen=True, init=False, repr=False)
class PartialUID(Query, tag="partial_uid"):
    """Start ``uid`` begins with one of the given non-empty prefixes.

    >>> PartialUID("a1b2").matches({"start": {"uid": "a1b2c3"}, "stop": None})
    True
    """

    _varargs = "prefixes"
    prefixes: tuple[str, ...]

    def __init__(self, *prefixes: str) -> None:
        if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
            raise QueryError(f"PartialUID needs non-empty str prefixes, got {prefixes!r}")
        object.__setattr__(self, "prefixes", tuple(str(p) for p in prefixes))

    def __repr__(self) -> str:
        return f"PartialUID({', '.join(map(repr, self.prefixes))})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        uid = lookup(record, "uid")
        return isinstance(uid, str) and uid.startswith(self.prefixes)


@dataclass(frozen=True, init=False, repr=False)
class _Combination(Query):
    _varargs = "queries"
    queries: tuple[Query, ...]

    def __init__(self, *queries: Query) -> None:
        for q in queries:
            _check_query(q, type(self).__name__)
        object.__setattr__(self, "queries", queries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.queries))})"


@dataclass(frozen=True, init=False, repr=False)
class And(_Combination, tag="and"):
    """All sub-queries match (an empty And matches every run).

    >>> And(ScanID(1), PartialUID("ab")) == (ScanID(1) & PartialUID("ab"))
    True
    """

    def matches(self, record: Mapping[str, Any]) -> bool:
        return all(q.matches(record) for q in self.queries)


@dataclass(frozen=True, init=False, repr=False)
class Or(_Combination, tag="or"):
    """Any sub-query matches (an empty Or matches no run).

    >>> Or(ScanID(1), ScanID(2)) == (ScanID(1) | ScanID(2))
    True
    """

    def matches(self, record: Mapping[str, Any]) -> bool:
        return any(q.matches(record) for q in self.queries)


@dataclass(frozen=True, repr=False)
class Not(Query, tag="not"):
    """The sub-query does not match.

    >>> Not(ScanID(1)) == ~ScanID(1)
    True
    """

    query: Query

    def __post_init__(self) -> None:
        _check_query(self.query, "Not")

    def __repr__(self) -> str:
        return f"Not({self.query!r})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self.query.matches(record)


class _Comparing:
    """What waits for a comparison to become a query (``Field(...).sum() > 10``,
    ``Config("det", "exposure") > 0.5``): each operator calls ``_cmp(op, value)``."""

    __hash__ = None  # type: ignore[assignment]  # == builds a query

    def _cmp(self, op: str, value: Any) -> Query:
        raise NotImplementedError

    def __eq__(self, value: Any) -> Query:  # type: ignore[override]
        return self._cmp("eq", value)

    def __ne__(self, value: Any) -> Query:  # type: ignore[override]
        return self._cmp("ne", value)

    def __lt__(self, value: Any) -> Query:
        return self._cmp("lt", value)

    def __le__(self, value: Any) -> Query:
        return self._cmp("le", value)

    def __gt__(self, value: Any) -> Query:
        return self._cmp("gt", value)

    def __ge__(self, value: Any) -> Query:
        return self._cmp("ge", value)


# --- notes


def _note_seen(note: Mapping[str, Any], viewer: Viewer | None) -> bool:
    """Whether a query bound to ``viewer`` sees ``note``: an unbound query (``viewer`` None)
    sees the public and group notes, never a private one."""
    if note.get("deleted"):
        return False
    if viewer is None:
        return note.get("visibility") != "private"
    return visible(note, viewer)


def _noted(record: Mapping[str, Any], viewer: Viewer | None, kinds: tuple[str, ...]) -> list:
    """The current notes of ``kinds`` in ``record["notes"]`` that ``viewer`` sees."""
    notes = record.get("notes")
    if not isinstance(notes, list | tuple):
        return []
    return [n for n in notes if n.get("kind") in kinds and _note_seen(n, viewer)]


class _NoteQuery(Query):
    """A query on what was said about runs (``runbroker.notes``): it answers for one reader,
    its ``viewer``. The JSON form never holds the viewer, and reading one back drops a
    ``"viewer"`` field: a server binds its own caller (``runbroker.notes.bind``)."""

    viewer: Viewer | None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("viewer", None)
        return out

    @classmethod
    def _decode(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.pop("viewer", None)
        return kwargs


@dataclass(frozen=True)
class Tag(_NoteQuery, tag="tag"):
    """A current tag or annotation its reader may see carries ``tag`` (exactly, after
    stripping spaces at its ends).

    >>> record = {"start": {}, "stop": None, "notes": [
    ...     {"kind": "tag", "tags": ["calibration"], "visibility": "group", "author": "ada"}]}
    >>> Tag("calibration").matches(record), Tag("bad").matches(record)
    (True, False)
    >>> Tag("calibration").to_dict()
    {'type': 'tag', 'tag': 'calibration'}
    """

    tag: str
    viewer: Viewer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not self.tag.strip():
            raise QueryError(f"Tag needs a non-empty str, got {self.tag!r}")
        object.__setattr__(self, "tag", self.tag.strip())
        if self.viewer is not None and not isinstance(self.viewer, Viewer):
            raise QueryError(f"Tag: viewer must be a runbroker.notes.Viewer, got {self.viewer!r}")

    def __repr__(self) -> str:
        return f"Tag({self.tag!r})" if self.viewer is None else f"Tag({self.tag!r}, {self.viewer})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        return any(self.tag in n["tags"] for n in _noted(record, self.viewer, _TAGGED))


@dataclass(frozen=True)
class Annotation(_NoteQuery, tag="annotation"):
    """A current annotation its reader may see has ``text`` in its text: a case-insensitive
    substring (``"burn"`` finds "Sample BURNED"; ``"sample burned"`` finds that phrase, not
    the two words apart -- combine two queries with ``&`` for that).
    ``Annotation.contains(text)`` makes one.

    >>> record = {"start": {}, "stop": None, "notes": [{"kind": "annotation", "tags": [],
    ...     "text": "Sample BURNED at 300 K", "visibility": "public", "author": "ada"}]}
    >>> Annotation.contains("burned").matches(record), Annotation("300 k").matches(record)
    (True, True)
    """

    text: str
    viewer: Viewer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise QueryError(f"Annotation.contains needs a non-empty str, got {self.text!r}")
        if self.viewer is not None and not isinstance(self.viewer, Viewer):
            raise QueryError(
                f"Annotation: viewer must be a runbroker.notes.Viewer, got {self.viewer!r}"
            )

    @classmethod
    def contains(cls, text: str) -> Annotation:
        """Runs with a visible annotation whose text contains ``text`` (any case).

        >>> Annotation.contains("burned")
        Annotation(text='burned')
        """
        return cls(text)

    def __repr__(self) -> str:
        if self.viewer is None:
            return f"Annotation(text={self.text!r})"
        return f"Annotation(text={self.text!r}, viewer={self.viewer})"

    def matches(self, record: Mapping[str, Any]) -> bool:
        needle = self.text.casefold()
        found = _noted(record, self.viewer, ("annotation",))
        return any(needle in n.get("text", "").casefold() for n in found)


def bind(query: Query | None, viewer: Viewer) -> Query | None:
    """``query`` with every note query in it (``Tag``, ``Annotation``) answering for
    ``viewer``; the query itself when it holds none.

    Example:
        >>> from runbroker.notes import Viewer
        >>> bind((Key("a") == 1) & ~Tag("x"), Viewer("ada"))
        And(Key('a') == 1, Not(Tag('x', Viewer(name='ada', groups=None, admin=False))))
    """
    if isinstance(query, Tag | Annotation):
        return replace(query, viewer=viewer)
    if isinstance(query, And | Or):
        parts = tuple(bind(part, viewer) for part in query.queries)
        same = all(a is b for a, b in zip(parts, query.queries, strict=True))
        return query if same else type(query)(*parts)
    if isinstance(query, Not):
        inner = bind(query.query, viewer)
        return query if inner is query.query else Not(inner)  # type: ignore[arg-type]
    return query


# The kinds of note whose tags Tag finds.
_TAGGED = ("tag", "annotation")
# --- statistics

#: The per-field statistics stored when a run stops (see docs/data-search.md).
STATS = ("count", "min", "max", "mean", "sum", "nan")


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(f"Field {what} must be a non-empty str, got {value!r}")
    return value


def stat_of(record: Mapping[str, Any], stream: str, field: str, stat: str) -> Any:
    """The statistic ``stat`` of ``stream``'s ``field`` in a run record's ``"stats"``, or
    MISSING (no statistics, or not a finite number).

    >>> stat_of({"stats": {"primary": {"x": {"min": 1.5}}}}, "primary", "x", "min")
    1.5
    >>> stat_of({"start": {}}, "primary", "x", "min")
    MISSING
    """
    stats = record.get("stats")
    value = MISSING
    if isinstance(stats, Mapping):
        by_field = stats.get(stream)
        if isinstance(by_field, Mapping) and isinstance(by_field.get(field), Mapping):
            value = _plain(by_field[field].get(stat, MISSING))
    if not _is_number(value) or not math.isfinite(value):
        return MISSING
    return value


@dataclass(frozen=True)
class FieldStat(Query, tag="field_stat"):
    """A statistic of a stream's field compared with a number; built with :class:`Field`.

    ``stat`` is one of count, min, max, mean, sum, nan (see :data:`STATS`). A run matches when
    it has that statistic for the field and ``stat <op> value`` holds. A run without it (not
    stopped, statistics not computed, the field not numeric, or ``min`` of only NaN) matches
    no comparison, ``!=`` included: ``~(f == 1)`` is not ``f != 1``.

    >>> q = Field("primary", "theta").min() > 0
    >>> q.matches({"stats": {"primary": {"theta": {"min": 0.5}}}})
    True
    >>> Query.from_dict(q.to_dict()) == q
    True
    """

    stream: str
    field: str
    stat: str
    op: str
    value: int | float

    def __post_init__(self) -> None:
        _name("stream", self.stream)
        _name("field", self.field)
        where = f"Field({self.stream!r}, {self.field!r})"
        if self.stat not in STATS:
            raise QueryError(f"{where}: unknown statistic {self.stat!r}; use one of {STATS}")
        if self.op not in _OPS:
            raise QueryError(f"{where}: unknown op {self.op!r}; use one of {list(_OPS)}")
        value = _scalar(where, self.value)
        if _kind(value) != "number":
            raise QueryError(f"{where}.{self.stat}(): compare with a number, got {value!r}")
        object.__setattr__(self, "value", value)

    def __repr__(self) -> str:
        field = f"Field({self.stream!r}, {self.field!r}).{self.stat}()"
        return f"{field} {_OPS[self.op]} {self.value!r}"

    def __bool__(self) -> bool:
        raise TypeError(f"{self!r} has no truth value; combine queries with & | ~")

    def matches(self, record: Mapping[str, Any]) -> bool:
        value = stat_of(record, self.stream, self.field, self.stat)
        if value is MISSING:
            return False
        if self.op in ("eq", "ne"):
            return (value == self.value) == (self.op == "eq")
        return _ORDER[self.op](value, self.value)


@dataclass(frozen=True, eq=False)
class _StatOf(_Comparing):
    """One statistic of a field, waiting for a comparison (``Field(...).sum() > 10``)."""

    stream: str
    field: str
    stat: str

    def _cmp(self, op: str, value: Any) -> FieldStat:
        return FieldStat(self.stream, self.field, self.stat, op, value)


@dataclass(frozen=True)
class Field:
    """Builder for data-aware queries on a stream's field, answered from the statistics
    stored when each run stopped (for array fields: over the per-frame sums).

    ``stream`` and ``field`` are plain attributes: ``dataclasses.replace(f, field="th")``
    gives the same query on another field (each :class:`FieldStat` likewise).

    >>> Field("primary", "theta").between(0, 5)
    And(Field('primary', 'theta').min() >= 0, Field('primary', 'theta').max() <= 5)
    >>> Field("primary", "fccd_image").sum() > 1000
    Field('primary', 'fccd_image').sum() > 1000
    """

    stream: str
    field: str

    def __post_init__(self) -> None:
        _name("stream", self.stream)
        _name("field", self.field)

    def _stat(self, stat: str) -> _StatOf:
        return _StatOf(self.stream, self.field, stat)

    def count(self) -> _StatOf:
        """The number of values (events), NaN included."""
        return self._stat("count")

    def min(self) -> _StatOf:
        """The smallest value, NaN left out."""
        return self._stat("min")

    def max(self) -> _StatOf:
        """The largest value, NaN left out."""
        return self._stat("max")

    def mean(self) -> _StatOf:
        """The mean of the values, NaN left out."""
        return self._stat("mean")

    def sum(self) -> _StatOf:
        """The sum of the values, NaN left out."""
        return self._stat("sum")

    def nan(self) -> _StatOf:
        """The number of NaN values."""
        return self._stat("nan")

    def between(self, low: float, high: float) -> Query:
        """Every (non-NaN) value in [low, high]: ``min >= low`` and ``max <= high``."""
        return (self.min() >= low) & (self.max() <= high)


__all__ += ["STATS", "Field", "FieldStat", "stat_of"]


# --- hardware
# Devices, configuration readings and data keys, as the run's descriptors record them (see
# runbroker.hardware, which turns descriptors into the facts these queries look up).

from . import hardware as _hw  # noqa: E402  (kept with its part of the module)

__all__ += ["Config", "ConfigReading", "DataKey", "Device"]


def _hw_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(f"{what} must be a non-empty str, got {value!r}")
    return value


def _hw_stream(value: Any) -> str | None:
    return None if value is None else _hw_name("stream", value)


def _facts(record: Mapping[str, Any]) -> dict[str, list[Any]]:
    return _hw.facts(record.get("descriptors") or ())


def _compare(op: str, stored: Any, value: Any) -> bool:
    """``stored <op> value`` as :class:`Comparison` means it (``ne`` is left to the caller)."""
    stored = _plain(stored)
    if op == "eq":
        return scalar_equal(stored, value)
    kind = _kind(stored)
    return kind in ("number", "str") and kind == _kind(value) and _ORDER[op](stored, value)


@dataclass(frozen=True)
class Device(Query, tag="device"):
    """A device (``object_keys`` or ``configuration`` of a descriptor) took part in the run,
    in stream ``stream`` if given.

    >>> desc = {"name": "primary", "object_keys": {"fccd": ["fccd_image"]}, "data_keys": {}}
    >>> Device("fccd").matches({"start": {}, "descriptors": [desc]})
    True
    >>> Device("fccd", stream="baseline").matches({"start": {}, "descriptors": [desc]})
    False
    """

    name: str
    stream: str | None = None

    def __post_init__(self) -> None:
        _hw_name("Device name", self.name)
        _hw_stream(self.stream)

    def matches(self, record: Mapping[str, Any]) -> bool:
        found = _facts(record).get(_hw.device_key(self.stream), [])
        return any(scalar_equal(v, self.name) for v in found)


class Config(_Comparing):
    """Builder of configuration queries: ``Config("fccd", "acquire_time") > 0.5``.

    ``name`` is the reading's key in ``configuration[device]["data"]``, or that key without
    the ``<device>_`` prefix ophyd gives it (``Config("det", "sigma")`` finds ``det_sigma``).
    The comparisons mean what they mean for :class:`Key`, tested against each descriptor's
    reading (of ``stream``, if given): one is enough. ``!=`` is exactly NOT ``==``.

    >>> Config("det", "sigma") > 0.5
    Config('det', 'sigma') > 0.5
    >>> Config("det", "mode", stream="primary").in_(["fast", "slow"])
    Config('det', 'mode', stream='primary').in_(('fast', 'slow'))
    """

    __slots__ = ("device", "name", "stream")

    def __init__(self, device: str, name: str, stream: str | None = None) -> None:
        self.device = _hw_name("Config device", device)
        self.name = _hw_name("Config name", name)
        self.stream = _hw_stream(stream)

    def __repr__(self) -> str:
        where = "" if self.stream is None else f", stream={self.stream!r}"
        return f"Config({self.device!r}, {self.name!r}{where})"

    def _cmp(self, op: str, value: Any) -> ConfigReading:
        return ConfigReading(self.device, self.name, op, value, self.stream)

    def in_(self, values: Iterable[Any]) -> ConfigReading:
        """The reading equals one of ``values``."""
        return self._cmp("in", values)


@dataclass(frozen=True, repr=False)
class ConfigReading(Query, tag="config"):
    """A configuration reading ``<op> value`` (op: eq ne lt le gt ge, or ``in`` a list of
    values); built with :class:`Config`, whose docstring says what it means.

    >>> desc = {"name": "primary", "configuration": {"det": {"data": {"det_sigma": 2.0}}}}
    >>> (Config("det", "sigma") > 0.5).matches({"start": {}, "descriptors": [desc]})
    True
    >>> Query.from_dict((Config("det", "sigma") >= 1).to_dict())
    Config('det', 'sigma') >= 1
    """

    device: str
    name: str
    op: str
    value: Any
    stream: str | None = None

    def __post_init__(self) -> None:
        Config(self.device, self.name, self.stream)  # checks the names
        what = f"Config({self.device!r}, {self.name!r})"
        if self.op == "in":
            value: Any = _values(what, self.value)
        elif self.op in _OPS:
            value = _scalar(what, self.value)
        else:
            raise QueryError(f"{what}: unknown op {self.op!r}; use one of {[*_OPS, 'in']}")
        object.__setattr__(self, "value", value)

    def __repr__(self) -> str:
        builder = repr(Config(self.device, self.name, self.stream))
        if self.op == "in":
            return f"{builder}.in_({self.value!r})"
        return f"{builder} {_OPS[self.op]} {self.value!r}"

    def __bool__(self) -> bool:
        raise TypeError(f"{self!r} has no truth value; combine queries with & | ~")

    @property
    def keys(self) -> list[str]:
        """The keys of the reading's facts (see :func:`runbroker.hardware.config_keys`)."""
        return _hw.config_keys(self.stream, self.device, self.name)

    def matches(self, record: Mapping[str, Any]) -> bool:
        facts = _facts(record)
        found = [v for key in self.keys for v in facts.get(key, [])]
        if self.op == "ne":
            return not any(scalar_equal(v, self.value) for v in found)
        wanted = self.value if self.op == "in" else (self.value,)
        op = "eq" if self.op == "in" else self.op
        return any(_compare(op, v, w) for v in found for w in wanted)


@dataclass(frozen=True, repr=False)
class DataKey(Query, tag="data_key"):
    """The run records data key ``field`` (in stream ``stream`` if given) with these
    properties; only those given are tested.

    ``shape`` is a list of ints (``[]`` for a scalar); ``dtype``, ``source`` and
    ``dtype_numpy`` are strs; ``external`` is a str (``"FILESTORE:"``), True (the data is in
    files) or False (no descriptor says it is). A run with several descriptors for the stream
    matches when each property is held by the field in one of them.

    >>> desc = {"name": "primary", "data_keys": {"img": {
    ...     "dtype": "array", "shape": [5, 5], "source": "PV:img", "external": "FILESTORE:"}}}
    >>> record = {"start": {}, "descriptors": [desc]}
    >>> DataKey("img", shape=[5, 5], external=True).matches(record)
    True
    >>> DataKey("img", dtype="number").matches(record)
    False
    """

    field: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    external: str | bool | None = None
    source: str | None = None
    dtype_numpy: str | None = None
    stream: str | None = None

    def __post_init__(self) -> None:
        _hw_name("DataKey field", self.field)
        _hw_stream(self.stream)
        if self.shape is not None:
            shape = self.shape
            if isinstance(shape, str | bytes | Mapping) or not isinstance(shape, Iterable):
                raise QueryError(f"DataKey {self.field!r}: shape must be a list of ints")
            object.__setattr__(self, "shape", tuple(_int(s, "a shape's size") for s in shape))
        for prop in ("dtype", "source", "dtype_numpy"):
            if getattr(self, prop) is not None:
                _hw_name(f"DataKey {self.field!r}: {prop}", getattr(self, prop))
        if self.external is not None and not isinstance(self.external, bool):
            _hw_name(f"DataKey {self.field!r}: external (a str, True or False)", self.external)

    def __repr__(self) -> str:
        given = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)[1:]]
        shown = [g for g in given if not g.endswith("=None")]
        return f"DataKey({', '.join([repr(self.field), *shown])})"

    def tests(self) -> list[tuple[str, Any]]:
        """``(fact key, wanted)`` of every test: the field's ``dtype`` (wanted: ``True``, any
        value, when no dtype is given), then each property given. ``external`` wants True (a
        value) or False (none), or a value."""
        key = _hw.data_key_key
        out: list[tuple[str, Any]] = []
        for prop in _hw.DATA_KEY_PROPERTIES:
            value = getattr(self, prop)
            if prop == "dtype" and value is None:
                value = True  # the data key is recorded: it has a dtype
            if value is not None:
                wanted = _hw.shape_text(value) if prop == "shape" else value
                out.append((key(self.stream, self.field, prop), wanted))
        return out

    def matches(self, record: Mapping[str, Any]) -> bool:
        found = _facts(record)
        for key, wanted in self.tests():
            values = found.get(key, [])
            if isinstance(wanted, bool):
                ok = bool(values) == wanted
            else:
                ok = any(scalar_equal(v, wanted) for v in values)
            if not ok:
                return False
        return True
