"""Who may write which note (:mod:`runbroker.notes`) on a catalog with access control.

A note's author is the principal who wrote its first revision, whatever the client sent, and
each later revision records who made it (``by``). A ``group`` note is recorded with the groups
that tag its run (``proposal:p1``), so it is seen by their members. Annotations and
corrections are changed or deleted by their author (or an admin); a tag is anyone's who sees
it to remove. Correcting a start key that decides who may read the run (an access key such as
``proposal_id``) is an admin's job: anyone else would move a run between groups.

Example:
    >>> from runbroker.auth import AccessPolicy
    >>> from runbroker.notes import new_note
    >>> from runbroker.store.base import RunRecord
    >>> alice = Principal("alice", groups=frozenset({("proposal", "p1")}))
    >>> run = RunRecord("r1", {"uid": "r1", "time": 0.0, "proposal_id": "p1"}, None)
    >>> sent = new_note("r1", "annotation", author="someone", text="burned")
    >>> note = NoteRules(alice, AccessPolicy()).admit(run, [], [sent])[0]
    >>> note["author"], note["groups"]
    ('alice', ['proposal:p1'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AccessDeniedError, DocumentError
from ..notes import Viewer, check_note, visible
from ..store.base import RunRecord
from .principal import Principal

if TYPE_CHECKING:
    from .policy import AccessPolicy

__all__ = ["NoteRules", "viewer_for"]


def viewer_for(principal: Principal) -> Viewer:
    """The reader of notes ``principal`` is: its name and groups (an admin: no limit).

    Example:
        >>> viewer_for(Principal("bob", groups=frozenset({("beamline", "45id")})))
        Viewer(name='bob', groups=frozenset({'beamline:45id'}), admin=False)
    """
    if principal.admin:
        return Viewer(principal.name, admin=True)
    return Viewer(principal.name, frozenset(f"{kind}:{name}" for kind, name in principal.groups))


@dataclasses.dataclass(frozen=True)
class NoteRules:
    """The note-writing rules for one principal under one access policy."""

    principal: Principal
    policy: AccessPolicy

    @property
    def viewer(self) -> Viewer:
        return viewer_for(self.principal)

    def run_groups(self, run: RunRecord) -> list[str]:
        """The groups that tag ``run`` (``kind:value``), from its access keys."""
        kinds = {key: kind for kind, key in self.policy.keys.items()}
        return sorted(f"{kinds[k]}:{v}" for k, v in self.policy.tags(run.start).items())

    def admit(
        self, run: RunRecord, stored: list[dict], revisions: list[dict]
    ) -> list[dict[str, Any]]:
        """``revisions`` as this principal may store them on ``run`` (whose notes now are
        ``stored``: the newest revision of each), or an error naming the note and the rule."""
        me, viewer = self.principal, self.viewer
        scope = self.policy.write_scope(me)
        if scope is not None and not scope.matches({"start": run.start, "stop": run.stop}):
            raise AccessDeniedError(
                f"run {run.uid!r} is not one of your groups' runs: you may read its notes, "
                "not add to them"
            )
        newest: dict[str, Mapping[str, Any]] = {n["id"]: n for n in stored}
        out = []
        for sent in revisions:
            rev = check_note(sent)
            if rev["run"] != run.uid:
                raise DocumentError("note", rev["id"], "run", f"is not run {run.uid!r}")
            before = newest.get(rev["id"])
            if before is None:
                rev.update(author=me.name, by=me.name, groups=self.run_groups(run))
            else:
                self._may_change(before, rev, viewer)
                rev.update(author=before["author"], by=me.name, groups=before["groups"])
            if rev["kind"] == "correction" and not rev["deleted"] and not me.admin:
                keys = set(self.policy.keys.values())
                moved = sorted(keys.intersection(rev["correction"]["start"]))
                if moved:
                    raise AccessDeniedError(
                        f"note {rev['id']!r}: the start's {moved[0]!r} decides who may read "
                        "the run; only an admin may correct it"
                    )
            newest[rev["id"]] = rev
            out.append(rev)
        return out

    def _may_change(
        self, before: Mapping[str, Any], rev: Mapping[str, Any], viewer: Viewer
    ) -> None:
        if not visible(before, viewer):
            raise DocumentError("note", rev["id"], "id", "there is no such note on this run")
        if before["kind"] == "tag" or self.principal.admin or before["author"] == viewer.name:
            return
        raise AccessDeniedError(
            f"note {rev['id']!r} is {before['author']}'s {before['kind']}; only its author "
            "(or an admin) may change or delete it"
        )
