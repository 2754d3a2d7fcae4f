"""Exporting many runs at once: arguments checked before anything is written, runs the format
cannot hold reported while the others are written, runs exported before left alone on request.

``Catalog.export`` and ``runbroker export`` both go through :func:`export_runs`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..display import plural
from .base import Exporter, ExportError
from .naming import DEFAULT_TEMPLATE, render

if TYPE_CHECKING:
    from ..catalog import Run

__all__ = ["ExportReport", "check_options", "export_runs", "exporter_options"]


@dataclass
class ExportReport:
    """What a batch export did.

    ``exported`` counts the runs written; ``skipped`` lists the uids of runs left alone because
    a file of theirs existed (``skip_existing``); ``failed`` lists ``(uid, message)`` for each
    run the format cannot hold (files of such a run already begun are closed marked incomplete).

    Example:
        >>> report = ExportReport("dx", exported=1, files=[Path("a.h5")], skipped=["3f2a9c1e"])
        >>> report.failed.append(("0b1c2d3e", "no projections"))
        >>> print(report)
        exported 1 run as dx: 1 file, skipped 1 whose files exist, 1 failed:
          0b1c2d3e: no projections
    """

    format: str
    exported: int = 0
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"exported {plural(self.exported, 'run')} as {self.format}: "
            f"{plural(len(self.files), 'file')}"
        )
        if self.skipped:
            text += f", skipped {len(self.skipped)} whose files exist"
        if self.failed:
            text += f", {len(self.failed)} failed:"
            text += "".join(
                f"\n  {message}" if uid in message else f"\n  {uid}: {message}"
                for uid, message in self.failed
            )
        return text


def exporter_options(cls: type[Exporter]) -> list[str]:
    """The keyword options an exporter class takes, its own and those of the classes it
    hands the rest on to (``**options``), sorted.

    Example:
        >>> from runbroker.export import exporter_class
        >>> exporter_options(exporter_class("jsonl"))
        ['assets', 'fill', 'opener', 'overwrite', 'template']
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # what this class does not pass on, no base class sees
    return sorted(names)


def check_options(format: str, options: dict[str, Any]) -> None:
    """Refuse options ``format`` does not know, listing those it does.

    Example:
        >>> check_options("csv", {"nope": 1})
        Traceback (most recent call last):
        ...
        runbroker.errors.ExportError: the csv export has no option 'nope'; its options are: ...
    """
    from . import exporter_class

    known = exporter_options(exporter_class(format))
    unknown = [key for key in options if key not in known]
    if unknown:
        raise ExportError(
            f"the {format} export has no option {', '.join(map(repr, unknown))}; its options "
            f"are: {', '.join(known)}"
        )


def export_runs(
    runs: Iterable[Run],
    format: str,
    directory: str | os.PathLike[str],
    *,
    progress: bool = False,
    strict: bool = True,
    skip_existing: bool = False,
    **options: Any,
) -> ExportReport:
    """Export ``runs`` in ``format`` into ``directory``.

    Everything is checked before the first file is written (and before a progress bar
    shows): the format, its options and their values, and the file-name template against
    every run. A run the format cannot hold (``ExportError``: a DX export of a run without
    images) stops the export when ``strict``; otherwise it is reported in ``failed`` and the
    next run is written. With ``skip_existing``, a run one of whose files exists already is
    left as it is (and listed in ``skipped``) instead of stopping the export.

    Example:
        >>> report = export_runs(cat.values(), "dx", tmp_path, strict=False)
        >>> report.exported, len(report.failed) == len(cat)  # none of them has images
        (0, True)
    """
    from . import export_run, exporter

    runs = list(runs)
    check_options(format, options)
    exporter(format, directory, **options)  # the values too: a format checks them on creation
    template = options.get("template") or DEFAULT_TEMPLATE
    for run in runs:  # with stand-ins for what only the format knows
        render(template, run.start, stream="primary", field="field", index=0)
    report = ExportReport(format)
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(sum((r.stop or {}).get("num_events", {}).values()) for r in runs)
        bar = tqdm(total=total or None, unit="event", desc=f"export {format}")
    try:
        for run in runs:
            try:
                files = export_run(
                    run,
                    format,
                    directory,
                    progress=bar.update if bar else None,
                    skip_existing=skip_existing,
                    **options,
                )
            except ExportError as err:
                if strict:
                    raise
                report.failed.append((run.uid, str(err)))
                continue
            if skip_existing and not files:
                report.skipped.append(run.uid)
                continue
            report.exported += 1
            report.files += files
    finally:
        if bar is not None:
            bar.close()
    return report
