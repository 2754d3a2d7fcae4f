"""Simulated area detectors that write real files, for tests and benchmarks of external data.

Each detector is a classic ophyd ``Device`` that works with the bluesky ``RunEngine``
(``RE(count([det], 5))``, ``RE(scan([det], motor, -1, 1, 5))``). It writes its frames into a
``root`` folder in the layout the EPICS area-detector file plugins use and hands the asset
documents to the RunEngine through ``collect_asset_docs()``:

================================  ===========================  =================================
detector                          files                        documents
================================  ===========================  =================================
:class:`ADHDF5Detector`           one HDF5 file per run,       ``resource`` spec ``AD_HDF5``,
                                  ``/entry/data/data``         ``datum`` per point
:class:`ADTIFFDetector`           one TIFF file per frame      ``resource`` spec ``AD_TIFF``,
                                                               ``datum`` per point
:class:`StreamHDF5Detector`       one HDF5 file per run        ``stream_resource``
                                                               ``application/x-hdf5``,
                                                               ``stream_datum`` per point
:func:`npy_detector`              one ``.npy`` per frame       ``resource`` spec ``NPY_SEQ``,
                                  (ophyd.sim's own detector)   ``datum`` per point
================================  ===========================  =================================

Frames are deterministic: frame ``k`` of a run (counting from 0 at each ``stage``, across the
``frame_per_point`` frames of each point) is :func:`expected_frame` ``(k, shape, dtype)``, so a
test can check what it reads back without keeping the written arrays. Each detector lists the
files it wrote in ``files_written`` (absolute paths, in writing order, over all its runs).

Example, a count with the AD HDF5 detector, documents collected in a list:

>>> import tempfile
>>> import h5py
>>> from bluesky import RunEngine
>>> from bluesky.plans import count
>>> RE = RunEngine({}, call_returns_result=False)
>>> docs = []
>>> token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
>>> with tempfile.TemporaryDirectory() as root:
...     det = ADHDF5Detector("det", root, shape=(4, 6))
...     _ = RE(count([det], 3))
...     with h5py.File(det.files_written[0], "r") as f:
...         data = f["/entry/data/data"][:]
>>> [name for name, _ in docs]
['start', 'descriptor', 'resource', 'datum', 'event', 'datum', 'event', 'datum', 'event', 'stop']
>>> data.shape
(3, 4, 6)
>>> bool((data[2] == expected_frame(2, (4, 6))).all())
True

The ophyd.sim NPY detector (``SynSignalWithRegistry``, spec ``NPY_SEQ``) is built with
:func:`npy_detector`; pass a fresh ``root`` (e.g. pytest's ``tmp_path``) so the files land
there rather than in a ``mkdtemp()`` folder nobody removes:

>>> with tempfile.TemporaryDirectory() as root:
...     img = npy_detector(root)
...     _ = RE(count([img], 2))
...     frame = np.load(img.files_written[1])
>>> bool((frame == expected_frame(1, img.frame_shape)).all())
True
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import event_model
import h5py
import numpy as np
import tifffile
from ophyd import Component, Device, Signal
from ophyd.sim import SynSignalWithRegistry
from ophyd.status import Status

__all__ = [
    "HDF5_DATASET",
    "TIFF_TEMPLATE",
    "ADHDF5Detector",
    "ADTIFFDetector",
    "NPYDetector",
    "StreamHDF5Detector",
    "expected_frame",
    "late_frames_scan",
    "npy_detector",
    "tomo_plan",
]

HDF5_DATASET = "/entry/data/data"  # where the AD HDF5 plugin puts frames by default
TIFF_TEMPLATE = "%s%s_%6.6d.tiff"  # the AD TIFF plugin's default FileTemplate

Document = tuple[str, dict[str, Any]]


def expected_frame(k: int, shape: tuple[int, int] = (32, 48), dtype: Any = "uint16") -> np.ndarray:
    """Frame ``k`` of a run: the flat pixel index plus ``1000 * k``, wrapped to the dtype.

    No two pixels of a row or column are equal (for widths below the dtype's range), so a
    transposed, flipped or shifted frame does not compare equal; consecutive frames differ by
    1000 everywhere, so a frame read for the wrong point does not either.

    >>> expected_frame(1, (2, 3))
    array([[1000, 1001, 1002],
           [1003, 1004, 1005]], dtype=uint16)
    """
    ny, nx = shape
    dt = np.dtype(dtype)
    values = np.arange(ny * nx, dtype=np.int64).reshape(ny, nx) + 1000 * k
    if dt.kind in "ui":
        # Wrap explicitly so the pattern is the same whatever numpy's casting rules do.
        info = np.iinfo(dt)
        values = (values - info.min) % (int(info.max) - int(info.min) + 1) + info.min
    return values.astype(dt)


def _dated_folder() -> str:
    """``YYYY/MM/DD/``: how AD file paths are usually templated at facilities."""
    return time.strftime("%Y/%m/%d/")


class _HDF5Frames:
    """One AD-style HDF5 file: ``/entry/data/data`` of shape (N, ny, nx), one frame per chunk."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "w-")
        entry = self.file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        self.dataset = data.create_dataset(
            "data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=dtype
        )

    def append(self, frames: np.ndarray) -> None:
        n = self.dataset.shape[0]
        self.dataset.resize(n + len(frames), axis=0)
        self.dataset[n:] = frames
        # Flush per point, as AD does in SWMR mode, so a reader sees the frames mid-run.
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _FileDetector(Device):
    """What the file-writing detectors share: staging, frame counters, root, the data keys.

    Subclasses implement ``_open`` (at stage: create the run's file or folder and queue its
    resource document), ``_write`` (at trigger: store one point's frames, queue its datum and
    return the event's value for the image, or None where the image is not in events) and
    ``_close`` (at unstage).
    """

    stats_total = Component(Signal, value=0, kind="hinted")
    external: ClassVar[str] = "FILESTORE:"

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        shape: tuple[int, int] = (32, 48),
        frame_per_point: int = 1,
        dtype: Any = "uint16",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if frame_per_point < 1:
            raise ValueError(f"frame_per_point must be >= 1, not {frame_per_point}")
        # Not ``root``: ophyd's Device.root is the top of the device tree.
        self.file_root = Path(root).absolute()
        self.frame_shape = (int(shape[0]), int(shape[1]))
        self.frame_per_point = int(frame_per_point)
        self.dtype = np.dtype(dtype)
        self.files_written: list[Path] = []
        self._docs: deque[Document] = deque()
        self._point = 0  # points triggered in this run
        self._value: str | None = None  # what the last trigger puts in the event
        self._staged_run = False

    @property
    def image_key(self) -> str:
        """The image's field name in the descriptor: ``{name}_image``, as ophyd's AD plugins."""
        return f"{self.name}_image"

    @property
    def point_shape(self) -> list[int]:
        """The image data key's shape: one frame, or ``[fpp, ny, nx]`` for several a point."""
        if self.frame_per_point == 1:
            return list(self.frame_shape)
        return [self.frame_per_point, *self.frame_shape]

    def frames(self, point: int) -> np.ndarray:
        """The frames of ``point`` in this run, shape ``(frame_per_point, ny, nx)``."""
        first = point * self.frame_per_point
        return np.stack(
            [
                expected_frame(k, self.frame_shape, self.dtype)
                for k in range(first, first + self.frame_per_point)
            ]
        )

    def stage(self) -> list[Any]:
        staged = super().stage()
        self._docs.clear()
        self._point = 0
        self._value = None
        self._open()
        self._staged_run = True
        return staged

    def unstage(self) -> list[Any]:
        if self._staged_run:
            self._close()
            self._staged_run = False
        return super().unstage()

    def trigger(self) -> Status:
        if not self._staged_run:
            raise RuntimeError(f"{self.name} writes files only while staged; stage it first")
        frames = self.frames(self._point)
        self._value = self._write(self._point, frames)
        self.stats_total.put(int(frames.sum(dtype=np.int64)))
        self._point += 1
        status = Status(obj=self)
        status.set_finished()
        return status

    def describe(self) -> dict[str, dict[str, Any]]:
        out = dict(super().describe())
        out[self.image_key] = {
            "source": f"sim:{self.image_key}",
            "dtype": "array",
            "dtype_numpy": self.dtype.str,
            "shape": self.point_shape,
            "external": self.external,
        }
        return out

    def read(self) -> dict[str, dict[str, Any]]:
        out = dict(super().read())
        if self._value is not None:
            out[self.image_key] = {"value": self._value, "timestamp": time.time()}
        return out

    def collect_asset_docs(self, index: int | None = None) -> Iterator[Document]:
        """Yield and forget the queued asset documents (``index`` is for bluesky's protocol)."""
        while self._docs:
            yield self._docs.popleft()

    # -- hooks ---------------------------------------------------------------------------------

    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, point: int, frames: np.ndarray) -> str | None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- helpers for the subclasses --------------------------------------------------------------

    def _new_hdf5(self) -> tuple[str, _HDF5Frames]:
        """A new per-run HDF5 file below root; its root-relative path and its writer."""
        relative = f"{_dated_folder()}{uuid.uuid4()}.h5"
        path = self.file_root / relative
        self.files_written.append(path)
        return relative, _HDF5Frames(path, self.frame_shape, self.dtype)

    def _queue_resource(self, spec: str, resource_path: str, resource_kwargs: dict) -> None:
        # run_start is left out: the RunEngine fills it in when it emits the document.
        bundle = event_model.compose_resource(
            spec=spec,
            root=str(self.file_root),
            resource_path=resource_path,
            resource_kwargs=resource_kwargs,
            path_semantics="posix",
        )
        self._docs.append(("resource", bundle.resource_doc))
        self._compose_datum = bundle.compose_datum

    def _queue_datum(self, point: int) -> str:
        datum = self._compose_datum(datum_kwargs={"point_number": point})
        self._docs.append(("datum", datum))
        return datum["datum_id"]


