"""What ``run.annotate``, ``run.tag``, ``run.correct`` and the rest do: the notes of one run,
as the reader of its catalog (``catalog.viewer``) may see and change them. (Not
``runbroker.annotations``: ``from __future__ import annotations`` holds that name.)

Notes are kept by the store (:class:`runbroker.store.base.Annotates`); who may see one is
:func:`runbroker.notes.visible`. Who may change one:

- an annotation or a correction: its author only (others get
  :class:`~runbroker.errors.NotTheAuthorError`, naming the author);
- a tag: whoever sees it may take it off (``run.untag``) or delete it -- tags are shared
  labels, and a group that tagged a run "calibration" by mistake fixes it together.

A correction changes what every reader of the run reads, so it is public.

Example:
    >>> run = new_run()
    >>> note = annotate(run, "sample burned", tags=["bad"])
    >>> tags(run), [n["text"] for n in annotations(run)]
    (['bad'], ['sample burned'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import NotFoundError, NotTheAuthorError
from .notes import current, new_note, revise, visible
from .store.base import annotating

if TYPE_CHECKING:
    from .catalog import Run

__all__ = [
    "annotate",
    "annotations",
    "correct",
    "corrections",
    "delete_note",
    "edit_note",
    "note_history",
    "notes",
    "tag",
    "tags",
    "untag",
]

_UNSET: Any = object()


def _seen(run: Run, history: bool = False) -> list[dict]:
    """The run's notes (current ones, or every revision) that the catalog's reader sees."""
    viewer = run.catalog.viewer
    found = annotating(run.store).notes(run.uid, history=history)
    return [n for n in found if visible(n, viewer)]


def _new(run: Run, kind: str, **fields: Any) -> dict:
    viewer = run.catalog.viewer
    note = new_note(run.uid, kind, author=viewer.name, groups=viewer.groups, **fields)
    return _stored(run, note)


def _stored(run: Run, rev: dict) -> dict:
    """Store ``rev``; return it as stored (a server decides its author and groups)."""
    store = annotating(run.store)
    store.add_notes(run.uid, [rev])
    kept = [n for n in store.notes(run.uid) if n["id"] == rev["id"]]
    return kept[0] if kept else rev


def annotate(run: Run, text: str, tags: Iterable[str] = (), visibility: str = "group") -> dict:
    """Write an annotation on ``run``; return the note (its ``id`` edits it).

    Example:
        >>> run = new_run()
        >>> annotate(run, "use for the paper", visibility="private")["visibility"]
        'private'
    """
    return _new(run, "annotation", text=text, tags=list(tags), visibility=visibility)


def tag(run: Run, *labels: str, visibility: str = "group") -> dict:
    """Tag ``run`` with ``labels`` (one note); return the note.

    Example:
        >>> run = new_run()
        >>> tag(run, "calibration", "good")["tags"]
        ['calibration', 'good']
    """
    return _new(run, "tag", tags=list(labels), visibility=visibility)


def untag(run: Run, *labels: str) -> None:
    """Take ``labels`` off every note of ``run`` its reader sees (a tag note left with none
    is deleted; an annotation keeps its text).

    Example:
        >>> run = new_run()
        >>> _ = tag(run, "draft")
        >>> untag(run, "draft"); "draft" in tags(run)
        False
    """
    viewer = run.catalog.viewer
    gone = set(labels)
    changes = []
    for note in current(_seen(run)):
        if note["kind"] == "correction" or not gone.intersection(note["tags"]):
            continue
        kept = [t for t in note["tags"] if t not in gone]
        empty = note["kind"] == "tag" and not kept
        changes.append(revise(note, by=viewer.name, tags=kept, deleted=empty))
    if changes:
        annotating(run.store).add_notes(run.uid, changes)


def tags(run: Run) -> list[str]:
    """The tags on ``run`` (of its tags and annotations) its reader sees, sorted.

    Example:
        >>> run = new_run()
        >>> _ = tag(run, "bad", "calibration")
        >>> tags(run)
        ['bad', 'calibration']
    """
    return sorted({t for n in current(_seen(run)) if n["kind"] != "correction" for t in n["tags"]})


def notes(run: Run) -> list[dict]:
    """Every current note on ``run`` its reader sees (annotations, tags, corrections),
    oldest first.

    Example:
        >>> run = new_run()
        >>> _ = tag(run, "x"); _ = annotate(run, "ok")
        >>> [n["kind"] for n in notes(run)]
        ['tag', 'annotation']
    """
    return current(_seen(run))


def annotations(run: Run) -> list[dict]:
    """The current annotations on ``run`` its reader sees, oldest first.

    Example:
        >>> run = new_run()
        >>> _ = annotate(run, "sample burned")
        >>> [n["text"] for n in annotations(run)]
        ['sample burned']
    """
    return [n for n in current(_seen(run)) if n["kind"] == "annotation"]


def corrections(run: Run) -> list[dict]:
    """The current corrections of ``run``, oldest first (the later wins a key).

    Example:
        >>> run = new_run()
        >>> corrections(run)
        []
    """
    return [n for n in current(_seen(run)) if n["kind"] == "correction"]


def _mine(run: Run, note_id: str) -> dict:
    """The current note ``note_id`` of ``run``, if its reader may change it."""
    viewer = run.catalog.viewer
    found = [n for n in current(_seen(run)) if n["id"] == note_id]
    if not found:
        raise NotFoundError(f"no note {note_id!r} on run {run.uid} (or it was deleted)")
    note = found[0]
    if note["kind"] != "tag" and note["author"] != viewer.name and not viewer.admin:
        raise NotTheAuthorError(
            f"note {note_id!r} on run {run.uid} is {note['author']!r}'s {note['kind']}: only "
            f"its author may change it, not {viewer.name!r}"
        )
    return note


def edit_note(
    run: Run,
    note_id: str,
    *,
    text: str = _UNSET,
    tags: Iterable[str] = _UNSET,
    visibility: str = _UNSET,
    start: dict = _UNSET,
    reason: str = _UNSET,
) -> dict:
    """Revise note ``note_id`` (the fields given change); return the new revision.

    Example:
        >>> run = new_run()
        >>> note = annotate(run, "smple burned")
        >>> edit_note(run, note["id"], text="sample burned")["revision"]
        2
    """
    note = _mine(run, note_id)
    changes = {
        name: list(value) if name == "tags" else value
        for name, value in (("text", text), ("tags", tags), ("visibility", visibility))
        if value is not _UNSET
    }
    if start is not _UNSET:
        changes["correction"] = {"start": start}
    if reason is not _UNSET:
        changes["reason"] = reason
    rev = revise(note, by=run.catalog.viewer.name, **changes)
    return _stored(run, rev)


def delete_note(run: Run, note_id: str) -> dict:
    """Delete note ``note_id`` (a last revision saying so: its history stays); return it.

    Example:
        >>> run = new_run()
        >>> note = annotate(run, "wrong run")
        >>> delete_note(run, note["id"])["deleted"]
        True
    """
    rev = revise(_mine(run, note_id), by=run.catalog.viewer.name, deleted=True)
    return _stored(run, rev)


def note_history(run: Run, note_id: str | None = None) -> list[dict]:
    """Every revision (who, when, what) of the notes of ``run`` its reader sees -- of note
    ``note_id`` only, if given -- in the order they were made.

    Example:
        >>> run = new_run()
        >>> note = annotate(run, "draft")
        >>> _ = edit_note(run, note["id"], text="final")
        >>> [(r["revision"], r["text"]) for r in note_history(run, note["id"])]
        [(1, 'draft'), (2, 'final')]
    """
    found = _seen(run, history=True)
    return [n for n in found if note_id is None or n["id"] == note_id]


def correct(run: Run, start: dict, reason: str) -> dict:
    """Correct keys of the run's start document (``reason`` says why); reads and searches
    then see the corrected values, and the stored document stays as it was. Return the note.

    Example:
        >>> run = new_run()
        >>> correct(run, {"sample": "Ni"}, reason="typo at the beamline")["kind"]
        'correction'
    """
    return _new(run, "correction", correction={"start": start}, reason=reason, visibility="public")
