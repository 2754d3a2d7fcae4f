"""Built-in handlers: read the data one ``datum`` points at in a detector's files.

The convention is event-model's: ``Handler(full_path, **resource_kwargs)`` opens one resource,
``handler(**datum_kwargs)`` returns the data of one datum, ``get_file_list(datum_kwargs_list)``
names the files behind some datums, and ``close()`` lets them go. Any class following it can be
registered (see :mod:`runbroker.assets.registry`).

A handler may also offer ``read_many(datum_kwargs_list)``, returning the data of many datums
stacked on a new first axis. The filler uses it when it is there, so a whole stream stored in one
HDF5 file is read with one slice instead of one call per frame.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "ADHDF5Handler",
    "ADTIFFHandler",
    "HDF5DatasetHandler",
    "Handler",
    "NpyHandler",
    "NpySeqHandler",
    "TIFFSeriesHandler",
]


class Handler:
    """Base class of the built-in handlers (third-party handlers need not inherit from it).

    Example:
        >>> class Zeros(Handler):
        ...     specs = frozenset({"ZEROS"})
        ...     def __call__(self, n):
        ...         return np.zeros(n)
        >>> Zeros("/nowhere").read_many([{"n": 2}, {"n": 2}]).shape
        (2, 2)
    """

    specs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, full_path: str, **resource_kwargs: Any) -> None:
        self.full_path = full_path
        self.resource_kwargs = resource_kwargs

    def __call__(self, **datum_kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def read_many(self, datum_kwargs: list[Mapping[str, Any]]) -> np.ndarray:
        """The data of each datum, stacked on a new first axis."""
        return np.stack([np.asarray(self(**kw)) for kw in datum_kwargs])

    def get_file_list(self, datum_kwargs: Iterable[Mapping[str, Any]]) -> list[str]:
        """The files these datums read (here: the resource's own file)."""
        return [self.full_path]

    def close(self) -> None:
        """Release open files."""


def _runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Split row numbers into contiguous ascending runs: (position in rows, first row, length)."""
    out: list[tuple[int, int, int]] = []
    start = 0
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for stop in [*breaks.tolist(), len(rows)]:
        out.append((start, int(rows[start]), stop - start))
        start = stop
    return out


class HDF5DatasetHandler(Handler):
    """Frames of one dataset in an HDF5 file: datum ``point_number`` n holds frames
    ``n*frame_per_point`` to ``(n+1)*frame_per_point - 1``.

    Resource kwargs: ``dataset`` (default ``/entry/data/data``), ``frame_per_point`` (1).
    Spec ``HDF5``.

    Example:
        >>> import h5py, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.h5")
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("/entry/data/data", data=np.arange(12).reshape(6, 2))
        >>> h = HDF5DatasetHandler(path, frame_per_point=2)
        >>> h(point_number=1).tolist()
        [[4, 5], [6, 7]]
        >>> h.read_many([{"point_number": 0}, {"point_number": 2}]).shape
        (2, 2, 2)
        >>> h.close()
    """

    specs = frozenset({"HDF5"})
    default_dataset = "/entry/data/data"

    def __init__(
        self,
        full_path: str,
        dataset: str | None = None,
        frame_per_point: int = 1,
        **resource_kwargs: Any,
    ) -> None:
        super().__init__(full_path, **resource_kwargs)
        import h5py

        self.dataset_name = dataset or self.default_dataset
        self.frame_per_point = int(frame_per_point)
        # SWMR read mode: files an area detector is still writing can be followed.
        self._file = h5py.File(full_path, "r", swmr=True)
        try:
            self._dataset = self._file[self.dataset_name]
        except KeyError:
            self._file.close()
            raise KeyError(
                f"{full_path} has no dataset {self.dataset_name!r}; it holds "
                f"{_listing(self._file_names(full_path))}"
            ) from None

    @staticmethod
    def _file_names(path: str) -> list[str]:
        import h5py

        names: list[str] = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else 0)
        return names

    def __call__(self, point_number: int = 0, **_: Any) -> np.ndarray:
        return self.read_many([{"point_number": point_number}])[0]

    def read_many(self, datum_kwargs: list[Mapping[str, Any]]) -> np.ndarray:
        fpp = self.frame_per_point
        points = np.array([kw.get("point_number", 0) for kw in datum_kwargs], dtype=np.int64)
        rows = (points[:, None] * fpp + np.arange(fpp)).ravel()
        ds = self._dataset
        if len(rows) and rows.max() >= ds.shape[0] and self._is_swmr():
            # A file still being written: look for the newer frames. Only then -- a refresh
            # while another handle of this process has the file open confuses HDF5's cache.
            ds.refresh()
        if len(rows) and rows.max() >= ds.shape[0]:
            raise IndexError(
                f"{self.full_path}:{self.dataset_name} has {ds.shape[0]} frames; "
                f"point {int(points[np.argmax(rows.max() == rows) // fpp])} needs frame "
                f"{int(rows.max())} (frame_per_point={fpp})"
            )
        out = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
        # Contiguous stretches are read with one slice each, straight into the output.
        for pos, first, n in _runs(rows) if len(rows) else []:
            ds.read_direct(out, np.s_[first : first + n], np.s_[pos : pos + n])
        return out.reshape(len(points), fpp, *ds.shape[1:])

    def _is_swmr(self) -> bool:
        try:
            return bool(self._file.swmr_mode)
        except (AttributeError, ValueError):
            return False

    def close(self) -> None:
        self._file.close()

    @property
    def dtype(self) -> np.dtype:
        return self._dataset.dtype


class ADHDF5Handler(HDF5DatasetHandler):
    """Area-detector HDF5 plugin files (spec ``AD_HDF5``): frames in ``/entry/data/data``.

    Example:
        >>> ADHDF5Handler.specs
        frozenset({'AD_HDF5'})
    """

    specs = frozenset({"AD_HDF5"})

    def __init__(self, full_path: str, frame_per_point: int = 1, **resource_kwargs: Any) -> None:
        super().__init__(full_path, frame_per_point=frame_per_point, **resource_kwargs)


class ADTIFFHandler(Handler):
    """Area-detector TIFF plugin files (spec ``AD_TIFF``): one file per frame, named by
    ``template % (folder + "/", filename, frame_number)``.

    Example:
        >>> import tifffile, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> for k in range(4):
        ...     tifffile.imwrite(f"{folder}/img_{k:06d}.tiff", np.full((2, 3), k, "u2"))
        >>> h = ADTIFFHandler(folder, template="%s%s_%6.6d.tiff", filename="img",
        ...                   frame_per_point=2)
        >>> h(point_number=1)[:, 0, 0].tolist()
        [2, 3]
    """

    specs = frozenset({"AD_TIFF"})

    def __init__(
        self,
        full_path: str,
        template: str,
        filename: str,
        frame_per_point: int = 1,
        **resource_kwargs: Any,
    ) -> None:
        super().__init__(full_path, **resource_kwargs)
        self.template = template
        self.filename = filename
        self.frame_per_point = int(frame_per_point)

    def _files(self, point_number: int) -> list[str]:
        folder = os.path.join(self.full_path, "")
        first = int(point_number) * self.frame_per_point
        return [
            self.template % (folder, self.filename, k)
            for k in range(first, first + self.frame_per_point)
        ]

    def __call__(self, point_number: int = 0, **_: Any) -> np.ndarray:
        return self.read_many([{"point_number": point_number}])[0]

    def read_many(self, datum_kwargs: list[Mapping[str, Any]]) -> np.ndarray:
        files = self.get_file_list(datum_kwargs)
        frames = _read_tiffs(files)
        return frames.reshape(len(datum_kwargs), self.frame_per_point, *frames.shape[1:])

    def get_file_list(self, datum_kwargs: Iterable[Mapping[str, Any]]) -> list[str]:
        return list(
            itertools.chain.from_iterable(
                self._files(kw.get("point_number", 0)) for kw in datum_kwargs
            )
        )


def _read_tiffs(files: list[str]) -> np.ndarray:
    import tifffile

    first = tifffile.imread(files[0])
    out = np.empty((len(files), *first.shape), dtype=first.dtype)
    out[0] = first
    for i, f in enumerate(files[1:], 1):
        frame = tifffile.imread(f)
        if frame.shape != first.shape:
            raise ValueError(f"{f} holds a {frame.shape} image; {files[0]} holds {first.shape}")
        out[i] = frame
    return out


class TIFFSeriesHandler(Handler):
    """Frames of one multi-page (or volume) TIFF file (spec ``TIFF_SERIES``): datum
    ``point_number`` n holds frames ``n*frame_per_point`` to ``(n+1)*frame_per_point - 1``.

    Example:
        >>> import tifffile, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "stack.tiff")
        >>> frames = np.arange(24, dtype="u2").reshape(4, 2, 3)
        >>> tifffile.imwrite(path, frames, photometric="minisblack")
        >>> TIFFSeriesHandler(path)(point_number=3).tolist()
        [[18, 19, 20], [21, 22, 23]]
    """

    specs = frozenset({"TIFF_SERIES"})

    def __init__(self, full_path: str, frame_per_point: int = 1, **resource_kwargs: Any) -> None:
        super().__init__(full_path, **resource_kwargs)
        import tifffile

        self.frame_per_point = int(frame_per_point)
        try:
            # Uncompressed files are mapped, not read: only the frames asked for are touched.
            self._frames = tifffile.memmap(full_path, mode="r")
        except ValueError:
            self._frames = tifffile.imread(full_path)

    def __call__(self, point_number: int = 0, **_: Any) -> np.ndarray:
        frames = self.read_many([{"point_number": point_number}])[0]
        return frames[0] if self.frame_per_point == 1 else frames

    def read_many(self, datum_kwargs: list[Mapping[str, Any]]) -> np.ndarray:
        fpp = self.frame_per_point
        points = np.array([kw.get("point_number", 0) for kw in datum_kwargs], dtype=np.int64)
        rows = (points[:, None] * fpp + np.arange(fpp)).ravel()
        pages = np.asarray(self._frames[rows])
        return pages.reshape(len(points), fpp, *pages.shape[1:])

    def close(self) -> None:
        self._frames = None


class NpyHandler(Handler):
    """One ``.npy`` file (spec ``NPY``): the whole array, or row ``index`` of it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
        >>> np.save(path, np.arange(6).reshape(3, 2))
        >>> NpyHandler(path)(index=2).tolist()
        [4, 5]
    """

    specs = frozenset({"NPY"})

    def __init__(self, full_path: str, mmap_mode: str | None = "r", **resource_kwargs: Any):
        super().__init__(full_path, **resource_kwargs)
        self._array = np.load(full_path, mmap_mode=mmap_mode, allow_pickle=False)

    def __call__(self, index: int | None = None, **_: Any) -> np.ndarray:
        return np.array(self._array if index is None else self._array[index])

    def read_many(self, datum_kwargs: list[Mapping[str, Any]]) -> np.ndarray:
        if all("index" in kw for kw in datum_kwargs):
            return np.asarray(self._array[[kw["index"] for kw in datum_kwargs]])
        return super().read_many(datum_kwargs)


class NpySeqHandler(Handler):
    """A sequence of ``.npy`` files (spec ``NPY_SEQ``, ophyd's simulated image detector):
    datum ``index`` i is the file ``<full_path>_<i>.npy``.

    Example:
        >>> import tempfile, os
        >>> stem = os.path.join(tempfile.mkdtemp(), "img")
        >>> np.save(stem + "_0.npy", np.ones((2, 2)))
        >>> NpySeqHandler(stem)(index=0).sum()
        np.float64(4.0)
    """

    specs = frozenset({"NPY_SEQ"})

    def __call__(self, index: int = 0, **_: Any) -> np.ndarray:
        return np.load(f"{self.full_path}_{index}.npy", allow_pickle=False)

    def get_file_list(self, datum_kwargs: Iterable[Mapping[str, Any]]) -> list[str]:
        return [f"{self.full_path}_{kw.get('index', 0)}.npy" for kw in datum_kwargs]


def _listing(names: list[str]) -> str:
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "nothing"


BUILTIN_HANDLERS: dict[str, type] = {
    spec: cls
    for cls in (
        ADHDF5Handler,
        ADTIFFHandler,
        HDF5DatasetHandler,
        NpyHandler,
        NpySeqHandler,
        TIFFSeriesHandler,
    )
    for spec in cls.specs
}
