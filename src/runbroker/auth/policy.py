"""Who may see and write which runs: a caller's groups as queries, and the rules for writing.

A run's access tags are keys of its start document, one per group kind (``proposal_id``,
``beamtime_id``, ``data_session``, ``beamline_id`` by default; :data:`ACCESS_KEYS`). A caller
sees a run when one of its tags names a group of theirs, or when the run is marked public
(``public: true``). A run with no access tag matches no group: only an admin sees it.

Writing is narrower than seeing: a caller writes into a run only when it holds one of the
run's tags (a public run of another group is seen, not written). A start document it sends
must carry only tags it holds -- except that a holder of the run's beamline (the beamline's
staff, or its RunEngine's service key) may write runs of any proposal at that beamline. A
start document with no tag gets the caller's defaults (those of its API key), else is refused.

Example:
    >>> scope_for({"proposal_id": ["p1", "p2"]})
    Or(In(key='proposal_id', values=('p1', 'p2')), Key('public') == True)
    >>> scope_for({}, public=False)
    ScanIDRange(start_id=1, end_id=1)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog import Catalog
from ..errors import AccessDeniedError
from ..queries import In, Key, Or, Query, ScanIDRange
from .guard import GuardedStore, WriteRules
from .principal import GROUP_KEYS, Principal

__all__ = ["ACCESS_KEYS", "AccessPolicy", "restrict", "scope_for"]

#: The start-document keys that tag a run for access, by default.
ACCESS_KEYS = tuple(GROUP_KEYS.values())


def scope_for(groups: Mapping[str, Iterable[str]], *, public: bool = True) -> Query:
    """The runs a caller holding ``groups`` (access key -> the values they hold) may see:
    those tagged with one of them, and (``public``) those marked public. A caller with no
    group and no public runs sees nothing (an empty scan_id range)."""
    parts: list[Query] = [In(key, _as_tags(values)) for key, values in groups.items() if values]
    if public:
        parts.append(Key("public") == True)  # noqa: E712 (a query, not a comparison)
    if not parts:
        return ScanIDRange(1, 1)  # no scan_id is in [1, 1): nothing
    return parts[0] if len(parts) == 1 else Or(*parts)


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """How a catalog's runs are tagged and shown.

    ``keys``: group kind -> the start-document key that tags runs for it (a facility whose
    start documents say ``proposal`` rather than ``proposal_id`` sets
    ``{"proposal": "proposal", ...}``). ``public``: runs marked ``public: true`` are seen by
    every caller, anonymous ones included.

    Example:
        >>> policy = AccessPolicy()
        >>> alice = Principal("alice", groups=frozenset({("proposal", "p1")}))
        >>> policy.scope(alice)
        Or(In(key='proposal_id', values=('p1',)), Key('public') == True)
        >>> policy.scope(Principal("root", admin=True)) is None
        True
    """

    keys: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(GROUP_KEYS))
    public: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keys) - set(GROUP_KEYS))
        if unknown:
            raise ValueError(
                f"unknown group kinds in the access keys: {', '.join(unknown)} "
                f"(the kinds are {', '.join(GROUP_KEYS)})"
            )

    def held(self, principal: Principal) -> dict[str, frozenset[str]]:
        """Access key -> the values the principal holds (its groups, as run tags)."""
        held: dict[str, set[str]] = {}
        for kind, name in principal.groups:
            key = self.keys.get(kind)
            if key is not None:
                held.setdefault(key, set()).add(name)
        return {key: frozenset(names) for key, names in held.items()}

    def scope(self, principal: Principal) -> Query | None:
        """The query of the runs ``principal`` sees; None for an admin (every run)."""
        if principal.admin:
            return None
        return scope_for(self.held(principal), public=self.public)

    def write_scope(self, principal: Principal) -> Query | None:
        """The query of the runs ``principal`` may add documents to (its groups' runs; public
        runs of others are not among them); None for an admin."""
        if principal.admin:
            return None
        return scope_for(self.held(principal), public=False)

    def rules(self, principal: Principal) -> WriteRules | None:
        """What ``principal`` may write (for :class:`~runbroker.auth.GuardedStore`); None
        when it lacks the ``write:runs`` scope."""
        if not principal.holds("write:runs"):
            return None
        return WriteRules(self.write_scope(principal), functools.partial(self.start_for, principal))

    def tags(self, start: Mapping[str, Any]) -> dict[str, Any]:
        """The access tags of a start document (access key -> value), those present.

        Example:
            >>> AccessPolicy().tags({"uid": "u", "proposal_id": "p1", "sample": "Ni"})
            {'proposal_id': 'p1'}
        """
        return {key: start[key] for key in self.keys.values() if key in start}

    def start_for(self, principal: Principal, start: dict) -> dict:
        """The start document ``principal`` may write: ``start`` itself, or ``start`` with the
        principal's default tags added when it names none. Raises
        :class:`~runbroker.errors.AccessDeniedError` naming the tag it does not hold.

        Example:
            >>> bob = Principal("bob", groups=frozenset({("proposal", "p2")}),
            ...                 defaults={"proposal_id": "p2"})
            >>> AccessPolicy().start_for(bob, {"uid": "r1", "time": 0.0})["proposal_id"]
            'p2'
            >>> AccessPolicy().start_for(bob, {"uid": "r1", "time": 0.0, "proposal_id": "p1"})
            Traceback (most recent call last):
            ...
            runbroker.errors.AccessDeniedError: start document 'r1': proposal_id 'p1' is not ...
        """
        if principal.admin:
            return start
        uid = start.get("uid", "?")
        tags = self.tags(start)
        if not tags:
            if not principal.defaults:
                mine = ", ".join(f"{k}={v}" for k, vs in self.held(principal).items() for v in vs)
                raise AccessDeniedError(
                    f"start document {uid!r} names none of the access keys "
                    f"({', '.join(self.keys.values())}); name one of yours"
                    + (f" ({mine})" if mine else "")
                    + ", or use an API key created with --default KEY=VALUE"
                )
            start = {**start, **principal.defaults}
            tags = self.tags(start)
        held = self.held(principal)
        beamline = self.keys.get("beamline")
        if beamline in tags and _holds(held, beamline, tags[beamline]):
            return start  # the beamline's staff write every proposal's runs there
        # the beamline first: for staff, the one tag that matters
        for key, value in sorted(tags.items(), key=lambda kv: kv[0] != beamline):
            if not _holds(held, key, value):
                raise AccessDeniedError(
                    f"start document {uid!r}: {key} {value!r} is not one of yours; "
                    f"you hold {_list(held.get(key))}"
                )
        return start


def _as_tags(names: Iterable[str]) -> tuple:
    # Start documents often carry numbers (proposal_id: 31234); a group's name is text.
    names = sorted(set(names))
    return (*names, *(int(n) for n in names if n.isdecimal()))


def _holds(held: Mapping[str, frozenset[str]], key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    return str(value) in held.get(key, frozenset())


def _list(values: Iterable[str] | None) -> str:
    names = sorted(values or ())
    return ", ".join(repr(v) for v in names) if names else "none"


def restrict(catalog: Catalog, principal: Principal, policy: AccessPolicy | None = None) -> Catalog:
    """``catalog`` as ``principal`` sees it: only the runs of its groups (and public ones),
    the others absent; writes admitted by ``policy``'s rules (default :class:`AccessPolicy`).
    An admin sees every run; its notes are its own, as everyone's (:mod:`runbroker.notes`)."""
    from .noterules import NoteRules, viewer_for

    policy = policy if policy is not None else AccessPolicy()
    notes = NoteRules(principal, policy) if principal.holds("write:annotations") else None
    guard = GuardedStore(
        catalog.store,
        policy.scope(principal),
        policy.rules(principal),
        viewer=viewer_for(principal),
        notes=notes,
    )
    return Catalog(
        guard, catalog.query, scope=catalog.scope, assets=catalog.assets, aliases=catalog.aliases
    )
