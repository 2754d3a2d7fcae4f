"""Helpers shared by the export tests: a catalog fed by a RunEngine, a field read back, exact
array comparison, an exporter that never gets its stop document, and image frames that
differ from event to event."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import runbroker
from runbroker.export import Exporter, exporter

__all__ = ["assert_same_array", "counted_frame", "engine_catalog", "read_field", "without_stop"]


def engine_catalog(path: str | os.PathLike[str]) -> tuple[runbroker.Catalog, Any]:
    """A catalog at ``path`` and a RunEngine whose documents it stores as they come.

    Example:
        >>> from bluesky.plans import count
        >>> from ophyd.sim import det
        >>> cat, RE = engine_catalog(tmp_path / "runs.db")
        >>> uids = RE(count([det], 2))
        >>> len(cat[-1].primary.read()["det"])
        2
    """
    from bluesky import RunEngine

    cat = runbroker.open(path)
    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(cat.insert)
    return cat, engine


def read_field(run: Any, stream: str, name: str) -> np.ndarray:
    """The values of one field of a stream, as ``read()`` gives them.

    Example:
        >>> read_field(run, "primary", "motor").tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return run[stream].read([name])[name].values


def assert_same_array(actual: np.ndarray, expected: np.ndarray) -> None:
    """Fail unless the arrays have the same dtype, shape and values.

    Example:
        >>> assert_same_array(np.arange(3), np.arange(3))
    """
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected)


def without_stop(
    format: str, run: Any, directory: str | os.PathLike[str], **options: Any
) -> Exporter:
    """An exporter of ``format`` fed every document of ``run`` but its stop, not closed yet:
    what a crashed RunEngine leaves.

    Example:
        >>> exp = without_stop("csv", run, tmp_path)
        >>> exp.stop_doc is None and [p.suffix for p in exp.close()]
        ['.csv', '.json']
    """
    exp = exporter(format, directory, assets=run.catalog.assets, **options)
    for name, doc in run.documents(arrays=True):
        if name != "stop":
            exp(name, doc)
    return exp


def counted_frame(name: str, data_key: dict, seq_num: int) -> list:
    """A uint16 frame of the data key's shape, ``arange + 10 * seq_num``: each event's
    differs. Fits :func:`runbroker.testing.runs.changing_stream` as its ``values``.

    Example:
        >>> counted_frame("cam", {"shape": [2, 2]}, 1)
        [[10, 11], [12, 13]]
    """
    shape = data_key["shape"]
    size = int(np.prod(shape))
    return (np.arange(size, dtype="uint16").reshape(shape) + 10 * seq_num).tolist()
