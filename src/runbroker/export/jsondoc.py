"""JSON, JSON Lines and msgpack exports.

- ``json``: one JSON document per run holding its metadata (``record()``: uid, start, stop,
  descriptors, complete) and every stream as columns. Written when the run ends.
- ``jsonl``: the run's document stream, one ``[name, document]`` array per line, as
  suitcase-jsonl writes it. Lines are flushed as documents arrive, so a live file grows.
- ``msgpack``: the same document stream as consecutive msgpack ``[name, document]`` arrays,
  numpy arrays in msgpack-numpy's wire format (dtype and shape kept exactly).

The last two are files of documents as :mod:`runbroker.docfiles` writes and reads them (how
dtypes, NaN, infinities and big integers survive is told there). ``read_jsonl`` and
``read_msgpack`` give the ``(name, doc)`` pairs back:
``runbroker.temp().ingest(read_jsonl(path))`` reproduces the run, reads identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..assets import fill_flag
from ..docfiles import (
    EVENT_DOCS,
    DescriptorsHeldBack,
    dumps,
    json_values,
    jsonl_line,
    msgpack_record,
    read_jsonl,
    read_msgpack,
)
from ..notestream import NOTE
from .base import Exporter, Page

__all__ = [
    "JSONExporter",
    "JSONLinesExporter",
    "MsgpackExporter",
    "dumps",
    "read_jsonl",
    "read_msgpack",
]

_ASSET_DOCS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")


# -- exporters --------------------------------------------------------------------------------


class _DocumentStream(DescriptorsHeldBack, Exporter):
    """Writes the documents themselves, one record each, flushed as they come."""

    #: ``(name, doc)`` -> the bytes of one record of the file.
    _record: Callable[[str, Mapping[str, Any]], bytes]

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fill: bool = False,
        opener: Callable[[Path], IO[bytes]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill = fill_flag(fill)
        #: Where the bytes of the file named ``path`` go, if not to that file: a pack keeps
        #: them in memory and writes them on another thread (creating a file can cost more
        #: than encoding a small run).
        self.opener = opener
        self.needs_pixels = fill
        self._file: IO[bytes] | None = None
        self._pending = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if (
            name in EVENT_DOCS
            and not self.fill
            and self.start_doc
            and not self._closed
            and doc.get("descriptor", "") in self.descriptors
        ):
            # Events go out as they came: no Page (and no copy) is needed.
            self._write_after_descriptor(name, doc)
            return
        super().__call__(name, doc)
        if name in _ASSET_DOCS and not self.fill:
            self._write_after_descriptor(name, doc)

    def start(self, doc: dict[str, Any]) -> None:
        path = self.new_path(make_directory=self.opener is None)
        if self.opener is not None:
            self._file = self.opener(path)
        else:
            self._file = open(path, self.mode + "b")  # noqa: SIM115 -- closed in finish()
        self._write("start", doc)

    def descriptor(self, doc: dict[str, Any]) -> None:
        self._pending[doc["uid"]] = doc

    def event_page(self, page: Page) -> None:
        # Only when filling: the page holds the pixels read from the detector files.
        desc = page.descriptor
        self._release(desc, page.data, None)
        self._write(
            "event_page",
            {
                "descriptor": desc["uid"],
                "uid": page.uid,
                "time": page.time,
                "seq_num": page.seq_num,
                "data": page.data,
                "timestamps": page.timestamps,
            },
        )

    def stop(self, doc: dict[str, Any]) -> None:
        self._release_all()
        self._write("stop", doc)
        # after the run, as run.documents(notes=True) gives them: ingest stores them again
        for note in self.notes:
            self._write(NOTE, note)

    def finish(self, complete: bool) -> None:
        if self._file is None:
            return
        try:
            self._release_all()
        finally:
            self._file.close()

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        assert self._file is not None
        self._file.write(self._record(name, doc))
        if self.live:  # a live file is read as it grows; a prompt export is read when closed
            self._file.flush()


class JSONLinesExporter(_DocumentStream):
    """The run's documents as JSON Lines: one ``[name, document]`` per line.

    Options: ``fill=True`` puts the detector data from files into the events (and leaves
    out the resource and datum documents), for a file that stands alone.

    Example:
        >>> from runbroker.export import exporter
        >>> exp = exporter("jsonl", tmp_path)
        >>> for name, doc in run.documents(arrays=True):
        ...     exp(name, doc)
        >>> path, = exp.close()
        >>> [name for name, _ in read_jsonl(path)][:2]
        ['start', 'descriptor']
    """

    format = "jsonl"
    suffix = ".jsonl"
    declare_dtypes = True
    _record = staticmethod(jsonl_line)


class MsgpackExporter(_DocumentStream):
    """The run's documents as a sequence of msgpack ``[name, document]`` arrays.

    Arrays are stored in msgpack-numpy's format (dtype, shape, raw bytes), so values come
    back bit for bit; ``msgpack.Unpacker(f, object_hook=msgpack_numpy.decode)`` reads it
    outside runbroker. Options: ``fill=True`` as for ``jsonl``.

    Example:
        >>> path, = run.export("msgpack", tmp_path)
        >>> copy = runbroker.temp()
        >>> n = copy.ingest(read_msgpack(path))
        >>> copy[-1].primary.read().identical(run.primary.read())
        True
    """

    format = "msgpack"
    suffix = ".msgpack"
    _record = staticmethod(msgpack_record)


class JSONExporter(Exporter):
    """Metadata and every stream of a run in one JSON document, written at the end.

    The document is ``record()`` (``uid``, ``complete``, ``start``, ``stop``,
    ``descriptors``, ``exported_by``) plus ``streams``: for each stream ``time``,
    ``seq_num``, ``uid`` and ``data`` / ``timestamps`` columns (plus ``descriptor``, the
    descriptor uid of each event, when the stream has several). Options: ``fill=True`` puts
    detector data from files in the columns instead of their references.

    Example:
        >>> import json
        >>> path, = run.export("json", tmp_path)
        >>> doc = json.loads(path.read_text())
        >>> doc["streams"]["primary"]["data"]["motor"]
        [-1.0, -0.5, 0.0, 0.5, 1.0]
        >>> doc["complete"], doc["start"]["sample"]["name"]
        (True, 'Cu')
    """

    format = "json"
    suffix = ".json"

    def __init__(
        self, directory: str | os.PathLike[str], *, fill: bool = False, **options: Any
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill = fill_flag(fill)
        self.needs_pixels = fill
        self._file: IO[bytes] | None = None
        self._pages: dict[str, list[Page]] = {}

    def start(self, doc: dict[str, Any]) -> None:
        # The file is claimed now, so a name clash is reported before the run, not after.
        self._file = open(self.new_path(), self.mode + "b")  # noqa: SIM115 -- see finish()

    def event_page(self, page: Page) -> None:
        self._pages.setdefault(page.stream, []).append(page)

    def finish(self, complete: bool) -> None:
        if self._file is None:
            return
        try:
            record = self.record()
            record["streams"] = {
                name: self._stream(name) for name in self.streams if name in self._pages
            }
            self._file.write(dumps(record))
        finally:
            self._file.close()

    def _stream(self, name: str) -> dict[str, Any]:
        pages = self._pages[name]
        out: dict[str, Any] = {
            "time": np.concatenate([p.time for p in pages]),
            "seq_num": np.concatenate([p.seq_num for p in pages]),
            "uid": [u for p in pages for u in p.uid],
        }
        if len(self.streams[name]) > 1:
            out["descriptor"] = [p.descriptor["uid"] for p in pages for _ in range(len(p))]
        for part in ("data", "timestamps"):
            out[part] = {
                f: json_values(_concat([getattr(p, part).get(f) for p in pages], pages))
                for f in self.fields(name)
                if any(f in getattr(p, part) for p in pages)
            }
        return out


def _concat(columns: list[np.ndarray | None], pages: list[Page]) -> Any:
    if all(c is not None for c in columns):
        try:
            return np.concatenate(columns)  # type: ignore[arg-type]
        except ValueError:  # shapes differ between descriptors
            pass
    # A field some descriptors lack: null for their events.
    out: list[Any] = []
    for col, page in zip(columns, pages, strict=True):
        out.extend([None] * len(page) if col is None else list(col))
    return out
