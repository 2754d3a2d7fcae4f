"""Readers for ``stream_resource`` documents, chosen by mimetype.

A ``stream_resource`` names one file (``uri``) holding many rows -- frames, usually -- and each
``stream_datum`` says which rows (``indices``) belong to which events (``seq_nums``). A reader
opens the file once and returns any set of rows in as few reads as the format allows.

The interface is small: ``Reader(path, **parameters)``, ``read_rows(rows) -> ndarray`` (rows
stacked on the first axis), ``get_file_list() -> list[str]`` and ``close()``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from .handlers import HDF5DatasetHandler, _read_tiffs

__all__ = ["HDF5Reader", "NpyReader", "Reader", "TIFFSequenceReader"]


class Reader:
    """Base class of the built-in stream readers.

    Example:
        >>> HDF5Reader.mimetypes
        frozenset({'application/x-hdf5'})
    """

    mimetypes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, path: str, **parameters: Any) -> None:
        self.path = path
        self.parameters = parameters

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_file_list(self) -> list[str]:
        """The files this resource reads."""
        return [self.path]

    def close(self) -> None:
        """Release open files."""


class HDF5Reader(Reader):
    """Rows of one HDF5 dataset (``parameters["dataset"]``), read slice by contiguous slice.

    Example:
        >>> import h5py, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.h5")
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("/entry/data/data", data=np.arange(10))
        >>> HDF5Reader(path, dataset="/entry/data/data").read_rows(np.array([3, 4, 8])).tolist()
        [3, 4, 8]
    """

    mimetypes = frozenset({"application/x-hdf5"})

    def __init__(self, path: str, dataset: str = "/entry/data/data", **parameters: Any) -> None:
        super().__init__(path, dataset=dataset, **parameters)
        self._frames = HDF5DatasetHandler(path, dataset=dataset)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        data = self._frames.read_many([{"point_number": int(r)} for r in rows])
        return data.reshape(len(rows), *data.shape[2:])

    def close(self) -> None:
        self._frames.close()


class TIFFSequenceReader(Reader):
    """A folder of TIFF files, one per row, named by ``parameters["template"]``
    (``str.format`` with the row number, default ``"{:06d}.tiff"``).

    Example:
        >>> import tifffile, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> for k in range(3):
        ...     tifffile.imwrite(f"{folder}/{k:06d}.tiff", np.full((2, 2), k, "u1"))
        >>> TIFFSequenceReader(folder).read_rows(np.array([2, 0]))[:, 0, 0].tolist()
        [2, 0]
    """

    mimetypes = frozenset({"multipart/related;type=image/tiff"})

    def __init__(self, path: str, template: str = "{:06d}.tiff", **parameters: Any) -> None:
        super().__init__(path, template=template, **parameters)
        self.template = template

    def _file(self, row: int) -> str:
        return os.path.join(self.path, self.template.format(row))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        return _read_tiffs([self._file(int(r)) for r in rows])

    def get_file_list(self) -> list[str]:
        folder = self.path
        return sorted(os.path.join(folder, f) for f in os.listdir(folder))


class NpyReader(Reader):
    """Rows of one ``.npy`` file (memory-mapped).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
        >>> np.save(path, np.arange(5) * 10)
        >>> NpyReader(path).read_rows(np.array([1, 4])).tolist()
        [10, 40]
    """

    mimetypes = frozenset({"application/x-npy", "application/octet-stream+npy"})

    def __init__(self, path: str, **parameters: Any) -> None:
        super().__init__(path, **parameters)
        self._array = np.load(path, mmap_mode="r", allow_pickle=False)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._array[rows])


BUILTIN_READERS: dict[str, type] = {
    mimetype: cls
    for cls in (HDF5Reader, TIFFSequenceReader, NpyReader)
    for mimetype in cls.mimetypes
}
