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

from ..catalog import Catalog
from .guard import GuardedStore, WriteRules
from .policy import ACCESS_KEYS, AccessPolicy, scope_for
from .principal import ANONYMOUS, SCOPES, Principal, parse_scopes

__all__ = [
    "ACCESS_KEYS",
    "ANONYMOUS",
    "SCOPES",
    "AccessPolicy",
    "GuardedStore",
    "Principal",
    "WriteRules",
    "parse_scopes",
    "restrict",
    "scope_for",
]


def restrict(catalog: Catalog, principal: Principal, policy: AccessPolicy | None = None) -> Catalog:
    """``catalog`` as ``principal`` sees it: only the runs of its groups (and public ones),
    the others absent; writes admitted by ``policy``'s rules (default :class:`AccessPolicy`).
    An admin sees ``catalog`` itself."""
    if principal.admin:
        return catalog
    policy = policy if policy is not None else AccessPolicy()
    guard = GuardedStore(catalog.store, policy.scope(principal), policy.rules(principal))
    return Catalog(guard, catalog.query, scope=catalog.scope, assets=catalog.assets)
