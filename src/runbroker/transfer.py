"""Copying runs into a catalog: the one loop that ``runbroker copy``, ``import``, ``ingest``
of exports and (un)packing share.

Each run is stored with one :meth:`Catalog.ingest` call, so it is copied whole or not at all;
a run whose uid the destination already has is skipped, so a copy started again after an
interruption copies only what is missing; a run the destination refuses is reported and the
others go on, unless ``strict``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import DocumentError

if TYPE_CHECKING:
    from .catalog import Catalog, Run
    from .queries import Query

__all__ = [
    "CopyReport",
    "Destination",
    "copy_catalog",
    "copy_runs",
    "gc_paused",
    "select_runs",
]

#: A run's documents, produced only when the run is to be copied (None: it vanished).
Documents = Callable[[], Iterable[tuple[str, dict]] | None]


@dataclass
class CopyReport:
    """What a copy did.

    ``copied`` and ``skipped`` count runs (skipped: already in the destination); ``failed``
    lists ``(uid, message)`` for each run the destination refused (nothing of those runs was
    stored); ``documents`` counts the documents stored (event and datum pages count once).

    Example:
        >>> report = CopyReport(copied=2, skipped=1, documents=40)
        >>> report.failed.append(("0b1c2d3e-aaaa", "Invalid descriptor document ..."))
        >>> print(report)
        copied 2 runs (40 documents), skipped 1 already in the catalog, 1 failed:
          0b1c2d3e-aaaa: Invalid descriptor document ...
    """

    copied: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    documents: int = 0
    #: What the destination is called in the summary, and what was done to the runs.
    into: str = field(default="the catalog", repr=False)
    verb: str = field(default="copied", repr=False)

    def __str__(self) -> str:
        runs = "run" if self.copied == 1 else "runs"
        text = (
            f"{self.verb} {self.copied} {runs} ({self.documents} documents), "
            f"skipped {self.skipped} already in {self.into}, {len(self.failed)} failed"
        )
        if self.failed:
            text += ":" + "".join(f"\n  {uid}: {message}" for uid, message in self.failed)
        return text


class Destination(Protocol):
    """Where :func:`copy_runs` copies to: a :class:`~runbroker.Catalog`, or a pack being
    written (:class:`runbroker.pack.writer.PackWriter`)."""

    query: Query | None

    def __contains__(self, uid: object) -> bool: ...

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int: ...


def copy_runs(
    runs: Iterable[tuple[str, Documents]],
    dest: Destination,
    *,
    total: int | None = None,
    progress: bool = True,
    strict: bool = False,
    desc: str = "copy",
    report: CopyReport | None = None,
) -> CopyReport:
    """Store each ``(uid, documents)`` of ``runs`` in ``dest`` unless it is there already.

    ``documents`` is called only for runs to copy. ``DocumentError``, ``ValueError`` and
    ``TypeError`` (a value the destination cannot store) are the destination refusing a run:
    reported in ``failed``, or raised with ``strict=True``. Other errors (a lost connection)
    stop the copy.

    Example:
        >>> dest = runbroker.temp()
        >>> print(copy_runs([(run.uid, run.documents)], dest, progress=False))
        copied 1 run (4 documents), skipped 0 already in the catalog, 0 failed
    """
    # uid look-ups must see every run of the destination (within its scope), not only those
    # of a search result.
    present = dest if dest.query is None else dest.whole  # type: ignore[attr-defined]
    report = report if report is not None else CopyReport()
    bar = _bar(total, desc) if progress else None
    try:
        with gc_paused():
            for uid, documents in runs:
                if uid in present:
                    report.skipped += 1
                else:
                    _copy_one(uid, documents, dest, strict, report)
                if bar is not None:
                    bar.set_postfix(
                        copied=report.copied,
                        skipped=report.skipped,
                        failed=len(report.failed),
                        refresh=False,
                    )
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return report


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector off for the block (as it was, after).

    Copying runs makes thousands of short-lived containers per run, and the collector would
    walk every object alive (the source's and destination's too) over and over: a sixth of
    a copy's time. Reference counting still frees each run's documents; the few cycles left
    (an error's traceback) wait for the next collection after the block.

    Example:
        >>> with gc_paused():
        ...     gc.isenabled()
        False
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _copy_one(
    uid: str, documents: Documents, dest: Destination, strict: bool, report: CopyReport
) -> None:
    try:
        docs = documents()
        if docs is None:  # gone from the source since the list of runs was read
            return
        report.documents += dest.ingest(docs)
    except (ValueError, TypeError) as err:
        if strict:
            err.add_note(f"while copying run {uid!r} (nothing of that run was stored)")
            raise
        message = str(err) if isinstance(err, DocumentError) else f"{type(err).__name__}: {err}"
        report.failed.append((uid, message))
    else:
        report.copied += 1


def _bar(total: int | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", desc=desc)


def copy_catalog(
    source: Catalog,
    dest: Catalog,
    *,
    query: Query | None = None,
    uids: Iterable[str] | None = None,
    progress: bool = True,
    strict: bool = False,
) -> CopyReport:
    """Copy the runs of ``source`` (those matching ``query``, or listed in ``uids``) into
    ``dest``, oldest first, skipping those ``dest`` has.

    Documents are copied as they are, but for resource roots (and ``stream_resource`` URIs)
    relative to ``source``'s folder, made absolute when ``dest`` is elsewhere: detector files
    stay where they are (``runbroker pack`` moves files too).

    Example:
        >>> laptop = runbroker.temp()
        >>> print(copy_catalog(cat, laptop, query=Key("sample") == "Ni", progress=False))
        copied 1 run (6 documents), skipped 0 already in the catalog, 0 failed
    """
    chosen = select_runs(source, query, uids)
    base = source.assets.base if source.assets.base != dest.assets.base else None
    return copy_runs(
        ((run.uid, _anchored(run, base)) for run in chosen),
        dest,
        total=len(chosen),
        progress=progress,
        strict=strict,
    )


def _anchored(run: Run, base: str | None) -> Documents:
    """The run's documents and notes, relative roots made absolute from ``base`` (if given)."""
    if base is None:
        return lambda: run.documents(notes=True)

    def documents() -> Iterable[tuple[str, dict]]:
        from .assets.paths import anchored

        pairs = run.documents(notes=True)
        return ((name, dict(anchored(name, doc, base))) for name, doc in pairs)

    return documents


def select_runs(
    source: Catalog, query: Query | None = None, uids: Iterable[str] | None = None
) -> list[Run]:
    """The runs of ``source`` matching ``query`` and (if given) listed in ``uids``, oldest
    first: the order copies and packs store them in.

    Example:
        >>> [r.uid == other_run.uid for r in select_runs(cat, Key("sample") == "Ni")]
        [True]
    """
    from .queries import In

    if query is not None:
        source = source.search(query)
    if uids is not None:
        wanted = list(uids)
        source = source.search(In("uid", wanted))
    chosen = list(source.values())[::-1]  # the catalog lists newest first
    if uids is not None and len(chosen) < len(set(wanted)):
        found = {r.uid for r in chosen}
        missing = [u for u in dict.fromkeys(wanted) if u not in found]
        raise KeyError(
            f"{len(missing)} of the uids given are not runs of {source.store.uri}: "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    return chosen
