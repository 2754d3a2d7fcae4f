"""Combining data: several runs in one Dataset, events holding waveforms unpacked into rows.

Example:
    >>> from runbroker.combine import concat, stack_events, unstack_events
"""

from .concat import concat
from .pivot import stack_events, unstack_events

__all__ = ["concat", "stack_events", "unstack_events"]
