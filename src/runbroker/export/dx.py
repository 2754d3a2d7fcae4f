"""Data Exchange (DX): the HDF5 layout tomography software (TomoPy, dxchange) reads.

One file per run, ``<name>.h5``::

    /                         @implements = "exchange:measurement:process"
    /exchange/data            projections, (n_theta, rows, cols), the detector's dtype
    /exchange/data_dark       dark fields, (n_dark, rows, cols)
    /exchange/data_white      flat (white) fields, (n_white, rows, cols)
    /exchange/theta           rotation angle of each projection, @units = "degrees"
    /measurement/instrument   beamline, detector name, size and configuration
    /measurement/sample       sample name (and its other keys), proposal
    /process/acquisition      run uid, plan, scan id, dates, start/stop/descriptors as JSON,
                              which streams and fields were used, runbroker version, complete

Which stream and field is which is given by the options ``projections``, ``darks``, ``flats``
and ``theta``; without them, projections are the ``primary`` stream, darks every stream whose
name contains ``dark``, flats every stream whose name contains ``flat``, ``white`` or
``bright``, the image is the stream's one field with two or more dimensions per event, and the
angle is the projection stream's scalar field named like ``theta``, ``angle`` or ``rot``.
Frames are appended page by page as events arrive (flushed each time), so a live export grows
with the scan.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from .._version import __version__
from ..docfiles import dumps
from .base import ExportError, Page
from .h5write import H5Exporter, dataset, grow, iso
from .hints import axes

__all__ = ["DataExchangeExporter"]

IMPLEMENTS = "exchange:measurement:process"

#: Option name -> the dataset it fills under /exchange.
_ROLES = {"projections": "data", "darks": "data_dark", "flats": "data_white"}
_DEFAULT_NAMES = {
    "darks": re.compile(r"dark", re.IGNORECASE),
    "flats": re.compile(r"flat|white|bright", re.IGNORECASE),
}
_ANGLE = re.compile(r"theta|angle|rot", re.IGNORECASE)
_AXES = {"data": "theta:y:x", "data_dark": "theta_dark:y:x", "data_white": "theta_white:y:x"}
#: Angle units -> factor to degrees (units are compared lower-case, without spaces).
_TO_DEGREES = {
    **dict.fromkeys(["", "deg", "degree", "degrees", "°"], 1.0),
    **dict.fromkeys(["rad", "radian", "radians"], 180.0 / np.pi),
    "mrad": 180.0 / np.pi / 1e3,
    **dict.fromkeys(["urad", "µrad", "μrad"], 180.0 / np.pi / 1e6),
}

Sources = str | Sequence[str] | bool | None


@dataclass(frozen=True)
class _Source:
    stream: str
    field: str | None  # None: the stream's one image field

    def __str__(self) -> str:
        return self.stream if self.field is None else f"{self.stream}:{self.field}"


@dataclass(frozen=True)
class _Angle:
    field: str
    scale: float  # to degrees
    repeat: bool  # one angle per event of the projection stream: repeat it for each frame


def _parse(option: str, value: Sources) -> list[_Source] | None:
    """``None``: choose by names; ``False``/``[]``: none; else ``"stream[:field]"`` or a list."""
    if value is None or value is True:
        return None
    if value is False:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        items = [items]
    out = []
    for item in items:
        if not isinstance(item, str) or not item.strip(":"):
            raise ExportError(
                f"dx option {option}={value!r}: give 'STREAM' or 'STREAM:FIELD' (or a list of them)"
            )
        stream, _, field = item.partition(":")
        out.append(_Source(stream, field or None))
    return out


def _is_image(data_key: Mapping[str, Any]) -> bool:
    return len(data_key.get("shape") or []) >= 2


class DataExchangeExporter(H5Exporter):
    """Write a tomography run as a Data Exchange HDF5 file (``format="dx"``).

    Options (besides ``template``, ``overwrite``, ``assets``):

    - ``projections``, ``darks``, ``flats``: ``"STREAM"`` (its one image field),
      ``"STREAM:FIELD"``, or a list of these (frames are joined in arrival order);
      ``False`` writes no such dataset. Defaults come from stream names (see the module).
    - ``theta``: ``"FIELD"`` of the projection stream, or ``"STREAM:FIELD"``; ``False``
      writes no angles. Radians (the data key's ``units``) are converted to degrees.
    - ``compression``: an h5py filter for the frames (``"gzip"``, ``"lzf"``), default none.

    A run with no projections, or whose names leave a choice open, raises ``ExportError``
    naming the option to pass, and leaves no file behind.

    Example (live, from a RunEngine):
        >>> import h5py
        >>> from bluesky.plans import scan
        >>> from ophyd.sim import SynAxis, SynSignal
        >>> cam = SynSignal(name="cam", func=lambda: np.ones((4, 6), dtype="uint16"))
        >>> from runbroker.export import live
        >>> export = live("dx", tmp_path)
        >>> _ = RE(scan([cam], SynAxis(name="theta"), 0, 180, 3), export)
        >>> with h5py.File(export.files[0], "r") as f:
        ...     print(f.attrs["implements"], f["exchange/data"].shape, f["exchange/theta"][:])
        exchange:measurement:process (3, 4, 6) [  0.  90. 180.]

        A scalar scan has nothing to reconstruct:

        >>> run.export("dx", tmp_path)
        Traceback (most recent call last):
        ...
        runbroker.errors.ExportError: run ...: no projections for /exchange/data: ...
    """

    needs_uids = False  # event uids are not written

    format = "dx"
    suffix = ".h5"
    needs_pixels = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        projections: Sources = None,
        darks: Sources = None,
        flats: Sources = None,
        theta: str | bool | None = None,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        given = (projections, darks, flats)
        self._sources = {o: _parse(o, v) for o, v in zip(_ROLES, given, strict=True)}
        if theta is True:
            theta = None
        if not (theta is None or theta is False or (isinstance(theta, str) and theta.strip(":"))):
            raise ExportError(
                f"dx option theta={theta!r}: give 'FIELD' or 'STREAM:FIELD' (or False)"
            )
        self._theta = theta
        # descriptor uid -> what its pages fill: (dataset, field) for frames, plus the angle
        self._plan: dict[str, tuple[list[tuple[str, str]], _Angle | None]] = {}
        self._used: dict[str, list[str]] = {name: [] for name in _ROLES.values()}
        self._theta_used: list[str] = []

    # -- hooks ---------------------------------------------------------------------------

    def begin(self, doc: dict[str, Any]) -> None:
        f = self.h5
        f.attrs["implements"] = IMPLEMENTS
        f.require_group("exchange")
        _measurement(f.require_group("measurement"), doc)
        acq = f.require_group("process/acquisition")
        acq["run_uid"] = self.uid
        acq["plan_name"] = str(doc.get("plan_name", ""))
        if "scan_id" in doc:
            acq["scan_id"] = doc["scan_id"]
        acq["start_date"] = iso(doc.get("time"))
        acq["start"] = _json(doc)
        software = acq.require_group("software")
        software["name"] = "runbroker"
        software["version"] = __version__
        f.flush()

    def descriptor(self, doc: dict[str, Any]) -> None:
        if self.h5 is None:  # given up
            return
        stream = doc.get("name", "primary")
        keys = doc["data_keys"]
        frames: list[tuple[str, str]] = []
        for option, name in _ROLES.items():
            for source in self._wanted(option, stream):
                field = self._image_field(option, source, keys)
                if field is not None:
                    frames.append((name, field))
                    self._used[name].append(f"{stream}:{field}")
        projecting = any(d == "data" for d, _ in frames)
        angle = self._angle(stream, doc, projecting)
        if angle is not None:
            self._theta_used.append(f"{stream}:{angle.field}")
        if frames or angle is not None:
            self._plan[doc["uid"]] = (frames, angle)

    def event_page(self, page: Page) -> None:
        if self.h5 is None or not len(page):
            return
        frames, angle = self._plan.get(page.descriptor["uid"], ([], None))
        per_event = 1
        for name, field in frames:
            n = self._append_frames(name, page, field)
            if name == "data":
                per_event = n
        if angle is not None:
            values = page.data[angle.field].astype(np.float64) * angle.scale
            if angle.repeat and per_event > 1:
                values = np.repeat(values, per_event)
            self._append("theta", values)
        if frames or angle is not None:
            self.h5.flush()  # so a reader sees the frames of a live scan as they come

    def end(self, complete: bool) -> None:
        f = self.h5
        exchange = f["exchange"]
        if "data" not in exchange:
            self.discard(self._no_projections())
        if "theta" in exchange and len(exchange["theta"]) != len(exchange["data"]):
            self.discard(
                f"run {self.uid}: {len(exchange['theta'])} angles from "
                f"{', '.join(self._theta_used)} for {len(exchange['data'])} projections from "
                f"{', '.join(self._used['data'])}; a tomography reader needs one angle per "
                "projection: choose the angle with theta='STREAM:FIELD' (or theta=False)"
            )
        acq = f["process/acquisition"]
        acq["complete"] = complete
        acq["exit_status"] = (
            str(self.stop_doc.get("exit_status", "")) if self.stop_doc else "incomplete"
        )
        if self.stop_doc:
            acq["end_date"] = iso(self.stop_doc.get("time"))
        acq["stop"] = _json(self.stop_doc)
        acq["descriptors"] = _json(list(self.descriptors.values()))
        used = {option: self._used[name] for option, name in _ROLES.items()}
        used["theta"] = self._theta_used
        acq["sources"] = _json({k: list(dict.fromkeys(v)) for k, v in used.items()})  # once each

    # -- choosing streams and fields --------------------------------------------------------

    def _wanted(self, option: str, stream: str) -> list[_Source]:
        """The sources of ``option`` in ``stream``: those named, else those its name implies."""
        named = self._sources[option]
        if named is not None:
            return [s for s in named if s.stream == stream]
        if self._named_anywhere(stream):
            return []  # a stream the user mapped is not also guessed into another role
        if option == "projections":
            return [_Source(stream, None)] if stream == "primary" else []
        if not _DEFAULT_NAMES[option].search(stream):
            return []
        other = "flats" if option == "darks" else "darks"
        if self._sources[other] is None and _DEFAULT_NAMES[other].search(stream):
            self.discard(
                f"run {self.uid}: stream {stream!r} could hold darks or flats; "
                f"say which with darks='{stream}' or flats='{stream}'"
            )
        return [_Source(stream, None)]

    def _named_anywhere(self, stream: str) -> bool:
        return any(s.stream == stream for srcs in self._sources.values() for s in srcs or [])

    def _image_field(
        self, option: str, source: _Source, keys: Mapping[str, Mapping[str, Any]]
    ) -> str | None:
        stream = source.stream
        if source.field is not None:
            dk = keys.get(source.field)
            if dk is None or not _is_image(dk):
                what = "is not a field" if dk is None else f"has shape {dk.get('shape')}"
                self.discard(
                    f"run {self.uid}: {option}='{source}': {source.field!r} {what} of stream "
                    f"{stream!r}; its image fields: {_names(k for k in keys if _is_image(keys[k]))}"
                )
            return source.field
        images = [k for k, dk in keys.items() if _is_image(dk)]
        if len(images) == 1:
            return images[0]
        guessed = self._sources[option] is None
        if not images and guessed and option != "projections":
            return None  # e.g. a 'dark_current' stream of scalars: not a dark field
        if not images:
            what = "no projections for /exchange/data" if option == "projections" else option
            self.discard(
                f"run {self.uid}: {what}: stream {stream!r} has no image field (it has "
                f"{_names(keys)}); name one with {option}='STREAM:FIELD'"
            )
        self.discard(
            f"run {self.uid}: stream {stream!r} has several image fields ({_names(images)}); "
            f"choose one with {option}='{stream}:FIELD'"
        )

    def _angle(self, stream: str, desc: Mapping[str, Any], projecting: bool) -> _Angle | None:
        keys = desc["data_keys"]
        if self._theta is False:
            return None
        if isinstance(self._theta, str):
            t_stream, _, field = self._theta.rpartition(":")
            if t_stream and t_stream != stream:
                return None
            if not t_stream and not projecting:
                return None
            dk = keys.get(field)
            if dk is None or dk.get("shape"):
                what = "is not a field" if dk is None else "is not one number per event"
                self.discard(
                    f"run {self.uid}: theta={self._theta!r}: {field!r} {what} of stream "
                    f"{stream!r} (it has {_names(keys)})"
                )
        elif projecting:
            field = self._default_angle(stream, desc)
            if field is None:
                return None
        else:
            return None
        return _Angle(field, self._to_degrees(stream, field, keys[field]), projecting)

    def _default_angle(self, stream: str, desc: Mapping[str, Any]) -> str | None:
        keys = desc["data_keys"]
        found = [
            k
            for k, dk in keys.items()
            if _ANGLE.search(k)
            and not dk.get("shape")
            and dk.get("dtype") in ("number", "integer", None)
        ]
        if len(found) > 1:
            # A rotation scan names its motor in the plan's hints; a motor's setpoint is not it.
            hinted = [k for k in found if k in axes(self.start_doc, desc)]
            found = hinted or [k for k in found if not k.endswith("setpoint")] or found
        if len(found) > 1:
            self.discard(
                f"run {self.uid}: stream {stream!r} has several angle fields "
                f"({_names(found)}); choose one with theta='{stream}:FIELD' (or theta=False)"
            )
        return found[0] if found else None

    def _to_degrees(self, stream: str, field: str, dk: Mapping[str, Any]) -> float:
        units = str(dk.get("units") or "").strip().lower().replace(" ", "")
        if units not in _TO_DEGREES:
            self.discard(
                f"run {self.uid}: angle {stream}:{field} has units {dk.get('units')!r}, which "
                "is not an angle (degrees or radians); choose the rotation angle with "
                "theta='STREAM:FIELD' (or theta=False)"
            )
        return _TO_DEGREES[units]

    # -- writing -------------------------------------------------------------------------

    def _append_frames(self, dataset: str, page: Page, field: str) -> int:
        """Append ``field``'s frames to ``/exchange/<dataset>``; return frames per event."""
        values = page.data.get(field)
        where = f"{page.stream}:{field}"
        if values is None or values.dtype == object or values.ndim < 3:
            shape = None if values is None else values.shape[1:]
            self.discard(
                f"run {self.uid}: {where} (event {int(page.seq_num[0])}) is not a stack of "
                f"frames (per event: {shape}); /exchange/{dataset} needs 2-D images"
            )
        frames = values.reshape(-1, *values.shape[-2:])
        exchange = self.h5["exchange"]
        for other in _AXES:
            if other in exchange and exchange[other].shape[1:] != frames.shape[1:]:
                self.discard(
                    f"run {self.uid}: frames of {where} are {frames.shape[1:]}, those already "
                    f"in /exchange/{other} are {exchange[other].shape[1:]}; darks, flats and "
                    "projections must share one frame size"
                )
        if dataset not in exchange:
            self._create_frames(dataset, page, field, frames)
        self._append(dataset, frames)
        return len(frames) // len(page)

    def _create_frames(self, name: str, page: Page, field: str, frames: np.ndarray) -> None:
        # One frame a chunk: readers slice by projection.
        ds = dataset(
            self.h5["exchange"], name, frames.shape[1:], frames.dtype, None, 1, self.compression
        )
        ds.attrs["axes"] = _AXES[name]
        ds.attrs["units"] = "counts"
        if name == "data":
            _detector(self.h5["measurement/instrument"], page.descriptor, field, frames)

    def _append(self, dataset: str, values: np.ndarray) -> None:
        exchange = self.h5["exchange"]
        if dataset not in exchange:
            ds = exchange.create_dataset(
                dataset, shape=(0,), maxshape=(None,), chunks=True, dtype="f8"
            )
            ds.attrs["units"] = "degrees"
        ds = exchange[dataset]
        if not np.can_cast(values.dtype, ds.dtype, "safe"):
            self.discard(
                f"run {self.uid}: frames of dtype {values.dtype} cannot join /exchange/{dataset} "
                f"({ds.dtype}) without loss; map them apart with the dx options"
            )
        grow(ds, values)

    def _no_projections(self) -> str:
        streams = _names(self.streams) or "none"
        named = self._sources["projections"]
        if named is not None:
            given = ", ".join(map(str, named)) or "False"
            why = f"projections={given} matched no stream"
        elif "primary" in self.streams:
            why = "stream 'primary' has no events"
        else:
            why = "there is no stream 'primary'"
        return (
            f"run {self.uid}: no projections for /exchange/data: {why} (streams: {streams}); "
            "name them with projections='STREAM:FIELD'"
        )


def _measurement(group: h5py.Group, start: Mapping[str, Any]) -> None:
    instrument = group.require_group("instrument")
    for key in ("beamline_id", "instrument"):
        if key in start:
            _put(instrument, "name", start[key])
            break
    sample = group.require_group("sample")
    value = start.get("sample")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _put(sample, str(key), item)
    elif value is not None:
        _put(sample, "name", value)
    if "proposal_id" in start:
        _put(sample, "experiment/proposal", start["proposal_id"])
    for key in ("operator", "user", "PI"):
        if key in start:
            _put(sample, "experimenter/name", start[key])
            break


def _detector(
    instrument: h5py.Group, desc: Mapping[str, Any], field: str, frames: np.ndarray
) -> None:
    dk = desc["data_keys"][field]
    obj = dk.get("object_name") or field
    det = instrument.require_group("detector")
    _put(det, "name", obj)
    _put(det, "field", field)
    if dk.get("source"):
        _put(det, "source", dk["source"])
    _put(det, "dimension_y", frames.shape[1])
    _put(det, "dimension_x", frames.shape[2])
    _put(det, "data_type", str(frames.dtype))
    for key, value in ((desc.get("configuration") or {}).get(obj) or {}).get("data", {}).items():
        _put(det, key, value)


def _put(group: h5py.Group, name: str, value: Any) -> None:
    """Store a metadata value: strings and numbers as themselves, anything else as JSON."""
    if name in group:
        return
    if isinstance(value, bool | int | float | str | np.generic):
        group[name] = value
        return
    arr = np.asarray(value) if isinstance(value, list | tuple | np.ndarray) else None
    if arr is not None and arr.dtype.kind in "biuf":
        group[name] = arr
    else:
        group[name] = _json(value)


def _json(value: Any) -> str:
    return dumps(value).decode()


def _names(items: Iterable[str]) -> str:
    return ", ".join(map(str, items))
