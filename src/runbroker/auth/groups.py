"""Where a principal's groups come from: a pluggable :class:`GroupSource`.

Built in: the directory's tables (:class:`DirectoryGroups`), a YAML file (:class:`YAMLGroups`),
a facility's own code through an entry point (:class:`EntryPointGroups`), and the groups an
OIDC token lists (:class:`ClaimGroups`); :class:`CachedGroups` keeps answers for a while and
:class:`CombinedGroups` joins sources. :func:`group_source` builds one from configuration.

Every source answers with *expanded* ``(kind, name)`` pairs where it knows the proposal of a
beamtime: a proposal's member holds that proposal's beamtimes too.

Example:
    >>> source = ClaimGroups("groups")
    >>> sorted(source.groups_of("alice", {"groups": ["proposal:p1", "beamline:bl1"]}))
    [('beamline', 'bl1'), ('proposal', 'p1')]
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from ..errors import CatalogConfigError
from .directory import Directory
from .principal import KINDS

__all__ = [
    "ENTRY_POINT_GROUP",
    "CachedGroups",
    "ClaimGroups",
    "CombinedGroups",
    "DirectoryGroups",
    "EntryPointGroups",
    "GroupSource",
    "YAMLGroups",
    "group_source",
]

log = logging.getLogger(__name__)

Groups = frozenset[tuple[str, str]]
#: The entry-point group a facility's membership hook is registered in.
ENTRY_POINT_GROUP = "runbroker.groups"


@runtime_checkable
class GroupSource(Protocol):
    """What a principal's groups come from."""

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        """The ``(kind, name)`` groups of ``principal`` (``claims``: its token's, if any)."""
        ...


class DirectoryGroups:
    """Groups from the directory's tables (``runbroker principals add NAME --group ...``).

    Example:
        >>> d = Directory("sqlite://"); _ = d.add_principal("a")
        >>> d.add_member("a", "proposal", "p1")
        >>> DirectoryGroups(d).groups_of("a", None)
        frozenset({('proposal', 'p1')})
    """

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        return self.directory.groups_of(principal)


# The YAML file's sections, and the group kind each lists.
_SECTIONS = {
    "proposals": "proposal",
    "beamtimes": "beamtime",
    "beamlines": "beamline",
    "data_sessions": "data_session",
}


