"""Raw HDF5: a lossless mirror of one run, readable while it is written (SWMR).

Layout (``read_documents`` turns it back into the run's documents)::

    /                      attrs: runbroker_export="hdf5", format_version, uid, complete,
                           filled, exported_by, start, stop, descriptors, groups (JSON)
    /<stream>/             attrs: stream, descriptors (uids of the descriptors stored here)
        time, seq_num, uid, descriptor      one row per event (descriptor: index into attrs)
        data/<field>       (events, *shape) in the catalog's dtype; strings as UTF-8
        timestamps/<field>
        configuration/<object>/<key>        one row per descriptor of the group
    /_asset_documents      resource/datum/stream_* documents as JSON, when references are kept

A stream whose later descriptor declares other fields (or other shapes or dtypes) gets a
second group, ``<stream>_2``. Rows are appended page by page to chunked, resizable datasets,
the file flushed after each page, in SWMR mode. HDF5 forbids creating groups or datasets in
SWMR mode, so when a new descriptor (or a new field) arrives mid-run the file is closed,
reopened to add them, and switched to SWMR again: a live reader opens the file with
``h5py.File(path, "r", swmr=True)``, calls ``dataset.refresh()`` (or reopens) to see new
rows, and reopens the file to see a new stream; opening fails for the moment the writer
holds the file outside SWMR mode, so retry.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..assets import external_kind
from .base import Exporter, ExportError, Page
from .jsondoc import dumps

__all__ = ["HDF5Exporter", "read_documents"]

FORMAT_VERSION = 1
_ASSET_DOCS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")
_ASSETS = "_asset_documents"
_STR = h5py.string_dtype("utf-8")
# Chunks of about this size for per-event scalars and small arrays: big enough for fast
# bulk writes, small enough that flushing one live event rewrites little.
_CHUNK_BYTES = 64 * 1024
# Frames smaller than this share a chunk; larger ones get one chunk each.
_FRAME_BYTES = 4 * 1024


@dataclass
class _Group:
    """Where the events of the descriptors with one layout of fields go."""

    name: str
    stream: str
    descriptors: list[str] = field(default_factory=list)  # uids, rows' descriptor index
    recorded: int = 0  # descriptors whose configuration is in the file
    rows: int = 0
    fields: dict[str, str] = field(default_factory=dict)  # field -> dataset name


class HDF5Exporter(Exporter):
    """A lossless HDF5 mirror of the run, growing page by page, readable live (SWMR).

    Options: ``fill`` (default True) writes detector data from files into the file so it
    stands alone; ``fill=False`` keeps their references and the resource/datum documents.
    ``compression`` (e.g. ``"gzip"``, ``"lzf"``) applies to data fields, ``swmr=False``
    leaves SWMR mode off.

    Example:
        >>> import h5py
        >>> path, = run.export("hdf5", tmp_path)
        >>> with h5py.File(path, "r") as f:
        ...     f["primary/data/motor"][:].tolist(), bool(f.attrs["complete"])
        ([-1.0, -0.5, 0.0, 0.5, 1.0], True)
    """

    format = "hdf5"
    suffix = ".h5"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fill: bool = True,
        compression: str | None = None,
        swmr: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill
        self.needs_pixels = fill
        self.compression = compression
        self.swmr = swmr
        self.path: Path | None = None
        self._h5: h5py.File | None = None
        self._groups: dict[str, _Group] = {}  # descriptor uid -> its group
        self._by_name: dict[str, _Group] = {}
        self._layouts: dict[tuple, _Group] = {}
        self._assets: list[bytes] = []
        self._cache: dict[str, dict[str, _Column]] = {}  # group -> dataset path -> column

    # -- the document stream ----------------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        super().__call__(name, doc)
        if name in _ASSET_DOCS and not self.fill:
            self._assets.append(dumps([name, doc]))

    def start(self, doc: dict[str, Any]) -> None:
        self.path = self.new_path()
        self._h5 = h5py.File(self.path, self.mode, libver="latest")
        attrs = self._h5.attrs
        attrs["runbroker_export"] = self.format
        attrs["format_version"] = FORMAT_VERSION
        attrs["uid"] = self.uid
        attrs["complete"] = False
        attrs["filled"] = self.fill
        attrs["exported_by"] = self.record()["exported_by"]
        attrs["start"] = dumps(doc).decode()
        attrs["stop"] = "null"
        attrs["descriptors"] = "[]"
        attrs["groups"] = "{}"
        self._h5.flush()

    def descriptor(self, doc: dict[str, Any]) -> None:
        stream = doc.get("name", "primary")
        layout = (stream, _layout(doc))
        group = self._layouts.get(layout)
        if group is None:
            name, k = _h5name(stream), 1
            while name in self._by_name or name == _ASSETS:
                k += 1
                name = f"{_h5name(stream)}_{k}"
            group = self._layouts[layout] = self._by_name[name] = _Group(name, stream)
        group.descriptors.append(doc["uid"])
        self._groups[doc["uid"]] = group

    def event_page(self, page: Page) -> None:
        group = self._groups[page.descriptor["uid"]]
        self._structure(group, page)
        n, k = group.rows, len(page)
        values: dict[str, Any] = {
            "time": page.time,
            "seq_num": page.seq_num,
            "uid": page.uid,
            "descriptor": np.full(k, group.descriptors.index(page.descriptor["uid"]), "i4"),
        }
        for key, ds_name in group.fields.items():
            if key not in page.data:
                raise ExportError(
                    f"run {self.uid}, stream {group.stream!r}: field {key!r} is missing from "
                    f"events {page.seq_num[0]}..{page.seq_num[-1]} but earlier events have it"
                )
            values[f"data/{ds_name}"] = page.data[key]
            values[f"timestamps/{ds_name}"] = page.timestamps.get(key, page.time)
        # Every column is checked before any is written, so that the rows stay aligned.
        while True:
            columns = self._columns(group)
            ready, widen = {}, {}
            for path, v in values.items():
                arr, dtype = columns[path].prepare(v, f"run {self.uid}, {group.name}/{path}")
                if dtype is not None:
                    widen[path] = dtype
                ready[path] = arr
            if not widen:
                break
            for path, dtype in widen.items():
                self._widen(group, path, dtype)
        for path, arr in ready.items():
            columns[path].append(n, arr)
        group.rows = n + k
        assert self._h5 is not None
        if self.live:  # readers follow the file; a prompt export is read once it is closed
            self._h5.flush()

    def finish(self, complete: bool) -> None:
        if self._h5 is None:
            return
        try:
            h5 = self._writable()
            for group in self._by_name.values():
                self._record(h5, group)
            if self._assets:
                ds = h5.create_dataset(_ASSETS, (len(self._assets),), dtype=_STR)
                ds[:] = np.asarray([a.decode() for a in self._assets], dtype=object)
            h5.attrs["stop"] = dumps(self.stop_doc).decode()
            h5.attrs["complete"] = complete
        finally:
            if self._h5 is not None:
                self._h5.close()
                self._h5 = None

    def _columns(self, group: _Group) -> dict[str, _Column]:
        """The group's datasets, looked up once (h5py lookups cost more than small writes)."""
        assert self._h5 is not None
        cols = self._cache.get(group.name)
        if cols is None:
            g = self._h5[group.name]
            cols = {p: _Column(g[p]) for p in ("time", "seq_num", "uid", "descriptor")}
            for part in ("data", "timestamps"):
                for name, ds in g[part].items():
                    cols[f"{part}/{name}"] = _Column(ds)
            self._cache[group.name] = cols
        return cols

    def _widen(self, group: _Group, path: str, dtype: Any) -> None:
        """Recreate a dataset with a dtype that holds both its rows and new ones (integers
        that became floats when a reading was missing; uids that are not 36 ASCII
        characters)."""
        h5 = self._writable()
        g = h5[group.name]
        old = g[path]
        rows = old.asstr()[...] if old.dtype.kind == "S" else old[...]
        attrs, chunks = dict(old.attrs), old.chunks
        compression = old.compression
        shape, maxshape = old.shape, old.maxshape
        del g[path]
        new = g.create_dataset(
            path, shape, maxshape=maxshape, dtype=dtype, chunks=chunks, compression=compression
        )
        if len(rows):
            new[...] = rows
        new.attrs.update(attrs)
        self._cache.clear()
        if self.swmr and self.live:
            h5.swmr_mode = True

    # -- structure (created outside SWMR mode) ----------------------------------------------

    def _writable(self) -> h5py.File:
        """The file, open for adding groups and datasets (SWMR mode off)."""
        assert self._h5 is not None and self.path is not None
        if self._h5.swmr_mode:
            self._h5.close()
            self._h5 = h5py.File(self.path, "r+", libver="latest")
            self._cache.clear()
        return self._h5

    def _structure(self, group: _Group, page: Page) -> h5py.File:
        """The file, with everything ``page`` is written into created."""
        assert self._h5 is not None
        new = [k for k in page.data if k not in group.fields]
        if group.recorded == len(group.descriptors) and not new:
            return self._h5
        h5 = self._writable()
        self._record(h5, group)
        g = h5[group.name]
        used = set(group.fields.values())
        for key in new:
            ds_name, i = _h5name(key), 1
            while ds_name in used:
                i += 1
                ds_name = f"{_h5name(key)}_{i}"
            used.add(ds_name)
            self._field(g, key, ds_name, page.data[key], page.descriptor["data_keys"].get(key))
            group.fields[key] = ds_name
        if self.swmr and self.live:
            h5.swmr_mode = True
        return h5

    def _record(self, h5: h5py.File, group: _Group) -> None:
        """Create ``group`` if new and record the descriptors it gained."""
        if group.recorded == len(group.descriptors):
            return
        if group.name not in h5:
            g = h5.create_group(group.name)
            g.attrs["stream"] = group.stream
            # uuid4 uids, the usual ones, fit 36 ASCII characters.
            uid = h5py.string_dtype("ascii", 36)
            for name, dtype in (
                ("time", "f8"),
                ("seq_num", "i8"),
                ("uid", uid),
                ("descriptor", "i4"),
            ):
                rows = 2048 if name == "uid" else _CHUNK_BYTES // 8
                g.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(rows,))
            g.create_group("data")
            g.create_group("timestamps")
            g.create_group("configuration")
        g = h5[group.name]
        for i in range(group.recorded, len(group.descriptors)):
            _configuration(g["configuration"], i, self.descriptors[group.descriptors[i]])
        group.recorded = len(group.descriptors)
        g.attrs["descriptors"] = json.dumps(group.descriptors)
        h5.attrs["descriptors"] = dumps(list(self.descriptors.values())).decode()
        h5.attrs["groups"] = json.dumps({u: g.name for u, g in self._groups.items()})

    def _field(
        self,
        g: h5py.Group,
        key: str,
        ds_name: str,
        column: np.ndarray,
        data_key: Mapping[str, Any] | None,
    ) -> None:
        column = np.asarray(column)
        shape = column.shape[1:]
        encoding = None
        if column.dtype.kind in "biufc":
            dtype = column.dtype
        elif column.dtype.kind in "US" or all(isinstance(v, str) for v in column.ravel()):
            dtype, shape, encoding = _STR, (), "str"
        else:  # ragged arrays, missing values, mixed types: one JSON text per event
            dtype, shape, encoding = _STR, (), "json"
        row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * (dtype.itemsize or 16))
        if len(shape) >= 2 and row_bytes >= _FRAME_BYTES:
            rows = 1  # a chunk per frame: readers and writers move whole frames
        else:
            rows = max(1, _CHUNK_BYTES // row_bytes)
        ds = g["data"].create_dataset(
            ds_name,
            (0, *shape),
            maxshape=(None, *shape),
            dtype=dtype,
            chunks=(rows, *shape),
            compression=self.compression if encoding is None else None,
        )
        ds.attrs["field"] = key
        if encoding:
            ds.attrs["encoding"] = encoding
        for attr in ("units", "source", "dtype"):
            if data_key and data_key.get(attr) is not None:
                ds.attrs[attr] = str(data_key[attr])
        ts = g["timestamps"].create_dataset(
            ds_name, (0,), maxshape=(None,), dtype="f8", chunks=(_CHUNK_BYTES // 8,)
        )
        ts.attrs["field"] = key


def _layout(desc: Mapping[str, Any]) -> tuple:
    """What decides whether two descriptors' events fit in the same datasets."""
    return tuple(
        (k, tuple(dk.get("shape") or ()), dk.get("dtype"), dk.get("dtype_numpy"))
        for k, dk in sorted(desc["data_keys"].items())
    )


def _h5name(name: str) -> str:
    # "/" separates HDF5 path parts and "." alone names the current group.
    out = name.replace("/", "_")
    return out if out not in ("", ".", "..") else f"_{out}"


class _Column:
    """One dataset that pages are appended to, written through h5py's low-level API."""

    __slots__ = ("ds", "dtype", "encoding", "frames", "shape")

    def __init__(self, ds: h5py.Dataset) -> None:
        self.ds = ds
        self.dtype = ds.dtype
        self.shape = ds.shape[1:]
        # A chunk per frame and no filters: each frame's bytes are the chunk, written
        # without HDF5 scattering them through its chunk cache (about 30% faster).
        self.frames = (
            bool(self.shape)
            and ds.chunks == (1, *self.shape)
            and ds.id.get_create_plist().get_nfilters() == 0
            and self.dtype.kind in "biufc"
        )
        # Only variable-length strings carry an encoding (and attribute lookups are slow).
        self.encoding = ds.attrs.get("encoding", "str") if self.dtype.kind == "O" else None

    def prepare(self, values: Any, where: str) -> tuple[np.ndarray, Any]:
        """``values`` as this dataset stores them, or a dtype the dataset must become."""
        if self.encoding == "json":
            return np.asarray([dumps(v).decode() for v in values], dtype=object), None
        if self.encoding == "str":
            return np.asarray([v if isinstance(v, str) else str(v) for v in values], "O"), None
        if self.dtype.kind == "S":  # event uids, fixed width
            width = self.dtype.itemsize
            if max(map(len, values), default=0) <= width:
                try:
                    return np.asarray(values, dtype=self.dtype), None
                except UnicodeEncodeError:
                    pass
            return np.asarray(values, dtype=object), _STR
        arr = np.asarray(values)
        if arr.shape[1:] != self.shape:
            raise ExportError(
                f"{where}: events of shape {arr.shape[1:]} after events of shape {self.shape}"
            )
        if arr.dtype == self.dtype:
            return np.ascontiguousarray(arr), None
        if arr.dtype.kind not in "biufc":
            raise ExportError(f"{where}: values of dtype {arr.dtype} after {self.dtype} ones")
        if np.can_cast(arr.dtype, self.dtype, "safe"):
            return np.ascontiguousarray(arr, dtype=self.dtype), None
        return arr, np.promote_types(arr.dtype, self.dtype)

    def append(self, n: int, arr: np.ndarray) -> None:
        k = len(arr)
        if arr.dtype.kind == "O":  # variable-length strings: h5py converts them
            self.ds.resize(n + k, axis=0)
            self.ds[n:] = arr
            return
        dsid = self.ds.id
        dsid.set_extent((n + k, *self.shape))
        if not k:
            return
        if self.frames and arr.dtype == self.dtype and arr.flags.c_contiguous:
            zeros = (0,) * len(self.shape)
            for i in range(k):
                dsid.write_direct_chunk((n + i, *zeros), arr[i])
            return
        space = dsid.get_space()
        space.select_hyperslab((n, *(0,) * len(self.shape)), (k, *self.shape))
        dsid.write(h5py.h5s.create_simple(arr.shape), space, arr)


def _configuration(group: h5py.Group, index: int, desc: Mapping[str, Any]) -> None:
    """Configuration readings of descriptor ``index`` of a group, as rows of datasets."""
    for obj, readings in (desc.get("configuration") or {}).items():
        for key, value in (readings.get("data") or {}).items():
            path = f"{_h5name(obj)}/{_h5name(key)}"
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                text = value if isinstance(value, str) else dumps(value).decode()
                arr = np.asarray(text, dtype=object)
                dtype: Any = _STR
            else:
                dtype = arr.dtype
            ds = group.get(path)
            if ds is None:
                ds = group.create_dataset(
                    path,
                    (index + 1, *arr.shape),
                    maxshape=(None, *arr.shape),
                    dtype=dtype,
                    chunks=(16, *arr.shape) if arr.ndim else (16,),
                )
                ds.attrs["field"] = key
            elif ds.shape[1:] != arr.shape:
                continue  # the descriptors' JSON (root attribute) keeps every value
            else:
                ds.resize(index + 1, axis=0)
            with contextlib.suppress(TypeError, ValueError):  # the JSON keeps it anyway
                ds[index] = arr


# -- reading back ---------------------------------------------------------------------------


def read_documents(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The documents of a raw HDF5 export, to ingest again with identical reads.

    Events come as one ``event_page`` per stretch of rows of one descriptor, with their
    original uids, times, sequence numbers and timestamps. Detector data that was filled
    into the file is declared inline (the data key loses ``external``); kept references come
    with their resource and datum documents. A run still being written gives the rows so far.

    Example:
        >>> path, = run.export("hdf5", tmp_path)
        >>> copy = runbroker.temp()
        >>> n = copy.ingest(read_documents(path))
        >>> copy[-1].primary.read().identical(run.primary.read())
        True
    """
    path = Path(path)
    h5 = _open(path)
    with h5:
        attrs = h5.attrs
        if attrs.get("runbroker_export") != "hdf5":
            raise ExportError(
                f"{path}: an HDF5 file, but not a runbroker raw HDF5 export (its root has no "
                "runbroker_export='hdf5' attribute)"
            )
        try:
            start = json.loads(attrs["start"])
            stop = json.loads(attrs["stop"])
            descriptors = json.loads(attrs["descriptors"])
            groups = json.loads(attrs["groups"])
        except (KeyError, ValueError, OSError, RuntimeError) as err:
            raise ExportError(
                f"{path}: damaged run metadata in the root attributes ({err})"
            ) from None
        filled = bool(attrs.get("filled"))
        yield "start", start
        for desc in descriptors:
            g = h5.get(groups.get(desc["uid"], ""))
            yield "descriptor", _declared(desc, g) if filled and g is not None else desc
        if _ASSETS in h5:
            for text in h5[_ASSETS].asstr()[:]:
                name, doc = json.loads(text)
                yield name, doc
        seen: set[str] = set()
        for name in groups.values():
            if name in seen:
                continue
            seen.add(name)
            yield from _pages(path, h5[name])
        if stop is not None:
            yield "stop", stop


def _open(path: Path) -> h5py.File:
    # A plain open checks the file's length against what HDF5 wrote (a SWMR open does not);
    # a file a writer holds in SWMR mode opens only for SWMR reading.
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        reason = _reason(err)
        if "not an HDF5" in reason or "truncated" in reason:
            raise ExportError(f"{path}: cannot be read as HDF5 ({reason})") from None
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as err:
        raise ExportError(f"{path}: cannot be read as HDF5 ({_reason(err)})") from None


def _reason(err: OSError) -> str:
    text = str(err)
    if "signature" in text:
        return "not an HDF5 file"
    if "truncated" in text or "eof" in text.lower():
        return f"the file is truncated: {text}"
    return text


def _declared(desc: dict, g: h5py.Group) -> dict:
    """The descriptor with filled detector fields declared as data in the events."""
    keys = dict(desc["data_keys"])
    stored = {ds.attrs.get("field"): ds for ds in g["data"].values()}
    for key, dk in keys.items():
        if external_kind(dk) and key in stored:
            new = {k: v for k, v in dk.items() if k != "external"}
            if not new.get("dtype_numpy") and stored[key].dtype.kind in "biufc":
                new["dtype_numpy"] = stored[key].dtype.str
            keys[key] = new
    return {**desc, "data_keys": keys}


def _pages(path: Path, g: h5py.Group) -> Iterator[tuple[str, dict]]:
    try:
        uids = json.loads(g.attrs["descriptors"])
        n = len(g["time"])
        time = g["time"][:n]
        seq = g["seq_num"][:n]
        event_uids = g["uid"].asstr()[:n]
        index = g["descriptor"][:n]
        data, stamps = {}, {}
        for name, ds in g["data"].items():
            key = ds.attrs.get("field", name)
            data[key] = _column(ds, n)
            stamps[key] = g["timestamps"][name][:n]
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        raise ExportError(f"{path}: group {g.name} is damaged or incomplete ({err})") from None
    cuts = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist(), n]
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        yield (
            "event_page",
            {
                "descriptor": uids[int(index[a])],
                "uid": event_uids[a:b].tolist(),
                "time": time[a:b],
                "seq_num": seq[a:b],
                "data": {k: v[a:b] for k, v in data.items()},
                "timestamps": {k: v[a:b] for k, v in stamps.items()},
            },
        )


def _column(ds: h5py.Dataset, n: int) -> Any:
    encoding = ds.attrs.get("encoding")
    if encoding == "json":
        return [json.loads(t) for t in ds.asstr()[:n]]
    if encoding == "str":
        return ds.asstr()[:n].tolist()
    return ds[:n]
