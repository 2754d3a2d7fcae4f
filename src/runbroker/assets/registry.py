"""Which class reads which kind of file: handlers by ``spec``, stream readers by mimetype.

Where a class comes from, first match wins:

1. the catalog's own configuration (``runbroker.open(..., handlers={"SPEC": cls})``);
2. :func:`register_handler` / :func:`register_reader` in this process;
3. the ``runbroker.handlers`` / ``runbroker.readers`` entry-point groups of installed packages;
4. runbroker's built-in classes;
5. the ``databroker.handlers`` entry-point group, so handler packages written for databroker work.

A class may be given as an object or as an import string ``"package.module:ClassName"``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from ..errors import HandlerNotFoundError
from .handlers import BUILTIN_HANDLERS
from .readers import BUILTIN_READERS

__all__ = [
    "HandlerNotFoundError",
    "Registry",
    "register_handler",
    "register_reader",
]

_registered: dict[str, dict[str, Any]] = {"handlers": {}, "readers": {}}
_generation = [0]  # bumped by every registration: cached lookups are then redone
_WORDS = {"handlers": ("handler", "spec"), "readers": ("reader", "mimetype")}
_lock = threading.Lock()


def normalise_mimetype(mimetype: str) -> str:
    """Mimetypes compare without case or spaces.

    Example:
        >>> normalise_mimetype("multipart/related; type=image/TIFF")
        'multipart/related;type=image/tiff'
    """
    return mimetype.replace(" ", "").lower()


def register_handler(spec: str, handler: type | str, *, overwrite: bool = False) -> None:
    """Make ``handler`` read resources of ``spec`` in every catalog of this process.

    Example:
        >>> from runbroker.assets.handlers import NpyHandler
        >>> register_handler("MY_NPY", NpyHandler)
        >>> Registry().handler("MY_NPY") is NpyHandler
        True
    """
    _register("handlers", spec, handler, overwrite)


def register_reader(mimetype: str, reader: type | str, *, overwrite: bool = False) -> None:
    """Make ``reader`` read ``stream_resource`` documents of ``mimetype`` in this process.

    Example:
        >>> from runbroker.assets.readers import NpyReader
        >>> register_reader("application/x-my-npy", NpyReader)
    """
    _register("readers", normalise_mimetype(mimetype), reader, overwrite)


def _register(kind: str, key: str, cls: type | str, overwrite: bool) -> None:
    with _lock:
        known = _registered[kind].get(key)
        if known is not None and known is not cls and not overwrite:
            raise ValueError(
                f"{key!r} already has {kind[:-1]} {_name(known)}; pass overwrite=True to replace it"
            )
        _registered[kind][key] = cls
        _generation[0] += 1


def _name(cls: Any) -> str:
    if isinstance(cls, str):
        return cls
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _load(cls: type | str, where: str) -> type:
    if not isinstance(cls, str):
        return cls
    module, _, attr = cls.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise HandlerNotFoundError(f"cannot import {cls!r} ({where}): {exc}") from exc
    return obj


def _entry_point(group: str, name: str, normalise: Any = None) -> type | None:
    for ep in entry_points(group=group):
        key = normalise(ep.name) if normalise else ep.name
        if key == name:
            try:
                return ep.load()
            except Exception as exc:
                raise HandlerNotFoundError(
                    f"the {group!r} entry point {ep.name!r} = {ep.value!r} failed to load: {exc}"
                ) from exc
    return None


class Registry:
    """The handlers and readers one catalog uses: its own choices over the process-wide ones.

    Example:
        >>> Registry().handler("AD_HDF5").__name__
        'ADHDF5Handler'
        >>> Registry().handler("NO_SUCH_SPEC")
        Traceback (most recent call last):
        ...
        runbroker.errors.HandlerNotFoundError: no handler for spec 'NO_SUCH_SPEC'. ...
    """

    def __init__(
        self,
        handlers: Mapping[str, type | str] | None = None,
        readers: Mapping[str, type | str] | None = None,
    ) -> None:
        self.handlers = dict(handlers or {})
        self._found: dict[tuple[str, str], tuple[int, type]] = {}
        self.readers = {normalise_mimetype(k): v for k, v in (readers or {}).items()}

    def handler(self, spec: str) -> type:
        """The handler class for resources of ``spec``."""
        return self._cached("handlers", spec, spec, BUILTIN_HANDLERS, "databroker.handlers")

    def reader(self, mimetype: str) -> type:
        """The reader class for ``stream_resource`` documents of ``mimetype``."""
        key = normalise_mimetype(mimetype)
        return self._cached("readers", key, mimetype, BUILTIN_READERS, None)

    def _cached(
        self, kind: str, key: str, shown: str, builtin: Mapping[str, type], compat: str | None
    ) -> type:
        # Scanning installed packages' entry points takes milliseconds: once per class and
        # registry, again only after a process-wide registration changed what wins.
        found = self._found.get((kind, key))
        if found is None or found[0] != _generation[0]:
            found = (_generation[0], self._find(kind, key, shown, builtin, compat))
            self._found[(kind, key)] = found
        return found[1]

    def _find(
        self, kind: str, key: str, shown: str, builtin: Mapping[str, type], compat: str | None
    ) -> type:
        noun, what = _WORDS[kind]
        own = getattr(self, kind)
        if key in own:
            return _load(own[key], f"the catalog's {noun} for {shown!r}")
        if key in _registered[kind]:
            return _load(_registered[kind][key], f"the registered {noun} for {shown!r}")
        normalise = normalise_mimetype if kind == "readers" else None
        found = _entry_point(f"runbroker.{kind}", key, normalise)
        if found is None:
            found = builtin.get(key) or (_entry_point(compat, key) if compat else None)
        if found is None:
            known = sorted({*builtin, *_registered[kind], *own})
            cls = f"{noun.capitalize()}Class"
            raise HandlerNotFoundError(
                f"no {noun} for {what} {shown!r}. Register one with "
                f"runbroker.register_{noun}({shown!r}, {cls}), through the "
                f"'runbroker.{kind}' entry-point group of a package, or per catalog with "
                f"runbroker.open(uri, {kind}={{{shown!r}: {cls}}}). "
                f"Known {what}s: {', '.join(known)}"
            )
        return found

    def __reduce__(self) -> tuple:
        return (Registry, (self.handlers, self.readers))
