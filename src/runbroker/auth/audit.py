"""The audit log as people read it: times they write (``--since 1d``) and tables they read.

The log itself is a table of the :class:`~runbroker.auth.directory.Directory`
(:meth:`~runbroker.auth.directory.Directory.record`,
:meth:`~runbroker.auth.directory.Directory.audit_log`). Times are shown, and read when they
name no zone, in UTC.

Example:
    >>> print(format_table(["id", "who"], [["k1", "alice"], ["k22", "bob"]]))
    id   who
    k1   alice
    k22  bob
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from .directory import AuditEntry
from .keys import parse_duration

__all__ = ["entries_json", "format_entries", "format_table", "format_time", "parse_since"]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The time ``--since`` names: a span back from now (``"1d"``, ``"12h"``, ``"90m"``,
    ``"2w"``), a date (``"2026-12-01"``, its midnight) or an ISO time; UTC unless it says.

    Example:
        >>> parse_since("2026-12-01")
        datetime.datetime(2026, 12, 1, 0, 0, tzinfo=datetime.timezone.utc)
        >>> now = datetime(2026, 12, 2, 12, tzinfo=UTC)
        >>> parse_since("36h", now=now)
        datetime.datetime(2026, 12, 1, 0, 0, tzinfo=datetime.timezone.utc)
        >>> parse_since("last week")
        Traceback (most recent call last):
        ...
        ValueError: --since 'last week': write a span back from now (1d, 12h, 90m, 2w), ...
    """
    cleaned = text.strip()
    try:
        span = parse_duration(cleaned) if cleaned.lower() != "never" else None
    except ValueError:
        span = None
    if span is not None:
        return (now or datetime.now(UTC)) - span
    try:
        when = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: write a span back from now (1d, 12h, 90m, 2w), a date "
            "(2026-12-01) or an ISO time (2026-12-01T08:00:00+01:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def format_time(when: datetime | None, empty: str = "-") -> str:
    """A time as a table shows it, to the second in UTC.

    Example:
        >>> format_time(datetime(2026, 12, 1, 8, 30, tzinfo=UTC)), format_time(None)
        ('2026-12-01 08:30:00', '-')
    """
    return empty if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under headers in columns two spaces apart (the last column unpadded)."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def format_entries(entries: Sequence[AuditEntry]) -> str:
    """Audit entries as a table, newest first (as given).

    Example:
        >>> e = AuditEntry(1, datetime(2026, 12, 1, tzinfo=UTC), "local:root", "keys.revoke",
        ...                "k1", {}, "cli")
        >>> print(format_entries([e]))
        time                 principal   action       target  client  detail
        2026-12-01 00:00:00  local:root  keys.revoke  k1      cli
    """
    return format_table(
        ["time", "principal", "action", "target", "client", "detail"],
        (
            [
                format_time(e.time),
                e.principal,
                e.action,
                e.target or "-",
                e.client or "-",
                json.dumps(e.detail, sort_keys=True) if e.detail else "",
            ]
            for e in entries
        ),
    )


def entries_json(entries: Sequence[AuditEntry]) -> str:
    """Audit entries as JSON lines, one object per entry (ISO times).

    Example:
        >>> e = AuditEntry(1, datetime(2026, 12, 1, tzinfo=UTC), "bob", "write", "uid1", {}, "")
        >>> entries_json([e])
        '{"action": "write", "client": "", "detail": {}, "id": 1, "principal": "bob", ...}'
    """
    return "\n".join(
        json.dumps(
            {
                "action": e.action,
                "client": e.client,
                "detail": dict(e.detail),
                "id": e.id,
                "principal": e.principal,
                "target": e.target,
                "time": e.time.isoformat(),
            },
            sort_keys=True,
        )
        for e in entries
    )
