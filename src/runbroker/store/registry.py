"""URI schemes and the functions that open a store for them.

:func:`runbroker.open` looks the scheme of what it is given up here: ``sqlite``, ``postgresql``
(with or without a driver, ``postgresql+psycopg://``) and ``file`` (which plain paths are: an
SQLite catalog file or a folder of run files) are registered by :mod:`runbroker.opening`. A
package adds a store of its own in two ways:

- in code, with :func:`register`;
- in its packaging metadata, under the entry-point group ``runbroker.stores``, naming the
  opener by ``"module:function"`` (loaded the first time a URL of that scheme is opened)::

      [project.entry-points."runbroker.stores"]
      s3 = "mypackage.store:open_s3"

An opener is called as ``opener(url, **options)`` with the URL as given (its scheme in lower
case) and the store options of :func:`runbroker.open` (``create``, ``check``, ``readonly``,
``durability``, ``flush_interval``, ``pool_size``, ``max_overflow``; a store takes
``**options`` and ignores those it has no use for), and returns the Store
(:mod:`runbroker.store.base`); runbroker makes the catalog over it.

Example:
    >>> from runbroker.store.registry import schemes
    >>> schemes()[:3]
    ['sqlite', 'postgresql', 'file']
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import Store

__all__ = ["GROUP", "Opener", "opener", "register", "schemes"]

#: The entry-point group third-party stores are found in.
GROUP = "runbroker.stores"

#: ``opener(url, **options) -> Store``
Opener = Callable[..., Store]

_openers: dict[str, Opener] = {}


def register(scheme: str, opener: Opener) -> None:
    """Open URLs of ``scheme`` (``"s3"`` for ``s3://...``) with ``opener``; it replaces an
    opener registered for it before, and one an entry point names.

    Example:
        >>> register("mem", lambda url, **options: runbroker.open("sqlite://").store)
        >>> len(runbroker.open("mem://anything"))
        0
        >>> _ = _openers.pop("mem")  # leave the registry as it was
    """
    _openers[scheme.lower()] = opener


def _entry_points() -> dict[str, EntryPoint]:
    # Read on each look-up (a few milliseconds): a package installed meanwhile is seen at once,
    # and an import of runbroker pays nothing for them.
    return {ep.name.lower(): ep for ep in entry_points(group=GROUP)}


def opener(scheme: str) -> Opener | None:
    """The opener of ``scheme``: a registered one, else one an entry point names (loaded
    now), else None.

    Example:
        >>> opener("sqlite") is not None, opener("gopher")
        (True, None)
    """
    scheme = scheme.lower()
    found = _openers.get(scheme)
    if found is None:
        point = _entry_points().get(scheme)
        if point is not None:
            found = _openers[scheme] = _loaded(point)
    return found


def _loaded(point: EntryPoint) -> Any:
    try:
        return point.load()
    except Exception as err:
        raise ImportError(
            f"the store for {point.name}:// URLs ({point.value}, entry point of group "
            f"{GROUP!r}) cannot be loaded: {err}"
        ) from err


def schemes() -> list[str]:
    """The schemes a store is known for: those registered, in order, then those of entry
    points not loaded yet, sorted.

    Example:
        >>> "sqlite" in schemes()
        True
    """
    return [*_openers, *sorted(_entry_points().keys() - _openers.keys())]
