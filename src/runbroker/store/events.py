"""Turn events and event pages of one descriptor into column pages, checking them on the way.

This is storage-independent: any store that keeps events column-wise can use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from ..columns import DATA, FILLED, TIMESTAMP, concat_columns, uid_list
from ..documents import ConflictError, DocumentError, to_builtin
from .pages import to_column, to_columns, uid_column

__all__ = ["Batch", "DescriptorState", "canonical", "event_from_columns", "page_from_columns"]

MAX_EVENTS_PER_PAGE = 131072
MAX_BYTES_PER_PAGE = 16 * 2**20

# A value an event leaves out (its column holds None there). A plain ``object()``: the
# garbage collector does not track it, so a queued event holding it can be untracked too.
_ABSENT: Any = object()
# The keys of an event that its queued entry holds in their own places (the descriptor's uid
# is the state's own); ``filled`` is optional.
_PLAIN_KEYS = frozenset({"uid", "time", "seq_num", "descriptor", "data", "timestamps", "filled"})
_REQUIRED_KEYS = len(_PLAIN_KEYS) - 1


def event_is_new(
    descriptor_uid: str, stored: Mapping[str, Any] | None, doc: Mapping, page: Mapping | None
) -> bool:
    """Whether ``doc`` (one event, of event page ``page`` if given) is new: False if the
    event already stored at its seq_num is the same; :class:`ConflictError` if it differs.

    Example:
        >>> event_is_new("d1", None, {"uid": "e1", "seq_num": 1}, None)
        True
        >>> event_is_new("d1", {"uid": "e1", "seq_num": 1}, {"uid": "e1", "seq_num": 1}, None)
        False
    """
    if stored is None:
        return True
    if canonical(stored) == canonical(doc):
        return False
    raise ConflictError(
        "event" if page is None else "event_page",
        doc["uid"] if page is None else page["uid"],
        "seq_num",
        f"descriptor {descriptor_uid!r} already has an event with seq_num {doc['seq_num']} "
        f"(uid {stored['uid']!r}) with different content"
        + ("" if page is None else f" than event {doc['uid']!r} of this page"),
    )


def check_datum_ids(name: str, ids: list[str]) -> None:
    """Refuse a datum page that names one datum twice.

    Example:
        >>> check_datum_ids("datum_page", ["r/0", "r/0"])
        Traceback (most recent call last):
        ...
        runbroker.errors.DocumentError: ...datum_id 'r/0' appears twice in the page
    """
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise DocumentError(
            name, ids, "datum_id", f"datum_id {repeated!r} appears twice in the page"
        )


def canonical(doc: Any) -> bytes:
    """A byte string equal for two documents exactly when they mean the same thing.

    Ints and floats of equal value compare equal (1 == 1.0), NaN equals NaN, key order and
    numpy-vs-list do not matter.

    Example:
        >>> canonical({"a": 1, "b": [float("nan")]}) == canonical({"b": [math.nan], "a": 1.0})
        True
    """

    if isinstance(doc, dict) and doc.get("filled") == {}:
        # An empty "filled" says nothing; replayed events leave it out.
        doc = {k: v for k, v in doc.items() if k != "filled"}

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return "nan" if math.isnan(v) else float(v)
        return v

    return orjson.dumps(norm(to_builtin(doc)), option=orjson.OPT_SORT_KEYS)


@dataclass
class Batch:
    """Columns of a block of events, ready to be stored as one page."""

    n: int
    seq_min: int
    seq_max: int
    data: dict[str, np.ndarray | list]
    extra: dict[str, np.ndarray | list]

    def keep(self, mask: np.ndarray) -> Batch | None:
        """The events where ``mask`` is true, or None if there are none."""
        if not mask.any():
            return None

        def pick(col: np.ndarray | list) -> np.ndarray | list:
            if isinstance(col, np.ndarray):
                return col[mask]
            return [v for v, m in zip(col, mask, strict=True) if m]

        data = {k: pick(v) for k, v in self.data.items()}
        seqs = data["seq_num"]
        extra = {k: pick(v) for k, v in self.extra.items()}
        return Batch(int(mask.sum()), int(seqs.min()), int(seqs.max()), data, extra)

    @property
    def ordered(self) -> bool:
        """True when seq_nums strictly increase through the batch."""
        seqs = self.data["seq_num"]
        # Not np.diff, which costs twice as much on the few events of a small run's page.
        return bool(len(seqs) < 2 or (seqs[1:] > seqs[:-1]).all())

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the batch (arrays only; lists count 64 bytes a value)."""
        return sum(
            c.nbytes if isinstance(c, np.ndarray) else 64 * len(c)
            for cols in (self.data, self.extra)
            for c in cols.values()
        )


