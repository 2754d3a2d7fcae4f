"""Following a run while it is written: a stream's events after a seq_num, looked for in any
store, and the cursor that hands each event out once, in seq_num order.

:meth:`runbroker.stream.Stream.follow` is written once over these. A store that can wait by
itself (:class:`~runbroker.store.base.Follows`: the HTTP store waits on its server) is asked
to; any other store is polled through :class:`Polling`. The server's held requests and its
feed of new documents (:mod:`runbroker.server.live`) look with :func:`look` and :func:`newer`
too, so a remote follower sees what a local one sees.

Example:
    >>> import runbroker
    >>> from bluesky import RunEngine
    >>> from bluesky.plans import count
    >>> from ophyd.sim import det
    >>> cat = runbroker.temp()
    >>> RE = RunEngine({}, call_returns_result=False)
    >>> _ = RE.subscribe(cat.insert)
    >>> _ = RE(count([det], 3))
    >>> found = look(cat.store, cat[-1].uid, "primary", after=1, fields=["det"])
    >>> found.columns["seq_num"].tolist(), found.stopped
    ([2, 3], True)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .columns import concat_columns
from .store.base import Columns, NewEvents, PageGone, PageInfo, Store, run_not_found

__all__ = ["GAP_WAIT", "Cursor", "Polling", "look", "newer"]

# Listing and reading pages again after a merge (PageGone): as Stream.read does.
_ATTEMPTS = 3
#: Seconds a follower waits for a missing seq_num (an event stored late) before it hands
#: out the events after it anyway.
GAP_WAIT = 2.0


def newer(
    store: Store,
    run_uid: str,
    descriptor_uids: list[str],
    after: int | None,
    columns: list[str] | None,
) -> Columns:
    """The ``columns`` (all when None; ``seq_num`` always) of the events of these
    descriptors whose seq_num is above ``after`` (all events when None), in seq_num order.

    Only the pages holding such events are read. Pages merged by a writer meanwhile
    (:class:`~runbroker.store.base.PageGone`) are listed again.
    """
    for attempt in range(_ATTEMPTS):
        pages = [
            p for p in store.pages(run_uid, descriptor_uids) if after is None or p.seq_max > after
        ]
        try:
            return _gather(store, run_uid, pages, after, columns)
        except PageGone:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _gather(
    store: Store,
    run_uid: str,
    pages: list[PageInfo],
    after: int | None,
    columns: list[str] | None,
) -> Columns:
    wanted = None if columns is None else list(dict.fromkeys(["time", "seq_num", *columns]))
    decoded = store.read_pages(run_uid, [p.id for p in pages], wanted) if pages else []
    for page, cols in zip(pages, decoded, strict=True):
        if len(cols["seq_num"]) != page.n:
            # The id now names other events (a merge): never mix them with the listed ones.
            raise PageGone(f"page {page.id} changed since it was listed; list pages again")
    names = wanted or list(dict.fromkeys(["time", "seq_num", *(k for c in decoded for k in c)]))
    lengths = [p.n for p in pages]
    joined = {n: concat_columns([c.get(n) for c in decoded], lengths) for n in names}
    seq = np.asarray(joined["seq_num"], dtype=np.int64)
    keep = np.arange(len(seq)) if after is None else np.flatnonzero(seq > after)
    order = keep[np.argsort(seq[keep], kind="stable")]
    out = {n: _pick(v, order) for n, v in joined.items()}
    out["seq_num"] = seq[order]
    return out


def _pick(column: Any, order: np.ndarray) -> Any:
    if isinstance(column, np.ndarray):
        return column[order]
    return [column[i] for i in order]


def look(
    store: Store, run_uid: str, stream: str, after: int | None, fields: list[str] | None
) -> NewEvents:
    """Look once for the events of ``stream`` after seq_num ``after``: their ``time``,
    ``seq_num`` and ``d:<field>`` columns (every field of the stream when ``fields`` is
    None). Raises ``RunNotFoundError`` for an unknown run.

    Whether the run has stopped is read first, so a stopped answer holds every event.
    """
    run = store.get_run(run_uid)
    if run is None:
        raise run_not_found(store, run_uid)
    stopped = run.stop is not None
    descriptors = [d for d in store.descriptors(run_uid) if d.get("name", "primary") == stream]
    uids = [d["uid"] for d in descriptors]
    if fields is None:
        fields = list(dict.fromkeys(f for d in descriptors for f in d.get("data_keys") or {}))
    if not uids:
        return NewEvents(_empty(), uids, stopped)
    columns = ["time", "seq_num", *("d:" + f for f in fields)]
    return NewEvents(newer(store, run_uid, uids, after, columns), uids, stopped)


def _empty() -> Columns:
    return {"time": np.empty(0), "seq_num": np.empty(0, dtype=np.int64)}


class Polling:
    """Any store as a :class:`~runbroker.store.base.Follows`: it looks every ``poll``
    seconds until there are new events, the run has stopped, or the timeout is reached.

    Example:
        >>> import runbroker
        >>> cat = runbroker.temp()
        >>> Polling(cat.store, 0.01).wait_events("nope", "primary", None, None, 0.1)
        Traceback (most recent call last):
        ...
        runbroker.errors.RunNotFoundError: no run 'nope' in sqlite:...
    """

    def __init__(self, store: Store, poll: float) -> None:
        self.store = store
        self.poll = poll

    def wait_events(
        self,
        run_uid: str,
        stream: str,
        after: int | None,
        fields: list[str] | None,
        timeout: float,
    ) -> NewEvents:
        deadline = time.monotonic() + timeout
        while True:
            found = look(self.store, run_uid, stream, after, fields)
            left = deadline - time.monotonic()
            if len(found) or found.stopped or left <= 0:
                return found
            time.sleep(min(self.poll, left))


class Cursor:
    """Where a follower is in a stream: hands out each event once, in seq_num order.

    ``after`` is the last seq_num handed out (None: none yet). Events come out only in an
    unbroken run of seq_nums from ``after + 1``: an event after a gap (one stored late, by a
    second writer or a batch still on its way) is held back until the gap fills, the run
    stops, or ``gap_wait`` seconds pass; then the events are handed out as they are.

    Example:
        >>> found = NewEvents({"time": np.zeros(3), "seq_num": np.array([3, 4, 6])}, [], False)
        >>> cursor = Cursor(after=2)
        >>> cursor.take(found)["seq_num"].tolist(), cursor.after, cursor.waiting
        ([3, 4], 4, True)
    """

    def __init__(self, after: int | None = None, gap_wait: float = GAP_WAIT) -> None:
        self.after = after
        self.gap_wait = gap_wait
        #: When the gap now held back was first seen (None: no gap).
        self.gap_since: float | None = None

    @property
    def waiting(self) -> bool:
        """Whether events are held back behind a gap."""
        return self.gap_since is not None

    def take(self, found: NewEvents) -> Columns | None:
        """The columns of ``found`` to hand out now (None: nothing), moving past them."""
        seq = np.asarray(found.columns["seq_num"], dtype=np.int64)
        if self.after is not None:
            # Answers of stores that do not filter (or a repeat) never hand an event out twice.
            fresh = np.flatnonzero(seq > self.after)
            if len(fresh) < len(seq):
                found = NewEvents(
                    {k: _pick(v, fresh) for k, v in found.columns.items()},
                    found.descriptors,
                    found.stopped,
                )
                seq = seq[fresh]
        if not len(seq):
            return None
        first = seq[0] if self.after is None else self.after + 1
        steps = np.diff(np.concatenate([[first - 1], seq]))
        breaks = np.flatnonzero(steps != 1)
        n = len(seq) if not len(breaks) else int(breaks[0])
        if n < len(seq) and not found.stopped:
            now = time.monotonic()
            if self.gap_since is None:
                self.gap_since = now
            if now - self.gap_since < self.gap_wait:
                return self._hand_out(found.columns, seq, n) if n else None
        self.gap_since = None
        return self._hand_out(found.columns, seq, len(seq))

    def _hand_out(self, columns: Columns, seq: np.ndarray, n: int) -> Columns:
        self.after = int(seq[n - 1])
        if n == len(seq):
            return columns
        return {k: v[:n] for k, v in columns.items()}
