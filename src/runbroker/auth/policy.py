"""A caller's groups as the query of the runs they may see.

A run's access tags are keys of its start document (``proposal_id``, ``beamtime_id``,
``data_session``, ``beamline_id`` by default). A caller sees a run when one of its tags names a
group of theirs, or when the run is marked public (``public: true``). A run with no access tag
matches no group: only an admin (no scope at all) sees it.

Example:
    >>> scope_for({"proposal_id": ["p1", "p2"]})
    Or(In(key='proposal_id', values=('p1', 'p2')), Key('public') == True)
    >>> scope_for({}, public=False)
    ScanIDRange(start_id=1, end_id=1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..queries import In, Key, Or, Query, ScanIDRange

__all__ = ["ACCESS_KEYS", "scope_for"]

#: The start-document keys that tag a run for access, by default.
ACCESS_KEYS = ("proposal_id", "beamtime_id", "data_session", "beamline_id")


def scope_for(groups: Mapping[str, Iterable[str]], *, public: bool = True) -> Query:
    """The runs a caller holding ``groups`` (access key -> the values they hold) may see:
    those tagged with one of them, and (``public``) those marked public. A caller with no
    group and no public runs sees nothing (an empty scan_id range)."""
    parts: list[Query] = [In(key, tuple(values)) for key, values in groups.items() if values]
    if public:
        parts.append(Key("public") == True)  # noqa: E712 (a query, not a comparison)
    if not parts:
        return ScanIDRange(1, 1)  # no scan_id is in [1, 1): nothing
    return parts[0] if len(parts) == 1 else Or(*parts)
