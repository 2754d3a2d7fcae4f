"""TIFF: the images of a run, as stacks or one file per frame, in the detector's own dtype.

Every field holding an image per event (two or more dimensions: ``rows x cols``, or
``frames x rows x cols`` when a detector takes several frames a point) is written:

- ``per="stream"`` (default): one multi-page TIFF per stream and field,
  ``<name>_<stream>_<field>.tiff``, one page per frame, appended as events arrive so the file
  grows during a live scan;
- ``per="frame"``: one single-page TIFF per frame, ``<name>_<stream>_<field>_<index>.tiff``,
  the index counting frames of that stream and field from 0.

Pages keep the dtype the catalog reads (``uint16`` stays ``uint16``). The first page of each
file carries the run in its ImageDescription as JSON (uid, scan id, plan, stream, field), and
``<name>.metadata.json`` beside the images holds the start, stop and descriptor documents,
whether the run completed, and which file holds which frames. A run without images gets the
metadata file only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from .._version import __version__
from .base import Exporter, ExportError, Page

__all__ = ["TIFFExporter"]

# Classic TIFF addresses 4 GiB; switch to BigTIFF well before an expected stack gets there.
_BIGTIFF_ABOVE = 2**31


@dataclass
class _Stack:
    """One growing multi-page file of one stream's field."""

    path: Path
    writer: tifffile.TiffWriter
    series: list[dict[str, Any]] = field(default_factory=list)  # frames of one shape and dtype
    seq_num: list[int] = field(default_factory=list)  # first and last event written


