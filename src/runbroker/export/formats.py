"""The export formats by name: which class writes each, and the options it takes.

Example:
    >>> exporter_class("csv").__name__
    'CSVExporter'
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from ..errors import ExportError
from .base import Exporter

__all__ = [
    "FORMATS",
    "check_options",
    "exporter",
    "exporter_class",
    "exporter_options",
    "load",
    "register_exporter",
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


def load(target: str) -> Any:
    """The object ``"module:name"`` names, imported now.

    Example:
        >>> load("runbroker.export.csv:CSVExporter").format
        'csv'
    """
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
    """The exporter class of ``format``; the error lists the formats there are.

    Example:
        >>> exporter_class("nope")
        Traceback (most recent call last):
        ...
        runbroker.errors.ExportError: no export format 'nope'; choose one of csv, dx, hdf5, ...
    """
    try:
        cls = FORMATS[format]
    except KeyError:
        raise ExportError(
            f"no export format {format!r}; choose one of {', '.join(sorted(FORMATS))}"
        ) from None
    if isinstance(cls, str):
        cls = FORMATS[format] = load(cls)
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
    known = exporter_options(exporter_class(format))
    unknown = [key for key in options if key not in known]
    if unknown:
        raise ExportError(
            f"the {format} export has no option {', '.join(map(repr, unknown))}; its options "
            f"are: {', '.join(known)}"
        )
