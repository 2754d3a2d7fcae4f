"""Words and numbers as the reprs of catalogs, runs and streams show them."""

from __future__ import annotations

import math


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` in the right number.

    Example:
        >>> plural(1, "run"), plural(0, "run"), plural(3, "entry", "entries")
        ('1 run', '0 runs', '3 entries')
    """
    return f"{n} {word if n == 1 else (many or word + 's')}"


def duration(seconds: float | None) -> str:
    """A duration with its units, to the precision a person reads.

    Example:
        >>> duration(0.0123), duration(12.34), duration(192.0), duration(3725.0)
        ('12 ms', '12.3 s', '3 min 12 s', '1 h 02 min')
        >>> duration(None)
        '?'
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s" if whole % 60 else f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"
