"""B9 -- remote read: ``run.primary.read()`` through a runbroker server against the same read
of the same catalog opened locally.

One SQLite catalog holds a run of 1,000,000 events x 6 float fields and one of 1,000 events
(both ingested as ``event_page`` documents of 1,000, as B2 does) and a run of 1,000 512x512
uint16 frames in one AD_HDF5 file (B5's detector). A real uvicorn server
(:class:`benchmarks.service.Served`, one worker) serves that file on loopback; the client is
``runbroker.open(url, api_key=..., cache=False)`` (B11 measures the cache). Each figure is
timed warm, the remote and local reads alternating so that a change in the machine's load
hits both alike. The frames are filled on the server (the client never opens the HDF5 file);
their baseline is the local read of the same run, and h5py reading the dataset.

Run alone with ``python -m benchmarks b9``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import runbroker

from .b2_read import _build as build_columns
from .b5_detector import FIELD as IMAGE
from .b5_detector import _build as build_frames
from .b5_detector import _h5py_one
from .common import Result, best, median, print_result, section, timings
from .service import API_KEY, Served

LARGE, SMALL = 1_000_000, 1_000
REPEATS = 5
SMALL_REPEATS = 50
FRAME_REPEATS = 3
TARGET_RATIO = 3.0  # remote read() time / local read() time, 1,000,000 events
TARGET_SMALL_MS = 10.0
TARGET_FRAMES_MB_S = 500.0


def _alternating(
    remote: Callable[[], Any], local: Callable[[], Any], n: int, warm_up: bool = True
) -> tuple[list, list]:
    """Timings of ``n`` calls of each, alternating, after one warm-up call of each."""
    if warm_up:
        remote(), local()
    times_remote, times_local = [], []
    for _ in range(n):
        times_remote += timings(remote, 1)
        times_local += timings(local, 1)
    return times_remote, times_local


def _same(remote: Any, local: Any, fields: list[str]) -> None:
    for f in fields:
        assert np.array_equal(remote[f].values, local[f].values), f"remote {f} differs"


def _columns(remote: runbroker.Catalog, local: runbroker.Catalog, uid: str, n: int) -> Result:
    r_run, l_run = remote[uid], local[uid]
    _same(r_run.primary.read(), l_run.primary.read(), ["time", "f0", "f5"])
    before = remote.store.transport.requests
    r_run.primary.read()
    requests = remote.store.transport.requests - before
    repeats = REPEATS if n == LARGE else SMALL_REPEATS
    t_remote, t_local = _alternating(
        lambda: r_run.primary.read(), lambda: l_run.primary.read(), repeats
    )
    label = f"remote run.primary.read() {n:,} events x 6 fields"
    note = f"{requests} requests per read; warm, alternating with the local read"
    if n == LARGE:
        mb = n * 7 * 8 / 1e6
        t = best(t_remote)
        return print_result(
            Result(
                "B9",
                label,
                t * 1e3,
                "ms",
                best(t_local) * 1e3,
                "local read(), same file",
                target=TARGET_RATIO,
                target_on="ratio",
                higher_is_better=False,
                note=f"{note}, best of {repeats}; {mb:.0f} MB of columns, {mb / t:,.0f} MB/s",
            )
        )
    return print_result(
        Result(
            "B9",
            label,
            median(t_remote) * 1e3,
            "ms",
            median(t_local) * 1e3,
            "local read(), same file",
            target=TARGET_SMALL_MS,
            higher_is_better=False,
            note=f"{note}, median of {repeats}",
        )
    )


def _frames(remote: runbroker.Catalog, local: runbroker.Catalog, uid: str, file: Path) -> Result:
    r_run, l_run = remote[uid], local[uid]

    def read_remote() -> np.ndarray:
        return r_run.primary.read([IMAGE])[IMAGE].values

    def read_local() -> np.ndarray:
        return l_run.primary.read([IMAGE])[IMAGE].values

    wanted = _h5py_one(file)  # also warms the page cache for every reader
    # These two calls are also the warm-up.
    assert np.array_equal(read_remote(), wanted), "the remote read gave other frames"
    assert np.array_equal(read_local(), wanted), "the local read gave other frames"
    mb = wanted.nbytes / 1e6
    t_remote, t_local = _alternating(read_remote, read_local, FRAME_REPEATS, warm_up=False)
    t_h5 = best(timings(lambda: _h5py_one(file), FRAME_REPEATS))
    t = best(t_remote)
    return print_result(
        Result(
            "B9",
            "remote read() of 1,000 512x512 uint16 frames (AD_HDF5, filled on the server)",
            mb / t,
            "MB/s",
            mb / best(t_local),
            "local read(), same file",
            target=TARGET_FRAMES_MB_S,
            note=(
                f"{mb:,.0f} MB; best of {FRAME_REPEATS}, warm page cache; remote {t * 1e3:.0f} ms, "
                f"local {best(t_local) * 1e3:.0f} ms"
            ),
            extra_baselines={"h5py dataset[:]": mb / t_h5},
        )
    )


def _catalog(folder: Path) -> tuple[Path, str, str, str]:
    """The catalog file served, and the uids of its three runs (large, small, frames)."""
    large, large_uid, _, _ = build_columns(folder, LARGE)
    large.close()
    db = folder / f"read{LARGE}.db"  # where build_columns put it
    small, small_uid, _, _ = build_columns(folder, SMALL)
    frames, _ = build_frames(folder / "frames", n_files=1, frames_per_file=SMALL)
    with runbroker.open(db) as cat:
        cat.ingest(small[small_uid].documents(arrays=True))
        frames_uid = frames[-1].uid
        cat.ingest(frames[frames_uid].documents(arrays=True))
    small.close()
    frames.close()
    return db, large_uid, small_uid, frames_uid


def run() -> list[Result]:
    section("B9 remote read: read() through a server on loopback vs the same read locally")
    with tempfile.TemporaryDirectory(prefix="runbroker-b9-") as tmp:
        folder = Path(tmp)
        db, large_uid, small_uid, frames_uid = _catalog(folder)
        file = next((folder / "frames").rglob("*.h5"))
        with Served(db) as server, runbroker.open(db) as local:
            remote = runbroker.open(server.url, api_key=API_KEY, cache=False)  # B11 has the cache
            try:
                return [
                    _columns(remote, local, large_uid, LARGE),
                    _columns(remote, local, small_uid, SMALL),
                    _frames(remote, local, frames_uid, file),
                ]
            finally:
                remote.close()