class ADHDF5Detector(_FileDetector):
    """An area detector with the AD HDF5 file plugin: one file per run, spec ``AD_HDF5``.

    Files are ``root/YYYY/MM/DD/<uuid>.h5`` with frames at ``/entry/data/data``, shape
    (N, ny, nx), growing by ``frame_per_point`` frames a point, chunked one frame per chunk.
    Documents: one ``resource`` per run (``resource_kwargs`` ``{"frame_per_point": fpp}``,
    relative ``resource_path``, absolute ``root``) and a ``datum`` a point with
    ``{"point_number": i}``. Fields: ``{name}_image`` (external ``FILESTORE:``) and
    ``{name}_stats_total`` (sum of the point's pixels, stored inline).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     det = ADHDF5Detector("det", root, shape=(4, 6), frame_per_point=2)
    ...     _ = det.stage()
    ...     _ = det.trigger()
    ...     docs = list(det.collect_asset_docs())
    ...     _ = det.unstage()
    >>> [(name, doc.get("spec"), doc.get("datum_kwargs")) for name, doc in docs]
    [('resource', 'AD_HDF5', None), ('datum', None, {'point_number': 0})]
    >>> det.describe()["det_image"]["shape"]
    [2, 4, 6]
    """

    def _open(self) -> None:
        relative, self._h5 = self._new_hdf5()
        self._queue_resource("AD_HDF5", relative, {"frame_per_point": self.frame_per_point})

    def _write(self, point: int, frames: np.ndarray) -> str:
        self._h5.append(frames)
        return self._queue_datum(point)

    def _close(self) -> None:
        self._h5.close()


