"""Runs with detector images in files, reached through a server: exported and packed by the
client, the images filled on the server (real RunEngine, real uvicorn, independent readers)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import motor

import runbroker
from runbroker.pack import pack
from runbroker.testing.detectors import ADHDF5Detector


@pytest.fixture
def remote_run(http_server, tmp_path):
    """A scan of an AD HDF5 detector written through the server; the remote and local runs."""
    url = http_server.catalog_url(f"files-{tmp_path.name}")
    remote = runbroker.open(url, api_key=http_server.api_key, cache=tmp_path / "cache")
    cam = ADHDF5Detector("cam", tmp_path / "frames", shape=(4, 6))
    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(remote.insert)
    engine(scan([cam], motor, -1, 1, 5))
    remote.flush()
    yield remote[-1]
    remote.close()


def test_images_read_through_the_server_are_the_files(remote_run):
    images = remote_run.primary.read()["cam_image"].values
    frames = [h5py.File(f, "r")["entry/data/data"][:] for f in _files(remote_run)]
    assert images.shape == (5, 4, 6)
    np.testing.assert_array_equal(images.reshape(5, 4, 6), np.concatenate(frames))


def test_a_remote_run_exports_with_its_images(remote_run, tmp_path):
    images = remote_run.primary.read()["cam_image"].values
    written = remote_run.export("tiff", tmp_path / "tiff")
    stack = np.stack([tifffile.imread(p) for p in sorted(map(str, written)) if "cam_image" in p])
    np.testing.assert_array_equal(stack.reshape(images.shape), images)
    (h5,) = remote_run.export("hdf5", tmp_path / "h5")
    with h5py.File(h5, "r") as f:
        found = [d for d in _datasets(f) if d.endswith("cam_image")]
        np.testing.assert_array_equal(f[found[0]][:].reshape(images.shape), images)


def test_a_remote_catalog_packs_with_its_images_filled(remote_run, tmp_path):
    report = pack(remote_run.catalog, tmp_path / "pack", external="fill", progress=False)
    assert report.copied == 1
    packed = runbroker.open(tmp_path / "pack")
    np.testing.assert_array_equal(
        packed[remote_run.uid].primary.read()["cam_image"].values,
        remote_run.primary.read()["cam_image"].values,
    )


def _files(run):
    return [
        f"{doc['root']}/{doc['resource_path']}"
        for name, doc in run.documents(fill=False)
        if name == "resource"
    ]


def _datasets(group, prefix=""):
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            yield f"{prefix}/{key}"
        else:
            yield from _datasets(item, f"{prefix}/{key}")
