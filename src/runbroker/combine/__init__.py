"""Combining data: streams on one time axis (:func:`align`), fixed time bins
(:func:`resample`), several runs in one Dataset (:func:`concat`), and events holding
waveforms unpacked into rows and back (:func:`unstack_events`, :func:`stack_events`).

Example:
    >>> from runbroker.combine import align, resample
    >>> ds = align(other_run, ["primary", "baseline"], method="asof")
    >>> sorted(ds.data_vars)
    ['baseline_time', 'det', 'motor1', 'motor1_setpoint']
"""

from __future__ import annotations

from .align import align
from .concat import concat
from .pivot import stack_events, unstack_events
from .resample import resample

__all__ = ["align", "concat", "resample", "stack_events", "unstack_events"]