class ADTIFFDetector(_FileDetector):
    """An area detector with the AD TIFF file plugin: one file per frame, spec ``AD_TIFF``.

    The run's folder is ``root/YYYY/MM/DD/`` (the ``resource_path``, with a trailing slash);
    frame ``k`` is the file ``TIFF_TEMPLATE % (folder, filename, k)``, with ``folder`` the
    absolute folder path ending in ``/`` and ``filename`` a new uuid a run. ``resource_kwargs``:
    ``{"template": TIFF_TEMPLATE, "filename": filename, "frame_per_point": fpp}``; the
    ``datum`` of point ``i`` (``{"point_number": i}``) covers frames ``i*fpp .. (i+1)*fpp-1``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     det = ADTIFFDetector("tiff", root, shape=(4, 6))
    ...     _ = det.stage()
    ...     _ = det.trigger()
    ...     _ = det.unstage()
    ...     name = det.files_written[0].name
    >>> name.endswith("_000000.tiff")
    True
    """

    def _open(self) -> None:
        relative = _dated_folder()
        self._folder = self.file_root / relative
        self._folder.mkdir(parents=True, exist_ok=True)
        self._filename = str(uuid.uuid4())
        self._queue_resource(
            "AD_TIFF",
            relative,
            {
                "template": TIFF_TEMPLATE,
                "filename": self._filename,
                "frame_per_point": self.frame_per_point,
            },
        )

    def _write(self, point: int, frames: np.ndarray) -> str:
        # The template's first %s is the folder with its trailing separator, as AD fills it.
        folder = f"{self._folder}/"
        for j, frame in enumerate(frames):
            path = Path(TIFF_TEMPLATE % (folder, self._filename, point * self.frame_per_point + j))
            tifffile.imwrite(path, frame)
            self.files_written.append(path)
        return self._queue_datum(point)


