"""What a plot of a stream should show, from the plan's hints.

Bluesky plans say which fields are the independent axes (``start["hints"]["dimensions"]``,
else ``start["motors"]``) and devices say which of their fields matter (``descriptor["hints"]``).
SPEC's first and last columns, NeXus ``@axes`` and ``@signal`` all come from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["axes", "signals"]


def axes(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
    """The fields of ``descriptor``'s stream that vary independently (motors), in order.

    Example:
        >>> start = {"hints": {"dimensions": [[["motor"], "primary"]]}}
        >>> axes(start, {"name": "primary", "data_keys": {"motor": {}, "det": {}}})
        ['motor']
    """
    keys = descriptor.get("data_keys") or {}
    stream = descriptor.get("name", "primary")
    dims = (start.get("hints") or {}).get("dimensions")
    out: list[str] = []
    if dims:
        for fields, dim_stream in dims:
            if dim_stream == stream:
                out.extend(f for f in fields if f in keys and f not in out)
    if not out:
        for motor in start.get("motors") or []:
            out.extend(f for f in _object_fields(descriptor, motor) if f not in out)
    return out


def signals(start: Mapping[str, Any], descriptor: Mapping[str, Any]) -> list[str]:
    """The fields detectors hint at (else every scalar number that is not an axis).

    Example:
        >>> desc = {"name": "primary", "hints": {"det": {"fields": ["det"]}},
        ...         "data_keys": {"motor": {"dtype": "number", "shape": []},
        ...                       "det": {"dtype": "number", "shape": []}}}
        >>> signals({"detectors": ["det"], "motors": ["motor"]}, desc)
        ['det']
    """
    keys = descriptor.get("data_keys") or {}
    skip = set(axes(start, descriptor))
    hints = descriptor.get("hints") or {}
    objects = list(start.get("detectors") or []) + [
        o for o in hints if o not in (start.get("detectors") or [])
    ]
    out: list[str] = []
    for obj in objects:
        for f in (hints.get(obj) or {}).get("fields") or []:
            if f in keys and f not in skip and f not in out:
                out.append(f)
    if not out:
        out = [
            k
            for k, dk in keys.items()
            if k not in skip and dk.get("dtype") in ("number", "integer") and not dk.get("shape")
        ]
    return out


def _object_fields(descriptor: Mapping[str, Any], obj: str) -> list[str]:
    keys = descriptor.get("data_keys") or {}
    named = [f for f in (descriptor.get("object_keys") or {}).get(obj, []) if f in keys]
    hinted = [
        f for f in ((descriptor.get("hints") or {}).get(obj) or {}).get("fields", []) if f in keys
    ]
    if hinted:
        return hinted
    if obj in keys:
        return [obj]
    return named[:1]