class YAMLGroups:
    """Groups from a YAML file, read again whenever it changes::

        proposals:
          p1: {members: [alice, bob], beamtimes: [b1, b2]}
        beamtimes:
          b9: {proposal: p3, members: [carol]}
        beamlines:
          bl1: {members: [staff1]}
        data_sessions:
          ds-7: {members: [alice]}

    A mistake in the file is a :class:`~runbroker.errors.CatalogConfigError` naming the file
    and the entry.

    Example:
        >>> path = tmp_path / "groups.yaml"
        >>> _ = path.write_text("proposals:\\n  p1: {members: [alice], beamtimes: [b1]}\\n")
        >>> sorted(YAMLGroups(path).groups_of("alice", None))
        [('beamtime', 'b1'), ('proposal', 'p1')]
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._members: dict[str, set[tuple[str, str]]] = {}
        self._load()

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        self._load()
        return frozenset(self._members.get(principal, ()))

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as err:
            raise CatalogConfigError(f"group file {self.path}: {err.strerror}") from None
        seen = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if seen != self._seen:
                self._members = self._parse(self.path.read_text(encoding="utf-8"))
                self._seen = seen

    def _fail(self, where: str, what: str) -> CatalogConfigError:
        return CatalogConfigError(f"group file {self.path}: {where}: {what}")

    def _parse(self, text: str) -> dict[str, set[tuple[str, str]]]:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "YAML"
            raise self._fail(where, f"not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(data, dict):
            raise self._fail("top level", "expected sections " + ", ".join(_SECTIONS))
        members: dict[str, set[tuple[str, str]]] = {}
        parent: dict[str, str] = {}  # beamtime -> its proposal
        for section, entries in data.items():
            if section not in _SECTIONS:
                raise self._fail(
                    section, "unknown section; the sections are " + ", ".join(_SECTIONS)
                )
            if not isinstance(entries, dict):
                raise self._fail(section, "expected a mapping of names to entries")
            kind = _SECTIONS[section]
            for name, entry in entries.items():
                where = f"{section}.{name}"
                entry = {} if entry is None else entry
                if not isinstance(entry, dict):
                    raise self._fail(where, "expected a mapping (members: [...])")
                allowed = {"members"} | {"proposal": {"beamtimes"}, "beamtime": {"proposal"}}.get(
                    kind, set()
                )
                for field in entry:
                    if field not in allowed:
                        raise self._fail(
                            where, f"unknown field {field!r}; allowed: {sorted(allowed)}"
                        )
                for who in self._names(entry.get("members", []), f"{where}.members"):
                    members.setdefault(who, set()).add((kind, str(name)))
                links = (
                    [
                        (b, str(name))
                        for b in self._names(entry.get("beamtimes", []), f"{where}.beamtimes")
                    ]
                    if kind == "proposal"
                    else []
                )
                if kind == "beamtime":
                    if "proposal" not in entry:
                        raise self._fail(where, "a beamtime names its proposal (proposal: P)")
                    links.append((str(name), str(entry["proposal"])))
                for beamtime, proposal in links:
                    if parent.setdefault(beamtime, proposal) != proposal:
                        raise self._fail(
                            where,
                            f"beamtime {beamtime!r} is of proposal {parent[beamtime]!r} already",
                        )
        by_proposal: dict[str, set[str]] = {}
        for beamtime, proposal in parent.items():
            by_proposal.setdefault(proposal, set()).add(beamtime)
        for held in members.values():
            held |= {
                ("beamtime", b)
                for k, n in list(held)
                if k == "proposal"
                for b in by_proposal.get(n, ())
            }
        return members

    def _names(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            raise self._fail(where, f"expected a list of names, got {value!r}")
        return [str(v) for v in value]


def _pairs(found: Iterable[Any], origin: str) -> Groups:
    """Check what a hook answered: ``(kind, name)`` pairs of known kinds."""
    out = set()
    for item in found:
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or item[0] not in KINDS
            or not isinstance(item[1], str)
        ):
            raise CatalogConfigError(
                f"{origin} answered {item!r}: expected (kind, name) with kind one of "
                + ", ".join(KINDS)
            )
        out.add((item[0], item[1]))
    return frozenset(out)


class EntryPointGroups:
    """Groups from a facility's code: the entry point ``name`` in the group
    ``runbroker.groups`` names a callable ``(principal, claims) -> iterable of (kind, name)``.

    A package registers it in its ``pyproject.toml``::

        [project.entry-points."runbroker.groups"]
        myfacility = "myfacility.proposals:groups_of"

    Example:
        >>> EntryPointGroups("no-such-hook")
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogConfigError: no entry point 'no-such-hook' in group ...
    """

    def __init__(self, name: str) -> None:
        self.name = name
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
        if not found:
            known = sorted(
                ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            )
            raise CatalogConfigError(
                f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r} "
                f"(installed: {', '.join(known) or 'none'})"
            )
        (entry,) = tuple(found)[:1]
        self._origin = f"entry point {name!r} ({entry.value})"
        try:
            self._hook: Callable[[str, Mapping | None], Iterable[Any]] = entry.load()
        except Exception as err:
            raise CatalogConfigError(f"{self._origin} cannot be loaded: {err}") from err

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        return _pairs(self._hook(principal, claims), self._origin)


class ClaimGroups:
    """Groups listed in a token's claim as ``"kind:name"`` texts (``"proposal:p1"``); an entry
    that is not one is left out, with a warning in the log.

    Example:
        >>> ClaimGroups("groups").groups_of("a", {"groups": ["proposal:p1", "oops"]})
        frozenset({('proposal', 'p1')})
    """

    def __init__(self, claim: str = "groups") -> None:
        self.claim = claim

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        listed = (claims or {}).get(self.claim, [])
        if isinstance(listed, str):
            listed = [listed]
        if not isinstance(listed, list):
            log.warning(
                "claim %r of %s is not a list; no groups taken from it", self.claim, principal
            )
            return frozenset()
        out = set()
        for entry in listed:
            kind, sep, name = entry.partition(":") if isinstance(entry, str) else ("", "", "")
            if not sep or kind not in KINDS or not name:
                log.warning(
                    "claim %r of %s: %r is not KIND:NAME with KIND one of %s; ignored",
                    self.claim,
                    principal,
                    entry,
                    ", ".join(KINDS),
                )
                continue
            out.add((kind, name))
        return frozenset(out)


class CachedGroups:
    """Another source's answers kept for ``ttl`` seconds per principal (thread-safe): a
    facility's proposal system is asked once in a while, not on every request.

    Example:
        >>> calls = []
        >>> class Counting:
        ...     def groups_of(self, principal, claims):
        ...         calls.append(principal); return frozenset()
        >>> cached = CachedGroups(Counting(), ttl=60)
        >>> _ = cached.groups_of("a", None); _ = cached.groups_of("a", None); calls
        ['a']
    """

    def __init__(self, source: GroupSource, ttl: float = 300) -> None:
        if ttl < 0:
            raise ValueError(f"ttl {ttl}: must be 0 or more seconds")
        self.source, self.ttl = source, ttl
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, Groups]] = {}

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(principal)
        if kept is not None and kept[0] > now:
            return kept[1]
        # Asked outside the lock: one slow answer does not hold up every other principal.
        groups = self.source.groups_of(principal, claims)
        with self._lock:
            self._kept[principal] = (now + self.ttl, groups)
        return groups

    def forget(self, principal: str | None = None) -> None:
        """Drop what is kept (of one principal)."""
        with self._lock:
            if principal is None:
                self._kept.clear()
            else:
                self._kept.pop(principal, None)


class CombinedGroups:
    """The union of several sources' answers.

    Example:
        >>> both = CombinedGroups(ClaimGroups("a"), ClaimGroups("b"))
        >>> sorted(both.groups_of("x", {"a": ["proposal:p1"], "b": ["beamline:bl1"]}))
        [('beamline', 'bl1'), ('proposal', 'p1')]
    """

    def __init__(self, *sources: GroupSource) -> None:
        self.sources = sources

    def groups_of(self, principal: str, claims: Mapping | None) -> Groups:
        return frozenset().union(*(s.groups_of(principal, claims) for s in self.sources))


# Each source, and the settings it takes besides "source" and "ttl".
_SETTINGS = {"directory": (), "yaml": ("file",), "entrypoint": ("name",), "claims": ("claim",)}


def group_source(spec: Mapping[str, Any], directory: Directory | None) -> GroupSource:
    """A source from configuration: ``{"source": "directory" | "yaml" | "entrypoint" |
    "claims", "file": ..., "name": ..., "claim": ..., "ttl": 300}``. ``ttl`` (seconds, 0 for
    none) caches the answers of a YAML file or entry point; the directory and claims are
    asked each time.

    Example:
        >>> group_source({"source": "claims", "claim": "roles"}, None).claim
        'roles'
        >>> group_source({"source": "ldap"}, None)
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogConfigError: group source 'ldap': the sources are directory, ...
    """
    kind = spec.get("source")
    if kind not in _SETTINGS:
        raise CatalogConfigError(f"group source {kind!r}: the sources are {', '.join(_SETTINGS)}")
    extra = sorted(set(spec) - {"source", "ttl", *_SETTINGS[kind]})
    if extra:
        raise CatalogConfigError(f"group source {kind!r}: unknown setting(s) {', '.join(extra)}")
    if kind == "directory":
        if directory is None:
            raise CatalogConfigError("group source 'directory': this server has no directory")
        return DirectoryGroups(directory)
    if kind == "claims":
        return ClaimGroups(str(spec.get("claim", "groups")))
    (needed,) = _SETTINGS[kind]
    if not spec.get(needed):
        raise CatalogConfigError(f"group source {kind!r}: give its {needed!r} setting")
    source: GroupSource = (
        YAMLGroups(spec["file"]) if kind == "yaml" else EntryPointGroups(str(spec["name"]))
    )
    ttl = spec.get("ttl", 300)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < 0:
        raise CatalogConfigError(f"group source {kind!r}: ttl {ttl!r} is not a number of seconds")
    return CachedGroups(source, ttl) if ttl else source