class StreamHDF5Detector(_FileDetector):
    """A detector in the ophyd-async style (an HDF writer in a step scan): ``STREAM:`` data.

    One HDF5 file per run, laid out as :class:`ADHDF5Detector`'s. Documents: one
    ``stream_resource`` per run (``mimetype`` ``application/x-hdf5``, ``uri``
    ``file://localhost/<absolute path>``, ``data_key`` ``{name}_image``, ``parameters``
    ``{"dataset": "/entry/data/data", "chunk_shape": [1, ny, nx]}``) and a ``stream_datum`` a
    point with ``indices`` ``{"start": i, "stop": i + 1}``; ``descriptor`` and ``seq_nums`` are
    left for the RunEngine to fill. ``read()`` has no image: ``STREAM:`` data is never in events.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     det = StreamHDF5Detector("cam", root, shape=(4, 6))
    ...     _ = det.stage()
    ...     _ = det.trigger()
    ...     (_, resource), (_, datum) = det.collect_asset_docs()
    ...     _ = det.unstage()
    >>> resource["mimetype"], resource["parameters"]["chunk_shape"], datum["indices"]
    ('application/x-hdf5', [1, 4, 6], {'start': 0, 'stop': 1})
    >>> "cam_image" in det.read(), det.describe()["cam_image"]["external"]
    (False, 'STREAM:')
    """

    external: ClassVar[str] = "STREAM:"

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        shape: tuple[int, int] = (32, 48),
        dtype: Any = "uint16",
        **kwargs: Any,
    ) -> None:
        # One frame a point: the RunEngine refuses stream_datum wider than 1 in a step scan.
        super().__init__(name, root, shape=shape, frame_per_point=1, dtype=dtype, **kwargs)

    def _open(self) -> None:
        relative, self._h5 = self._new_hdf5()
        bundle = event_model.compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=f"file://localhost{(self.file_root / relative).as_posix()}",
            data_key=self.image_key,
            parameters={"dataset": HDF5_DATASET, "chunk_shape": [1, *self.frame_shape]},
        )
        self._docs.append(("stream_resource", bundle.stream_resource_doc))
        self._compose_stream_datum = bundle.compose_stream_datum

    def _write(self, point: int, frames: np.ndarray) -> None:
        self._h5.append(frames)
        datum = self._compose_stream_datum(indices={"start": point, "stop": point + 1})
        self._docs.append(("stream_datum", datum))
        return None

    def _close(self) -> None:
        self._h5.close()


