"""Export runs to the files other software reads, live or after the fact.

One ``Exporter`` class per format consumes one run's documents. The same class serves both
modes:

- after the fact: ``run.export("nexus", "out/")``, ``cat.export(...)`` or
  ``runbroker export runs.db out/ --format nexus``;
- live: ``RE.subscribe(runbroker.export.live("spec", "out/"))`` routes each run to its own
  exporter, so files grow while the scan runs.

Example:
    >>> files = run.export("csv", tmp_path)
    >>> [p.suffix for p in files]
    ['.csv', '.json']
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Exporter, ExportError, Page
from .batch import ExportReport, check_options, export_runs, exporter_options
from .live import LiveExport
from .naming import DEFAULT_TEMPLATE, TemplateError, render, safe_name

if TYPE_CHECKING:
    from ..catalog import Run

__all__ = [
    "DEFAULT_TEMPLATE",
    "FORMATS",
    "ExportError",
    "ExportReport",
    "Exporter",
    "LiveExport",
    "Page",
    "TemplateError",
    "check_options",
    "export_run",
    "export_runs",
    "exporter",
    "exporter_options",
    "live",
    "read_documents",
    "register_exporter",
    "render",
    "run_of_export",
    "safe_name",
]

#: Format name -> exporter class (``"module:Class"`` until first used, to keep imports light).
FORMATS: dict[str, str | type[Exporter]] = {
    "csv": "runbroker.export.csv:CSVExporter",
    "json": "runbroker.export.jsondoc:JSONExporter",
    "jsonl": "runbroker.export.jsondoc:JSONLinesExporter",
    "msgpack": "runbroker.export.jsondoc:MsgpackExporter",
    "spec": "runbroker.export.spec:SpecExporter",
    "hdf5": "runbroker.export.hdf5:HDF5Exporter",
    "nexus": "runbroker.export.nexus:NeXusExporter",
    "dx": "runbroker.export.dx:DataExchangeExporter",
    "tiff": "runbroker.export.tiff:TIFFExporter",
}

#: File suffix -> ``"module:function"`` reading an export back as ``(name, doc)`` pairs.
READERS: dict[str, str] = {
    ".jsonl": "runbroker.export.jsondoc:read_jsonl",
    ".msgpack": "runbroker.export.jsondoc:read_msgpack",
    ".h5": "runbroker.export.hdf5:read_documents",
    ".hdf5": "runbroker.export.hdf5:read_documents",
}


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def register_exporter(name: str, cls: type[Exporter] | str) -> None:
    """Make a format known to ``run.export`` and ``runbroker export`` (class or ``"mod:Class"``).

    Example:
        >>> class Null(Exporter):
        ...     format = "null"
        >>> register_exporter("null", Null)
        >>> exporter("null", tmp_path).format
        'null'
    """
    FORMATS[name] = cls


def exporter_class(format: str) -> type[Exporter]:
    """The exporter class of ``format``; the error lists the formats there are."""
    try:
        cls = FORMATS[format]
    except KeyError:
        raise ExportError(
            f"no export format {format!r}; choose one of {', '.join(sorted(FORMATS))}"
        ) from None
    if isinstance(cls, str):
        cls = FORMATS[format] = _load(cls)
    return cls


def exporter(format: str, directory: str | os.PathLike[str], **options: Any) -> Exporter:
    """A new exporter of ``format`` writing into ``directory`` (for one run).

    Options common to every format: ``template`` (file names), ``overwrite`` (replace
    existing files), ``assets`` (where detector files are, as a catalog's ``Assets``).
    Each format documents its own; one it does not know is refused with the list of those it
    does.

    Example:
        >>> exporter("spec", tmp_path, template="{start[scan_id]:04d}").format
        'spec'
    """
    check_options(format, options)
    return exporter_class(format)(directory, **options)


def live(
    format: str, directory: str | os.PathLike[str], *, strict: bool = False, **options: Any
) -> LiveExport:
    """A RunEngine subscriber giving each run its own exporter of ``format``.

    A failing export is logged and kept in ``.errors`` without stopping the RunEngine, unless
    ``strict=True`` is passed.

    Example:
        >>> from bluesky.plans import count
        >>> from ophyd.sim import det
        >>> export = live("csv", tmp_path, template="{plan_name}")
        >>> token = RE.subscribe(export)
        >>> uids = RE(count([det], 3))
        >>> [p.name for p in export.files]  # every file written so far
        ['count_primary.csv', 'count.metadata.json']
    """
    cls = exporter_class(format)
    return LiveExport(lambda: cls(directory, **options), strict=strict)


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
    exp = exporter(format, directory, **options)
    exp.live = False
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


def read_documents(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The documents of an export (JSON Lines, msgpack or raw HDF5), to ingest again.

    Example:
        >>> (path,) = run.export("jsonl", tmp_path)
        >>> copy = runbroker.temp()
        >>> copy.ingest(read_documents(path)) > 0
        True
        >>> copy[run.uid].primary.read().identical(run.primary.read())
        True
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise ExportError(
            f"{path}: cannot ingest {suffix or 'a file without suffix'}; runbroker reads back "
            f"{', '.join(sorted(READERS))} exports"
        )
    return _load(READERS[suffix])(path)


def run_of_export(path: str | os.PathLike[str]) -> tuple[str, Callable[[], Iterator]]:
    """``(uid, documents)`` of the run in an export file, for ``transfer.copy_runs``.

    Only the first document is read here; an unreadable file gives its name in the error.
    """
    docs = read_documents(path)
    try:
        name, start = next(iter(docs))
    except StopIteration:
        raise ExportError(f"{path}: empty, no documents to ingest") from None
    finally:
        close = getattr(docs, "close", None)
        if close is not None:
            close()
    if name != "start":
        raise ExportError(f"{path}: starts with a {name} document, not the run's start")
    return start["uid"], lambda: read_documents(path)


#: Suffixes of detector images, never read as exports.
_DETECTOR_SUFFIXES = (".tif", ".tiff", ".cbf", ".edf")


def export_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files ``runbroker ingest`` reads from ``paths``.

    A file named is read whatever it is (an error names it if it is no export). A folder is
    searched, with its subfolders, for ``.jsonl`` and ``.msgpack`` files and for HDF5 files
    that are runbroker raw HDF5 exports; detector files beside them (an HDF5 file that is not
    an export, or a TIFF, CBF or EDF image) are left out one by one: they are read through the
    runs that point at them, never on their own. A subfolder that holds detector files and no
    export is passed over with everything under it, so a tree of frames is not walked.

    Example:
        >>> _ = run.export("jsonl", tmp_path / "out")
        >>> _ = run.export("hdf5", tmp_path / "out" / "raw")
        >>> (tmp_path / "out" / "frames.tiff").write_bytes(b"")
        0
        >>> (tmp_path / "out" / "detector").mkdir()
        >>> (tmp_path / "out" / "detector" / "frames.tiff").write_bytes(b"")
        0
        >>> [p.suffix for p in export_files([tmp_path / "out"])]
        ['.jsonl', '.h5']
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(_exports_in(p))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def _exports_in(folder: Path) -> list[Path]:
    from .hdf5 import is_export

    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        here = [Path(root, n) for n in sorted(names) if Path(n).suffix.lower() in READERS]
        exports = [p for p in here if p.suffix.lower() not in (".h5", ".hdf5") or is_export(p)]
        found.extend(exports)
        holds_detector_files = len(exports) < len(here) or any(
            Path(n).suffix.lower() in _DETECTOR_SUFFIXES for n in names
        )
        if holds_detector_files and not exports and Path(root) != folder:
            dirs.clear()
    return found
