"""What people say about a run after it was taken: annotations, tags and corrections.

A *note* is one JSON record kept beside a run, never inside its documents. Each note has an
``id`` and numbered *revisions*: editing or deleting a note adds a revision (who, when, the
new value), so its history is never lost. Three kinds share the one record:

``annotation``  free text, optionally with tags (``run.annotate("sample burned")``)
``tag``         a label with no text (``run.tag("calibration")``)
``correction``  new values for start-document keys, with a reason (``run.correct(...)``);
                reads and searches see the corrected values, the stored documents stay as
                they were

Every revision is a complete record (the fields below), so the newest revision of a note is
the note. Stores keep the revisions (:class:`runbroker.store.base.Annotates`); who may see a
note is decided here, by :func:`visible`, for a :class:`Viewer`:

``private``  its author only
``group``    whoever shares one of the note's ``groups`` (the author's groups that tag the
             run, recorded when the note was written); every reader when it names none
             (a catalog without access control)
``public``   every reader of the run

Example:
    >>> note = new_note("r1", "annotation", author="ada", text="sample burned", tags=["bad"])
    >>> note["revision"], note["kind"], note["visibility"]
    (1, 'annotation', 'group')
    >>> edited = revise(note, by="ada", text="sample burned at 300 K")
    >>> edited["revision"], edited["id"] == note["id"]
    (2, True)
    >>> visible(edited, Viewer("bob")), visible(revise(edited, visibility="private"), Viewer("bob"))
    (True, False)
"""

from __future__ import annotations

import copy
import getpass
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import DocumentError

__all__ = [
    "KINDS",
    "VISIBILITIES",
    "HasViewer",
    "Viewer",
    "check_note",
    "corrected",
    "current",
    "local_viewer",
    "new_note",
    "revise",
    "user_name",
    "viewer_of",
    "visible",
]

KINDS = ("annotation", "tag", "correction")
VISIBILITIES = ("private", "group", "public")
#: The fields of a note revision and their JSON types.
FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "id": str,
    "run": str,
    "kind": str,
    "revision": int,
    "author": str,
    "by": str,
    "time": (int, float),
    "visibility": str,
    "text": str,
    "tags": list,
    "groups": list,
    "deleted": bool,
    "reason": (str, type(None)),
    "correction": (dict, type(None)),
}
# What a revision may not change.
_FIXED = ("id", "run", "kind", "author")


@dataclass(frozen=True)
class Viewer:
    """Who reads notes: a name and the groups (``"proposal:p1"``) it belongs to.

    ``groups=None`` is a reader not limited by groups: a local catalog's user, an admin.

    Example:
        >>> Viewer("ada", frozenset({"proposal:p1"})).groups
        frozenset({'proposal:p1'})
    """

    name: str
    groups: frozenset[str] | None = None
    #: An admin changes anyone's notes (a server's admin principal).
    admin: bool = False


def local_viewer() -> Viewer:
    """The operating-system user, who reads and writes notes on a local catalog.

    Example:
        >>> local_viewer().groups is None
        True
    """
    return Viewer(user_name())


def user_name() -> str:
    """This process's operating-system user name (``uid1000`` where the system knows none,
    as in some containers).

    Example:
        >>> bool(user_name())
        True
    """
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def visible(note: Mapping[str, Any], viewer: Viewer) -> bool:
    """Whether ``viewer`` may see ``note`` (see the module docstring).

    Example:
        >>> n = new_note("r1", "tag", author="ada", tags=["x"], groups=["proposal:p1"])
        >>> bob, eve = Viewer("bob", frozenset({"proposal:p1"})), Viewer("eve", frozenset())
        >>> visible(n, bob), visible(n, eve)
        (True, False)
    """
    if note["author"] == viewer.name or note["visibility"] == "public":
        return True
    if note["visibility"] == "private":
        return False
    groups = note.get("groups") or ()
    return viewer.groups is None or not groups or bool(viewer.groups.intersection(groups))


def _bad(note_id: Any, key: str | None, reason: str) -> DocumentError:
    return DocumentError("note", note_id, key, reason)


def _tags(tags: Iterable[str] | None, note_id: Any) -> list[str]:
    out: list[str] = []
    for tag in tags or ():
        if not isinstance(tag, str) or not tag.strip():
            raise _bad(note_id, "tags", f"a tag must be a non-empty str, got {tag!r}")
        if tag.strip() not in out:
            out.append(tag.strip())
    return out


