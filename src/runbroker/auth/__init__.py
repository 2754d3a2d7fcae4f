"""Who may see what: the access guard (a Store wrapper) and the policy that scopes a caller.

Work in progress for the access-control issue: :class:`GuardedStore` enforces a scope (a query)
on every Store call, inside the database query; :func:`scope_for` turns a caller's groups into
that scope.
"""

from __future__ import annotations

from .guard import GuardedStore
from .policy import ACCESS_KEYS, scope_for

__all__ = ["ACCESS_KEYS", "GuardedStore", "scope_for"]
