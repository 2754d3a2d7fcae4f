"""Asserting that two runs read the same: values, dtypes, timestamps and stop document."""

from __future__ import annotations

from typing import Any

__all__ = ["assert_same_run"]


def assert_same_run(again: Any, run: Any) -> None:
    """Fail unless ``again`` (a Run, e.g. a copy) reads exactly as ``run`` does.

    ``xarray``'s ``identical`` compares values but not dtypes (uint16 equals int64 there), so
    the dtypes of every variable are compared too.

    Example:
        >>> copy = runbroker.temp()
        >>> _ = copy.ingest(run.documents())
        >>> assert_same_run(copy[run.uid], run)
    """
    assert list(again) == list(run), (list(again), list(run))
    for stream in run:
        got, expected = again[stream].read(), run[stream].read()
        assert got.identical(expected), stream
        assert {k: v.dtype for k, v in got.variables.items()} == {
            k: v.dtype for k, v in expected.variables.items()
        }, stream
        assert again[stream].timestamps().identical(run[stream].timestamps()), stream
    assert again.stop == run.stop
