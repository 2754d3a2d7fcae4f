"""The narrow Store protocol that the user API (``runbroker.catalog``) is written against.

Every storage backend -- SQLite, PostgreSQL, a folder of files, an HTTP client -- implements
these few methods and nothing else, so the catalog behaves the same over each of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import PageGone
from ..queries import Query

__all__ = ["Columns", "LeavesOut", "PageGone", "PageInfo", "RunRecord", "Store"]

Columns = dict[str, "np.ndarray | list"]


@dataclass(frozen=True)
class RunRecord:
    """A run's header: its uid, start document and stop document (``None`` while running)."""

    uid: str
    start: dict
    stop: dict | None


@dataclass(frozen=True)
class PageInfo:
    """Where a block of a stream's events lives, without its data.

    ``n`` events of ``descriptor`` whose seq_nums lie in ``[seq_min, seq_max]``, stored in
    increasing seq_num order when ``ordered``.
    """

    id: int
    descriptor: str
    n: int
    seq_min: int
    seq_max: int
    ordered: bool = True


@runtime_checkable
class Store(Protocol):
    """What the catalog needs from storage. Runs are ordered newest first: (time, uid) desc."""

    uri: str

    def insert(self, name: str, doc: dict) -> None:
        """Validate and store one document (readers see it within 100 ms)."""

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many documents at once, atomically; return how many were given."""

    def flush(self) -> None:
        """Make everything inserted so far visible to other processes now."""

    def close(self) -> None:
        """Flush and release connections."""

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        """Runs matching ``query``, newest first, from ``offset``, at most ``limit``.

        ``before=(time, uid)`` starts after that run in this order (stable paging while
        runs are being added).
        """

    def count(self, query: Query | None) -> int:
        """How many runs match ``query``."""

    def get_run(self, uid: str) -> RunRecord | None:
        """The run with exactly this uid, or None."""

    def descriptors(self, run_uid: str) -> list[dict]:
        """The run's descriptor documents in the order they were stored."""

    def pages(self, descriptor_uids: list[str]) -> list[PageInfo]:
        """Pages of these descriptors, grouped by descriptor in the given order, by seq_min."""

    def read_pages(self, page_ids: list[int], columns: list[str] | None) -> list[Columns]:
        """Decoded columns of each page (all when ``columns`` is None), in the given order.

        Raises :class:`PageGone` if a page no longer exists (merged by a writer).
        """

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        """The run's documents in the order they were stored; events come as event pages,
        their columns as lists (or as the numpy arrays stored, with ``arrays=True``).
        ``uids=False`` leaves the event uids out of the pages (empty lists), for readers
        that do not need them: decoding them is much of a replay's time. With
        ``arrays=True``, ``uids="bytes"`` gives the uids of a page as a fixed-width bytes
        array (numpy ``S``) where the store keeps them so (ASCII uids), else as a list."""

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The run's ``resource``, ``stream_resource`` and ``stream_datum`` documents."""

    def datums(self, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        """datum_id -> (resource uid, datum_kwargs) for those of ``datum_ids`` stored."""


@runtime_checkable
class LeavesOut(Protocol):
    """A store that may leave some of its sources out (a folder's unreadable run files), so
    that a run looked for is missing from it without being absent from its files."""

    def left_out(self) -> list[str]:
        """Names of the sources left out (empty when every one is read)."""
        ...
