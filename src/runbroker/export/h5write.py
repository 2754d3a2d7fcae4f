"""Making HDF5 objects through h5py's low-level API, for the HDF5 export formats.

h5py's high-level calls (``create_dataset``, ``attrs[name] = value``) check, convert and build
types anew each time; for the small datasets and attributes an export writes by the dozen that
costs more than HDF5's own work. These helpers make the same objects (same types, same
layout, times not tracked, as h5py does by default) at a fraction of the cost.

Example:
    >>> import h5py
    >>> with h5py.File(tmp_path / "x.h5", "w") as f:
    ...     ds = contiguous(f, "x", (3,), np.dtype("f8"), np.arange(3.0))
    ...     set_attrs(ds, {"units": "mm", "n": 3, "skip": None}, new=True)
    ...     title = text(f, "title", "scan 1")
    ...     link(ds, group(f, "données"), "x")
    ...     f["données/x"][()].tolist(), sorted(f["x"].attrs), f["title"].asstr()[()]
    ([0.0, 1.0, 2.0], ['n', 'units'], 'scan 1')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import h5py
import numpy as np

from .base import Exporter, ExportError, Page

#: h5py's variable-length UTF-8 string dtype.
STR = h5py.string_dtype("utf-8")
_SCALAR = h5py.h5s.create(h5py.h5s.SCALAR)
_TYPES: dict[tuple, Any] = {}


def htype(dtype: np.dtype, logical: bool = True) -> Any:
    """The HDF5 type h5py makes for ``dtype`` (``h5t.py_create``), made once per dtype."""
    # numpy counts dtypes equal whatever their metadata, and the metadata is where h5py
    # marks strings.
    key = (dtype.str, repr(dtype.metadata), logical)
    found = _TYPES.get(key)
    if found is None:
        found = _TYPES[key] = h5py.h5t.py_create(dtype, logical=logical)
    return found


_DCPL = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
_DCPL.set_obj_track_times(False)  # as h5py does
_STR_TYPES = (htype(STR), htype(STR, logical=False))


def _lcpl(charset: int) -> Any:
    lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)
    lcpl.set_char_encoding(charset)
    return lcpl


_LCPL = {True: _lcpl(h5py.h5t.CSET_ASCII), False: _lcpl(h5py.h5t.CSET_UTF8)}


def _name(name: str) -> tuple[bytes, Any]:
    """A link name and how to make it, as h5py does: ASCII, else UTF-8 marked as such."""
    return name.encode(), _LCPL[name.isascii()]


def contiguous(
    parent: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    data: np.ndarray | None = None,
) -> h5py.Dataset:
    """A new contiguous dataset of fixed ``shape``, holding ``data`` if given (of ``dtype``,
    C-contiguous), as ``parent.create_dataset(name, shape, dtype, data=data)`` makes it."""
    space = _SCALAR if shape == () else h5py.h5s.create_simple(shape)
    key, lcpl = _name(name)
    dsid = h5py.h5d.create(parent.id, key, htype(dtype), space, dcpl=_DCPL, lcpl=lcpl)
    if data is not None and data.size:
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=htype(data.dtype, logical=False))
    return h5py.Dataset(dsid)


def text(parent: h5py.Group, name: str, value: str | Sequence[str]) -> h5py.Dataset:
    """A string dataset (scalar for a ``str``): fixed-length UTF-8, which HDF5 writes at less
    than half the cost of variable-length strings (h5py reads both as bytes, ``asstr()``
    as ``str``)."""
    if isinstance(value, str):
        encoded: bytes | list[bytes] = value.encode()
        width = len(encoded)
    else:
        encoded = [v.encode() for v in value]
        width = max(map(len, encoded), default=1)
    width = max(1, width)  # HDF5 has no strings of length 0
    dtype = h5py.string_dtype("utf-8", width)
    data = np.array(encoded, dtype=dtype)
    return contiguous(parent, name, data.shape, dtype, data)


def link(obj: h5py.HLObject, parent: h5py.Group, name: str) -> None:
    """A hard link ``parent/name`` to ``obj``, as ``parent[name] = obj`` makes it."""
    key, lcpl = _name(name)
    h5py.h5o.link(obj.id, parent.id, key, lcpl=lcpl)


def group(parent: h5py.Group, name: str) -> h5py.Group:
    """A new group, as ``parent.create_group(name)`` makes it."""
    key, lcpl = _name(name)
    return h5py.Group(h5py.h5g.create(parent.id, key, lcpl=lcpl))


def set_attrs(obj: h5py.HLObject, values: Mapping[str, Any], new: bool = False) -> None:
    """Set attributes as ``obj.attrs[name] = value`` would (``None`` values are left out).

    ``new``: ``obj`` has none of these attributes yet (no need to look for them).
    """
    oid = obj.id
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, str):  # most attributes: their types are made once
            data = np.array(value, dtype=STR)
            ftype, mtype = _STR_TYPES
        else:
            data = np.asarray(value)
            if data.dtype.kind == "U":  # lists of str: h5py writes them variable-length too
                data = data.astype(STR)
            ftype, mtype = htype(data.dtype), htype(data.dtype, logical=False)
        key = name.encode()
        if not new and h5py.h5a.exists(oid, key):
            h5py.h5a.delete(oid, key)
        space = _SCALAR if data.ndim == 0 else h5py.h5s.create_simple(data.shape)
        h5py.h5a.create(oid, key, ftype, space).write(data, mtype=mtype)


def dataset(
    parent: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    rows: int | None,
    chunk: int,
    compression: str | None = None,
) -> h5py.Dataset:
    """A per-event dataset (events, *shape): growable, in chunks of ``chunk`` events, when
    ``rows`` is None, else ``rows`` long and contiguous (chunked only to be compressed).

    Example:
        >>> with h5py.File(tmp_path / "d.h5", "w") as f:
        ...     ds = dataset(f, "x", (2,), "f4", None, 16)
        ...     grow(ds, np.ones((3, 2), "f4"))
        ...     ds.shape, ds.maxshape, ds.chunks
        ((3, 2), (None, 2), (16, 2))
    """
    if rows is None:
        maxshape, chunks = (None, *shape), (chunk, *shape)
        return parent.create_dataset(
            name, (0, *shape), dtype, maxshape=maxshape, chunks=chunks, compression=compression
        )
    if compression:
        chunks = (max(1, min(chunk, rows)), *shape)
        return parent.create_dataset(
            name, (rows, *shape), dtype=dtype, chunks=chunks, compression=compression
        )
    return contiguous(parent, name, (rows, *shape), np.dtype(dtype))


def grow(ds: h5py.Dataset, rows: np.ndarray) -> None:
    """Append ``rows`` to a growable dataset (see ``dataset``)."""
    end = ds.shape[0]
    ds.resize(end + len(rows), axis=0)
    ds[end:] = rows


def iso(t: Any) -> str:
    """A POSIX time in ISO 8601 with the local UTC offset (NeXus ``NX_DATE_TIME``).

    Example:
        >>> iso(86400).startswith("1970-01-0")
        True
    """
    return datetime.fromtimestamp(float(t or 0), UTC).astimezone().isoformat()


class H5Exporter(Exporter):
    """Base of the formats writing a run into one HDF5 file, ``self.h5``.

    The file is made at start (a name clash is reported before the run, not after it) and
    closed after ``end`` whatever happens; ``discard`` removes it when the export gives up.
    ``hold`` keeps pages (``self.held``) to write datasets whole, up to ``buffer_bytes``.

    Example:
        >>> class Title(H5Exporter):
        ...     format, suffix = "title", ".h5"
        ...     def end(self, complete):
        ...         text(self.h5, "title", self.start_doc["plan_name"])
        >>> out = Title(tmp_path)
        >>> for name, doc in run.documents():
        ...     out(name, doc)
        >>> with h5py.File(out.close()[0]) as f:
        ...     f["title"].asstr()[()]
        'scan'
    """

    #: Keyword arguments of ``h5py.File`` for the new file.
    file_options: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        compression: str | None = None,
        buffer_bytes: int = 64 * 2**20,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.compression = compression
        self.buffer_bytes = buffer_bytes
        self.path: Path | None = None
        self.h5: Any = None  # the open h5py.File
        self.held: dict[Any, list[Page]] = {}
        self.held_bytes = 0

    def start(self, doc: dict[str, Any]) -> None:
        self.path = self.new_path()
        self.h5 = h5py.File(self.path, self.mode, **self.file_options)
        self.begin(doc)

    def begin(self, doc: dict[str, Any]) -> None:
        """Write what the file holds from the start."""

    def end(self, complete: bool) -> None:
        """Write what the file holds at the end."""

    def finish(self, complete: bool) -> None:
        if self.h5 is not None:
            try:
                self.end(complete)
            finally:
                if self.h5 is not None:
                    self.h5.close()
                    self.h5 = None

    def hold(self, key: Any, page: Page) -> None:
        """Keep ``page`` among those of ``key``, to write later."""
        self.held.setdefault(key, []).append(page)
        self.held_bytes += self.cost(page)

    def cost(self, page: Page) -> int:
        """About what holding ``page`` costs (small arrays cost more than their bytes)."""
        return sum(a.nbytes + 100 for a in [*page.data.values(), *page.timestamps.values()])

    def discard(self, message: str) -> NoReturn:
        """Give up on this run: remove the half-written file, then raise ``ExportError``."""
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
        if self.path in self.files:
            self.files.remove(self.path)
            self.path.unlink(missing_ok=True)
        raise ExportError(message)
