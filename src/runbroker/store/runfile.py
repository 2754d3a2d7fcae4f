"""One run's document file (``.jsonl`` or ``.msgpack``), parsed into what a store serves.

The folder-of-files store (:mod:`runbroker.store.files`) reads a run's file only when the run
is read, and keeps a few parsed runs in a bounded cache. Parsing checks the file the way a
catalog checks documents it is given (event-model schemas, one start, events of declared
descriptors, columns that line up) and lays the events out as column pages exactly as the
SQL store does: events between two other documents are joined per descriptor, in the order
their last event arrived, and encoded with :mod:`runbroker.store.pages`. Reads, replays and
``read_pages`` columns are therefore the same as the SQL store's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from event_model import pack_datum_page, unpack_datum_page

from .. import docfiles
from ..docfiles import SUFFIXES
from ..documents import to_builtin, validate
from ..errors import BadRunFile, ExportError
from . import jsoncodec
from . import pages as codec
from .events import (
    MAX_EVENTS_PER_PAGE,
    DescriptorState,
    event_from_columns,
    page_from_columns,
    rechunk,
)

__all__ = [
    "SUFFIXES",
    "BadRunFile",
    "ParsedRun",
    "RunCache",
    "files_parsed",
    "is_run_file",
    "parse",
]


#: The notes of the run in file ``x.jsonl`` are in ``x.jsonl`` + NOTES (see FolderStore).
NOTES = ".notes.jsonl"


def is_run_file(name: str) -> bool:
    """Whether a file named ``name`` in a folder catalog holds a run (hidden files do not:
    files being written carry a hidden temporary name).

    Example:
        >>> is_run_file("scan.jsonl"), is_run_file(".scan.jsonl.tmp"), is_run_file("a.h5")
        (True, False, False)
        >>> is_run_file("scan.jsonl.notes.jsonl")  # the run's notes (runbroker.notes)
        False
    """
    lower = name.lower()
    return not name.startswith(".") and lower.endswith(SUFFIXES) and not lower.endswith(NOTES)


_ASSETS = ("resource", "stream_resource", "stream_datum")
# What a parsed datum costs in memory, roughly (id, resource uid, kwargs dict).
_DATUM_BYTES = 300
_parsed = 0  # files parsed by this process


def files_parsed() -> int:
    """How many run files this process has parsed (an indexed folder opens without any).

    Example:
        >>> files_parsed() >= 0
        True
    """
    return _parsed


class _TwoRuns(BadRunFile):
    """A second start document: the file is runs put together, not one damaged run."""


@dataclass(frozen=True)
class Page:
    """Encoded columns of a block of events of one descriptor (as the SQL store keeps them)."""

    descriptor: str
    n: int
    seq_min: int
    seq_max: int
    ordered: bool
    data: bytes
    extra: bytes


@dataclass
class ParsedRun:
    """Everything a store needs to serve one run, read from its file.

    Documents other than events are kept encoded (:mod:`runbroker.store.jsoncodec`) and
    decoded on each request, so callers always get fresh objects.
    """

    path: Path
    size: int
    mtime_ns: int
    start: dict
    stop: dict | None = None
    descriptors: list[bytes] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    # page numbers of each descriptor, by seq_min
    by_descriptor: dict[str, list[int]] = field(default_factory=dict)
    # replay order: ("doc", name, encoded) or ("page", descriptor uid, page number)
    replay: list[tuple[str, str, Any]] = field(default_factory=list)
    assets: list[tuple[str, bytes]] = field(default_factory=list)
    datums: dict[str, tuple[str, dict]] = field(default_factory=dict)
    nbytes: int = 0
    #: Where the file is damaged and what was left out because of it (None: read whole).
    damage: str | None = None

    @property
    def uid(self) -> str:
        """The run's uid."""
        return self.start["uid"]

    def descriptor_docs(self) -> list[dict]:
        """The descriptors, in the order they are in the file."""
        return [jsoncodec.loads(b) for b in self.descriptors]

    def asset_docs(self) -> list[tuple[str, dict]]:
        """``resource``, ``stream_resource`` and ``stream_datum`` documents, in order."""
        return [(kind, jsoncodec.loads(b)) for kind, b in self.assets]

    def children(self) -> list[tuple[str, str]]:
        """``(uid, kind)`` of the documents other documents point at: descriptors,
        resources and stream resources."""
        out = [(d["uid"], "descriptor") for d in self.descriptor_docs()]
        out += [(d["uid"], k) for k, d in self.asset_docs() if k != "stream_datum"]
        return out

    def seq_max(self, descriptor: str) -> int:
        """The highest seq_num stored for ``descriptor`` (0 if none)."""
        return max(
            (self.pages[i].seq_max for i in self.by_descriptor.get(descriptor, ())), default=0
        )

    def event(self, descriptor: str, seq_num: int) -> dict | None:
        """The stored event of ``descriptor`` with this seq_num, or None."""
        for i in self.by_descriptor.get(descriptor, ()):
            page = self.pages[i]
            if not page.seq_min <= seq_num <= page.seq_max:
                continue
            data, extra = codec.decode(page.data), codec.decode(page.extra)
            hits = (np.asarray(data["seq_num"]) == seq_num).nonzero()[0]
            if len(hits):
                return event_from_columns(descriptor, data, extra, int(hits[0]))
        return None

    def documents(self, arrays: bool = False, uids: bool = True) -> Iterator[tuple[str, Any]]:
        """The run's documents as the SQL store replays them: start first, stop last,
        consecutive pages of one descriptor cut evenly, datums as datum pages."""
        yield "start", dict(self.start)
        skip = () if uids else ("uid",)
        for (kind, descriptor), items in groupby(self.replay, key=_replay_key):
            if kind == "doc":
                for _, name, body in items:
                    yield name, jsoncodec.loads(body)
                continue
            parts = (self._decoded(number, skip) for _, _, number in items)
            for data, extra in rechunk(parts, MAX_EVENTS_PER_PAGE):
                yield "event_page", page_from_columns(descriptor, data, extra, arrays)
        if self.stop is not None:
            yield "stop", dict(self.stop)

    def _decoded(self, number: int, skip: tuple[str, ...]) -> tuple[dict, dict, int]:
        page = self.pages[number]
        return codec.decode(page.data), codec.decode(page.extra, skip=skip), page.n


