"""Notes travelling with a run's documents: ``("note", revision)`` pairs.

A replay with ``run.documents(notes=True)`` ends with every revision of the run's notes
(:mod:`runbroker.notes`) the reader may see, as ``("note", revision)`` pairs after the run's
own documents; a catalog's ``ingest`` (and ``insert``) stores such pairs as notes of the run
they name, after the documents. So ``copy``, ``pack``/``unpack`` and the document exports
carry annotations, tags and corrections with the run, with their full history (who, when),
and storing them twice stores them once.

Example:
    >>> pairs = [("start", {"uid": "r1"}), ("note", {"run": "r1", "id": "n1"})]
    >>> notes: dict = {}
    >>> [name for name, _ in without_notes(pairs, notes)], list(notes)
    (['start'], ['r1'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .errors import DocumentError
from .notes import Viewer, visible
from .store.base import annotating

__all__ = ["NOTE", "replay_notes", "store_notes", "without_notes"]

#: The name of a note in a stream of ``(name, document)`` pairs.
NOTE = "note"


def without_notes(
    pairs: Iterable[tuple[str, Any]], notes: dict[str, list[dict]]
) -> Iterator[tuple[str, Any]]:
    """The pairs that are documents; the notes among them go into ``notes`` (run uid ->
    revisions, in order) as they are passed."""
    for name, doc in pairs:
        if name != NOTE:
            yield name, doc
            continue
        run = doc.get("run") if isinstance(doc, dict) else None
        if not isinstance(run, str):
            raise DocumentError(NOTE, _id(doc), "run", "a note must name its run (a uid)")
        notes.setdefault(run, []).append(doc)


def _id(doc: Any) -> Any:
    return doc.get("id") if isinstance(doc, dict) else None


def store_notes(store: object, notes: dict[str, list[dict]]) -> int:
    """Store the revisions gathered by :func:`without_notes`, run by run; how many."""
    for run, revisions in notes.items():
        annotating(store).add_notes(run, revisions)
    return sum(len(r) for r in notes.values())


def replay_notes(store: object, run_uid: str, viewer: Viewer) -> Iterator[tuple[str, dict]]:
    """Every revision of the run's notes that ``viewer`` may see (a note seen now is seen
    with its whole history), in the order stored; nothing for a store that keeps none."""
    try:
        keeper = annotating(store)
    except TypeError:
        return
    history = keeper.notes(run_uid, history=True)
    # judged by its newest revision; a deleted note's history travels too (its deletion is
    # part of it, and a copy must not bring it back)
    shown = {n["id"] for n in _newest(history) if visible(n, viewer)}
    for rev in history:
        if rev["id"] in shown:
            yield NOTE, rev


def _newest(history: list[dict]) -> list[dict]:
    newest: dict[str, dict] = {}
    for rev in history:
        if rev["id"] not in newest or rev["revision"] > newest[rev["id"]]["revision"]:
            newest[rev["id"]] = rev
    return list(newest.values())
