"""The ``fill`` argument of ``read()`` and ``documents()``: a bool, or databroker's spellings.

databroker users write ``fill="no"`` and ``fill="delayed"``; a non-empty string must never be
taken as true (that would load every detector file). Runs come from the real RunEngine with an
area detector writing real HDF5 files; every test runs on every store.
"""

from __future__ import annotations

import numpy as np
import pytest
from bluesky.plans import count

from runbroker.assets import ExternalDataError
from runbroker.testing.detectors import ADHDF5Detector, expected_frame

SHAPE = (4, 6)


def _run_without_its_files(catalog, RE, tmp_path):
    """A run whose detector file is gone: any attempt to load the frames fails."""
    det = ADHDF5Detector("det", tmp_path / "data", shape=SHAPE)
    RE(count([det], 3))
    run = catalog[-1]
    refs = run.primary.read(fill=False)["det_image"].values.tolist()
    for path in (tmp_path / "data").rglob("*.h5"):
        path.unlink()
    with pytest.raises(ExternalDataError):
        run.primary.read()
    return run, refs


def test_fill_no_keeps_the_references(catalog, RE, tmp_path):
    run, refs = _run_without_its_files(catalog, RE, tmp_path)
    assert run.primary.read(fill="no")["det_image"].values.tolist() == refs
    events = [d for n, d in run.documents(fill="no", pages=False) if n == "event"]
    assert [e["data"]["det_image"] for e in events] == refs


def test_fill_yes_loads_the_frames(catalog, RE, tmp_path):
    det = ADHDF5Detector("det", tmp_path / "data", shape=SHAPE)
    RE(count([det], 3))
    run = catalog[-1]
    expected = np.stack([expected_frame(k, SHAPE) for k in range(3)])
    np.testing.assert_array_equal(run.primary.read(fill="yes")["det_image"].values, expected)
    events = [d for n, d in run.documents(fill="yes", pages=False) if n == "event"]
    np.testing.assert_array_equal(np.stack([e["data"]["det_image"] for e in events]), expected)


@pytest.mark.parametrize("value", ["delayed", "maybe", 1, None])
def test_other_values_are_refused_before_anything_is_read(catalog, RE, tmp_path, value):
    run, _ = _run_without_its_files(catalog, RE, tmp_path)
    for call in (lambda: run.primary.read(fill=value), lambda: run.documents(fill=value)):
        with pytest.raises(ValueError, match=f"fill={value!r}") as err:
            call()
        assert "to_dask" in str(err.value) if value == "delayed" else "True" in str(err.value)
