"""Raw HDF5: a lossless mirror of one run, readable while it is written (SWMR).

Layout (``read_documents`` turns it back into the run's documents)::

    /                      attrs: runbroker_export="hdf5", format_version, uid, complete,
                           filled, exported_by, start, stop, descriptors, groups (JSON)
    /<stream>/             attrs: stream, descriptors (uids of the descriptors stored here)
        time, seq_num, uid, descriptor      one row per event (descriptor: index into attrs)
        data/<field>       (events, *shape) in the catalog's dtype; strings as UTF-8
        timestamps/<field>  (none for a field the events never stamp: STREAM: fields)
        configuration/<object>/<key>        one row per descriptor of the group
    /_asset_documents      resource/datum/stream_* documents as JSON, when references are kept

A stream whose later descriptor declares other fields (or other shapes or dtypes) gets a
second group, ``<stream>_2``. Live, rows are appended page by page to chunked, resizable
datasets, the file flushed after each page, in SWMR mode. A prompt export (``run.export``),
which nobody reads before it is closed, holds a group's pages (up to ``buffer_bytes``) and
writes each dataset whole, contiguous, at the end; past that it appends like a live one.
HDF5 forbids creating groups or datasets in SWMR mode, so when a new descriptor (or a new
field) arrives mid-run the file is closed, reopened to add them, and switched to SWMR again:
a live reader opens the file with
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

from ..assets import external_kind, fill_flag
from ..columns import concat_columns, uid_list
from ..docfiles import dumps
from .base import ExportError, Page, unique
from .h5write import STR as _STR
from .h5write import H5Exporter, dataset, set_attrs
from .h5write import group as new_group

__all__ = ["HDF5Exporter", "read_documents"]

FORMAT_VERSION = 1
_ASSET_DOCS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")
_ASSETS = "_asset_documents"
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
    # Fields the events carry no timestamp for (STREAM: fields): no timestamps dataset.
    unstamped: set[str] = field(default_factory=set)


class HDF5Exporter(H5Exporter):
    """A lossless HDF5 mirror of the run, growing page by page, readable live (SWMR).

    Options: ``fill`` (default True) writes detector data from files into the file so it
    stands alone; ``fill=False`` keeps their references and the resource/datum documents.
    ``compression`` (e.g. ``"gzip"``, ``"lzf"``) applies to data fields, ``swmr=False``
    leaves SWMR mode off. ``buffer_bytes`` (default 64 MiB): event data a prompt export holds
    to write each dataset whole at the end.

    Example:
        >>> import h5py
        >>> path, = run.export("hdf5", tmp_path)
        >>> with h5py.File(path, "r") as f:
        ...     f["primary/data/motor"][:].tolist(), bool(f.attrs["complete"])
        ([-1.0, -0.5, 0.0, 0.5, 1.0], True)
    """

    format = "hdf5"
    suffix = ".h5"
    needs_uids = "bytes"  # uuid4 uids come as the fixed-width block the dataset stores
    file_options = {"libver": "latest"}

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fill: bool = True,
        swmr: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill = fill_flag(fill)
        self.needs_pixels = fill
        self.swmr = swmr
        self._groups: dict[str, _Group] = {}  # descriptor uid -> its group
        self._by_name: dict[str, _Group] = {}
        self._taken = {_ASSETS}  # group names
        self._layouts: dict[tuple, _Group] = {}
        self._assets: list[bytes] = []
        self._cache: dict[str, dict[str, _Column]] = {}  # group -> dataset path -> column

    # -- the document stream ----------------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        super().__call__(name, doc)
        if name in _ASSET_DOCS and not self.fill:
            self._assets.append(dumps([name, doc]))

    def begin(self, doc: dict[str, Any]) -> None:
        if self.live:  # a prompt export's file is read once closed: its root is written then
            self._write_root(complete=False)
            self.h5.flush()

    def _write_root(self, complete: bool) -> None:
        """The root attributes: what the file is and the run's documents."""
        set_attrs(
            self.h5,
            {
                "runbroker_export": self.format,
                "format_version": FORMAT_VERSION,
                "uid": self.uid,
                "complete": complete,
                "filled": self.fill,
                "exported_by": self.record()["exported_by"],
                "start": dumps(self.start_doc).decode(),
                "stop": dumps(self.stop_doc).decode(),
                "descriptors": dumps(list(self.descriptors.values())).decode(),
                "groups": json.dumps({u: g.name for u, g in self._groups.items()}),
            },
        )

    def descriptor(self, doc: dict[str, Any]) -> None:
        stream = doc.get("name", "primary")
        layout = (stream, _layout(doc))
        group = self._layouts.get(layout)
        if group is None:
            name = unique(_h5name(stream), self._taken)
            group = self._layouts[layout] = self._by_name[name] = _Group(name, stream)
        group.descriptors.append(doc["uid"])
        self._groups[doc["uid"]] = group

    def event_page(self, page: Page) -> None:
        group = self._groups[page.descriptor["uid"]]
        index = group.descriptors.index(page.descriptor["uid"])
        if not self.live and not group.rows:
            if self.held_bytes + self.cost(page) <= self.buffer_bytes:
                self.hold(group.name, page)
                return
            self._write_held(whole=False)
        self._append(group, page, np.full(len(page), index, "i4"))

    def _write_held(self, whole: bool) -> None:
        """Write the pages held by a prompt export: each group's as one page when ``whole``
        and they join (then every dataset is written in one piece), else page by page."""
        for group in self._by_name.values():
            pages = self.held.pop(group.name, [])
            held = [(page, group.descriptors.index(page.descriptor["uid"])) for page in pages]
            joined = _joined(held) if whole and held else None
            if joined is not None:
                self._append(group, *joined, whole=True)
                continue
            for page, index in held:
                self._append(group, page, np.full(len(page), index, "i4"))
        self.held_bytes = 0

    def cost(self, page: Page) -> int:
        return super().cost(page) + 64 * len(page)

    def _append(self, group: _Group, page: Page, index: np.ndarray, whole: bool = False) -> None:
        """Write ``page`` after the group's rows; ``whole``: it holds every row the group will
        have, and new datasets are made to its size, contiguous."""
        self._structure(group, page, len(page) if whole else None)
        n, k = group.rows, len(page)
        values: dict[str, Any] = {
            "time": page.time,
            "seq_num": page.seq_num,
            "uid": page.uid,
            "descriptor": index,
        }
        for key, ds_name in group.fields.items():
            if key not in page.data:
                raise ExportError(
                    f"run {self.uid}, stream {group.stream!r}: field {key!r} is missing from "
                    f"events {page.seq_num[0]}..{page.seq_num[-1]} but earlier events have it"
                )
            values[f"data/{ds_name}"] = page.data[key]
            if key not in group.unstamped:
                values[f"timestamps/{ds_name}"] = page.timestamps.get(key, page.time)
        # Every column is checked before any is written, so that the rows stay aligned.
        while True:
            columns = self._columns(group)
            if isinstance(page.uid, np.ndarray) and columns["uid"].dtype.kind != "S":
                values["uid"] = uid_list(page.uid)  # a uid block, for uids widened to text
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
        if self.live:  # readers follow the file; a prompt export is read once it is closed
            self.h5.flush()

    def end(self, complete: bool) -> None:
        self._write_held(whole=True)
        h5 = self._writable()
        for group in self._by_name.values():
            self._record(h5, group)
        if self._assets:
            ds = h5.create_dataset(_ASSETS, (len(self._assets),), dtype=_STR)
            ds[:] = np.asarray([a.decode() for a in self._assets], dtype=object)
        self._write_root(complete)

    def _columns(self, group: _Group) -> dict[str, _Column]:
        """The group's datasets, looked up once (h5py lookups cost more than small writes);
        datasets made since are added as they are made."""
        cols = self._cache.get(group.name)
        if cols is None:
            g = self.h5[group.name]
            cols = {p: _Column.look_up(g[p]) for p in ("time", "seq_num", "uid", "descriptor")}
            for part in ("data", "timestamps"):
                for name, ds in g[part].items():
                    cols[f"{part}/{name}"] = _Column.look_up(ds)
            self._cache[group.name] = cols
        return cols

    def _made(self, group: _Group, path: str, column: _Column) -> None:
        cols = self._cache.get(group.name)
        if cols is not None:
            cols[path] = column

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
        if self.h5.swmr_mode:
            self.h5.close()
            self.h5 = h5py.File(self.path, "r+", **self.file_options)
            self._cache.clear()
        return self.h5

    def _structure(self, group: _Group, page: Page, rows: int | None = None) -> h5py.File:
        """The file, with everything ``page`` is written into created (``rows`` long and
        contiguous, or growable when None)."""
        new = [k for k in page.data if k not in group.fields]
        if group.recorded == len(group.descriptors) and not new:
            return self.h5
        h5 = self._writable()
        g = self._record(h5, group, rows)
        parts = (g["data"], g["timestamps"]) if new else ()
        used = set(group.fields.values())
        for key in new:
            ds_name = unique(_h5name(key), used)
            data_key = page.descriptor["data_keys"].get(key)
            stamped = key in page.timestamps
            if not stamped:
                group.unstamped.add(key)
            self._field(group, parts, key, ds_name, page.data[key], data_key, rows, stamped)
            group.fields[key] = ds_name
        if self.swmr and self.live:
            h5.swmr_mode = True
        return h5

    def _record(self, h5: h5py.File, group: _Group, rows: int | None = None) -> h5py.Group:
        """Create ``group`` if new (its per-event datasets ``rows`` long and contiguous, or
        growable when None) and record the descriptors it gained."""
        if group.recorded == len(group.descriptors):
            return h5[group.name]
        if group.name not in h5:
            g = new_group(h5, group.name)
            set_attrs(g, {"stream": group.stream})
            # uuid4 uids, the usual ones, fit 36 ASCII characters.
            uid = h5py.string_dtype("ascii", 36)
            cols = self._cache[group.name] = {}
            for name, dtype in (
                ("time", np.dtype("f8")),
                ("seq_num", np.dtype("i8")),
                ("uid", uid),
                ("descriptor", np.dtype("i4")),
            ):
                chunk = 2048 if name == "uid" else _CHUNK_BYTES // 8
                ds = dataset(g, name, (), dtype, rows, chunk)
                cols[name] = _Column(ds, dtype, None, frames=False)
            for part in ("data", "timestamps", "configuration"):
                new_group(g, part)
        else:
            g = h5[group.name]
        for i in range(group.recorded, len(group.descriptors)):
            _configuration(g["configuration"], i, self.descriptors[group.descriptors[i]])
        group.recorded = len(group.descriptors)
        set_attrs(g, {"descriptors": json.dumps(group.descriptors)})
        if self.live:  # a prompt export writes the root once, at the end
            self._write_root(complete=False)
        return g

    def _field(
        self,
        group: _Group,
        parts: tuple[h5py.Group, h5py.Group],
        key: str,
        ds_name: str,
        column: np.ndarray,
        data_key: Mapping[str, Any] | None,
        rows: int | None,
        stamped: bool,
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
            chunk = 1  # a chunk per frame: readers and writers move whole frames
        else:
            chunk = max(1, _CHUNK_BYTES // row_bytes)
        compression = self.compression if encoding is None else None
        ds = dataset(parts[0], ds_name, shape, dtype, rows, chunk, compression)
        attrs = {"field": key, "encoding": encoding}
        for attr in ("units", "source", "dtype"):
            if data_key and data_key.get(attr) is not None:
                attrs[attr] = str(data_key[attr])
        set_attrs(ds, attrs, new=True)
        # A chunk per frame and no filters: each frame's bytes are the chunk, written
        # without HDF5 scattering them through its chunk cache (about 30% faster).
        frames = rows is None and chunk == 1 and not compression and encoding is None
        self._made(group, f"data/{ds_name}", _Column(ds, dtype, encoding, frames and shape))
        if not stamped:
            return
        f8 = np.dtype("f8")
        ts = dataset(parts[1], ds_name, (), f8, rows, _CHUNK_BYTES // 8)
        set_attrs(ts, {"field": key}, new=True)
        self._made(group, f"timestamps/{ds_name}", _Column(ts, f8, None, frames=False))


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

    def __init__(
        self, ds: h5py.Dataset, dtype: np.dtype, encoding: str | None, frames: Any
    ) -> None:
        """A dataset as made: its dtype, its ``encoding`` attribute, whether it is
        ``frames`` (a chunk per frame, no filters)."""
        self.ds = ds
        self.dtype = dtype
        self.shape = ds.id.shape[1:]
        self.frames = bool(frames)
        self.encoding = encoding

    @classmethod
    def look_up(cls, ds: h5py.Dataset) -> _Column:
        """A dataset already in the file."""
        dtype = ds.dtype
        frames = (
            len(ds.shape) > 1
            and ds.chunks == (1, *ds.shape[1:])
            and ds.id.get_create_plist().get_nfilters() == 0
            and dtype.kind in "biufc"
        )
        # Only variable-length strings carry an encoding (and attribute lookups are slow).
        encoding = ds.attrs.get("encoding", "str") if dtype.kind == "O" else None
        return cls(ds, dtype, encoding, frames)

    def prepare(self, values: Any, where: str) -> tuple[np.ndarray, Any]:
        """``values`` as this dataset stores them, or a dtype the dataset must become."""
        if self.encoding == "json":
            return np.asarray([dumps(v).decode() for v in values], dtype=object), None
        if self.encoding == "str":
            return np.asarray([v if isinstance(v, str) else str(v) for v in values], "O"), None
        if self.dtype.kind == "S":  # event uids, fixed width
            width = self.dtype.itemsize
            if isinstance(values, np.ndarray) and values.dtype.kind == "S":  # a uid block
                if values.dtype.itemsize <= width:
                    return values.astype(self.dtype, copy=False), None
                values = uid_list(values)
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
        dsid = self.ds.id
        if dsid.shape[0] != n + k:  # a dataset made whole already has its rows
            dsid.set_extent((n + k, *self.shape))
        if arr.dtype.kind == "O":  # variable-length strings: h5py converts them
            self.ds[n:] = arr
            return
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


def _joined(held: list[tuple[Page, int]]) -> tuple[Page, np.ndarray] | None:
    """Pages of one group as one page and its rows' descriptor indexes, or None when joining
    them could store other values than writing them one by one would (fields that come and
    go, text after numbers, ragged values: those are left to the page-by-page checks)."""
    pages = [page for page, _ in held]
    lengths = [len(page) for page in pages]
    index = np.repeat(np.asarray([i for _, i in held], dtype="i4"), lengths)
    if len(pages) == 1:
        return pages[0], index
    keys = pages[0].data.keys()
    if not all(lengths) or any(page.data.keys() != keys for page in pages):
        return None
    data, stamps = {}, {}
    for key in keys:
        parts = [page.data[key] for page in pages]
        kinds = {part.dtype.kind for part in parts}
        if not (kinds <= set("biuf") or kinds == {"U"}) or len({p.shape[1:] for p in parts}) > 1:
            return None
        data[key] = np.concatenate(parts)  # numbers: the dtype widening would give
        if any(key in page.timestamps for page in pages):
            stamps[key] = np.concatenate([page.timestamps.get(key, page.time) for page in pages])
    page = Page(
        stream=pages[0].stream,
        descriptor=pages[0].descriptor,
        seq_num=np.concatenate([page.seq_num for page in pages]),
        time=np.concatenate([page.time for page in pages]),
        data=data,
        timestamps=stamps,
        uid=concat_columns([page.uid for page in pages], lengths),
    )
    return page, index


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
        # Kept references of STREAM: fields are for readers of the file; the events never
        # carried them (the stream_datum documents above do).
        refs_only = set() if filled else {
            key for desc in descriptors for key, dk in desc["data_keys"].items()
            if external_kind(dk) == "stream"
        }  # fmt: skip
        seen: set[str] = set()
        for name in groups.values():
            if name in seen:
                continue
            seen.add(name)
            yield from _pages(path, h5[name], refs_only)
        if stop is not None:
            yield "stop", stop


def is_export(path: str | os.PathLike[str]) -> bool:
    """Whether an HDF5 file is a runbroker raw HDF5 export (and not, say, a detector's file).

    A file that cannot be opened as HDF5 counts as one, so that reading it names the problem.

    Example:
        >>> path, = run.export("hdf5", tmp_path)
        >>> is_export(path)
        True
    """
    try:
        with _open(Path(path)) as h5:
            return h5.attrs.get("runbroker_export") == "hdf5"
    except ExportError:
        return True


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


def _pages(path: Path, g: h5py.Group, skip: set[str]) -> Iterator[tuple[str, dict]]:
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
            if key in skip:
                continue
            data[key] = _column(ds, n)
            if name in g["timestamps"]:  # none for a field the events never stamped
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