def _replay_key(item: tuple[str, str, Any]) -> tuple[str, str | None]:
    return ("page", item[1]) if item[0] == "page" else ("doc", None)


class _Builder:
    """Turns a file's documents, one at a time, into a :class:`ParsedRun`."""

    def __init__(self, path: Path, size: int, mtime_ns: int) -> None:
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self.run: ParsedRun | None = None
        self.states: dict[str, DescriptorState] = {}
        # Descriptors with events waiting since the last other document, by last arrival.
        self.waiting: dict[str, None] = {}

    def add(self, number: int, name: str, doc: dict) -> None:
        """Take in one document, checked already (``validate``).

        Every check comes before the first change, so a document refused (an error) leaves
        the run as it was: the caller can keep what came before as an undamaged run.
        """
        if name not in ("event", "event_page"):
            doc = to_builtin(doc)  # msgpack gives numpy values; stores keep plain JSON
        if self.run is None:
            if name != "start":
                raise BadRunFile(f"the first document is a {name}, not a start document")
            self.run = ParsedRun(self.path, self.size, self.mtime_ns, doc)
            return
        run = self.run
        if name == "start":
            raise _TwoRuns(
                f"a second start document (uid {doc['uid']!r}); a file holds one run ({run.uid!r})"
            )
        if name == "event":
            state = self._state(doc["descriptor"])
            state.check_keys(name, doc["uid"], doc)
            state.add(doc)  # checks its seq_num and uid before queueing it
            self._arrived(state.uid)
            return
        if name == "event_page":
            state = self._state(doc["descriptor"])
            state.check_keys(name, doc["uid"], doc)
            batch = state.page_batch(doc)
            if batch is not None:
                state.add_batch(batch)
                self._arrived(state.uid)
            return
        if name == "stop":
            if run.stop is not None:
                raise BadRunFile(f"a second stop document (uid {doc['uid']!r})")
            self._same_run(name, doc, doc["run_start"])
            self._close_segment()
            run.stop = doc
            return
        body = jsoncodec.dumps(doc)
        if name == "descriptor":
            self._same_run(name, doc, doc["run_start"])
            if doc["uid"] in self.states:
                raise BadRunFile(f"descriptor {doc['uid']!r} appears twice")
            state = DescriptorState.from_descriptor(0, 0, run.uid, doc, 0)
            self._close_segment()
            self.states[doc["uid"]] = state
            run.descriptors.append(body)
            run.by_descriptor[doc["uid"]] = []
        elif name in _ASSETS:
            if name != "stream_datum" and "run_start" in doc:
                self._same_run(name, doc, doc["run_start"])
            self._close_segment()
            run.assets.append((name, body))
        elif name in ("datum", "datum_page"):
            page = doc if name == "datum_page" else pack_datum_page(doc)
            datums = {
                d["datum_id"]: (d["resource"], d["datum_kwargs"]) for d in unpack_datum_page(page)
            }
            name, body = "datum_page", jsoncodec.dumps(page)
            self._close_segment()
            run.datums.update(datums)
            run.nbytes += _DATUM_BYTES * len(datums)
        else:
            self._close_segment()
        run.replay.append(("doc", name, body))
        run.nbytes += len(body)

    def _same_run(self, name: str, doc: dict, run_start: str) -> None:
        assert self.run is not None
        if run_start != self.run.uid:
            raise BadRunFile(
                f"{name} {doc['uid']!r} belongs to run {run_start!r}, not to this file's run "
                f"{self.run.uid!r}"
            )

    def _state(self, uid: str) -> DescriptorState:
        state = self.states.get(uid)
        if state is None:
            raise BadRunFile(
                f"an event of descriptor {uid!r}, which the file does not hold before it"
            )
        return state

    def _arrived(self, uid: str) -> None:
        self.waiting.pop(uid, None)
        self.waiting[uid] = None

    def _close_segment(self) -> None:
        """Store the waiting events as pages, as the SQL store does before another document."""
        assert self.run is not None
        run = self.run
        for uid in self.waiting:
            for batch in self.states[uid].take():
                page = Page(
                    uid,
                    batch.n,
                    batch.seq_min,
                    batch.seq_max,
                    batch.ordered,
                    codec.encode(batch.data),
                    codec.encode(batch.extra),
                )
                number = len(run.pages)
                run.pages.append(page)
                run.by_descriptor[uid].append(number)
                run.replay.append(("page", uid, number))
                run.nbytes += len(page.data) + len(page.extra)
        self.waiting.clear()

    def damaged(self, message: str) -> None:
        """The file cannot be read past here: keep what came before, and say so."""
        assert self.run is not None
        self.run.damage = message

    def finish(self) -> ParsedRun:
        if self.run is None:
            raise BadRunFile("no documents; a run file starts with its start document")
        self._close_segment()
        run = self.run
        for numbers in run.by_descriptor.values():
            numbers.sort(key=lambda i: (run.pages[i].seq_min, i))
        for state in self.states.values():
            state.uids.clear()  # only needed while parsing
        return run


