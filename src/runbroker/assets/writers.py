"""Writers: the counterparts of the handlers, for saving derived data to files.

A writer takes the same resource kwargs as its handler, is given a ``root`` and a
``resource_path`` under it, and turns each payload into datum kwargs that read it back:

    writer = HDF5Writer(root, "reduced.h5", dataset="/entry/data/data")
    datum_kwargs = writer.write(frame)          # {"point_number": 0}
    writer.close()
    HDF5DatasetHandler(f"{root}/reduced.h5", **writer.resource_kwargs)(**datum_kwargs)

Files are created new: a writer never overwrites an existing file.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from .paths import check_inside, relative_part

__all__ = ["WRITERS", "HDF5Writer", "NpySeqWriter", "TIFFSeriesWriter", "Writer"]


class Writer:
    """Base class: ``spec`` names the handler that reads what the writer wrote.

    Example:
        >>> import tempfile
        >>> w = NpySeqWriter(tempfile.mkdtemp(), "curve")
        >>> w.write(np.arange(3)), w.spec
        ({'index': 0}, 'NPY_SEQ')
    """

    spec: ClassVar[str]

    def __init__(self, root: str, resource_path: str, **resource_kwargs: Any) -> None:
        self.root = os.path.abspath(root)
        self.resource_path = relative_part(resource_path, "resource_path")
        self.full_path = check_inside(
            os.path.join(self.root, resource_path), self.root, "resource_path"
        )
        self.resource_kwargs = resource_kwargs
        self.files: list[str] = []
        os.makedirs(os.path.dirname(self.full_path), exist_ok=True)

    def write(self, payload: Any) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files (they are readable only after this)."""

    def _new_file(self, path: str) -> str:
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; a writer never overwrites a file")
        self.files.append(path)
        return path


class HDF5Writer(Writer):
    """Payloads as consecutive frames of one HDF5 dataset (read by ``HDF5``/``AD_HDF5``).

    Example:
        >>> import tempfile
        >>> from runbroker.assets.handlers import HDF5DatasetHandler
        >>> w = HDF5Writer(tempfile.mkdtemp(), "a.h5")
        >>> [w.write(np.full((2, 2), i)) for i in range(2)]
        [{'point_number': 0}, {'point_number': 1}]
        >>> w.close()
        >>> HDF5DatasetHandler(w.full_path, **w.resource_kwargs)(point_number=1)[0].tolist()
        [[1, 1], [1, 1]]
    """

    spec = "HDF5"

    def __init__(
        self, root: str, resource_path: str, dataset: str = "/entry/data/data", **kw: Any
    ) -> None:
        super().__init__(root, resource_path, dataset=dataset, frame_per_point=1, **kw)
        import h5py

        self._file = h5py.File(self._new_file(self.full_path), "w-")
        self._dataset_name = dataset
        self._n = 0

    def write(self, payload: Any) -> dict[str, Any]:
        frame = np.asarray(payload)
        if self._n == 0:
            self._ds = self._file.create_dataset(
                self._dataset_name,
                shape=(0, *frame.shape),
                maxshape=(None, *frame.shape),
                dtype=frame.dtype,
                chunks=(1, *frame.shape) if frame.size else None,
            )
        elif frame.shape != self._ds.shape[1:]:
            raise ValueError(
                f"payload {self._n} has shape {frame.shape}; earlier ones {self._ds.shape[1:]}"
            )
        self._ds.resize(self._n + 1, axis=0)
        self._ds[self._n] = frame
        self._n += 1
        return {"point_number": self._n - 1}

    def close(self) -> None:
        self._file.close()


class ADHDF5Writer(HDF5Writer):
    """Frames in ``/entry/data/data``, as the area-detector HDF5 plugin writes (``AD_HDF5``).

    Example:
        >>> import tempfile
        >>> w = ADHDF5Writer(tempfile.mkdtemp(), "scan.h5")
        >>> w.resource_kwargs
        {'frame_per_point': 1}
    """

    spec = "AD_HDF5"

    def __init__(self, root: str, resource_path: str, frame_per_point: int = 1) -> None:
        _one_frame_per_point(frame_per_point)
        super().__init__(root, resource_path)
        self.resource_kwargs = {"frame_per_point": 1}