@dataclass
class DescriptorState:
    """What a writer remembers about one descriptor: its fields and its queued events.

    Single events wait in ``pending``; event pages (and pending events that preceded them)
    wait as ready-made batches in ``ready``. ``seq_max`` covers stored and queued events, so
    an event at or below it may repeat an earlier one and must be checked.

    A queued event is kept as a tuple of plain values (see :meth:`_entry`), not as a copy of
    its dicts: Python's garbage collector stops tracking such tuples by its pass of the
    middle generation, before they could reach the oldest, while every dict copy stayed
    tracked until the commit. At 100,000 events a second, the copies alive at each pass were
    promoted by the thousand, and those promotions are what set off the full collections:
    each walks every object of the process and holds every thread (the committer's too) for
    60-200 ms where a process has imported runbroker's dependencies, beyond the 100 ms in
    which a document must be visible.
    """

    id: int
    uid: str
    run_id: int
    run_uid: str
    fields: tuple[str, ...]
    seq_max: int
    max_events: int = MAX_EVENTS_PER_PAGE
    pending: list[tuple] = field(default_factory=list)
    pending_seqs: dict[int, tuple] = field(default_factory=dict)
    # Some pending event leaves out a declared field (its entry holds _ABSENT there).
    pending_gaps: bool = False
    ready: list[Batch] = field(default_factory=list)
    queued: int = 0
    queued_bytes: int = 0
    small_pages: int = 0
    pages_written: int = 0
    # When this descriptor last had an event queued (a counter of the writer's): pages are
    # given their replay positions in this order, so a replayed run replays the same way.
    arrival: int = 0
    # Highest seq_num this writer knows to be in the database; a higher one found there at
    # flush time means another writer wrote this descriptor too.
    flushed_max: int = -1
    field_set: frozenset = frozenset()
    # ``STREAM:`` fields: their data comes in stream_datum documents, never in events, so
    # they get a column only when an event does carry them (else replay would add nulls).
    stream_fields: frozenset = frozenset()
    has_arrays: bool = False  # some field holds a per-event array (copied when queued)
    # uids of single events written through this state: refuses an event uid reused with
    # another seq_num. Held only while the run is being written (dropped at its stop).
    uids: set[str] = field(default_factory=set)
    # Statistics of the pages this writer stored (runbroker.store.stats.Accumulator), and
    # how many events they hold; None when it may not have seen them all (see sqlstats).
    stats: Any = None
    stats_events: int = 0
    # What the statistics need of the descriptor (its name and numeric fields), kept with them.
    descriptor: Any = None
    # The values of ``fields`` of an event's data or timestamps, as a tuple (KeyError if one
    # is left out).
    values_of: Callable[[Mapping[str, Any]], tuple] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.values_of = _getter(self.fields)

    @classmethod
    def from_descriptor(
        cls, id: int, run_id: int, run_uid: str, doc: dict, seq_max: int
    ) -> DescriptorState:
        """Build the state of a stored descriptor.

        Example:
            >>> d = {"uid": "d1", "data_keys": {"x": {"shape": [], "dtype": "number"}}}
            >>> DescriptorState.from_descriptor(1, 1, "r1", d, 0).fields
            ('x',)
        """
        data_keys = doc["data_keys"]
        per_event = 16
        for dk in data_keys.values():
            shape = [s for s in (dk.get("shape") or []) if s]
            per_event += 8 * int(np.prod(shape)) if shape else 8
        max_events = max(1, min(MAX_EVENTS_PER_PAGE, MAX_BYTES_PER_PAGE // per_event))
        return cls(
            id, doc["uid"], run_id, run_uid, tuple(data_keys), seq_max, max_events,
            flushed_max=seq_max,
            field_set=frozenset(data_keys),
            stream_fields=frozenset(
                k for k, dk in data_keys.items()
                if str(dk.get("external") or "").upper().startswith("STREAM")
            ),
            has_arrays=any(dk.get("shape") for dk in data_keys.values()),
        )  # fmt: skip

    def check_keys(self, name: str, uid: Any, doc: dict) -> None:
        """Refuse data/timestamps/filled keys that the descriptor does not declare."""
        allowed = self.field_set
        for part in ("data", "timestamps", "filled"):
            keys = doc.get(part)
            if not keys or keys.keys() <= allowed:  # the usual case, decided in C
                continue
            extra = set(keys).difference(allowed)
            if extra:
                raise DocumentError(
                    name,
                    uid,
                    f"{part}.{sorted(extra)[0]}",
                    f"field not declared in descriptor {self.uid!r} "
                    f"(declared: {', '.join(self.fields)})",
                )

    def _touch(self, n: int) -> None:
        self.queued += n

    def add(self, doc: dict) -> bool:
        """Queue one event; return False if it is an exact repeat of a queued one."""
        seq = doc["seq_num"]
        queued = self.pending_seqs.get(seq)
        if queued is not None:
            if canonical(self._as_doc(queued)) == canonical(doc):
                return False
            raise ConflictError(
                "event",
                doc["uid"],
                "seq_num",
                f"seq_num {seq} of descriptor {self.uid!r} was already given by event "
                f"{queued[0]!r} with different content",
            )
        if doc["uid"] in self.uids:
            raise ConflictError(
                "event",
                doc["uid"],
                "uid",
                f"this uid was already used by another event of descriptor {self.uid!r} "
                f"(seq_num {seq} is new)",
            )
        entry = self._entry(doc)
        self.uids.add(doc["uid"])  # after the copies, which may fail: all or nothing
        self._touch(1)
        self.pending.append(entry)
        self.pending_seqs[seq] = entry
        self.seq_max = max(self.seq_max, seq)
        if len(self.pending) >= self.max_events:
            self._cut()
        return True

    def queued_event(self, seq_num: int) -> dict | None:
        """The queued event with ``seq_num`` as a document, or None if none is queued.

        Example:
            >>> d = {"uid": "d1", "data_keys": {"x": {"shape": [], "dtype": "number"}}}
            >>> state = DescriptorState.from_descriptor(1, 1, "r1", d, 0)
            >>> ev = {"uid": "e1", "time": 1.0, "seq_num": 1, "descriptor": "d1",
            ...       "data": {"x": 2.0}, "timestamps": {"x": 1.0}}
            >>> state.add(ev)
            True
            >>> state.queued_event(1) == ev, state.queued_event(2)
            (True, None)
        """
        entry = self.pending_seqs.get(seq_num)
        return None if entry is None else self._as_doc(entry)

    def _entry(self, doc: dict) -> tuple:
        """What is queued of event ``doc``: ``(uid, time, seq_num, data values, timestamp
        values, filled keys and values in turn or None, other keys' items or None)``, the
        values in the order of ``fields``. Our own copy: the caller may change its dicts or
        arrays later."""
        data, stamps = doc["data"], doc["timestamps"]
        try:
            row, ts = self.values_of(data), self.values_of(stamps)
        except KeyError:  # a field left out
            row = tuple(data.get(f, _ABSENT) for f in self.fields)
            ts = tuple(stamps.get(f, _ABSENT) for f in self.fields)
            self.pending_gaps = True
        if self.has_arrays:
            row = _own(row)
        filled = doc.get("filled")
        others = None
        if len(doc) - (filled is not None) > _REQUIRED_KEYS:  # keys beyond the usual ones
            others = tuple((k, v) for k, v in doc.items() if k not in _PLAIN_KEYS)
        return (
            doc["uid"],
            doc["time"],
            doc["seq_num"],
            row,
            ts,
            None if filled is None else _flat(filled),
            others,
        )

    def _as_doc(self, entry: tuple) -> dict:
        """The event document queued as ``entry`` (see :meth:`_entry`)."""
        uid, time, seq_num, row, ts, filled, others = entry
        fields = self.fields
        doc = {
            "uid": uid,
            "time": time,
            "seq_num": seq_num,
            "descriptor": self.uid,
            "data": {f: v for f, v in zip(fields, row, strict=True) if v is not _ABSENT},
            "timestamps": {f: v for f, v in zip(fields, ts, strict=True) if v is not _ABSENT},
        }
        if filled is not None:
            doc["filled"] = _unflat(filled)
        if others:
            doc.update(others)
        return doc

    def add_batch(self, batch: Batch) -> None:
        """Queue a page's worth of columns, after any single events queued before it."""
        # Pages are keyed by seq_num only: checking every uid of a page against every uid
        # seen would cost a third of the page's ingest time.
        self._cut()
        self._touch(batch.n)
        self.ready.append(batch)
        self.queued_bytes += batch.nbytes
        self.seq_max = max(self.seq_max, batch.seq_max)

    def _cut(self) -> None:
        events, self.pending, self.pending_seqs = self.pending, [], {}
        gaps, self.pending_gaps = self.pending_gaps, False
        if events:
            batch = self._columns(events, gaps)
            self.ready.append(batch)
            self.queued_bytes += batch.nbytes

    def take(self) -> list[Batch]:
        """Every queued batch, oldest first, joined into as few pages as fit, and forget them.

        Fewer, bigger pages are what make reads fast: a stream is then a few blobs.
        """
        self._cut()
        ready, self.ready = self.ready, []
        self.queued = self.queued_bytes = 0
        groups: list[list[Batch]] = []
        size = 0  # events in the last group (summing it again for every page was quadratic)
        for batch in ready:
            if groups and size + batch.n <= self.max_events:
                groups[-1].append(batch)
                size += batch.n
            else:
                groups.append([batch])
                size = batch.n
        return [group[0] if len(group) == 1 else _join(group) for group in groups]

    def _columns(self, events: list[tuple], gaps: bool) -> Batch:
        """The batch of queued events (:meth:`_entry`); ``gaps``: some leave out a field."""
        uids, times, seq_list, rows, stamps, fills, _ = zip(*events, strict=True)
        n = len(events)
        seqs = np.fromiter(seq_list, dtype=np.int64, count=n)
        data: dict[str, np.ndarray | list] = {
            "time": np.fromiter(times, dtype=np.float64, count=n),
            "seq_num": seqs,
        }
        extra: dict[str, np.ndarray | list] = {"uid": list(uids)}
        fields = self.fields
        data_cols = list(zip(*rows, strict=True)) if fields else []
        ts_cols = list(zip(*stamps, strict=True)) if fields else []
        if gaps:
            # A STREAM: field gets a column only when an event carries it (else replay
            # would add nulls); a value left out is None in its column.
            keep = [
                i
                for i, f in enumerate(fields)
                if f not in self.stream_fields
                or any(v is not _ABSENT for v in data_cols[i])
                or any(v is not _ABSENT for v in ts_cols[i])
            ]
            fields = tuple(fields[i] for i in keep)
            data_cols, ts_cols = (
                [[None if v is _ABSENT else v for v in cols[i]] for i in keep]
                for cols in (data_cols, ts_cols)
            )
        for f, column in zip(fields, to_columns(data_cols), strict=True):
            data[DATA + f] = column
        for f, column in zip(fields, to_columns(ts_cols), strict=True):
            extra[TIMESTAMP + f] = column
        if any(fills):
            filled = [_unflat(kv or ()) for kv in fills]
            for f in {k for fill in filled for k in fill}:
                extra[FILLED + f] = [fill.get(f) for fill in filled]
        return Batch(n, int(min(seq_list)), int(max(seq_list)), data, extra)

    def page_batch(self, doc: dict) -> Batch | None:
        """Columns of an event_page document, after checking its columns line up."""
        uids = doc["uid"]
        n = len(uids)
        if n == 0:
            return None

        # id -> (values, column): event-model's pages share one list between time and every
        # timestamp column; converting it once saves up to half of a page's conversions.
        converted: dict[int, tuple[Any, Any]] = {}

        def convert(values: Any) -> Any:
            hit = converted.get(id(values))
            if hit is not None and hit[0] is values:
                return hit[1]
            column = to_column(values)
            # The caller may reuse its buffers (flyers do): keep our own copy.
            if column is values:
                column = column.copy()
            converted[id(values)] = (values, column)
            return column

        def col(part: str, f: str) -> Any:
            values = doc[part].get(f)
            if values is None:
                return [None] * n
            if len(values) != n:
                raise DocumentError(
                    "event_page",
                    uids,
                    f"{part}.{f}",
                    f"has {len(values)} values but the page has {n} uids",
                )
            return convert(values)

        for key in ("time", "seq_num"):
            if len(doc[key]) != n:
                raise DocumentError(
                    "event_page", uids, key, f"has {len(doc[key])} values but the page has {n} uids"
                )
        seqs = to_column(doc["seq_num"])
        if not (isinstance(seqs, np.ndarray) and seqs.dtype == np.int64):
            seqs = np.array(doc["seq_num"], dtype=np.int64)
        elif seqs is doc["seq_num"]:
            seqs = seqs.copy()
        # Strictly increasing (the usual case) means no repeats; otherwise look closer.
        increasing = bool((seqs[1:] > seqs[:-1]).all())
        if not increasing and len(np.unique(seqs)) != n:
            raise DocumentError("event_page", uids, "seq_num", "the same seq_num appears twice")
        times = convert(doc["time"])
        if not (isinstance(times, np.ndarray) and times.dtype == np.float64):
            times = np.array(doc["time"], dtype=np.float64)
        data: dict[str, Any] = {"time": times, "seq_num": seqs}
        extra: dict[str, Any] = {"uid": uid_column(uids)}
        for f in self.fields:
            if f in self.stream_fields and f not in doc["data"] and f not in doc["timestamps"]:
                continue
            data[DATA + f] = col("data", f)
            extra[TIMESTAMP + f] = col("timestamps", f)
        for f, values in (doc.get("filled") or {}).items():
            if len(values) != n:
                raise DocumentError(
                    "event_page", uids, f"filled.{f}", f"has {len(values)} values, not {n}"
                )
            extra[FILLED + f] = list(values)
        if increasing:
            return Batch(n, int(seqs[0]), int(seqs[-1]), data, extra)
        return Batch(n, int(seqs.min()), int(seqs.max()), data, extra)


def _own(values: tuple) -> tuple:
    """``values`` with each array copied (the caller may change its arrays after queueing)."""
    return tuple(v.copy() if isinstance(v, np.ndarray) else v for v in values)


def _flat(pairs: Mapping[str, Any]) -> tuple:
    """A dict's keys and values in turn, as one tuple: a tuple of pairs would take the
    garbage collector one more pass to untrack (and the queued event holding it with it).

    Example:
        >>> _flat({"a": True, "b": False}), _unflat(_flat({"a": True}))
        (('a', True, 'b', False), {'a': True})
    """
    return tuple(chain.from_iterable(pairs.items())) if pairs else ()


def _unflat(flat: tuple) -> dict:
    """The dict :func:`_flat` was made from."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _getter(fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple]:
    """A function giving the values of ``fields`` of a dict as a tuple, in C where it can.

    Example:
        >>> _getter(("a", "b"))({"b": 2, "a": 1}), _getter(("a",))({"a": 1}), _getter(())({})
        ((1, 2), (1,), ())
    """
    if len(fields) > 1:
        return itemgetter(*fields)
    if fields:
        (only,) = fields
        return lambda values: (values[only],)
    return lambda values: ()


def _join(batches: list[Batch]) -> Batch:
    data, extra = merge_batches([(b.data, b.extra, b.n) for b in batches])
    return Batch(
        sum(b.n for b in batches),
        min(b.seq_min for b in batches),
        max(b.seq_max for b in batches),
        data,
        extra,
    )


def merge_batches(parts: list[tuple[dict, dict, int]]) -> tuple[dict, dict]:
    """Concatenate the (data, extra) columns of several pages into one page's columns."""
    if len(parts) == 1:  # most runs replay as one page per stream: nothing to join
        return dict(parts[0][0]), dict(parts[0][1])
    lengths = [p[2] for p in parts]
    # Columns made of the very same pieces are joined once and stay one array: event-model's
    # pages share one list between time and every timestamp column (see page_batch), and
    # the encoder then finds them equal at no cost.
    joined: dict[tuple[int, ...], tuple[list, Any]] = {}

    def concat(pieces: list) -> Any:
        key = tuple(map(id, pieces))
        hit = joined.get(key)
        if hit is not None:
            return hit[1]
        column = concat_columns(pieces, lengths)
        if isinstance(column, np.ndarray):  # lists (of values, of Nones) are never shared
            joined[key] = (pieces, column)  # the pieces are held: their ids stay theirs
        return column

    out = []
    for which in (0, 1):
        names: dict[str, None] = {}
        for p in parts:
            names.update(dict.fromkeys(p[which]))
        out.append({name: concat([p[which].get(name) for p in parts]) for name in names})
    return out[0], out[1]


def rechunk(parts: Iterable[tuple[dict, dict, int]], size: int) -> Iterator[tuple[dict, dict]]:
    """Join consecutive pages' columns and cut them into pages of exactly ``size`` events.

    Replayed documents then do not depend on how the events happened to be split into pages
    when they were stored (which depends on commit timing).

    Example:
        >>> part = ({"x": np.arange(3)}, {"uid": ["a", "b", "c"]}, 3)
        >>> [d["x"].tolist() for d, _ in rechunk([part, part], 4)]
        [[0, 1, 2, 0], [1, 2]]
    """
    held: list[tuple[dict, dict, int]] = []
    count = 0
    for part in parts:
        held.append(part)
        count += part[2]
        while count >= size:
            data, extra = merge_batches(held)
            yield _cut(data, 0, size), _cut(extra, 0, size)
            count -= size
            held = [(_cut(data, size, None), _cut(extra, size, None), count)] if count else []
    if held:
        yield merge_batches(held)


def _cut(columns: dict, lo: int, hi: int | None) -> dict:
    return {k: v[lo:hi] for k, v in columns.items()}


def _value(col: np.ndarray | list, i: int) -> Any:
    v = col[i]
    return v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v


def event_from_columns(descriptor: str, data: dict, extra: dict, i: int) -> dict:
    """Rebuild the i-th event of a page from its decoded columns."""
    uid = extra["uid"][i]
    ev = {
        "uid": uid.decode("ascii") if isinstance(uid, bytes) else uid,
        "time": float(data["time"][i]),
        "seq_num": int(data["seq_num"][i]),
        "descriptor": descriptor,
        "data": {k[2:]: _value(v, i) for k, v in data.items() if k.startswith(DATA)},
        "timestamps": {k[2:]: _value(v, i) for k, v in extra.items() if k.startswith(TIMESTAMP)},
    }
    filled = {k[2:]: v[i] for k, v in extra.items() if k.startswith(FILLED)}
    if filled:
        ev["filled"] = filled
    return ev


def page_from_columns(
    descriptor: str, data: dict, extra: dict, arrays: bool = False, uids: bool | str = True
) -> dict:
    """Rebuild an event_page document from a page's decoded columns (as lists, or as the
    arrays they are with ``arrays=True``).

    Event uids come as a list of ``str``; with ``arrays=True`` and ``uids="bytes"`` a uid
    block stays the fixed-width bytes array it was decoded as (for writers of fixed-width
    strings, which then need no loop over the uids).

    Example:
        >>> cols = {"time": np.zeros(1), "seq_num": np.ones(1, int), "d:x": np.ones(1)}
        >>> page_from_columns("d1", cols, {"uid": ["e1"], "t:x": np.zeros(1)})["data"]
        {'x': [1.0]}
    """

    def as_list(v: np.ndarray | list) -> list | np.ndarray:
        if isinstance(v, np.ndarray):
            return v if arrays else v.tolist()
        return list(v)

    uid = extra.get("uid", ())
    keep = arrays and uids == "bytes" and isinstance(uid, np.ndarray)
    page = {
        "uid": uid if keep else uid_list(uid),
        "time": as_list(data["time"]),
        "seq_num": as_list(data["seq_num"]),
        "descriptor": descriptor,
        "data": {k[2:]: as_list(v) for k, v in data.items() if k.startswith(DATA)},
        "timestamps": {k[2:]: as_list(v) for k, v in extra.items() if k.startswith(TIMESTAMP)},
    }
    filled = {k[2:]: list(v) for k, v in extra.items() if k.startswith(FILLED)}
    if filled:
        page["filled"] = filled
    return page
