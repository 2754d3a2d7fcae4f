"""How the ``runbroker`` commands name a catalog and a run: a file, folder, URL or configured
name, and a scan_id, ``-N`` (recency), uid or uid prefix."""

from __future__ import annotations

from typing import Any

from . import open as open_catalog
from .catalog import Catalog, Run
from .errors import CatalogNotFoundError, NotACatalogError

__all__ = ["open_named", "run_key", "run_named"]


def open_named(uri: str, *, readonly: bool = False, create: bool = False) -> Catalog:
    """A catalog by file, folder or URL, or by its configured name (opened with its
    root_map and handlers, which find detector files that moved) when no such file exists.

    Example:
        >>> open_named("/no/such/catalog.db", readonly=True)
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogNotFoundError: no catalog at '/no/such/catalog.db' (opening ...
    """
    from .config import resolve

    options: dict[str, Any] = {"readonly": readonly, "create": create}
    uri, named = resolve(uri)
    if named:
        if readonly:  # indexes are the catalog's business, not a reader's
            named.pop("indexes", None)
        options = {**named, **{k: v for k, v in options.items() if v}}
    try:
        return open_catalog(uri, **options)
    except (CatalogNotFoundError, NotACatalogError) as err:
        if readonly or "create=True" not in str(err):
            raise
        # The library's advice, in this command's words.
        raise type(err)(f"{err} (on the command line: --create)") from None


def run_key(text: str) -> int | str:
    """A run as a shell names it: scan_id, -N (recency), uid or uid prefix.

    Example:
        >>> run_key("554"), run_key("-1"), run_key("c6b4")
        (554, -1, 'c6b4')
    """
    return int(text) if text.lstrip("-").isdigit() else text


def run_named(cat: Catalog, text: str) -> Run:
    """The run ``text`` names (see :func:`run_key`); digits that are no scan_id may begin a
    uid (``0278``), and are looked up as one before giving up.

    Example:
        >>> run_named(cat, run.uid[:8]) == run
        True
    """
    key = run_key(text)
    try:
        return cat[key]
    except KeyError:
        if not (isinstance(key, int) and key >= 0):
            raise
        try:
            return cat[text]
        except KeyError:
            pass
        raise
