"""The SQL statements a block of code sends to the database: for tests and benchmarks that
look at what the store asks (how many statements, their plans).

Example:
    >>> import runbroker
    >>> cat = runbroker.open("sqlite://")
    >>> with statements(cat.store._engine) as seen:
    ...     _ = len(cat)
    >>> any("count(*)" in sql for sql, _ in seen)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["statements"]


@contextmanager
def statements(engine: Any = Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (SQL text and parameters, in order) that ``engine`` -- by default
    every engine -- runs inside the block, in a list filled as they run."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)
