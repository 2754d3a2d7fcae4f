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

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from .errors import DocumentError
from .notes import Viewer, visible
from .store.base import annotating

__all__ = [
    "NOTE",
    "NOTES_SUFFIX",
    "notes_file",
    "notes_lines",
    "read_notes",
    "replay_notes",
    "store_notes",
    "without_notes",
]

#: The name of a note in a stream of ``(name, document)`` pairs.
NOTE = "note"
#: A run file's notes lie beside it in a file of this suffix (a folder catalog, a pack).
NOTES_SUFFIX = ".notes.jsonl"


def notes_file(run_file: str | os.PathLike[str]) -> Path:
    """Where the notes of the run in ``run_file`` are kept: beside it, one revision per line.

    Example:
        >>> notes_file("runs/2024/scan_7.msgpack").name
        'scan_7.msgpack.notes.jsonl'
    """
    path = Path(run_file)
    return path.with_name(path.name + NOTES_SUFFIX)


def notes_lines(revisions: Iterable[Mapping[str, Any]]) -> bytes:
    """Revisions as JSON lines (what a notes file holds).

    Example:
        >>> notes_lines([{"id": "n1"}, {"id": "n2"}]).splitlines()
        [b'{"id":"n1"}', b'{"id":"n2"}']
    """
    return b"".join(orjson.dumps(dict(rev)) + b"\n" for rev in revisions)


def read_notes(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The ``("note", revision)`` pairs of a notes file; a line that is no JSON object is
    an error naming the file and line."""
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rev = orjson.loads(line)
            except orjson.JSONDecodeError as err:
                raise DocumentError(NOTE, None, None, f"{path}, line {i}: {err}") from None
            if not isinstance(rev, dict):
                raise DocumentError(NOTE, None, None, f"{path}, line {i}: not a JSON object")
            yield NOTE, rev


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
