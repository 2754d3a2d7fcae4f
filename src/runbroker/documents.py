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

from .errors import ConflictError, DocumentError, UnknownParentError, describe

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
        try:
            if doc_view is not None and validator.is_valid(doc_view):
                return doc  # type: ignore[return-value]
        except ValueError:
            pass  # numpy values elsewhere in the page (its filled columns): judged below
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
    the skeleton is therefore the same verdict, without walking thousands of values. Other
    columns given as numpy arrays (``time``, ``seq_num``) become what :func:`_schema_view`
    makes of them: one value of the JSON type all of theirs have.

    Example:
        >>> page = {"time": np.zeros(2), "seq_num": np.arange(2), "data": {"x": np.ones(2)}}
        >>> _page_skeleton(dict(page, timestamps={"x": [0.0, 0.0]}))
        {'time': [0.0], 'seq_num': [0], 'data': {'x': []}, 'timestamps': {'x': []}}
    """
    view = dict(doc)
    for part in ("data", "timestamps"):
        columns = doc.get(part)
        if not isinstance(columns, dict) or not all(
            isinstance(v, list) or (isinstance(v, np.ndarray) and v.ndim) for v in columns.values()
        ):
            return None
        view[part] = {key: [] for key in columns}
    for key, value in view.items():
        if isinstance(value, np.ndarray):
            view[key] = _schema_view(value)
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
            # JSON Schema counts 2.0 as an integer, but not 2.5. A first value that is not
            # whole (event times always) decides it without a pass over the array.
            whole = value.dtype.kind != "f" or not value.size
            if not whole and not (float(value[0]).is_integer() and np.all(np.mod(value, 1) == 0)):
                rep = 0.5
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
