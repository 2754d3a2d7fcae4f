"""Event-model documents: names, validation and the errors people read.

Every document is checked against event-model's own JSON schemas. We compile them once with
``jsonschema-rs`` (about 1 µs per event instead of ~130 µs with pure-Python ``jsonschema``),
so validating every single event costs little next to storing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema_rs
import numpy as np
from event_model import DocumentNames, schemas

__all__ = [
    "DOCUMENT_NAMES",
    "ConflictError",
    "DocumentError",
    "UnknownParentError",
    "describe",
    "to_builtin",
    "validate",
]

DOCUMENT_NAMES: tuple[str, ...] = (
    "start",
    "descriptor",
    "event",
    "event_page",
    "resource",
    "datum",
    "datum_page",
    "stream_resource",
    "stream_datum",
    "stop",
)

# Which key holds each document's identity (datum documents use datum_id, not uid).
_ID_KEY = {"datum": "datum_id", "datum_page": "datum_id"}

# Errors caused by an earlier failure in the same document are less useful to a person,
# so report the most specific kind first.
_KIND_RANK = {"required": 0, "type": 1, "unevaluatedProperties": 9, "additionalProperties": 8}


class DocumentError(ValueError):
    """A document was refused. The message names the document type, its uid and the key.

    Attributes ``name``, ``uid`` and ``key`` carry the same facts for programs.

    Example:
        >>> try:
        ...     validate("stop", {"uid": "s1", "time": 0.0, "exit_status": "success"})
        ... except DocumentError as err:
        ...     print(err.name, err.uid, err.key)
        stop s1 run_start
    """

    def __init__(self, name: str, uid: Any, key: str | None, reason: str) -> None:
        self.name, self.uid, self.key, self.reason = name, uid, key, reason
        where = f" at key {key!r}" if key else ""
        super().__init__(f"Invalid {name} document {describe(name, uid)}{where}: {reason}")


class UnknownParentError(DocumentError):
    """A document points at a parent (run, descriptor, resource) that the store has not seen."""

    @classmethod
    def missing(cls, name: str, uid: Any, key: str, parent: Any) -> UnknownParentError:
        """The error for a ``name`` document whose ``key`` names ``parent``, not stored.

        Example:
            >>> print(UnknownParentError.missing("stop", "s1", "run_start", "r1"))
            Invalid stop document (uid 's1') at key 'run_start': refers to run 'r1', which is \
