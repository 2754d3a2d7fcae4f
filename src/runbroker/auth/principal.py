"""Who is calling: a principal, the groups it belongs to, and what it may do.

A *principal* is a user (a person, identified by the facility's identity provider) or a
service (a RunEngine, a script), known by a name. It belongs to *groups*: proposals,
beamtimes (each of exactly one proposal) and beamlines. A group is a ``(kind, name)`` pair,
and each kind tags runs through one key of their start documents (:data:`GROUP_KEYS`).

*Scopes* say what a caller may do (:data:`SCOPES`); an admin is not scoped by groups at all.

Example:
    >>> alice = Principal("alice", groups=frozenset({("proposal", "p1")}), scopes=USER_SCOPES)
    >>> alice.holds("read:data"), alice.holds("admin:keys")
    (True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = [
    "ADMIN_SCOPES",
    "ALL_SCOPES",
    "ANONYMOUS",
    "GROUP_KEYS",
    "KINDS",
    "READ_SCOPES",
    "SCOPES",
    "USER_SCOPES",
    "Principal",
    "parse_scopes",
]

#: What each scope lets a caller do.
SCOPES: Mapping[str, str] = {
    "read:metadata": "search runs and read their metadata (start, stop, descriptors)",
    "read:data": "read event data, detector data, documents and exports",
    "write:runs": "add runs and documents",
    "write:annotations": "annotate, tag and correct runs",
    "admin:keys": "create, list and revoke any principal's API keys",
    "admin:principals": "add principals, set their groups; see every run",
}
ALL_SCOPES = frozenset(SCOPES)
#: The scopes of reading.
READ_SCOPES = frozenset({"read:metadata", "read:data"})
#: A user's scopes unless told otherwise: read and write, no administration.
USER_SCOPES = frozenset({"read:metadata", "read:data", "write:runs", "write:annotations"})
ADMIN_SCOPES = ALL_SCOPES

#: Group kinds, and the start-document key that tags a run for each (configurable per server).
GROUP_KEYS: Mapping[str, str] = {
    "proposal": "proposal_id",
    "beamtime": "beamtime_id",
    "data_session": "data_session",
    "beamline": "beamline_id",
}
KINDS = tuple(GROUP_KEYS)


def parse_scopes(text: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Scopes from ``"read:metadata,read:data"`` (or a list), each checked.

    Example:
        >>> sorted(parse_scopes("read:metadata, read:data"))
        ['read:data', 'read:metadata']
        >>> parse_scopes("read:everything")
        Traceback (most recent call last):
        ...
        ValueError: unknown scope 'read:everything'; the scopes are: read:metadata, ...
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(s.strip() for s in items if s.strip())
    for scope in sorted(scopes):
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; the scopes are: {', '.join(SCOPES)}")
    return scopes


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``groups``: the ``(kind, name)`` groups it belongs to, already expanded (a proposal's
    member holds that proposal's beamtimes too). ``scopes``: what it may do. ``admin``: sees
    and writes every run (no group filter). ``defaults``: access tags a start document it
    writes gets when it names none (from its API key). ``via``: how it proved who it is
    (``"api-key"``, ``"oidc"``, ``"server-key"``, ``"anonymous"``, ``"local"``), for the
    audit log.
    """

    name: str
    kind: str = "user"
    groups: frozenset[tuple[str, str]] = frozenset()
    scopes: frozenset[str] = USER_SCOPES
    admin: bool = False
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    via: str = "local"

    def holds(self, scope: str) -> bool:
        """Whether this caller has ``scope``."""
        return scope in self.scopes

    def group_names(self, kind: str) -> frozenset[str]:
        """The names of its groups of one kind.

        Example:
            >>> Principal("a", groups=frozenset({("proposal", "p1")})).group_names("proposal")
            frozenset({'p1'})
        """
        return frozenset(name for k, name in self.groups if k == kind)


#: The caller of a public server that sent no credentials: reads public runs only.
ANONYMOUS = Principal("anonymous", kind="anonymous", scopes=READ_SCOPES, via="anonymous")
