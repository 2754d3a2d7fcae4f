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
(``det_sigma`` for ``det.sigma``). A query for reading ``name`` therefore looks at ``name`` and
at ``<device>_<name>`` (:func:`config_keys`): ``Config("det", "sigma")`` and
``Config("det", "det_sigma")`` both find ``det_sigma``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "DATA_KEY_PROPERTIES",
    "config_key",
    "config_keys",
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


# Names holding none of these are written as they are (quoting each name costs more).
_PLAIN = re.compile(r"[A-Za-z0-9_.\-~ :]*")


def _quote(name: str) -> str:
    return name if _PLAIN.fullmatch(name) and name != _ANY else quote(name, safe="")


def _key(kind: str, stream: str | None, *parts: str) -> str:
    """``@<kind>/<stream or *>/<part>/...``, each name quoted so none holds a '/'."""
    names = [_ANY if stream is None else _quote(stream), *map(_quote, parts)]
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
        >>> config_key(None, "det", "det_sigma")
        '@config/*/det/det_sigma'
    """
    return _key("config", stream, device, name)


def config_keys(stream: str | None, device: str, name: str) -> list[str]:
    """The keys a query for reading ``name`` of ``device`` looks at: ``name`` as recorded,
    and ``<device>_<name>``, as ophyd records it.

    Example:
        >>> config_keys("primary", "det", "sigma")
        ['@config/primary/det/sigma', '@config/primary/det/det_sigma']
    """
    return [config_key(stream, device, name), config_key(stream, device, f"{device}_{name}")]


def data_key_key(stream: str | None, field: str, prop: str) -> str:
    """The key of property ``prop`` of data key ``field`` (the value: the property's). A data
    key is recorded when its ``dtype`` is (event-model requires it).

    Example:
        >>> data_key_key("primary", "fccd_image", "dtype")
        '@datakey/primary/fccd_image/dtype'
    """
    return _key("datakey", stream, field, prop)


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
                yield "config", (device, name), value
    for field, dk in (descriptor.get("data_keys") or {}).items():
        for prop in DATA_KEY_PROPERTIES:
            value = dk.get(prop)
            if prop == "shape" and isinstance(value, list | tuple):
                yield "datakey", (field, prop), shape_text(value)
            elif prop != "shape" and isinstance(value, str):
                yield "datakey", (field, prop), value


def facts(descriptors: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Every fact of these descriptors: key -> its distinct values, in order.

    Example:
        >>> desc = {"name": "primary", "object_keys": {"det": ["det"]},
        ...         "configuration": {"det": {"data": {"det_sigma": 1.5}}},
        ...         "data_keys": {"det": {"dtype": "number", "shape": [], "source": "SIM:det"}}}
        >>> found = facts([desc])
        >>> found["@device/*"], found["@config/primary/det/det_sigma"]
        (['det'], [1.5])
        >>> found["@datakey/*/det/shape"], "@datakey/*/det/external" in found
        (['[]'], False)
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