def check_note(note: Any) -> dict[str, Any]:
    """``note`` if it is a well-formed revision, else a ``DocumentError`` naming the field.

    Example:
        >>> check_note({"id": "n1"})
        Traceback (most recent call last):
        ...
        runbroker.errors.DocumentError: Invalid note document (uid 'n1') at key 'run': missing
    """
    if not isinstance(note, Mapping):
        raise _bad(None, None, f"a note must be a JSON object, got {type(note).__name__}")
    nid = note.get("id")
    for name, kind in FIELDS.items():
        if name not in note:
            raise _bad(nid, name, "missing")
        value = note[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _bad(nid, name, f"wrong type ({type(value).__name__} {value!r})")
    extra = sorted(set(note) - set(FIELDS))
    if extra:
        raise _bad(nid, extra[0], f"unknown field(s) {', '.join(map(repr, extra))}")
    if note["kind"] not in KINDS:
        raise _bad(nid, "kind", f"must be one of {KINDS}, got {note['kind']!r}")
    if note["visibility"] not in VISIBILITIES:
        raise _bad(nid, "visibility", f"must be one of {VISIBILITIES}, got {note['visibility']!r}")
    if note["revision"] < 1:
        raise _bad(nid, "revision", f"must be 1 or more, got {note['revision']}")
    _tags(note["tags"], nid)
    if note["kind"] == "correction" and not note["deleted"]:
        fix = note["correction"]
        if not fix or set(fix) != {"start"} or not isinstance(fix["start"], dict):
            raise _bad(nid, "correction", "a correction gives {'start': {key: value, ...}}")
        for key in fix["start"]:
            if key in ("uid", "time"):
                raise _bad(nid, "correction", f"the start's {key!r} names the run; it stays")
        if not note["reason"]:
            raise _bad(nid, "reason", "a correction needs a reason")
    return dict(note)


def new_note(
    run: str,
    kind: str,
    *,
    author: str,
    text: str = "",
    tags: Iterable[str] | None = None,
    visibility: str = "group",
    groups: Iterable[str] | None = None,
    reason: str | None = None,
    correction: dict | None = None,
) -> dict[str, Any]:
    """The first revision of a new note on run ``run``.

    Example:
        >>> new_note("r1", "tag", author="ada", tags=["calibration"])["tags"]
        ['calibration']
    """
    note = {
        "id": uuid.uuid4().hex,
        "run": run,
        "kind": kind,
        "revision": 1,
        "author": author,
        "by": author,
        "time": time.time(),
        "visibility": visibility,
        "text": text,
        "tags": _tags(tags, None),
        "groups": sorted(groups or ()),
        "deleted": False,
        "reason": reason,
        "correction": copy.deepcopy(correction),
    }
    return check_note(note)


def revise(note: Mapping[str, Any], *, by: str | None = None, **changes: Any) -> dict[str, Any]:
    """The next revision of ``note``: its fields with ``changes`` applied, made ``by`` someone
    (the note's author when not given), numbered one higher. ``deleted=True`` deletes it.
    The note's ``author`` stays who wrote it first; ``by`` says who made each revision.

    Example:
        >>> n = new_note("r1", "annotation", author="ada", text="ok")
        >>> revise(n, deleted=True)["deleted"]
        True
        >>> revise(n, kind="tag")
        Traceback (most recent call last):
        ...
        runbroker.errors.DocumentError: Invalid note document ... at key 'kind': cannot be ...
    """
    for name in _FIXED:
        if name in changes and changes[name] != note[name]:
            raise _bad(note["id"], name, "cannot be changed by a revision")
    if "tags" in changes:
        changes["tags"] = _tags(changes["tags"], note["id"])
    nxt = {**copy.deepcopy(dict(note)), **changes}
    nxt["revision"] = note["revision"] + 1
    nxt["time"] = time.time()
    nxt["by"] = by if by is not None else note["author"]
    return check_note(nxt)


def current(revisions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The newest revision of each note, deleted ones left out, oldest note first.

    Example:
        >>> n = new_note("r1", "tag", author="ada", tags=["x"])
        >>> [r["revision"] for r in current([n, revise(n, tags=["y"])])]
        [2]
        >>> current([n, revise(n, deleted=True)])
        []
    """
    newest: dict[str, dict[str, Any]] = {}
    for rev in revisions:
        seen = newest.get(rev["id"])
        if seen is None or rev["revision"] > seen["revision"]:
            newest[rev["id"]] = dict(rev)
    return [n for n in newest.values() if not n["deleted"]]


def corrected(start: Mapping[str, Any], notes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``start`` with the current corrections among ``notes`` applied, oldest first (a later
    correction of a key wins). A key set to ``None`` by a correction is set to null, not
    removed: the original is always kept beside it.

    Example:
        >>> fix = new_note("r1", "correction", author="ada", reason="typo",
        ...                correction={"start": {"sample": "Ni"}})
        >>> corrected({"uid": "r1", "sample": "Nl"}, [fix])
        {'uid': 'r1', 'sample': 'Ni'}
    """
    out = copy.deepcopy(dict(start))
    fixes = [n for n in current(notes) if n["kind"] == "correction"]
    for fix in sorted(fixes, key=lambda n: (n["time"], n["id"])):
        for key, value in fix["correction"]["start"].items():
            out[key] = copy.deepcopy(value)
    return out


@runtime_checkable
class HasViewer(Protocol):
    """A store that knows who reads through it (a server's client, the access guard): the
    catalog shows and searches notes as that reader sees them."""

    def viewer(self) -> Viewer:
        """Who reads notes through this store."""
        ...


def viewer_of(store: object) -> Viewer:
    """Who reads notes through ``store``: its own answer (:class:`HasViewer`), else the
    local user (:func:`local_viewer`).

    Example:
        >>> viewer_of(object()) == local_viewer()
        True
    """
    return store.viewer() if isinstance(store, HasViewer) else local_viewer()
