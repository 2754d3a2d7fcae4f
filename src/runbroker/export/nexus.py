"""NeXus export: one HDF5 file per run that NeXpy, silx, PyMca and punx understand.

Layout (``@NX_class`` in brackets)::

    /                                 [NXroot]   @default=entry @file_name @file_time @creator ...
    /entry                            [NXentry]  @default=data
        title, entry_identifier (uid), start_time, end_time, duration, program_name,
        experiment_identifier (proposal, if in the metadata)
        data/                         [NXdata]   @signal @axes @AXIS_indices @auxiliary_signals
        instrument/                   [NXinstrument]
            <motor>/                  [NXpositioner]  name, value, target_value
            <detector>/               [NXdetector]    local_name, data, <its other fields>
        sample/                       [NXsample]      name and the other sample metadata
        streams/<stream>/             [NXcollection]  every field, time, seq_num,
            timestamps/               [NXcollection]  per-field timestamps
        configuration/<stream>/<device>/ [NXcollection]  one row per descriptor
        documents/                    [NXcollection]  complete, start/stop/descriptors as JSON
        notes/                        [NXnote]   only for a run that did not end normally

Data appearing in several places (a detector's readings in ``streams``, ``instrument`` and
``data``) is stored once and hard-linked. Event data is buffered per stream and written in one
piece per field at the end of the run, or in pieces when the buffer fills (``buffer_bytes``),
so an image run never has to fit in memory.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np
import orjson

from ..assets import external_kind
from ..columns import as_column, concat_columns
from ..standard_names import Aliases, check_naming
from .base import ExportError, Page, unique
from .h5write import STR, H5Exporter, contiguous, grow, iso, link, set_attrs, text
from .h5write import group as new_group

__all__ = ["NeXusExporter"]

_INVALID = re.compile(r"[^A-Za-z0-9_]")
# Names the exporter itself puts next to a stream's fields.
_RESERVED = frozenset({"time", "seq_num", "timestamps", "descriptor_index"})
# Rows of a growing dataset's chunk: about a mebibyte, at least one event.
_CHUNK_BYTES = 2**20
_NUMERIC = "biufc"


def nexus_name(name: str) -> str:
    """``name`` as a valid NeXus name: letters, digits and ``_``, not starting with a digit.

    Example:
        >>> nexus_name("I0"), nexus_name("det-1:x"), nexus_name("2theta")
        ('I0', 'det_1_x', '_2theta')
    """
    out = _INVALID.sub("_", name) or "_"
    return f"_{out}" if out[0].isdigit() else out


class _Names:
    """Unique NeXus names for the items of one group, stable once given (``rename`` gives
    the name each item is written under, before it is made a valid, unique NeXus name)."""

    def __init__(
        self, reserved: frozenset[str] = frozenset(), rename: Callable[[str], str] | None = None
    ) -> None:
        self._given: dict[str, str] = {}
        self._taken = set(reserved)
        self._rename = rename

    def __call__(self, name: str) -> str:
        got = self._given.get(name)
        if got is None:
            wanted = name if self._rename is None else self._rename(name)
            got = self._given[name] = unique(nexus_name(wanted), self._taken)
        return got


class NeXusExporter(H5Exporter):
    """Write a run as one NeXus file (``.nxs``): ``NXentry`` > ``NXdata`` plotted by default.

    The default plot follows the plan's hints: the signal is the first numeric field the
    detectors hint at (the others become ``@auxiliary_signals``), the axes are the plan's
    dimensions (else its motors; a ``count`` is plotted against ``time``). A completed
    rectilinear ``grid_scan`` is plotted as an image: signal shaped like the grid (snaking
    undone), one 1-D axis per motor holding its positions along the first line of that
    dimension. Those are copies; everything else in ``data``/``instrument`` is a hard link to
    ``/entry/streams``.

    Options (besides ``template``, ``overwrite``, ``assets``):

    - ``grid`` (default True): False keeps a grid scan's plot 1-D (signal against the first
      motor).
    - ``compression``: ``"gzip"`` or ``"lzf"`` for per-event arrays (images); default none.
    - ``buffer_bytes`` (default 64 MiB): event data held in memory before it is written out.
    - ``names``: ``"standard"`` writes each field under its standard name from the catalog's
      alias table ``aliases`` (its own name stays in ``@long_name``); default ``"beamline"``.

    Example:
        >>> import h5py
        >>> [path] = run.export("nexus", tmp_path)
        >>> path.suffix
        '.nxs'
        >>> with h5py.File(path) as f:
        ...     nxdata = f["entry/data"]
        ...     print(nxdata.attrs["signal"], list(nxdata.attrs["axes"]), nxdata["det"].shape)
        ...     print(f["entry/sample/name"].asstr()[()])
        det ['motor'] (5,)
        Cu
    """

    needs_uids = False  # event uids are not written

    format = "nexus"
    suffix = ".nxs"
    needs_pixels = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        grid: bool = True,
        names: str = "beamline",
        aliases: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.grid = grid
        # Fields under their standard names (names="standard"), else their own.
        self._aliases = Aliases.of(aliases) if check_naming(names) == "standard" else None
        self._written: dict[str, int] = {}  # stream -> events already in the file
        self._stream_names = _Names()
        self._field_names: dict[str, _Names] = {}
        # Each stream's group and datasets, kept: an h5py look-up costs more than a small write.
        self._groups: dict[str, Any] = {}
        self._columns: dict[str, dict[str, Any]] = {}
        self._stamps: dict[str, dict[str, Any]] = {}  # stream -> its timestamp datasets
        # stream -> dataset name -> (dtype kind, ndim), without asking h5py (it is slow to)
        self._kinds: dict[str, dict[str, tuple[str, int]]] = {}
        self._targets: set[tuple[str, str]] = set()

    # -- the hooks ----------------------------------------------------------------------------

    def begin(self, doc: dict[str, Any]) -> None:
        from .._version import __version__

        root = {
            "NX_class": "NXroot",
            "default": "entry",
            "file_name": self.path.name,
            "file_time": iso(datetime.now(UTC).timestamp()),
            "creator": "runbroker",
            "creator_version": __version__,
            "HDF5_Version": h5py.version.hdf5_version,
            "h5py_version": h5py.version.version,
        }
        set_attrs(self.h5, root, new=True)
        _group(self.h5, "entry", "NXentry", new=True)

    def event_page(self, page: Page) -> None:
        if not len(page):
            return
        # Counting small arrays' overhead, a long live run of single events is written out
        # now and then as well.
        self.hold(page.stream, page)
        if self.held_bytes > self.buffer_bytes:
            for stream in list(self.held):
                self._flush(stream)
            self.held_bytes = 0

    def end(self, complete: bool) -> None:
        for stream in self.streams:
            self._flush(stream, final=True)
        entry = self.h5["entry"]
        self._write_entry(entry)
        self._write_documents(entry)
        self._write_configuration(entry)
        main = self._main_stream()
        if main is not None:
            self._write_instrument(entry, main)
            if self._write_data(entry, main):
                set_attrs(entry, {"default": "data"}, new=True)
        self._write_sample(entry)

    # -- streams ------------------------------------------------------------------------------

    def _stream_group(self, stream: str) -> Any:
        group = self._groups.get(stream)
        if group is None:
            streams = _group(self.h5["entry"], "streams", "NXcollection")
            group = _group(streams, self._stream_names(stream), "NXcollection", new=True)
            self._groups[stream] = group
            set_attrs(group, {"stream": stream}, new=True)
            self._groups[stream, "timestamps"] = _group(
                group, "timestamps", "NXcollection", new=True
            )
            rename = None if self._aliases is None else self._aliases.standard
            self._field_names[stream] = _Names(_RESERVED, rename)
            self._columns[stream] = {}
            self._stamps[stream] = {}
            self._kinds[stream] = {}
        return group

    def _flush(self, stream: str, final: bool = False) -> None:
        """Write the buffered events of ``stream``; at ``final`` an empty stream gets its
        (empty) datasets too. Datasets made before the final flush are made growable."""
        pages = self.held.pop(stream, [])
        done = self._written.get(stream, 0)
        if not pages and (done or not final):
            return
        group = self._stream_group(stream)
        stamps = self._groups[stream, "timestamps"]
        names = self._field_names[stream]
        descs = self.streams[stream]
        if self._aliases is not None:  # two fields of the stream under one name: refused
            self._aliases.renaming(_merged(descs, "data_keys"), f"stream {stream!r}")
        lengths = [len(p) for p in pages]
        order = _read_order(pages, lengths)

        columns, stamp_columns = self._columns[stream], self._stamps[stream]
        kinds = self._kinds[stream]

        def put(where: Any, name: str, column: np.ndarray, attrs: Mapping[str, Any]) -> None:
            column = column if order is None else column[order]
            made = columns if where is group else stamp_columns
            made[name] = self._append(where, name, column, done, not final, attrs, made.get(name))
            kinds.setdefault(name, (column.dtype.kind, column.ndim))

        seq = _join([p.seq_num for p in pages], lengths, {"dtype": "integer"})
        put(group, "seq_num", seq, {})
        time = _join([p.time for p in pages], lengths, _NUMBER)
        put(group, "time", time, _TIME)
        # Written whole, timestamps equal to the event times (flyers, ingested data) are the
        # same dataset; growing ones could part ways later.
        whole = final and not done
        same_as_time: dict[tuple, np.ndarray] = {}
        for field, dk in _merged(descs, "data_keys").items():
            column = _join([p.data.get(field) for p in pages], lengths, dk)
            put(group, names(field), column, _field_attrs(field, names(field), dk))
            if external_kind(dk) == "stream":
                # Events carry no timestamp for these (the pages hold none);
                # the catalog reads them as missing, and so does the file.
                stamp = np.full(sum(lengths), np.nan)
            else:
                stamp = _join([p.timestamps.get(field) for p in pages], lengths, _NUMBER)
            if whole and _same(stamp, time, same_as_time):
                link(columns["time"], stamps, names(field))
            else:
                put(stamps, names(field), stamp, _SECONDS)
        if len(descs) > 1:
            index = {d["uid"]: i for i, d in enumerate(descs)}
            which = [index[p.descriptor["uid"]] for p in pages]
            column = np.repeat(np.asarray(which, dtype=np.int32), lengths)
            put(group, "descriptor_index", column, _DESCRIPTOR_INDEX)
        self._written[stream] = done + sum(lengths)

    def _append(
        self,
        group: Any,
        name: str,
        column: np.ndarray,
        done: int,
        growable: bool,
        attrs: Mapping[str, Any],
        ds: Any,
    ) -> Any:
        """Add ``column`` after the ``done`` events of ``ds``, ``group[name]`` (made if None)."""
        data, extra = _storable(column)
        if ds is not None:
            if ds.shape[1:] != data.shape[1:] or (
                data.dtype.kind in _NUMERIC and not np.can_cast(data.dtype, ds.dtype, "same_kind")
            ):
                raise ExportError(
                    f"run {self.uid}: {group.name}/{name} changed from "
                    f"{ds.dtype}{list(ds.shape[1:])} to {data.dtype}{list(data.shape[1:])} "
                    "mid-stream; one NeXus dataset cannot hold both"
                )
            grow(ds, data)
            return ds
        options: dict[str, Any] = {}
        if data.ndim > 1 and self.compression:
            options["compression"] = self.compression
        if growable:
            row = int(np.prod(data.shape[1:], dtype=np.int64)) * max(data.dtype.itemsize, 16)
            rows = max(1, _CHUNK_BYTES // max(row, 1))
            options.update(maxshape=(None, *data.shape[1:]), chunks=(rows, *data.shape[1:]))
        if done:
            # The field first appears after events already written, which had no value.
            if data.dtype.kind in "biu":
                data = data.astype(np.float64)
            fill = np.nan if data.dtype.kind in "fc" else None
            shape = (done + len(data), *data.shape[1:])
            ds = group.create_dataset(name, shape, data.dtype, fillvalue=fill, **options)
            ds[done:] = data
        elif options:
            ds = group.create_dataset(name, data=data, **options)
        else:
            ds = contiguous(group, name, data.shape, data.dtype, np.ascontiguousarray(data))
        set_attrs(ds, {**attrs, **extra}, new=True)
        return ds

    def _linked(self, stream: str, name: str) -> Any:
        """Dataset ``name`` of ``stream``, marked (once) with the ``target`` NeXus links carry."""
        ds = self._columns[stream][name]
        if (stream, name) not in self._targets:
            self._targets.add((stream, name))
            set_attrs(ds, {"target": ds.name}, new=True)
        return ds

    def _main_stream(self) -> str | None:
        if "primary" in self.streams:
            return "primary"
        return next((s for s, n in self._written.items() if n), None)

    # -- the NeXus groups ---------------------------------------------------------------------

    def _write_entry(self, entry: Any) -> None:
        from .._version import __version__

        start, stop = self.start_doc, self.stop_doc
        text(entry, "title", _title(start))
        text(entry, "entry_identifier", self.uid)
        text(entry, "start_time", iso(start["time"]))
        if stop is not None:
            text(entry, "end_time", iso(stop["time"]))
            duration = np.array(float(stop["time"]) - float(start["time"]))
            set_attrs(contiguous(entry, "duration", (), duration.dtype, duration), _SECONDS, True)
        set_attrs(text(entry, "program_name", "runbroker"), {"version": __version__}, True)
        proposal = next((start[k] for k in _PROPOSAL_KEYS if start.get(k) not in (None, "")), None)
        if proposal is not None:
            text(entry, "experiment_identifier", str(proposal))
        if stop is None:
            note = (
                "INCOMPLETE: no stop document was received; the export was closed before the "
                "run ended, so this file may lack its last events and has no end_time."
            )
        elif stop.get("exit_status", "success") != "success":
            note = f"The run ended with exit_status {stop['exit_status']!r}: {stop.get('reason')}"
        else:
            return
        notes = _group(entry, "notes", "NXnote")
        text(notes, "type", "text/plain")
        text(notes, "description", note)

    def _write_documents(self, entry: Any) -> None:
        docs = _group(entry, "documents", "NXcollection", new=True)
        record = orjson.loads(self.record_json())
        complete = np.array(self.stop_doc is not None)
        contiguous(docs, "complete", (), complete.dtype, complete)
        for key in ("start", "stop", "descriptors", "notes"):
            if record.get(key) is not None:
                ds = text(docs, key, orjson.dumps(record[key]).decode())
                set_attrs(ds, {"type": _JSON}, new=True)

    def _write_configuration(self, entry: Any) -> None:
        for stream, descs in self.streams.items():
            devices = dict.fromkeys(dev for d in descs for dev in d.get("configuration") or {})
            if not devices:
                continue
            conf = _group(entry, "configuration", "NXcollection")
            group = _group(conf, self._stream_names(stream), "NXcollection")
            group.attrs["stream"] = stream
            text(group, "descriptor_uid", [d["uid"] for d in descs])
            groups = _Names(frozenset({"descriptor_uid"}))
            for dev in devices:
                found = [(d.get("configuration") or {}).get(dev) or {} for d in descs]
                keys: dict[str, dict] = {}
                for conf_doc in found:
                    for k in conf_doc.get("data") or {}:
                        keys.setdefault(k, (conf_doc.get("data_keys") or {}).get(k) or {})
                dev_group = _group(group, groups(dev), "NXcollection")
                dev_group.attrs["device"] = dev
                names = _Names()
                for key, dk in keys.items():
                    values = [(c.get("data") or {}).get(key) for c in found]
                    data, extra = _storable(as_column(values, dk))
                    ds = dev_group.create_dataset(names(key), data=data)
                    attrs = {**_field_attrs(key, names(key), dk), **extra}
                    ds.attrs.update({k: v for k, v in attrs.items() if v is not None})

    def _write_instrument(self, entry: Any, stream: str) -> None:
        descs = self.streams[stream]
        keys, hints, objects = _merged(descs, "data_keys"), _merged(descs, "hints"), _objects(descs)
        names = self._field_names[stream]

        def put(where: Any, name: str, field: str) -> None:
            link(self._linked(stream, names(field)), where, name)

        instrument = None
        members = _Names()
        for motor in self.start_doc.get("motors") or []:
            fields = _object_fields(motor, keys, hints, objects)
            if not fields:
                continue
            instrument = instrument or _group(entry, "instrument", "NXinstrument", new=True)
            positioner = _group(instrument, members(motor), "NXpositioner", new=True)
            text(positioner, "name", motor)
            put(positioner, "value", fields[0])
            for setpoint in (
                f"{fields[0]}_setpoint",
                f"{motor}_setpoint",
                f"{motor}_user_setpoint",
            ):
                if setpoint in keys and setpoint != fields[0]:
                    put(positioner, "target_value", setpoint)
                    break
        for det in self.start_doc.get("detectors") or []:
            fields = _object_fields(det, keys, hints, objects)
            if not fields:
                continue
            hinted = set((hints.get(det) or {}).get("fields") or [])
            # The detector's data is its richest field (an image over a sum), hinted first.
            main = max(fields, key=lambda f: (len(keys[f].get("shape") or []), f in hinted))
            instrument = instrument or _group(entry, "instrument", "NXinstrument", new=True)
            detector = _group(instrument, members(det), "NXdetector", new=True)
            text(detector, "local_name", det)
            put(detector, "data", main)
            inner = _Names(frozenset({"data", "local_name"}))
            for f in fields:
                if f != main:
                    put(detector, inner(f), f)

    def _write_data(self, entry: Any, stream: str) -> bool:
        """The default plot of ``stream``; False when it has nothing numeric to plot."""
        from .hints import axes, signals

        descs = self.streams[stream]
        keys = _merged(descs, "data_keys")
        cols, names, kinds = self._columns[stream], self._field_names[stream], self._kinds[stream]
        merged = {
            "name": stream,
            "data_keys": keys,
            "hints": _merged(descs, "hints"),
            "object_keys": _objects(descs),
        }

        def numeric(field: str, scalar: bool) -> bool:
            kind, ndim = kinds[names(field)]
            return kind in "iuf" and (ndim == 1 or not scalar)

        sig = [f for f in signals(self.start_doc, merged) if numeric(f, scalar=False)]
        ax = [f for f in axes(self.start_doc, merged) if numeric(f, scalar=True)]
        if not sig:
            sig = [f for f in keys if f not in ax and numeric(f, scalar=False)][:1]
        if not sig:
            return False
        per_event = cols[names(sig[0])].shape[1:]
        aux = [f for f in sig[1:] if cols[names(f)].shape[1:] == per_event]
        plotted = [names(f) for f in [sig[0], *aux]]
        axis_names = [names(f) for f in ax]
        if not axis_names and _time_dimension(self.start_doc, stream):
            axis_names = ["time"]
        data = _group(entry, "data", "NXdata", new=True)
        attrs: dict[str, Any] = {"signal": plotted[0]}
        # Only scalars are gridded: a gridded image stack would be a second copy of it all.
        dims = self._grid(stream, ax) if self.grid and not per_event else None
        if dims is not None:
            # A link cannot change a dataset's shape: the gridded plot holds copies.
            shape = tuple(int(n) for n in self.start_doc["shape"])
            order = _grid_order(shape, self.start_doc.get("snaking"))
            for name in plotted:
                gridded = _gridded(cols[name][()], order, shape)
                data.create_dataset(name, data=gridded).attrs.update(_copied(cols[name]))
            axis_names = [names(f) for f in dims]
            for k, name in enumerate(axis_names):
                line = _gridded(cols[name][()], order, shape)
                line = line[tuple(slice(None) if i == k else 0 for i in range(len(shape)))]
                data.create_dataset(name, data=line).attrs.update(_copied(cols[name]))
                attrs[f"{name}_indices"] = k
            rank = len(shape)
        else:
            for name in [*plotted, *axis_names]:
                link(self._linked(stream, name), data, name)
            attrs.update({f"{name}_indices": 0 for name in axis_names})
            axis_names, rank = axis_names[:1], 1
        # An axis per dimension, or none: "." for an unnamed dimension is what NeXus asks
        # for, but punx rejects it, and silx then reads the axes as those of the frames.
        if axis_names and len(axis_names) == rank + len(per_event):
            attrs["axes"] = _strings(axis_names)
        if aux:
            attrs["auxiliary_signals"] = _strings(plotted[1:])
        set_attrs(data, attrs, new=True)
        interpretation = {1: "spectrum", 2: "image"}.get(len(per_event))
        if interpretation:
            data[plotted[0]].attrs["interpretation"] = interpretation
        return True

    def _grid(self, stream: str, ax: Sequence[str]) -> list[str] | None:
        """One axis field per dimension when ``stream`` filled a rectilinear grid, else None."""
        start = self.start_doc
        shape = start.get("shape")
        hints = start.get("hints") or {}
        dims = hints.get("dimensions") or []
        if (
            hints.get("gridding") != "rectilinear"
            or not isinstance(shape, list | tuple)
            or len(shape) < 2
            or len(dims) != len(shape)
            or int(np.prod(shape)) != self._written.get(stream, 0)
        ):
            return None
        out = []
        for fields, dim_stream in dims:
            found = [f for f in fields if f in ax] if dim_stream == stream else []
            if not found:
                return None
            out.append(found[0])
        return out

    def _write_sample(self, entry: Any) -> None:
        sample = self.start_doc.get("sample")
        if sample is None:
            return
        items = dict(sample) if isinstance(sample, Mapping) else {"name": str(sample)}
        group = _group(entry, "sample", "NXsample")
        names = _Names()
        for key, value in items.items():
            if value is not None:
                _value(group, names(str(key)), value)


# -- helpers ----------------------------------------------------------------------------------

_SECONDS = {"units": "s"}
_NUMBER = {"dtype": "number"}
_TIME = {"units": "s", "long_name": "time (seconds since 1970-01-01 UTC)"}
_DESCRIPTOR_INDEX = {
    "long_name": "descriptor of each event (its row in /entry/configuration/<stream>)"
}
_JSON = "application/json"
_DTYPES = {"number": "float64", "integer": "int64", "boolean": "bool", "string": "U1"}
_PROPOSAL_KEYS = ("experiment_identifier", "proposal_id", "proposal", "proposal_number")


def _group(parent: Any, name: str, nx_class: str, new: bool = False) -> Any:
    """Group ``name`` of ``parent``, made with its ``NX_class`` if missing (``new``: it is)."""
    group = None if new else parent.get(name)
    if group is None:
        group = new_group(parent, name)
        set_attrs(group, {"NX_class": nx_class}, new=True)
    return group


def _copied(ds: Any) -> dict[str, Any]:
    """The attributes a copy of ``ds`` keeps (not ``target``, which marks a link)."""
    return {k: v for k, v in ds.attrs.items() if k != "target"}


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=STR)


def _value(group: Any, name: str, value: Any) -> None:
    """A metadata value as a dataset: text, numbers, or JSON for anything nested."""
    if isinstance(value, str):
        text(group, name, value)
        return
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists
        arr = np.empty(0, dtype=object)
    if arr.dtype.kind in "biufc" or (arr.dtype.kind == "U" and arr.ndim == 1):
        data, _ = _storable(arr)
        group.create_dataset(name, data=data)
    else:
        ds = text(group, name, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        set_attrs(ds, {"type": _JSON}, new=True)


def _title(start: Mapping[str, Any]) -> str:
    if isinstance(start.get("title"), str) and start["title"]:
        return str(start["title"])
    plan = str(start.get("plan_name") or "run")
    scan_id = start.get("scan_id")
    return f"scan {scan_id}: {plan}" if scan_id is not None else plan


def _merged(descs: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """The ``key`` mappings of a stream's descriptors as one, in declaration order."""
    out: dict[str, Any] = {}
    for d in descs:
        for k, v in (d.get(key) or {}).items():
            out.setdefault(k, v)
    return out