def parse(path: str | Path) -> ParsedRun:
    """Read and check one run's file; raise :class:`BadRunFile` naming what is wrong where.

    A damaged document after the start (a line cut short by a crash, one that is not a
    valid document, or a valid one the run cannot take, such as an event of a descriptor
    the file does not hold) ends the reading there: the documents before it are kept, the run has
    no stop (as a crashed run in any catalog) unless one came before, and ``damage`` says
    where the file is damaged and that what follows was left out. A second start document
    is no damage but two runs in one file: the file is refused whole.

    Example:
        >>> path, = run.export("jsonl", tmp_path)
        >>> parsed = parse(path)
        >>> parsed.uid == run.uid, len(parsed.descriptor_docs()), parsed.damage
        (True, 1, None)
        >>> with open(path, "ab") as f:
        ...     _ = f.write(b'["event", {"uid": "cut sh')
        >>> parse(path).damage.endswith("the documents after it are left out")
        True
    """
    global _parsed
    _parsed += 1
    path = Path(path)
    stat = path.stat()
    builder = _Builder(path, stat.st_size, stat.st_mtime_ns)
    number = 0
    documents = iter(docfiles.read(path))
    try:
        while True:
            number += 1
            try:
                name, doc = next(documents)
                doc = validate(name, doc)
                builder.add(number, name, doc)
            except StopIteration:
                number -= 1
                break
            except _DAMAGE as err:
                if builder.run is None or isinstance(err, _TwoRuns):  # no one run to keep
                    raise
                builder.damaged(_damage(path, number, err))
                break
        return builder.finish()
    except ExportError as err:
        raise BadRunFile(str(err)) from None
    except _DAMAGE as err:
        raise BadRunFile(f"{path}, {_where(path, number)}: {_reason(err)}") from None
    finally:
        close = getattr(documents, "close", None)
        if close is not None:
            close()