class TIFFExporter(Exporter):
    """Write a run's images as TIFF (``format="tiff"``).

    Options (besides ``template``, ``overwrite``, ``assets``):

    - ``per``: ``"stream"`` (one stack per stream and field, default) or ``"frame"``
      (one file per frame);
    - ``fields``: which image fields, as ``"FIELD"`` or ``"STREAM:FIELD"`` (default: all);
    - ``bigtiff``: force BigTIFF (``True``) or classic TIFF (``False``); by default BigTIFF
      only when the plan's ``num_points`` says a stack will pass 2 GiB;
    - ``compression``: a tifffile compression (``"zlib"``, ...), default none.

    Example (live, from a RunEngine):
        >>> import tifffile
        >>> from bluesky.plans import count
        >>> from ophyd.sim import SynSignal
        >>> from runbroker.export import live
        >>> cam = SynSignal(name="cam", func=lambda: np.full((4, 6), 7, dtype="uint16"))
        >>> export = live("tiff", tmp_path, template="{plan_name}")
        >>> _ = RE(count([cam], 3), export)
        >>> sorted(p.name for p in export.files)
        ['count.metadata.json', 'count_primary_cam.tiff']
        >>> stack = tifffile.imread(next(p for p in export.files if p.suffix == ".tiff"))
        >>> stack.shape, stack.dtype
        ((3, 4, 6), dtype('uint16'))

        A run without images gets only its metadata:

        >>> [p.name.endswith(".metadata.json") for p in run.export("tiff", tmp_path)]
        [True]
    """

    needs_uids = False  # event uids are not written

    format = "tiff"
    suffix = ".tiff"
    needs_pixels = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        per: Literal["stream", "frame"] = "stream",
        fields: str | Iterable[str] | None = None,
        bigtiff: bool | None = None,
        compression: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        if per not in ("stream", "frame"):
            raise ExportError(f"tiff option per={per!r}: choose 'stream' or 'frame'")
        self.per = per
        wanted = [fields] if isinstance(fields, str) else fields
        self._wanted = None if wanted is None else {w: False for w in wanted}  # -> seen
        self._bigtiff = bigtiff
        self._compression = compression
        self._sidecar: Path | None = None
        self._stacks: dict[tuple[str, str], _Stack] = {}
        self._frames: list[dict[str, Any]] = []  # per="frame": what each file holds
        self._count: dict[tuple[str, str], int] = {}

    # -- hooks ---------------------------------------------------------------------------

    def start(self, doc: dict[str, Any]) -> None:
        self._sidecar = self.write_sidecar()

    def descriptor(self, doc: dict[str, Any]) -> None:
        if self._wanted is None:
            return
        stream = doc.get("name", "primary")
        for spec in self._wanted:
            name = self._match(spec, stream)
            if name is None or name not in doc["data_keys"]:
                continue
            shape = doc["data_keys"][name].get("shape") or []
            if len(shape) < 2:
                raise ExportError(
                    f"tiff option fields: {stream}:{name} of run {self.uid} has shape "
                    f"{shape} per event, not an image; image fields have two or more dimensions"
                )
            self._wanted[spec] = True

    def event_page(self, page: Page) -> None:
        for name, values in page.data.items():
            if not self._exported(page.stream, name, values, page.descriptor):
                continue
            frames = values.reshape(-1, *values.shape[-2:])
            if self.per == "frame":
                self._write_frames(page, name, frames)
            else:
                self._write_stack(page, name, values, frames)

    def finish(self, complete: bool) -> None:
        for stack in self._stacks.values():
            stack.writer.close()
        if self._sidecar is not None:
            self.write_sidecar(self._sidecar)
        missing = [spec for spec, seen in (self._wanted or {}).items() if not seen]
        if missing:
            images = [
                f"{desc.get('name', 'primary')}:{k}"
                for desc in self.descriptors.values()
                for k, dk in desc["data_keys"].items()
                if len(dk.get("shape") or []) >= 2
            ]
            raise ExportError(
                f"tiff option fields: run {self.uid} has no image field "
                f"{', '.join(map(repr, missing))}; its image fields: "
                f"{', '.join(dict.fromkeys(images)) or 'none'}"
            )

    def record(self) -> dict[str, Any]:
        """The run's record, plus which file holds which frames (``"images"``)."""
        rec = super().record()
        rec["images"] = [
            {
                "file": s.path.name,
                "stream": stream,
                "field": name,
                "seq_num": s.seq_num,
                "series": s.series,
            }
            for (stream, name), s in self._stacks.items()
        ] + self._frames
        return rec

    # -- writing -------------------------------------------------------------------------

    def _match(self, spec: str, stream: str) -> str | None:
        """The field ``spec`` names in ``stream`` (None if it names another stream)."""
        s, _, name = spec.rpartition(":")
        return name if not s or s == stream else None

    def _exported(self, stream: str, name: str, values: np.ndarray, desc: dict[str, Any]) -> bool:
        if self._wanted is not None and not any(
            self._match(spec, stream) == name for spec in self._wanted
        ):
            return False
        image = len(desc["data_keys"][name].get("shape") or []) >= 2
        if values.dtype == object and image:
            raise ExportError(
                f"{stream}:{name} of run {self.uid} holds images of differing shapes within "
                "one page of events, which the TIFF export cannot split into frames; leave "
                "it out with fields=[...]"
            )
        return values.ndim >= 3 and values.dtype != object

    def _description(self, stream: str, name: str, **extra: Any) -> str:
        start = self.start_doc
        info = {
            "uid": self.uid,
            "scan_id": start.get("scan_id"),
            "plan_name": start.get("plan_name"),
            "sample": start.get("sample"),
            "stream": stream,
            "field": name,
            **extra,
            "metadata": self._sidecar.name if self._sidecar else None,
            "exported_by": f"runbroker {__version__}",
        }
        # ImageDescription must be 7-bit ASCII.
        return json.dumps(info, ensure_ascii=True, default=str)

    def _write_stack(self, page: Page, name: str, values: np.ndarray, frames: np.ndarray) -> None:
        key = (page.stream, name)
        stack = self._stacks.get(key)
        first = stack is None
        if stack is None:
            path = self.new_path(stream=page.stream, field=name)
            points = self.start_doc.get("num_points")
            big = self._bigtiff
            if big is None:
                big = isinstance(points, int) and points * values[0].nbytes > _BIGTIFF_ABOVE
            writer = tifffile.TiffWriter(path, mode=self.mode, bigtiff=big)
            stack = self._stacks[key] = _Stack(path, writer)
        shape, dtype = list(frames.shape[1:]), str(frames.dtype)
        last = stack.series[-1] if stack.series else {}
        if (last.get("shape"), last.get("dtype")) != (shape, dtype):
            stack.series.append({"frames": 0, "shape": shape, "dtype": dtype})
        description = self._description(page.stream, name) if first else None
        # A page of one event is a live scan: write its frames one by one, since tifffile
        # links the later pages of one call only at the next call.
        parts = list(frames) if len(page) == 1 else [frames]
        try:
            for part in parts:
                stack.writer.write(
                    part,
                    description=description,
                    photometric="minisblack",  # 3 or 4 frames are not an RGB image
                    metadata=None,
                    software="runbroker",
                    compression=self._compression,
                )
                description = None
        except ValueError as exc:
            hint = "; pass bigtiff=True for stacks over 4 GiB" if "BigTIFF" in str(exc) else ""
            raise ExportError(
                f"{stack.path}: {exc} (stream {page.stream}, field {name}){hint}"
            ) from exc
        stack.writer.filehandle.flush()  # so a reader sees the frames of a live scan
        stack.series[-1]["frames"] += len(frames)
        first_seq = stack.seq_num[0] if stack.seq_num else int(page.seq_num[0])
        stack.seq_num = [first_seq, int(page.seq_num[-1])]

    def _write_frames(self, page: Page, name: str, frames: np.ndarray) -> None:
        key = (page.stream, name)
        per_event = len(frames) // len(page)
        for i, frame in enumerate(frames):  # one file each: the loop is the request
            index = self._count.get(key, 0)
            self._count[key] = index + 1
            seq = int(page.seq_num[i // per_event])
            where = {"seq_num": seq, "frame_in_event": i % per_event, "index": index}
            path = self.new_path(stream=page.stream, field=name, index=index)
            tifffile.imwrite(
                path,
                frame,
                mode=self.mode,
                description=self._description(page.stream, name, **where),
                photometric="minisblack",
                metadata=None,
                software="runbroker",
                compression=self._compression,
            )
            self._frames.append({"file": path.name, "stream": page.stream, "field": name, **where})