class ADTIFFWriter(Writer):
    """One TIFF file per frame, named like the area-detector TIFF plugin's (``AD_TIFF``).

    Example:
        >>> import tempfile
        >>> from runbroker.assets.handlers import ADTIFFHandler
        >>> w = ADTIFFWriter(tempfile.mkdtemp(), "images", filename="img")
        >>> kw = w.write(np.eye(2, dtype="u2"))
        >>> ADTIFFHandler(w.full_path, **w.resource_kwargs)(**kw)[0].tolist()
        [[1, 0], [0, 1]]
    """

    spec = "AD_TIFF"

    def __init__(
        self,
        root: str,
        resource_path: str,
        filename: str = "frame",
        template: str = "%s%s_%6.6d.tiff",
        frame_per_point: int = 1,
    ) -> None:
        relative_part(filename, "filename")
        _one_frame_per_point(frame_per_point)
        super().__init__(
            root, resource_path, template=template, filename=filename, frame_per_point=1
        )
        os.makedirs(self.full_path, exist_ok=True)
        self._n = 0

    def write(self, payload: Any) -> dict[str, Any]:
        import tifffile

        kw = self.resource_kwargs
        name = kw["template"] % (os.path.join(self.full_path, ""), kw["filename"], self._n)
        tifffile.imwrite(self._new_file(name), np.asarray(payload))
        self._n += 1
        return {"point_number": self._n - 1}


class NpyWriter(Writer):
    """Payloads as the rows of one ``.npy`` file, written at ``close()`` (``NPY``).

    Example:
        >>> import tempfile
        >>> from runbroker.assets.handlers import NpyHandler
        >>> w = NpyWriter(tempfile.mkdtemp(), "rows.npy")
        >>> kws = [w.write(np.arange(2) + i) for i in range(3)]
        >>> w.close()
        >>> NpyHandler(w.full_path)(**kws[2]).tolist()
        [2, 3]
    """

    spec = "NPY"

    def __init__(self, root: str, resource_path: str, **kw: Any) -> None:
        super().__init__(root, resource_path, **kw)
        self._new_file(self.full_path)
        self._rows: list[np.ndarray] = []

    def write(self, payload: Any) -> dict[str, Any]:
        self._rows.append(np.asarray(payload))
        return {"index": len(self._rows) - 1}

    def close(self) -> None:
        with open(self.full_path, "xb") as f:
            np.save(f, np.stack(self._rows) if self._rows else np.empty(0))


class NpySeqWriter(Writer):
    """One ``.npy`` file per payload, ``<resource_path>_<i>.npy`` (read by ``NPY_SEQ``).

    Example:
        >>> import tempfile
        >>> from runbroker.assets.handlers import NpySeqHandler
        >>> w = NpySeqWriter(tempfile.mkdtemp(), "fit")
        >>> kw = w.write(np.ones(3))
        >>> NpySeqHandler(w.full_path)(**kw).tolist()
        [1.0, 1.0, 1.0]
    """

    spec = "NPY_SEQ"

    def __init__(self, root: str, resource_path: str, **kw: Any) -> None:
        super().__init__(root, resource_path, **kw)
        self._n = 0

    def write(self, payload: Any) -> dict[str, Any]:
        np.save(self._new_file(f"{self.full_path}_{self._n}.npy"), np.asarray(payload))
        self._n += 1
        return {"index": self._n - 1}


class TIFFSeriesWriter(Writer):
    """Payloads (2-D images) as the pages of one TIFF file (read by ``TIFF_SERIES``).

    Example:
        >>> import tempfile
        >>> from runbroker.assets.handlers import TIFFSeriesHandler
        >>> w = TIFFSeriesWriter(tempfile.mkdtemp(), "stack.tiff")
        >>> kws = [w.write(np.full((2, 3), i, "u2")) for i in range(3)]
        >>> w.close()
        >>> TIFFSeriesHandler(w.full_path)(**kws[2]).tolist()
        [[2, 2, 2], [2, 2, 2]]
    """

    spec = "TIFF_SERIES"

    def __init__(self, root: str, resource_path: str, **kw: Any) -> None:
        super().__init__(root, resource_path, frame_per_point=1, **kw)
        import tifffile

        self._tiff = tifffile.TiffWriter(self._new_file(self.full_path))
        self._n = 0

    def write(self, payload: Any) -> dict[str, Any]:
        frame = np.asarray(payload)
        if frame.ndim != 2:
            raise ValueError(f"TIFF pages are 2-D images; payload has shape {frame.shape}")
        # Pages written one by one, each its own series' frame: contiguous keeps them one stack.
        self._tiff.write(frame, contiguous=True)
        self._n += 1
        return {"point_number": self._n - 1}

    def close(self) -> None:
        self._tiff.close()


def _one_frame_per_point(frame_per_point: int) -> None:
    # The handler's kwarg is accepted for symmetry; each payload is written as one frame.
    if frame_per_point != 1:
        raise ValueError(
            f"writers write one frame per point, not frame_per_point={frame_per_point}"
        )


WRITERS: dict[str, type[Writer]] = {
    cls.spec: cls
    for cls in (HDF5Writer, ADHDF5Writer, ADTIFFWriter, NpyWriter, NpySeqWriter, TIFFSeriesWriter)
}