#: What a document that cannot be read or taken in raises (``LookupError``: a key or a list
#: entry it lacks, ``ValueError``: covers BadRunFile and DocumentError).
_DAMAGE = (ExportError, LookupError, TypeError, ValueError)


def _reason(err: Exception) -> str:
    """``err`` in words: a missing key is named as such, not as a bare quoted name."""
    if isinstance(err, KeyError):
        return f"missing key {err}"
    return str(err)


def _damage(path: Path, number: int, err: Exception) -> str:
    """What a warning says of a file damaged at its ``number``-th document."""
    reason = _reason(err)
    if reason.startswith(str(path)):  # the reader names the file and the line itself
        text = reason
    else:
        text = f"{path}, {_where(path, number)}: {reason}"
    return (
        f"{text}; the run is read up to there (with no stop document, as a crashed run, "
        "unless one came before) and the documents after it are left out"
    )


def _where(path: Path, number: int) -> str:
    """Where the ``number``-th document of a file is, in words a person can look up."""
    if number == 0:
        return "at its end"
    if path.suffix.lower() != ".jsonl":
        return f"record {number}"
    seen = 0
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == number:
                    return f"line {line_number}"
    return f"document {number}"


class RunCache:
    """The most recently read runs, parsed, bounded in count and in bytes.

    A run is parsed again when its file's size or modification time changed.

    Example:
        >>> path, = run.export("jsonl", tmp_path)
        >>> cache = RunCache(max_runs=2)
        >>> cache.get(1, path) is cache.get(1, path)
        True
    """

    def __init__(self, max_runs: int = 16, max_bytes: int = 256 * 2**20) -> None:
        self.max_runs, self.max_bytes = max_runs, max_bytes
        self._runs: OrderedDict[Any, ParsedRun] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, path: Path) -> ParsedRun:
        """The parsed run of ``path`` (cached under ``key``), parsing it if needed."""
        stat = path.stat()
        with self._lock:
            run = self._runs.get(key)
            fresh = run is not None and run.path == path
            if fresh and (run.size, run.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                self._runs.move_to_end(key)
                return run
        run = parse(path)
        self.put(key, run)
        return run

    def put(self, key: Any, run: ParsedRun) -> None:
        """Keep ``run`` (parsed elsewhere) under ``key``, forgetting the oldest beyond bounds."""
        with self._lock:
            self._runs[key] = run
            self._runs.move_to_end(key)
            total = sum(r.nbytes for r in self._runs.values())
            while len(self._runs) > 1 and (
                len(self._runs) > self.max_runs or total > self.max_bytes
            ):
                _, old = self._runs.popitem(last=False)
                total -= old.nbytes

    def forget(self, key: Any) -> None:
        """Drop the run cached under ``key``, if any."""
        with self._lock:
            self._runs.pop(key, None)