not in this catalog (insert its start document first)
        """
        kind, hint = _PARENTS[key]
        return cls(
            name, uid, key, f"refers to {kind} {parent!r}, which is not in this catalog{hint}"
        )


# What each key that names a parent points at, and what to do when it is missing.
_PARENTS = {
    "run_start": ("run", " (insert its start document first)"),
    "descriptor": ("descriptor", " (insert the descriptor before its events)"),
    "resource": ("resource", ""),
    "stream_resource": ("stream_resource", ""),
}


class ConflictError(DocumentError):
    """A document reuses the uid of a stored document but differs from it."""


def describe(name: str, uid: Any) -> str:
    """Short human form of a document's identity, e.g. ``(uid 'ab12…')``.

    Example:
        >>> describe("event_page", ["a", "b", "c"])
        "(uids 'a' … 'c', 3 events)"
    """
    if isinstance(uid, list):
        if not uid:
            return "(empty page)"
        unit = "datums" if name.startswith("datum") else "events"
        return f"(uids {uid[0]!r} … {uid[-1]!r}, {len(uid)} {unit})"
    return f"(uid {uid!r})" if uid is not None else "(no uid)"


@cache
def _validator(name: str) -> Any:
    return jsonschema_rs.validator_for(schemas[DocumentNames[name]])


def validate(name: str, doc: Any) -> dict:
    """Check ``doc`` against event-model's schema for ``name`` and return it as a plain dict.

    numpy scalars and arrays are accepted (devices produce them) and validated as the JSON
    values they stand for; the returned document is the one given, not a copy.

    Example:
        >>> stop = {"uid": "s1", "run_start": "r1", "time": 0.0, "exit_status": "success"}
        >>> validate("stop", stop) is stop
        True
    """
    if type(doc) is not dict and not isinstance(doc, Mapping):
        raise DocumentError(str(name), None, None, f"expected a dict, got {type(doc).__name__}")
    if name not in DOCUMENT_NAMES:
        raise DocumentError(
            str(name), _uid(name, doc), None, f"unknown document type; expected {DOCUMENT_NAMES}"
        )
    validator = _validator(name)
    if name == "event_page":
        doc_view = _page_skeleton(doc)
        if doc_view is not None and validator.is_valid(doc_view):
            return doc  # type: ignore[return-value]
    # jsonschema-rs does not know numpy types (it refuses them or calls them invalid), so a
    # document that fails is judged again on JSON views of it: first one that converts only
    # the top two levels, where event pages keep their arrays, then a full one.
    views = (
        lambda: doc,
        lambda: {
            k: {kk: _array_view(vv, exact=False) for kk, vv in v.items()}
            if isinstance(v, dict)
            else _array_view(v)
            for k, v in doc.items()
        },
        lambda: _schema_view(doc),
    )
    for view in views:
        try:
            if validator.is_valid(view()):
                return doc  # type: ignore[return-value]
        except ValueError:
            continue
    found = list(validator.iter_errors(_schema_view(doc)))
    errors = sorted(found, key=lambda e: _KIND_RANK.get(e.kind.name, 5))
    err = errors[0]
    path = [str(p) for p in err.instance_path]
    kind = err.kind
    if kind.name == "required":
        path.append(str(kind.property))
    elif kind.name in ("unevaluatedProperties", "additionalProperties"):
        path.append(",".join(map(str, kind.unexpected)))
    reason = err.message.splitlines()[0]
    raise DocumentError(name, _uid(name, doc), ".".join(path) or None, reason)


# One element stands for a whole numeric array: every element has the same JSON type, so the
# schema's verdict is the same, without converting a million numbers to Python objects.
_REPRESENTATIVE = {"f": 0.0, "i": 0, "u": 0, "b": False}


def _uid(name: str, doc: Mapping) -> Any:
    return doc.get(_ID_KEY.get(name, "uid"), doc.get("uid", doc.get("datum_id")))


def _page_skeleton(doc: Mapping) -> dict | None:
    """An event page with its data and timestamps columns emptied, or None if not possible.

    event-model's schema puts no constraint on the items of those columns (``"items": {}``),
    only that each is an array; their lengths are checked when the page is stored. Judging
    the skeleton is therefore the same verdict, without walking thousands of values.
    """
    view = dict(doc)
    for part in ("data", "timestamps"):
        columns = doc.get(part)
        if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
            return None
        view[part] = {key: [] for key in columns}
    return view


def _array_view(value: Any, exact: bool = True) -> Any:
    # Second-level arrays (an event page's data and timestamps columns) have no item type in
    # any event-model schema, so any representative will do there.
    if not exact and isinstance(value, np.ndarray) and value.ndim == 1 and value.size:
        return [0.0] if value.dtype.kind in "fiub" else value.tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return _schema_view(value)
    return value


def _schema_view(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _schema_view(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_schema_view(v) for v in value]
    if isinstance(value, np.ndarray):
        rep = _REPRESENTATIVE.get(value.dtype.kind)
        if rep is not None and value.ndim == 1:
            if rep == 0.0 and not np.all(np.mod(value, 1) == 0):
                rep = 0.5  # JSON Schema counts 2.0 as an integer, but not 2.5
            return [rep] if value.size else []
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_builtin(value: Any) -> Any:
    """Convert numpy scalars/arrays nested in ``value`` to Python lists and scalars.

    Example:
        >>> to_builtin({"x": np.arange(2), "y": np.float32(1.5)})
        {'x': [0, 1], 'y': 1.5}
    """
    if isinstance(value, dict):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value
