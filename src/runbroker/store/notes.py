"""Notes (:mod:`runbroker.notes`) in a SQL catalog: what is stored, and what is searched.

Every revision of a note is one row of ``notes`` (its JSON record), never changed once
written. What searches need is derived from the current revisions whenever a run's notes
change, inside the same transaction:

- ``meta`` rows under keys starting ``@`` (no start/stop key can: they all begin ``start.``
  or ``stop.``): ``@tag.<audience>`` holds each tag of a current tag or annotation,
  ``@note.<audience>`` the case-folded text of a current annotation. The *audience* says who
  may see it (:func:`audiences`), so a search for one reader is an index range per audience
  it belongs to (:func:`audiences_of`) on ``meta``'s covering (key, txt) index, with no
  join;
- ``runs.corrected``: the start as corrected (:func:`runbroker.notes.corrected`), NULL when
  no correction is current, read beside ``start``; the run's ``start.*`` metadata rows,
  full-text row and ``scan_id`` are those of the corrected start (the stored start document
  stays as it was).

Example:
    >>> from runbroker.notes import new_note
    >>> audiences(new_note("r1", "tag", author="ada", tags=["x"], groups=["p1"]))
    ['group', 'by.ada', 'in.p1']
    >>> audiences_of(Viewer("bob", frozenset({"p1"})))
    ['public', 'open', 'by.bob', 'in.p1']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from ..errors import ConflictError, DocumentError
from ..notes import Viewer, check_note, corrected, current
from . import jsoncodec
from .events import canonical
from .flatten import fulltext, meta_rows
from .schema import meta, notes, runs
from .schema import tags as tags_table
from .sqlwrite import scan_id_column

__all__ = ["TAG", "TEXT", "audiences", "audiences_of", "check", "history", "newest", "refresh"]

#: The ``meta`` key prefixes of tags and of annotation texts.
TAG, TEXT = "@tag", "@note"


def audiences(note: dict) -> list[str]:
    """The audiences that see ``note`` (see :func:`runbroker.notes.visible`): ``public``
    everyone; ``by.<author>`` its author; ``group`` readers not limited by groups; ``open``
    every reader (a group note naming no group); ``in.<g>`` the members of group g."""
    if note["visibility"] == "public":
        return ["public"]
    mine = f"by.{note['author']}"
    if note["visibility"] == "private":
        return [mine]
    groups = note.get("groups") or []
    return ["group", mine, *([f"in.{g}" for g in groups] if groups else ["open"])]


def audiences_of(viewer: Viewer | None) -> list[str]:
    """The audiences ``viewer`` belongs to; an unbound query's (None) sees public and
    group notes (no private ones)."""
    if viewer is None:
        return ["public", "group"]
    mine = f"by.{viewer.name}"
    if viewer.groups is None:
        return ["public", "group", mine]
    return ["public", "open", mine, *(f"in.{g}" for g in sorted(viewer.groups))]


def _meta_rows(run_id: int, notes_now: Iterable[dict]) -> list[dict[str, Any]]:
    rows = []
    for note in notes_now:
        if note["kind"] == "correction":
            continue
        values = [(TAG, tag) for tag in note["tags"]]
        if note["kind"] == "annotation" and note["text"]:
            values.append((TEXT, note["text"].casefold()))
        for audience in audiences(note):
            rows += [
                {"run_id": run_id, "key": f"{prefix}.{audience}", "elem": False, "typ": "s"}
                | {"num": None, "txt": value}
                for prefix, value in values
            ]
    return rows


def history(conn: Connection, run_id: int) -> list[dict]:
    """Every revision of the run's notes, in the order stored."""
    rows = conn.execute(
        select(notes.c.body).where(notes.c.run_id == run_id).order_by(notes.c.id)
    ).scalars()
    return [jsoncodec.loads(body) for body in rows]


def newest(revisions: Iterable[dict]) -> list[dict]:
    """The newest revision of each note (deleted ones too), oldest note first.

    Example:
        >>> newest([{"id": "a", "revision": 1}, {"id": "b", "revision": 1},
        ...         {"id": "a", "revision": 2}])
        [{'id': 'a', 'revision': 2}, {'id': 'b', 'revision': 1}]
    """
    out: dict[str, dict] = {}
    for rev in revisions:
        if rev["id"] not in out or rev["revision"] > out[rev["id"]]["revision"]:
            out[rev["id"]] = rev
    return list(out.values())