def _objects(descs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in descs:
        for obj, fields in (d.get("object_keys") or {}).items():
            known = out.setdefault(obj, [])
            known.extend(f for f in fields if f not in known)
    return out


def _object_fields(
    obj: str, keys: Mapping[str, Any], hints: Mapping[str, Any], objects: Mapping[str, list[str]]
) -> list[str]:
    """The fields of device ``obj``: hinted ones first, then its own name, then the rest."""
    hinted = list((hints.get(obj) or {}).get("fields") or [])
    found = dict.fromkeys(f for f in [*hinted, obj, *objects.get(obj, [])] if f in keys)
    return list(found)


def _time_dimension(start: Mapping[str, Any], stream: str) -> bool:
    dims = (start.get("hints") or {}).get("dimensions") or []
    return any(s == stream and "time" in fields for fields, s in dims)


def _field_attrs(field: str, name: str, dk: Mapping[str, Any]) -> dict[str, Any]:
    """Units and source from the data key; the field's own name where NeXus renamed it."""
    units = dk.get("units")
    source = dk.get("source")
    return {
        "long_name": field if name != field else None,
        "units": units if isinstance(units, str) and units else None,
        "source": source if isinstance(source, str) else None,
    }


def _empty(dk: Mapping[str, Any]) -> np.ndarray:
    """No events: a column of the declared dtype and per-event shape."""
    shape = dk.get("shape") or []
    if any(s is None for s in shape):
        return np.empty(0, dtype=object)
    dtype = dk.get("dtype_numpy") or _DTYPES.get(dk.get("dtype", ""), "float64")
    return np.empty((0, *shape), dtype=dtype)


def _join(
    parts: Sequence[np.ndarray | None], lengths: Sequence[int], dk: Mapping[str, Any]
) -> np.ndarray:
    """One column from the pages' pieces, joined as the catalog's ``read()`` joins them (a
    field missing from some pages is missing there, NaN in a numeric column)."""
    if not parts:
        return _empty(dk)
    return as_column(concat_columns(parts, lengths), dk)


def _same(a: np.ndarray, b: np.ndarray, known: dict[tuple, np.ndarray]) -> bool:
    """Equal arrays; the ends are compared first, as unequal columns mostly differ there.

    ``known`` holds the arrays found equal to ``b`` so far (kept, so their memory is not
    reused): a catalog decodes the equal timestamp columns of a page as one buffer, compared
    once.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    where = (a.__array_interface__["data"][0], a.strides, a.shape)
    if where in known:
        return True
    if len(a) and a[0] == b[0] and a[-1] == b[-1] and np.array_equal(a, b):
        known[where] = a
        return True
    return False


def _read_order(pages: Sequence[Page], lengths: Sequence[int]) -> np.ndarray | None:
    """The permutation putting events in ``read()`` order (seq_num within each run of pages of
    one descriptor), or None when they already are."""
    if not pages:
        return None
    seq = pages[0].seq_num if len(pages) == 1 else np.concatenate([p.seq_num for p in pages])
    uids = [p.descriptor["uid"] for p in pages]
    if len(set(uids)) == 1 and bool((seq[1:] >= seq[:-1]).all()):
        return None  # one descriptor, in order: the usual case, decided in one pass
    runs = np.repeat(np.cumsum([0] + [a != b for a, b in itertools.pairwise(uids)]), lengths)
    steps = np.diff(seq)
    if np.all((steps >= 0) | (np.diff(runs) != 0)):
        return None
    return np.lexsort((seq, runs))


def _storable(column: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """``column`` in a type HDF5 holds: text as UTF-8 strings, anything else as JSON text."""
    kind = column.dtype.kind
    if kind in _NUMERIC or kind == "S":
        return column, {}
    if kind in "UMm":
        return column.astype(str).astype(STR), {}
    flat = [
        v if isinstance(v, str) else orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        for v in column.ravel().tolist()
    ]
    return np.array(flat, dtype=STR).reshape(column.shape), {"type": _JSON}


def _grid_order(shape: Sequence[int], snaking: Sequence[bool] | None) -> np.ndarray:
    """For each event of a grid scan, its flat position in the grid (snaking undone).

    A snaking dimension runs backwards whenever the count of the slower dimensions is odd,
    as bluesky's ``snake_cyclers`` moves it.

    Example:
        >>> _grid_order([2, 3], [False, True]).tolist()
        [0, 1, 2, 5, 4, 3]
    """
    shape = tuple(int(s) for s in shape)
    counters = np.unravel_index(np.arange(int(np.prod(shape))), shape)
    index = list(counters)
    for k in range(1, len(shape)):
        if snaking is not None and k < len(snaking) and snaking[k]:
            outer = np.ravel_multi_index(counters[:k], shape[:k])
            index[k] = np.where(outer % 2 == 1, shape[k] - 1 - counters[k], counters[k])
    return np.ravel_multi_index(tuple(index), shape)


def _gridded(column: np.ndarray, order: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = np.empty_like(column)
    out[order] = column
    return out.reshape(*shape, *column.shape[1:])
