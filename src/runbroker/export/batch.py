"""Exporting runs: one (:func:`export_run`), or many at once (:func:`export_runs`): arguments
checked before anything is written, runs the format cannot hold reported while the others are
written, runs exported before left alone on request.

``Catalog.export`` and ``runbroker export`` both go through :func:`export_runs`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..display import plural
from ..errors import ExportError
from ..naming import DEFAULT_TEMPLATE, render
from ..notestream import replay_notes
from .formats import check_options, exporter

if TYPE_CHECKING:
    from ..catalog import Run

__all__ = ["ExportReport", "export_run", "export_runs"]


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


def export_run(
    run: Run,
    format: str,
    directory: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
    skip_existing: bool = False,
    **options: Any,
) -> list[Path]:
    """Write ``run`` in ``format`` into ``directory``; return the files written.

    ``progress`` is called with the number of events in each page consumed. A file that
    exists already stops the export (``FileExistsError``), unless ``skip_existing``: then the
    run is left as it is and nothing is returned (files this call had begun are removed).

    Example:
        >>> [p.name for p in export_run(run, "jsonl", tmp_path, template="{scan_id}")]
        ['2.jsonl']
    """
    options.setdefault("assets", run.catalog.assets)
    if options.get("names") == "standard":  # the catalog's alias table says what they are
        options.setdefault("aliases", run.catalog.aliases)
    exp = exporter(format, directory, **options)
    exp.live = False
    exp.notes = [rev for _, rev in replay_notes(run.store, run.uid, run.catalog.viewer)]
    try:
        # Straight from the store: exporters fill detector data themselves, and formats that
        # never write event uids spare decoding them.
        for name, doc in run.store.documents(run.uid, arrays=True, uids=exp.needs_uids):
            exp(name, doc)
            if progress is not None and name == "event_page":
                progress(len(doc["seq_num"]))
    except FileExistsError:
        with contextlib.suppress(Exception):
            exp.close()
        if not skip_existing:
            raise
        # Every file listed was created by this call: an exporter never lists one that existed.
        for path in exp.files:
            path.unlink(missing_ok=True)
        return []
    except BaseException:
        # Close what was written (marked incomplete), but report the first error, not a later one.
        with contextlib.suppress(Exception):
            exp.close()
        raise
    return exp.close()


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
