"""The one interface every export format implements.

An ``Exporter`` consumes the documents of one run, whether they come live from a RunEngine
(``RE.subscribe(runbroker.export.live("csv", "out/"))``) or from a catalog afterwards
(``run.export("csv", "out/")``). It turns events and event pages into ``Page`` objects whose
columns are numpy arrays with the dtypes the catalog's ``read()`` gives, fills detector data
from files when the format needs pixels, names files from a template, and never overwrites a
file unless asked. A format overrides the hooks ``start``, ``descriptor``, ``event_page``,
``stop`` and ``finish``; ``finish(complete=False)`` is how a run that never sent its stop
document is closed and marked incomplete.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
from event_model import pack_event_page

from ..assets import Assets, LocalFiller, external_kind
from ..assets.seen import SeenAssets
from ..columns import as_column
from ..documents import to_builtin
from ..errors import ExportError
from ..filler import FieldEvents
from ..naming import DEFAULT_TEMPLATE, render

__all__ = ["ExportError", "Exporter", "Page"]

_ASSET_DOCS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")


@dataclass(frozen=True)
class Page:
    """A block of events of one descriptor, as columns.

    ``data`` and ``timestamps`` map field names to arrays whose first axis is the event;
    detector data from files is filled in when the exporter ``needs_pixels`` (otherwise those
    fields hold their references as strings, and ``stream_resource`` fields are absent).
    """

    stream: str
    descriptor: Mapping[str, Any]
    seq_num: np.ndarray
    time: np.ndarray
    data: dict[str, np.ndarray]
    timestamps: dict[str, np.ndarray]
    #: Event uids: a list of str, or (for an exporter whose ``needs_uids`` is ``"bytes"``)
    #: the fixed-width bytes array the catalog stores uuid4s as.
    uid: list[str] | np.ndarray

    def __len__(self) -> int:
        return len(self.seq_num)


class Exporter:
    """Base class of the exporters: one instance writes the files of one run.

    Feed it ``(name, document)`` pairs, then ``close()`` it; it returns the files it wrote.

    Example:
        >>> from runbroker.export import exporter
        >>> csv = exporter("csv", tmp_path)
        >>> for name, doc in run.documents():
        ...     csv(name, doc)
        >>> [p.suffix for p in csv.close()]
        ['.csv', '.json']
    """

    #: The name ``run.export`` and ``runbroker export --format`` know the format by.
    format: ClassVar[str] = ""
    #: Suffix of the files written (a format writing several kinds passes its own).
    suffix: ClassVar[str] = ""
    #: Whether detector data kept in files must be read into the events first.
    needs_pixels: bool = False
    #: Whether ``Page.uid`` is used: a prompt export skips decoding event uids otherwise.
    #: ``"bytes"``: a prompt export may hand them over as the fixed-width bytes array the
    #: catalog stores (no loop making a str per event).
    needs_uids: ClassVar[bool | str] = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        template: str | None = None,
        overwrite: bool = False,
        assets: Assets | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.template = template or DEFAULT_TEMPLATE
        self.overwrite = overwrite
        self.assets = assets if assets is not None else Assets()
        self.start_doc: dict[str, Any] = {}
        self.stop_doc: dict[str, Any] | None = None
        #: The run's notes (runbroker.notes) its reader may see, every revision: set by
        #: ``export_run`` before the documents come (a live export has none).
        self.notes: list[dict[str, Any]] = []
        self.descriptors: dict[str, dict[str, Any]] = {}
        self.streams: dict[str, list[dict[str, Any]]] = {}
        self.files: list[Path] = []
        self._seen = SeenAssets()
        #: Event pages held back until a stream_datum announces their frames (when filling).
        self._due: deque[Mapping[str, Any]] = deque()
        self._closed = False
        self._started = False  # start() succeeded, so finish() has files to close
        #: True while a RunEngine feeds the exporter (the default). ``export_run`` sets it
        #: False: then nobody reads the files before they are closed, and a format may skip
        #: what only live readers need (flushing every page, SWMR mode).
        self.live = True

    # -- what formats override --------------------------------------------------------------

    def start(self, doc: dict[str, Any]) -> None:
        """The run began (``self.start_doc`` is set)."""

    def descriptor(self, doc: dict[str, Any]) -> None:
        """A new descriptor (``self.descriptors`` and ``self.streams`` include it)."""

    def event_page(self, page: Page) -> None:
        """Events, one page at a time (single events come as pages of one)."""

    def stop(self, doc: dict[str, Any]) -> None:
        """The run ended (``self.stop_doc`` is set); ``finish(True)`` follows."""

    def finish(self, complete: bool) -> None:
        """Flush and close every file. ``complete`` is False when no stop document came:
        the format should say so in the file."""

    # -- the document stream ----------------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """Consume one document, as ``RE.subscribe`` and ``run.documents()`` deliver them."""
        if self._closed:
            raise ExportError(f"{self.format} exporter is closed; {name} document refused")
        if name == "start":
            if self.start_doc:
                raise ExportError(
                    f"a second start document ({doc.get('uid')}) reached the {self.format} "
                    f"exporter of run {self.uid}; one exporter serves one run, use "
                    "runbroker.export.live() to export many"
                )
            self.start_doc = doc
            self.start(doc)
            self._started = True
            return
        if not self.start_doc:
            raise ExportError(f"{name} document arrived before any start document")
        if name == "descriptor":
            self.descriptors[doc["uid"]] = doc
            self.streams.setdefault(doc.get("name", "primary"), []).append(doc)
            self.descriptor(doc)
        elif name == "event":
            self._event_page(pack_event_page(doc))
        elif name == "event_page":
            self._event_page(doc)
        elif name in _ASSET_DOCS:
            self._seen.add(name, doc)
            if name == "stream_datum" and self._due:
                self._send_due(final=False)
        elif name == "stop":
            try:
                self._send_due(final=True)
            except BaseException:
                self._due.clear()
                self.close()  # marked incomplete: events are missing
                raise
            self.stop_doc = doc
            self.stop(doc)
            self.close()
        else:
            raise ExportError(f"unknown document type {name!r} in run {self.uid}")

    def close(self) -> list[Path]:
        """Finish the files (marking them incomplete if no stop document came); return them.

        Closing twice is harmless.
        """
        if not self._closed:
            try:
                if self._started and self._due:
                    # No stop came: what was announced goes out, the rest is left out of a
                    # file marked incomplete anyway.
                    self._send_due(final=False)
                    self._due.clear()
            finally:
                self._closed = True
                if self._started:
                    self.finish(complete=self.stop_doc is not None)
        return list(self.files)

    def _event_page(self, doc: Mapping[str, Any]) -> None:
        desc = self.descriptors.get(doc["descriptor"])
        if desc is None:
            raise ExportError(
                f"event_page of run {self.uid} names descriptor {doc['descriptor']!r}, "
                "which this exporter was never sent"
            )
        if self._due or not self._announced(desc, doc):
            # A detector may announce its frames (stream_datum) after the events they belong
            # to: those events wait, in order, until it does (or the run ends). Formats that
            # keep references wait too: a frame's reference names its stream_resource row.
            self._due.append(doc)
            return
        self._send_page(desc, doc)

    def _announced(self, desc: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
        """Whether the stream_datum documents seen give the frames of these events for every
        stream field they do not hold filled already."""
        filled = doc.get("filled") or {}
        return all(
            self._seen.covers(desc["uid"], key, doc["seq_num"])
            for key, dk in desc["data_keys"].items()
            if external_kind(dk) == "stream" and not (key in doc["data"] and _all(filled.get(key)))
        )

    def _send_due(self, final: bool) -> None:
        """Fill and hand on the events held back, oldest first, as far as their frames are
        announced; ``final``: all of them (the fill names frames never announced)."""
        while self._due:
            doc = self._due[0]
            desc = self.descriptors[doc["descriptor"]]
            if not final and not self._announced(desc, doc):
                return
            self._due.popleft()
            self._send_page(desc, doc)

    def _send_page(self, desc: Mapping[str, Any], doc: Mapping[str, Any]) -> None:
        keys = desc["data_keys"]
        seq = np.asarray(doc["seq_num"], dtype=np.int64)
        time = np.asarray(doc["time"], dtype=np.float64)
        filled = doc.get("filled") or {}
        data: dict[str, np.ndarray] = {}
        stamps: dict[str, np.ndarray] = {}
        for key, values in doc["data"].items():
            dk = keys.get(key)
            if dk is None:
                raise ExportError(
                    f"event_page of run {self.uid}, descriptor {desc['uid']}: field {key!r} "
                    "is not declared in the descriptor's data_keys"
                )
            kind = external_kind(dk)
            if kind and not self.needs_pixels and not _all(filled.get(key)):
                data[key] = np.asarray([str(v) for v in values])
            elif not kind or _all(filled.get(key)):
                data[key] = as_column(values, dk)
            stamps[key] = np.asarray(doc["timestamps"].get(key, time), dtype=np.float64)
        for key, dk in keys.items():
            kind = external_kind(dk)
            if kind is None or key in data or not (self.needs_pixels or kind == "stream"):
                continue
            refs = list(doc["data"][key]) if kind == "datum" else None
            if self.needs_pixels:
                events = FieldEvents(self.uid, (desc["uid"],), key, dk, refs, seq)
                data[key] = LocalFiller(self._seen, self.assets).fill(events)
            else:
                data[key] = self._stream_references(desc["uid"], key, dk, seq)
            if kind != "stream":  # events never stamp a STREAM: field: none is made up
                # As Stream.timestamps(): a detector writing files stamps no event.
                stamps.setdefault(key, np.full(len(seq), np.nan))
        page = Page(
            stream=desc.get("name", "primary"),
            descriptor=desc,
            seq_num=seq,
            time=time,
            data=data,
            timestamps=stamps,
            uid=uids if isinstance(uids := doc.get("uid"), np.ndarray) else list(uids or []),
        )
        self.event_page(page)

    def _stream_references(
        self, descriptor: str, key: str, data_key: Mapping[str, Any], seq: np.ndarray
    ) -> np.ndarray:
        """What read(fill=False) gives for a STREAM: field, which events never carry:
        ``<stream_resource uid>/<row>``, or "" for a frame never announced (a reference
        format keeps the run's other data rather than fail over it)."""
        known = np.ones(len(seq), dtype=bool)
        if not self._seen.covers(descriptor, key, seq):  # only when a run ends without them
            known = np.array([self._seen.covers(descriptor, key, [s]) for s in seq], dtype=bool)
        out = np.full(len(seq), "", dtype=object)
        if known.any():
            events = FieldEvents(self.uid, (descriptor,), key, data_key, None, seq[known])
            out[known] = LocalFiller(self._seen, self.assets).references(events)
        return out.astype(str)

    # -- helpers for formats ----------------------------------------------------------------

    @property
    def uid(self) -> str:
        """The run's uid (empty before the start document)."""
        return str(self.start_doc.get("uid", ""))

    def fields(self, stream: str) -> list[str]:
        """The fields of ``stream``, in declaration order, over all of its descriptors."""
        names: dict[str, None] = {}
        for desc in self.streams.get(stream, []):
            names.update(dict.fromkeys(desc["data_keys"]))
        return list(names)

    def new_path(
        self,
        *,
        stream: str | None = None,
        field: str | None = None,
        index: int | None = None,
        suffix: str | None = None,
        make_directory: bool = True,
    ) -> Path:
        """A path for a new file, named by the template; refused if the file exists.

        The file is counted among those this exporter wrote. Open it with ``self.mode``
        (``"x"``, or ``"w"`` when overwriting) so that a file appearing meanwhile is not lost.
        Its folder is made unless ``make_directory`` is False (someone else writes it).
        """
        stem = render(self.template, self.start_doc, stream=stream, field=field, index=index)
        path = self.directory / f"{stem}{self.suffix if suffix is None else suffix}"
        if path in self.files:
            raise ExportError(
                f"file-name template {self.template!r} gives {path.name} twice for run "
                f"{self.uid}; include {{stream}}, {{field}} or {{index}} in it"
            )
        if not self.overwrite and path.exists():
            raise FileExistsError(
                f"{path} already exists; an export never replaces a file unless asked "
                "(overwrite=True, or --overwrite)"
            )
        if make_directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.files.append(path)
        return path

    @property
    def mode(self) -> str:
        """Mode to create a new file with: ``"x"`` refuses one that appeared, ``"w"``
        replaces it when overwriting was asked for."""
        return "w" if self.overwrite else "x"

    def record(self) -> dict[str, Any]:
        """What traces a file back to its run: uid, start, stop, descriptors, completeness,
        and the run's notes as they stand (annotations, tags, corrections), if it has any."""
        from .._version import __version__
        from ..notes import current

        record = {
            "uid": self.uid,
            "complete": self.stop_doc is not None,
            "start": self.start_doc,
            "stop": self.stop_doc,
            "descriptors": list(self.descriptors.values()),
            "exported_by": f"runbroker {__version__} ({self.format})",
        }
        if self.notes:
            record["notes"] = current(self.notes)
        return record

    def record_json(self, indent: bool = False) -> bytes:
        """``record()`` as JSON (numpy values become lists)."""
        option = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(to_builtin(self.record()), option=option, default=_fallback)

    def write_sidecar(self, path: Path | None = None) -> Path:
        """Write (or refresh) the run's metadata as ``<name>.metadata.json``.

        Formats without room for metadata inside the file call this at start and at finish;
        it is replaced atomically, so a reader never sees half of it.
        """
        if path is None:
            path = self.new_path(suffix=".metadata.json")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self.record_json(indent=True))
        os.replace(tmp, path)
        return path


def _all(flags: Any) -> bool:
    if flags is None:
        return False
    if isinstance(flags, bool):
        return flags
    return bool(len(flags)) and all(bool(f) for f in flags)


def _fallback(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def unique(base: str, taken: set[str]) -> str:
    """``base``, else ``base_2``, ``base_3``..., the first not ``taken`` (and now taken).

    Example:
        >>> taken = {"x"}
        >>> unique("x", taken), unique("x", taken), unique("y", taken)
        ('x_2', 'x_3', 'y')
    """
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name
