"""What a run's descriptors say about its hardware, as searchable facts.

Each descriptor names the devices that took part (``object_keys`` and ``configuration``), their
configuration readings (``configuration[device]["data"]``) and how each data key is recorded
(``dtype``, ``shape``, ``source``, ``external``, ``dtype_numpy``). :func:`facts` turns them
into ``(key, value)`` pairs; the stores write one searchable row per pair when a descriptor
is inserted, and :mod:`runbroker.queries`' ``Device``, ``Config`` and ``DataKey`` look the
same keys up (``matches`` over the pairs of ``record["descriptors"]``, the stores by index),
so both give the same answer by construction.

Every fact is kept twice: for any stream (``stream=None``) and for the descriptor's stream.

Configuration names: ophyd prefixes a device's configuration keys with the device's name
(``det_sigma`` for ``det.sigma``). A reading named ``<device>_<name>`` is therefore found by
its short name too: ``Config("det", "sigma")`` and ``Config("det", "det_sigma")`` both find
``det_sigma``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "DATA_KEY_PROPERTIES",
    "config_key",
    "data_key_key",
    "device_key",
    "facts",
    "shape_text",
]

#: The properties of a data key that are searchable, in the order DataKey takes them.
DATA_KEY_PROPERTIES = ("dtype", "shape", "source", "external", "dtype_numpy")
# The longest key the stores hold is 512 characters: longer ones are hashed (same both ways).
_MAX_KEY = 500
_ANY = "*"  # never the quoted form of a stream name, which quotes '*'


def _key(kind: str, stream: str | None, *parts: str) -> str:
    """``@<kind>/<stream or *>/<part>/...``, each name quoted so none holds a '/'."""
    names = [
        _ANY if stream is None else quote(stream, safe=""),
        *(quote(p, safe="") for p in parts),
    ]
    key = "/".join([f"@{kind}", *names])
    if len(key) > _MAX_KEY:
        return f"@{kind}#{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def device_key(stream: str | None) -> str:
    """The key of the device names (the value is the name).

    Example:
        >>> device_key(None), device_key("primary")
        ('@device/*', '@device/primary')
    """
    return _key("device", stream)


def config_key(stream: str | None, device: str, name: str) -> str:
    """The key of configuration reading ``name`` of ``device`` (the value is the reading).

    Example:
        >>> config_key(None, "det", "sigma")
        '@config/*/det/sigma'
    """
    return _key("config", stream, device, name)


def data_key_key(stream: str | None, field: str, prop: str | None = None) -> str:
    """The key of data key ``field`` (its value: the field's name) or of one of its
    properties ``prop`` (the property's value).

    Example:
        >>> data_key_key("primary", "fccd_image"), data_key_key(None, "fccd_image", "shape")
        ('@datakey/primary/fccd_image', '@datakey/*/fccd_image/shape')
    """
    return _key("datakey", stream, field) if prop is None else _key("datakey", stream, field, prop)


def shape_text(shape: Iterable[Any]) -> str:
    """A shape as its fact holds it: compact JSON of the list.

    Example:
        >>> shape_text((1024, 1024)), shape_text([])
        ('[1024,1024]', '[]')
    """
    return json.dumps(list(shape), separators=(",", ":"))


def _scalar(value: Any) -> bool:
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()
    return value is None or isinstance(value, str | int | float | bool)


def _config_names(device: str, name: str) -> list[str]:
    prefix = f"{device}_"
    short = name[len(prefix) :] if name.startswith(prefix) and len(name) > len(prefix) else None
    return [name] if short is None else [name, short]


def _one(descriptor: Mapping[str, Any]) -> Iterator[tuple[str | None, str, Any]]:
    """``(kind, parts, value)`` facts of one descriptor, without their stream."""
    configuration = descriptor.get("configuration") or {}
    devices = [*(descriptor.get("object_keys") or {}), *configuration]
    for device in dict.fromkeys(devices):
        yield "device", (), device
    for device, conf in configuration.items():
        data = conf.get("data") if isinstance(conf, Mapping) else None
        for name, value in (data or {}).items():
            if _scalar(value):  # arrays and dicts are not searchable readings
                for short in _config_names(device, name):
                    yield "config", (device, short), value
    for field, dk in (descriptor.get("data_keys") or {}).items():
        yield "datakey", (field,), field
        for prop in DATA_KEY_PROPERTIES:
            if prop == "external":
                # Always a fact: the key's external value, or None for data in the events.
                external = dk.get(prop)
                if external is None or isinstance(external, str):
                    yield "datakey", (field, prop), external
            elif prop == "shape" and isinstance(dk.get("shape"), list | tuple):
                yield "datakey", (field, prop), shape_text(dk["shape"])
            elif prop != "shape" and isinstance(dk.get(prop), str):
                yield "datakey", (field, prop), dk[prop]


def facts(descriptors: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Every fact of these descriptors: key -> its distinct values, in order.

    Example:
        >>> desc = {"name": "primary", "object_keys": {"det": ["det"]},
        ...         "configuration": {"det": {"data": {"det_sigma": 1.5}}},
        ...         "data_keys": {"det": {"dtype": "number", "shape": [], "source": "SIM:det"}}}
        >>> found = facts([desc])
        >>> found["@device/*"], found["@config/primary/det/sigma"]
        (['det'], [1.5])
        >>> found["@datakey/*/det/shape"], found["@datakey/*/det/external"]
        (['[]'], [None])
    """
    out: dict[str, list[Any]] = {}
    for descriptor in descriptors:
        stream = descriptor.get("name", "primary")
        for kind, parts, value in _one(descriptor):
            for where in (None, stream):
                values = out.setdefault(_key(kind, where, *parts), [])
                if not any(type(v) is type(value) and v == value for v in values):
                    values.append(value)
    return out
