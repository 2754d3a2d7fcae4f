"""JSON for stored documents: fast (orjson) and lossless (NaN, infinities, huge ints).

orjson writes NaN and infinities as ``null`` and refuses integers beyond 64 bits. Such values
are rare in documents but must come back as they went in, so documents holding them are
written by the standard library instead, which spells them ``NaN``/``Infinity`` and keeps
big integers. Reading falls back the same way: orjson refuses ``NaN``, but it reads an
integer beyond 64 bits as a float, so text that may hold one is read by the standard library.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

__all__ = ["dumps", "loads"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY
_INT64 = 2**63


def _unusual(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:  # the common leaves, decided first
        return False
    if kind is dict:
        return any(_unusual(v) for v in value.values())
    if kind is list:
        return any(_unusual(v) for v in value)
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int):
        return not -_INT64 <= value < _INT64
    if isinstance(value, dict):
        return any(_unusual(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_unusual(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return not bool(np.isfinite(value).all())
    if isinstance(value, np.floating):
        return not math.isfinite(float(value))
    return False


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> bytes:
    """Encode ``value``; NaN, infinities and big integers survive.

    Example:
        >>> loads(dumps({"a": float("nan"), "b": 2**70}))["b"] == 2**70
        True
    """
    try:
        out = orjson.dumps(value, option=_OPTS)
    except TypeError:  # an integer beyond 64 bits (or a type neither encoder takes)
        out = None
    else:
        # orjson writes NaN and infinities as null: text without one lost nothing, and
        # walking a document for them costs ten times its encoding.
        if b"null" not in out:
            return out
    if _unusual(value):
        return json.dumps(value, default=_plain, allow_nan=True).encode()
    return orjson.dumps(value, option=_OPTS) if out is None else out


def loads(data: bytes | memoryview | str) -> Any:
    """Decode what :func:`dumps` wrote.

    Example:
        >>> loads(b"[1, 2]")
        [1, 2]
        >>> loads(b'{"big": 36893488147419103232}')["big"] == 2**65
        True
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data if isinstance(data, str) else bytes(data))
    if _long_integer(data):
        return json.loads(data if isinstance(data, str) else bytes(data))
    return value


# Digits become "0", and what may stand before a number's first digit becomes ",": an integer
# of 19 digits or more (beyond 64 bits, or close) is then ",0000000000000000000". A float never
# matches: orjson and the standard library write big floats with an exponent, and a run of
# fraction digits follows ".".
_NUMBERS = bytes.maketrans(b"0123456789[,: -\n\r\t", b"0" * 10 + b"," * 8)
_LONG = b"," + b"0" * 19


def _long_integer(data: bytes | memoryview | str) -> bool:
    """Whether ``data`` may hold an integer too long for orjson to keep exact.

    Only the standard library writes such integers (:func:`dumps`), with ``", "`` and ``": "``
    between items; text without those is orjson's, or a lone number in brackets.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b", " not in raw and b": " not in raw:
        head = raw[:64].lstrip(b"[ ")[:1]
        if not head or head not in b"-0123456789":
            return False
    return _LONG in (b"," + raw).translate(_NUMBERS)
