"""Combining data: streams on one time axis (:func:`align`), fixed time bins (:func:`resample`).

Example:
    >>> from runbroker.combine import align, resample
    >>> ds = align(other_run, ["primary", "baseline"], method="asof")
    >>> sorted(ds.data_vars)
    ['baseline_time', 'det', 'motor1', 'motor1_setpoint']
"""

from __future__ import annotations

from .align import align
from .resample import resample

__all__ = ["align", "resample"]
