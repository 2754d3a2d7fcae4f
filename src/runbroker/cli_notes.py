"""``runbroker tag | annotate | annotations | correct``: notes on runs, from a shell.

Each command names a catalog (file, folder, URL or configured name) and a run the way
``runbroker show`` does (scan_id, -N for recency, uid or uid prefix). Notes are written as
this machine's user on a local catalog, as the key's principal on a server
(:mod:`runbroker.notes`).

Example:
    $ runbroker tag runs.db -1 calibration
    $ runbroker tag runs.db -1 calibration --remove
    $ runbroker annotate runs.db 554 "sample burned" --tag bad --visibility public
    $ runbroker annotations runs.db 554 --history
    $ runbroker correct runs.db 554 sample=Ni --reason "typed Nl at the beamline"
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .cli_open import open_named, run_named
from .notes import VISIBILITIES

__all__ = ["add_commands", "format_notes"]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def format_notes(notes: Iterable[Mapping[str, Any]]) -> str:
    """Notes as lines a person reads: when, who, what, and the note's id.

    Example:
        >>> from runbroker.notes import new_note
        >>> n = new_note("r1", "annotation", author="ada", text="burned", tags=["bad"])
        >>> print(format_notes([n]))  # doctest: +ELLIPSIS
        20...  ada  annotation [group] burned  #bad  (id ..., revision 1)
    """
    lines = []
    for n in notes:
        what = {
            "annotation": n["text"],
            "tag": "",
            "correction": json.dumps((n["correction"] or {}).get("start", {}), default=str),
        }[n["kind"]]
        if n["kind"] == "correction" and n["reason"]:
            what += f" because: {n['reason']}"
        tags = " ".join(f"#{t}" for t in n["tags"])
        by = n["author"] if n["by"] == n["author"] else f"{n['by']} (note by {n['author']})"
        state = " DELETED" if n["deleted"] else ""
        lines.append(
            f"{_when(n['time'])}  {by}  {n['kind']} [{n['visibility']}]{state} "
            f"{what}{'  ' + tags if tags else ''}  (id {n['id']}, revision {n['revision']})"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace, readonly: bool) -> Any:
    return run_named(open_named(args.uri, readonly=readonly), args.run)


def _tag(args: argparse.Namespace) -> int:
    run = _run(args, readonly=False)
    if args.remove:
        run.untag(*args.tags)
    else:
        run.tag(*args.tags, visibility=args.visibility)
    print(f"{run.uid}: tags {', '.join(run.tags) or '(none)'}")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    run = _run(args, readonly=False)
    note = run.annotate(args.text, tags=args.tag, visibility=args.visibility)
    print(f"{run.uid}: annotation {note['id']} added")
    return 0


def _annotations(args: argparse.Namespace) -> int:
    run = _run(args, readonly=True)
    notes = run.note_history() if args.history else run.notes
    if args.json:
        print(json.dumps(notes, indent=2, default=str))
    elif notes:
        print(format_notes(notes))
    else:
        print(f"{run.uid}: no notes")
    return 0


def _value(text: str) -> Any:
    """A value as typed: JSON when it reads as JSON (``300``, ``true``, ``[1, 2]``), else the
    text itself.

    Example:
        >>> _value("300"), _value("Ni"), _value('"300"')
        (300, 'Ni', '300')
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def _correct(args: argparse.Namespace) -> int:
    fixes: dict[str, Any] = {}
    for item in args.values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: write each correction as KEY=VALUE")
        fixes[key] = _value(text)
    run = _run(args, readonly=False)
    run.correct(start=fixes, reason=args.reason)
    print(f"{run.uid}: corrected {', '.join(sorted(fixes))}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``tag``, ``annotate``, ``annotations`` and ``correct`` to the ``runbroker``
    command's subparsers ``sub``."""

    def command(name: str, func: Any, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text)
        parser.add_argument("uri", help="catalog file, folder, URL or name")
        parser.add_argument("run", help="scan_id, -N (recency), uid or uid prefix")
        parser.set_defaults(func=func)
        return parser

    visibility = {"choices": VISIBILITIES, "default": "group", "help": "who sees it (group)"}
    tag = command("tag", _tag, "tag a run (or --remove the tags)")
    tag.add_argument("tags", nargs="+", help="one or more tags")
    tag.add_argument("--remove", action="store_true", help="untag instead")
    tag.add_argument("--visibility", **visibility)
    ann = command("annotate", _annotate, "add an annotation to a run")
    ann.add_argument("text", help="what to say about the run")
    ann.add_argument("--tag", action="append", default=[], help="a tag it carries (repeat)")
    ann.add_argument("--visibility", **visibility)
    notes = command("annotations", _annotations, "a run's annotations, tags and corrections")
    notes.add_argument("--history", action="store_true", help="every revision, in order")
    notes.add_argument("--json", action="store_true", help="as JSON records")
    fix = command("correct", _correct, "correct start-document values (the original stays)")
    fix.add_argument("values", nargs="+", metavar="KEY=VALUE", help="e.g. sample=Ni")
    fix.add_argument("--reason", required=True, help="why: kept with the correction")
