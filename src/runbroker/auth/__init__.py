"""Who may see what: principals and their groups, the access policy, and the access guard.

:class:`GuardedStore` (a Store wrapper) enforces a caller's scope inside every database query
and admits its writes by the :class:`AccessPolicy`; :func:`restrict` gives the catalog a
principal sees, for the server's routes and for Python code run on a principal's behalf (a
facility's Jupyter service).

Example:
    >>> import runbroker
    >>> cat = runbroker.temp()
    >>> alice = Principal("alice", groups=frozenset({("proposal", "p1")}))
    >>> len(restrict(cat, alice))
    0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from .guard import GuardedStore, WriteRules
from .policy import ACCESS_KEYS, AccessPolicy, restrict, scope_for
from .principal import ANONYMOUS, SCOPES, Principal, parse_scopes

__all__ = [
    "ACCESS_KEYS",
    "ANONYMOUS",
    "SCOPES",
    "AccessPolicy",
    "GuardedStore",
    "Principal",
    "WriteRules",
    "open_as",
    "parse_scopes",
    "restrict",
    "scope_for",
]


def open_as(
    uri: str | Path, principal: str, access: str | Path | Mapping[str, Any], **options: Any
) -> Catalog:
    """The catalog at ``uri`` as ``principal`` sees it under the access configuration
    ``access`` (the server's YAML file, or its mapping): the same runs, the same write rules
    as over HTTP. For Python code acting for a user it has authenticated itself, such as a
    facility's notebook service. ``options`` go to :func:`runbroker.open`.

    Example:
        >>> cat = open_as(tmp_path / "runs.db", "alice", {"directory": "sqlite://"}, create=True)
        >>> cat.store.scope
        Key('public') == True
    """
    from ..opening import open as open_catalog
    from .access import AccessControl

    catalog = open_catalog(uri, **options)
    control = AccessControl.from_config(access, catalog.store.uri)
    return control.catalog_for(catalog, control.named(principal))
