"""Why a search found nothing: a key no run has, or a value of a type the key never holds.

Worked out only after a search has returned nothing, with a few searches of the Store
protocol (so it holds for every store), and reported once per catalog and key as an
:class:`~runbroker.queries.EmptySearchWarning`. The search itself still returns nothing.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any
from weakref import WeakKeyDictionary

from .queries import (
    And,
    Comparison,
    Contains,
    EmptySearchWarning,
    In,
    Key,
    KeyPresent,
    Not,
    NotIn,
    Or,
    Query,
    Regex,
    SubDocument,
    lookup,
)
from .store.base import Store
from .store.flatten import flatten
from .store.keyindex import user_key

__all__ = ["warn_if_unknown"]

# The newest runs whose keys are offered as the nearest ones to a key no run has.
_SAMPLE = 200

# Per store: the (key, value type) pairs already looked into, and the keys warned about.
_checked: WeakKeyDictionary[Any, set[tuple[str, str | None]]] = WeakKeyDictionary()
_warned: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()


def warn_if_unknown(store: Store, queries: Iterable[Query]) -> None:
    """Warn about the keys of ``queries`` (whose search found nothing) that explain why.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_if_unknown(cat.store, [Key("plan_nam") == "scan"])
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        no run in ... has the key 'plan_nam'; nearest keys: 'plan_name', ...
    """
    checked = _checked.setdefault(store, set())
    warned = _warned.setdefault(store, set())
    leaves = [leaf for query in queries for leaf in _leaves(query)]
    todo = [(key, kind, leaf) for key, kind, leaf in leaves if (key, kind) not in checked]
    if not todo or not store.search(None, limit=1):
        return  # nothing new to look into, or a catalog without runs, which has no keys
    for key, kind, leaf in todo:
        checked.add((key, kind))
        if key in warned:
            continue
        message = _absent(store, key) if kind is None else _mismatch(store, key, kind, leaf)
        if message:
            warned.add(key)
            warnings.warn(message, EmptySearchWarning, stacklevel=3)


def _leaves(query: Query) -> Iterator[tuple[str, str | None, Query]]:
    """(key, type of the value compared with, or None, leaf query) of each keyed leaf."""
    if isinstance(query, And | Or):
        for sub in query.queries:
            yield from _leaves(sub)
    elif isinstance(query, Not):
        yield from _leaves(query.query)
    elif isinstance(query, Comparison):
        yield query.key, None, query
        yield query.key, _kind(query.value), query
    elif isinstance(query, In | NotIn):
        yield query.key, None, query
        kinds = {_kind(v) for v in query.values}
        if len(kinds) == 1:
            yield query.key, kinds.pop(), query
    elif isinstance(query, Regex):
        yield query.key, None, query
        yield query.key, "str", query
    elif isinstance(query, Contains | KeyPresent | SubDocument):
        yield query.key, None, query


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "str" if isinstance(value, str) else "number"


def _absent(store: Store, key: str) -> str | None:
    if store.search(KeyPresent(key), limit=1):
        return None
    known = set()
    for record in store.search(None, limit=_SAMPLE):
        for document in ("start", "stop"):
            rows = flatten(document, getattr(record, document) or {})
            known.update(user_key(row[0]) for row in rows)
    nearest = difflib.get_close_matches(key, sorted(known), n=5)
    hint = (
        f"nearest keys: {', '.join(map(repr, nearest))}"
        if nearest
        else f"none of the newest {_SAMPLE} runs has a key like it"
    )
    return f"no run in {store.uri} has the key {key!r}; {hint}"


def _mismatch(store: Store, key: str, kind: str, leaf: Query) -> str | None:
    probes = {
        "str": Key(key) >= "",
        "number": (Key(key) >= 0) | (Key(key) < 0),
        "bool": In(key, [True, False]),
        "null": Key(key) == None,  # noqa: E711 (builds a query)
    }
    if store.search(probes[kind], limit=1):
        return None
    found = store.search(KeyPresent(key), limit=1)
    if not found:
        return None  # no run has the key: warned about as such
    value = lookup({"start": found[0].start, "stop": found[0].stop}, key)
    hint = f"; Contains({key!r}, ...) matches list elements" if isinstance(value, list) else ""
    return (
        f"{leaf!r} matches no run: {key!r} never holds a {kind} value in {store.uri} "
        f"(it holds e.g. {value!r}, of type {type(value).__name__}){hint}"
    )