class NPYDetector(SynSignalWithRegistry):
    """ophyd.sim's NPY-writing image signal, with frames restarting at :func:`expected_frame` 0.

    ophyd writes ``<root>/<stem>_<n>.npy`` per trigger and emits a ``resource`` (spec
    ``NPY_SEQ``, ``root`` = ``save_path``, ``resource_path`` = ``<stem>``, no kwargs) and a
    ``datum`` per point with ``{"index": n}``. Its data key says ``external: "FILESTORE"``
    (without the colon other ophyd devices write). Build it with :func:`npy_detector`.
    """

    def __init__(self, name: str, root: str | Path, *, shape: tuple[int, int], dtype: Any) -> None:
        self.frame_shape = (int(shape[0]), int(shape[1]))
        self.files_written: list[Path] = []
        self._frames = itertools.count()
        dt = np.dtype(dtype)
        super().__init__(
            lambda: expected_frame(next(self._frames), self.frame_shape, dt),
            name=name,
            save_path=str(Path(root).absolute()),
        )

    def stage(self) -> None:
        # The constructor asks for a value too; restart so a run's frame k is expected_frame(k).
        self._frames = itertools.count()
        super().stage()

    def trigger(self) -> Any:
        status = super().trigger()
        for reading in self._result.values():
            index = reading["value"].rsplit("/", 1)[1]
            self.files_written.append(Path(f"{self._path_stem}_{index}.{self.save_ext}"))
        return status


def npy_detector(
    root: str | Path, *, name: str = "img", shape: tuple[int, int] = (10, 10), dtype: Any = "uint16"
) -> NPYDetector:
    """A fresh ophyd.sim NPY_SEQ image detector saving into ``root`` (see :class:`NPYDetector`)."""
    return NPYDetector(name, root, shape=shape, dtype=dtype)


def late_frames_scan(
    root: str | Path, n: int = 3, shape: tuple[int, int] = (4, 6)
) -> list[Document]:
    """The documents of a real RunEngine scan of ``n`` points with a :class:`StreamHDF5Detector`
    named ``sd`` (writing under ``root``) and a baseline, in which the detector announces its
    frames (every ``stream_datum``) only after the last primary event, before the closing
    baseline reading: as a detector that reports its frames late does.

    Example:
        >>> names = [name for name, _ in late_frames_scan(tmp_path, n=2)]
        >>> names.index("stream_datum") > names.index("event")
        True
    """
    from bluesky import RunEngine
    from bluesky.plans import scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import motor, motor2

    docs: list[Document] = []
    RE = RunEngine({}, call_returns_result=False)
    RE.preprocessors.append(SupplementalData(baseline=[motor2]))
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(scan([StreamHDF5Detector("sd", Path(root) / "sd", shape=shape)], motor, 0, 1, n))
    late = [d for d in docs if d[0] != "stream_datum"]
    late[-2:-2] = [d for d in docs if d[0] == "stream_datum"]  # before baseline and stop
    return late


def tomo_plan(cam: Any, theta: Any, angles: list[float]) -> Any:
    """A bluesky plan: darks, flats, then projections of ``cam`` over ``theta`` at ``angles``,
    in the streams a tomography scan has (``dark``, ``flat``, ``primary``).

    Example:
        >>> from bluesky import RunEngine
        >>> from ophyd.sim import SynAxis
        >>> streams = []
        >>> engine = RunEngine({}, call_returns_result=False)
        >>> _ = engine.subscribe(lambda name, doc: streams.append(doc["name"]), "descriptor")
        >>> _ = engine(tomo_plan(ADHDF5Detector("cam", tmp_path), SynAxis(name="theta"), [0, 90]))
        >>> streams
        ['dark', 'flat', 'primary']
    """
    import bluesky.plan_stubs as bps

    yield from bps.open_run(md={"plan_name": "tomo_scan", "sample": "rock", "motors": ["theta"]})
    yield from bps.stage(cam)
    for stream in ("dark", "flat"):
        for _ in range(2):
            yield from bps.trigger_and_read([cam], name=stream)
    for angle in angles:
        yield from bps.mv(theta, angle)
        yield from bps.trigger_and_read([cam, theta])
    yield from bps.unstage(cam)
    yield from bps.close_run()