def check(conn: Connection, run_id: int, run_uid: str, given: list[dict]) -> list[dict]:
    """The revisions among ``given`` to store: each checked, numbered one above its note's
    newest stored one; a repeat of a stored revision is left out. Raises DocumentError for a
    bad revision or one of another run, ConflictError for a revision that is not the next."""
    checked = [check_note(n) for n in given]
    for note in checked:
        if note["run"] != run_uid:
            raise DocumentError(
                "note", note["id"], "run", f"names run {note['run']!r}, not {run_uid!r}"
            )
    ids = sorted({n["id"] for n in checked})
    stored: dict[tuple[str, int], dict] = {}
    for rid, body in conn.execute(
        select(notes.c.run_id, notes.c.body).where(notes.c.note.in_(ids))
    ).all():
        rev = jsoncodec.loads(body)
        if rid != run_id:
            raise DocumentError("note", rev["id"], "id", "is a note of another run")
        stored[(rev["id"], rev["revision"])] = rev
    top = {}
    for (nid, number), rev in stored.items():
        if number > top.get(nid, (0, None))[0]:
            top[nid] = (number, rev)
    fresh = []
    for note in checked:
        key = (note["id"], note["revision"])
        if key in stored:
            if canonical(stored[key]) != canonical(note):
                raise _conflict(note, top[note["id"]][1])
            continue
        number, last = top.get(note["id"], (0, None))
        if note["revision"] != number + 1:
            raise _conflict(note, last)
        if last is not None:
            for fixed in ("kind", "author"):
                if note[fixed] != last[fixed]:
                    raise DocumentError(
                        "note", note["id"], fixed, "cannot be changed by a revision"
                    )
        stored[key] = note
        top[note["id"]] = (note["revision"], note)
        fresh.append(note)
    return fresh


def _conflict(note: dict, last: dict | None) -> ConflictError:
    if last is None:
        why = f"revision {note['revision']} of a note with none stored (the first is 1)"
    else:
        why = (
            f"revision {note['revision']} is not the next one: note {note['id']!r} is at "
            f"revision {last['revision']}, made by {last['by']!r}; someone changed it first "
            "(read it again, then edit)"
        )
    return ConflictError("note", note["id"], "revision", why)


def write(conn: Connection, run_id: int, fresh: list[dict]) -> None:
    """Store revisions checked by :func:`check`."""
    if fresh:
        conn.execute(
            insert(notes),
            [
                {"run_id": run_id, "note": n["id"], "revision": n["revision"]}
                | {"body": jsoncodec.dumps(n)}
                for n in fresh
            ],
        )


def refresh(conn: Connection, dialect: Any, run_id: int) -> None:
    """Derive the run's searchable rows and corrected start from its notes (see the module
    docstring), in the caller's transaction."""
    revisions = history(conn, run_id)
    notes_now = current(revisions)
    conn.execute(delete(meta).where(meta.c.run_id == run_id, meta.c.key.startswith("@")))
    rows = _meta_rows(run_id, notes_now)
    if rows:
        conn.execute(insert(meta), rows)
    start_blob, was = conn.execute(
        select(runs.c.start, runs.c.corrected).where(runs.c.id == run_id)
    ).one()
    start = jsoncodec.loads(start_blob)
    fixed = (
        corrected(start, notes_now) if any(n["kind"] == "correction" for n in notes_now) else None
    )
    now = None if fixed is None else jsoncodec.dumps(fixed)
    if now == was:
        return
    view = start if fixed is None else fixed
    conn.execute(
        update(runs).where(runs.c.id == run_id).values(corrected=now, scan_id=scan_id_column(view))
    )
    # The start's metadata rows follow what reads see; those of indexed keys in ``tags`` go
    # with them (the trigger on meta copies the new ones).
    for table in (meta, tags_table):
        conn.execute(
            delete(table).where(table.c.run_id == run_id, table.c.key.startswith("start."))
        )
    start_rows = [
        {"run_id": run_id, "key": k, "elem": e, "typ": t, "num": n, "txt": s}
        for k, e, t, n, s in meta_rows("start", view)
    ]
    if start_rows:
        conn.execute(insert(meta), start_rows)
    dialect.set_fulltext(conn, run_id, fulltext(view))


def replace(conn: Connection, dialect: Any, run_id: int, revisions: list[dict]) -> None:
    """Make ``revisions`` the run's notes, whatever was stored (a folder's notes file, read
    again), and derive its rows from them."""
    conn.execute(delete(notes).where(notes.c.run_id == run_id))
    write(conn, run_id, newest_unique(revisions))
    refresh(conn, dialect, run_id)


def newest_unique(revisions: list[dict]) -> list[dict]:
    """``revisions`` with each (note, revision) once (the last one given wins)."""
    seen: dict[tuple[str, int], dict] = {}
    for rev in revisions:
        seen[(rev["id"], rev["revision"])] = rev
    return list(seen.values())
