"""Writing into a folder of run files: the part of :class:`~runbroker.store.files.FolderStore`
that takes documents.

Each document is checked by :mod:`~runbroker.store.intake` (as for the SQL store), against
what the store knows of its run (:class:`_Writer`, read from the run's file when needed),
then written as JSON Lines into memory; when the call succeeds, what was written is appended
to the run's file and the index is told. ``ingest`` appends as it goes once much is waiting,
and truncates the files back if a later document is refused.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_model import unpack_datum_page

from ..docfiles import DescriptorsHeldBack, dumps, jsonl_line
from ..documents import validate
from ..errors import ReadOnlyError
from ..naming import DEFAULT_TEMPLATE, TemplateError, render, safe_name
from . import intake
from .events import Batch, DescriptorState, canonical
from .folderindex import FolderIndex, undeclared
from .runfile import ParsedRun, RunCache
from .stats import Accumulator, combine, summarise_store

__all__ = ["FolderWriting", "undeclared"]

# Runs whose writing state is kept in memory at most (beyond, the oldest are forgotten and
# read again from their file if more documents come).
_MAX_WRITERS = 64
# An ingest appends to the files once this much is waiting (undone if the call fails).
_SPILL_BYTES = 8 * 2**20


def _as_read(doc: Any) -> Any:
    """``doc`` as it reads back from a JSON Lines file (numpy values as lists, NaN as None)."""
    return json.loads(dumps(doc))


def _same(stored: Any, doc: Any) -> bool:
    return canonical(_as_read(stored)) == canonical(_as_read(doc))


def _same_descriptor(stored: dict, doc: dict) -> bool:
    """True if ``doc`` repeats ``stored``, which the writer may have given ``dtype_numpy``
    declarations the document did not have."""
    if _same(stored, doc):
        return True
    keys = {}
    for key, dk in (stored.get("data_keys") or {}).items():
        given = (doc.get("data_keys") or {}).get(key) or {}
        keys[key] = {k: v for k, v in dk.items() if k != "dtype_numpy" or k in given}
    return _same({**stored, "data_keys": keys}, doc)


class _Lines(DescriptorsHeldBack):
    """Writes one run's documents as JSON Lines into memory, as the ``jsonl`` export does; the
    store appends what was written to the run's file once the documents are accepted. The
    documents are taken as valid: intake checked them.

    ``start`` is written first unless None: a run in the file already gives its
    ``descriptors`` instead, which are adopted and not written again.
    """

    declare_dtypes = True

    def __init__(self, start: dict | None, descriptors: Iterable[dict] = ()) -> None:
        self._file = io.BytesIO()
        self._pending = {}
        self.descriptors = {desc["uid"]: desc for desc in descriptors}
        self.stop_doc: dict | None = None
        #: descriptor uid -> data keys whose dtype_numpy this writer declared
        self.declared: dict[str, list[str]] = {}
        #: descriptors written since take_written(), as given (for the index's hardware facts)
        self.written: list[dict] = []
        if start is not None:
            self._write("start", start)

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor":
            self.descriptors[doc["uid"]] = self._pending[doc["uid"]] = doc
            return
        if name == "stop":
            self.stop_doc = doc
            self._release_all()
        self._write_after_descriptor(name, doc)

    def _write(self, name: str, doc: Any) -> None:
        if name == "descriptor":
            given = self.descriptors[doc["uid"]]["data_keys"]
            added = [
                key
                for key, dk in doc["data_keys"].items()
                if "dtype_numpy" in dk and "dtype_numpy" not in given[key]
            ]
            if added:
                self.declared[doc["uid"]] = added
            self.written.append(self.descriptors[doc["uid"]])
        self._file.write(jsonl_line(name, doc))

    def release(self) -> None:
        """Write the descriptors held back for their first event now."""
        self._release_all()

    @property
    def holding(self) -> bool:
        """True while a descriptor is held back for its first event."""
        return bool(self._pending)

    def holds(self, descriptor: str) -> bool:
        """True while ``descriptor`` is held back (none of its events is written yet)."""
        return descriptor in self._pending

    @property
    def buffered(self) -> int:
        """Bytes written since the last :meth:`take`."""
        return self._file.tell()

    def take_declared(self) -> list[tuple[str, list[str]]]:
        """``(descriptor uid, keys)`` declared since the last call."""
        out, self.declared = list(self.declared.items()), {}
        return out

    def take_written(self) -> list[dict]:
        """The descriptors written since the last call."""
        out, self.written = self.written, []
        return out

    def take(self) -> bytes:
        """What was written since the last call."""
        data = self._file.getvalue()
        self._file.seek(0)
        self._file.truncate()
        return data


@dataclass
class _Writer:
    """What the store knows of a run it writes: enough to check documents without reading
    the file again."""

    uid: str
    name: str  # the file, relative to the folder
    start: dict  # as it reads back from the file
    stop: dict | None
    lines: _Lines
    descriptors: dict[str, dict] = field(default_factory=dict)
    states: dict[str, DescriptorState] = field(default_factory=dict)
    docs: dict[str, tuple[str, dict]] = field(default_factory=dict)  # assets by uid
    datums: dict[str, tuple[str, dict]] = field(default_factory=dict)
    new: bool = False  # the file does not exist yet

    @classmethod
    def resume(cls, run: ParsedRun, name: str) -> _Writer:
        descriptors = run.descriptor_docs()
        writer = cls(
            run.uid,
            name,
            run.start,
            run.stop,
            _Lines(None, descriptors),
            docs={d["uid"]: (k, d) for k, d in run.asset_docs()},
            datums=dict(run.datums),
        )
        for desc in descriptors:
            writer.descriptors[desc["uid"]] = desc
            writer.states[desc["uid"]] = DescriptorState.from_descriptor(
                0, 0, run.uid, desc, run.seq_max(desc["uid"])
            )
        return writer

    def feed(self, name: str, doc: dict) -> None:
        if self.lines.stop_doc is not None:
            # Documents after the stop: a fresh exporter appends them.
            self.lines = _Lines(None, self.descriptors.values())
        self.lines(name, doc)


@dataclass
class _Txn:
    """Documents accepted by one insert/ingest call, written when the call succeeds."""

    many: bool
    touched: dict[str, _Writer] = field(default_factory=dict)
    headers: list[tuple[str, dict]] = field(default_factory=list)
    children: list[tuple[str, str, str]] = field(default_factory=list)
    # Run uid -> size of its file before the call (None: made by the call), to undo it.
    sizes: dict[str, int | None] = field(default_factory=dict)
    files: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # name -> uid, stat
    declared: list[tuple[str, list[str]]] = field(default_factory=list)
    descriptors: list[tuple[str, dict]] = field(default_factory=list)  # (run uid, written)
    last: _Writer | None = None  # the writer given a document last


class FolderWriting:
    """Taking documents into a folder of run files (mixed into ``FolderStore``).

    It is the :class:`~runbroker.store.intake.Sink` of its documents; run handles are
    :class:`_Writer` objects, and what is stored goes into the call's ``_txn``.
    """

    folder: Path
    uri: str
    readonly: bool
    durability: str
    _lock: threading.RLock
    _cache: RunCache
    _index: FolderIndex
    _writers: OrderedDict[str, _Writer]
    _owner: dict[str, tuple[str, str]]  # child uid -> (kind, run uid)
    _closed: bool
    _txn: _Txn

    def insert(self, name: str, doc: dict) -> None:
        """Check one document and append it to its run's file (a start makes a new file)."""
        doc = validate(name, doc)
        with self._lock:
            txn = self._begin(many=False)
            try:
                intake.apply(self, name, doc)
            except BaseException:
                self._rollback(txn)
                raise
            self._commit(txn)

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many documents: all of them, or none if one is refused."""
        count = 0
        with self._lock:
            txn = self._begin(many=True)
            try:
                for name, doc in pairs:
                    intake.take(self, name, doc)
                    count += 1
                    writer = txn.last
                    if writer is not None and writer.lines.buffered >= _SPILL_BYTES:
                        self._spill(txn, writer)
            except BaseException:
                self._rollback(txn)
                raise
            self._commit(txn)
        return count

    def flush(self) -> None:
        """Write the descriptors held back for their first event (everything else is
        written when inserted)."""
        with self._lock:
            for writer in list(self._writers.values()):
                if writer.lines.holding:
                    self._release(writer)

    def _begin(self, many: bool) -> _Txn:
        if self.readonly:
            raise ReadOnlyError(
                f"{self.uri} is opened read-only (runbroker.open(..., readonly=True)); "
                "open it without readonly=True to add runs"
            )
        if self._closed:
            raise RuntimeError(f"{self.uri} is closed: open the catalog again to insert")
        self._txn = _Txn(many)
        return self._txn

    def _append(self, writer: _Writer, data: bytes) -> tuple[str, str, int, int]:
        """Append ``data`` to the run's file (making it if new); return the file's entry."""
        with open(self.folder / writer.name, "xb" if writer.new else "ab") as f:
            f.write(data)
            f.flush()
            if self.durability == "event":
                os.fsync(f.fileno())
            stat = os.fstat(f.fileno())
        writer.new = False
        return writer.name, writer.uid, stat.st_size, stat.st_mtime_ns

    def _release(self, writer: _Writer) -> None:
        """Write the descriptors ``writer`` holds back, now."""
        writer.lines.release()
        entry = self._append(writer, writer.lines.take())
        written = [(writer.uid, d) for d in writer.lines.take_written()]
        self._index.record([], [entry], [], writer.lines.take_declared(), written)

    def _spill(self, txn: _Txn, writer: _Writer) -> None:
        """Append what ``writer`` wrote in this call to its file (undone if the call fails)."""
        data = writer.lines.take()
        txn.declared += writer.lines.take_declared()
        txn.descriptors += [(writer.uid, d) for d in writer.lines.take_written()]
        if not data and not writer.new:
            return
        if writer.uid not in txn.sizes:
            path = self.folder / writer.name
            txn.sizes[writer.uid] = None if writer.new else path.stat().st_size
        name, uid, size, mtime = self._append(writer, data)
        txn.files[name] = (uid, size, mtime)

    def _rollback(self, txn: _Txn) -> None:
        """Undo what the call appended to files."""
        for uid, size in txn.sizes.items():
            path = self.folder / txn.touched[uid].name
            if size is None:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, size)
        if txn.many:
            # Forget what the call changed in memory: the runs it touched are read again
            # from their files if more documents come (none holds anything back, see
            # _writer). A single insert is refused before it changes anything.
            for uid in txn.touched:
                self._writers.pop(uid, None)
            self._owner = {
                child: owner for child, owner in self._owner.items() if owner[1] not in txn.touched
            }

    def _commit(self, txn: _Txn) -> None:
        try:
            for writer in txn.touched.values():
                self._spill(txn, writer)
        except BaseException:
            self._rollback(txn)
            raise
        files = [(name, uid, size, mtime) for name, (uid, size, mtime) in txn.files.items()]
        self._index.record(txn.headers, files, txn.children, txn.declared, txn.descriptors)
        for name, doc in txn.headers:
            if name == "stop":
                self._write_stats(txn.touched[doc["run_start"]])
        for uid, writer in txn.touched.items():
            if writer.stop is not None:
                for state in writer.states.values():
                    state.uids.clear()  # only needed while the run is written
            self._writers.pop(uid, None)
            self._writers[uid] = writer
        while len(self._writers) > _MAX_WRITERS:
            uid, old = self._writers.popitem(last=False)
            if old.lines.holding:
                self._release(old)
            self._owner = {c: o for c, o in self._owner.items() if o[1] != uid}

    def _writer(self, txn: _Txn, run_uid: str) -> _Writer | None:
        """The writing state of run ``run_uid`` (read from its file if need be), or None."""
        writer = txn.touched.get(run_uid)
        if writer is not None:
            return writer
        writer = self._writers.get(run_uid)
        if writer is not None and txn.many and writer.lines.holding:
            # A refused ingest forgets the runs it touched: keep nothing only in memory.
            self._release(writer)
        if writer is None:
            entry = self._index.file_of(run_uid)
            if entry is None:
                return None
            writer = _Writer.resume(self._cache.get(entry.id, self.folder / entry.name), entry.name)
            for child, (kind, _) in writer.docs.items():
                if kind != "stream_datum":
                    self._owner[child] = (kind, run_uid)
            for child in writer.descriptors:
                self._owner[child] = ("descriptor", run_uid)
        txn.touched[run_uid] = writer
        return writer

    def run_of(self, kind: str, uid: str) -> str | None:
        """The uid of the run holding descriptor, resource or stream_resource ``uid``
        (see :class:`~runbroker.store.base.Locates`)."""
        with self._lock:
            owner = self._owner_of(uid)
        return owner[1] if owner is not None and owner[0] == kind else None

    def _owner_of(self, uid: str) -> tuple[str, str] | None:
        return self._owner.get(uid) or self._index.parent(uid)

    # -- the intake sink (see runbroker.store.intake.Sink) ---------------------------------

    def same(self, name: str, stored: dict, doc: dict) -> bool:
        return _same_descriptor(stored, doc) if name == "descriptor" else _same(stored, doc)

    def run(self, uid: str) -> _Writer | None:
        return self._writer(self._txn, uid)

    def add(self, name: str, run: _Writer | None, doc: dict) -> dict | None:
        txn, uid = self._txn, doc["uid"]
        if name == "start":
            return self._add_start(txn, doc)
        assert run is not None
        if name == "stop":
            if run.stop is not None:
                return run.stop
        elif uid in run.descriptors or uid in run.docs:
            return run.descriptors.get(uid) or run.docs[uid][1]
        elif name != "stream_datum" and self._owner_of(uid) is not None:
            stored = self._stored_child(txn, uid)  # of another run
            if stored is not None:
                return stored
        self._feed(run, name, doc)  # first: the writer changes only if the file can
        if name == "stop":
            run.stop = _as_read(doc)
            txn.headers.append(("stop", run.stop))
        elif name == "descriptor":
            run.descriptors[uid] = doc
            state = run.states[uid] = DescriptorState.from_descriptor(0, 0, run.uid, doc, 0)
            state.stats = Accumulator()  # a new descriptor: its events all come through here
        else:
            run.docs[uid] = (name, _as_read(doc))
        if name in ("descriptor", "resource", "stream_resource"):
            self._owner[uid] = (name, run.uid)
            txn.children.append((uid, name, run.uid))
        return None

    def parent(self, uid: str, kind: str) -> _Writer | None:
        owner = self._owner_of(uid)
        return self._writer(self._txn, owner[1]) if owner and owner[0] == kind else None

    def stored_datums(self, run: _Writer, ids: list[str]) -> dict[str, dict]:
        return {
            i: {"datum_id": i, "resource": old[0], "datum_kwargs": old[1]}
            for i in ids
            if (old := run.datums.get(i)) is not None
        }

    def add_datums(self, run: _Writer, name: str, doc: dict) -> None:
        for datum in unpack_datum_page(doc) if name == "datum_page" else [doc]:
            run.datums[datum["datum_id"]] = (datum["resource"], _as_read(datum["datum_kwargs"]))
        self._feed(run, name, doc)

    def descriptor(self, uid: str) -> DescriptorState | None:
        writer = self.parent(uid, "descriptor")
        return writer.states.get(uid) if writer is not None else None

    def stored_event(self, state: DescriptorState, seq_num: int) -> dict | None:
        writer = self._writer(self._txn, state.run_uid)
        if writer is None or writer.lines.holds(state.uid):
            return None  # nothing of this descriptor is written yet
        # Compare with what the file holds, including what this call wrote before.
        self._spill(self._txn, writer)
        run = self._parsed_for_writer(writer)
        return run.event(state.uid, seq_num) if run is not None else None

    def add_event(self, state: DescriptorState, doc: dict) -> None:
        state.seq_max = max(state.seq_max, doc["seq_num"])
        if state.stats is not None:
            state.stats.add_event(doc["data"])
        self._feed(self._writer(self._txn, state.run_uid), "event", doc)

    def add_page(self, state: DescriptorState, doc: dict, batch: Batch) -> None:
        state.seq_max = max(state.seq_max, batch.seq_max)
        if state.stats is not None:
            state.stats.add(batch.data)
        self._feed(self._writer(self._txn, state.run_uid), "event_page", doc)

    def _feed(self, writer: _Writer | None, name: str, doc: dict) -> None:
        assert writer is not None
        writer.feed(name, doc)
        self._txn.last = writer

    def _add_start(self, txn: _Txn, doc: dict) -> dict | None:
        uid = doc["uid"]
        writer = txn.touched.get(uid) or self._writers.get(uid)
        stored = writer.start if writer is not None else None
        if stored is None:
            record = self._index.store.get_run(uid)
            # The start as stored, not as corrected by notes.
            stored = (record.original or record.start) if record is not None else None
        if stored is not None:
            return stored
        start = _as_read(doc)
        writer = _Writer(uid, self._new_name(txn, start), start, None, _Lines(doc), new=True)
        txn.touched[uid] = writer
        txn.headers.append(("start", start))
        txn.last = writer
        return None

    def _new_name(self, txn: _Txn, start: dict) -> str:
        """A file name for a new run, as ``run.export("jsonl", ...)`` gives it."""
        try:
            stem = render(DEFAULT_TEMPLATE, start)
        except (TemplateError, ValueError, OverflowError, OSError):
            stem = f"run_{safe_name(start['uid'])}"
        taken = {w.name for w in txn.touched.values()}
        for candidate in (stem, f"{stem}_{safe_name(start['uid'])}"):
            name = f"{candidate}.jsonl"
            if name not in taken and not (self.folder / name).exists():
                return name
        n = 2
        while (
            f"{candidate}_{n}.jsonl" in taken or (self.folder / f"{candidate}_{n}.jsonl").exists()
        ):
            n += 1
        return f"{candidate}_{n}.jsonl"

    def _stored_child(self, txn: _Txn, uid: str) -> dict | None:
        """The stored descriptor or asset document ``uid``, of whichever run holds it."""
        owner = self._owner_of(uid)
        if owner is None:
            return None
        other = self._writer(txn, owner[1])
        if other is None:
            return None
        if uid in other.descriptors:
            return other.descriptors[uid]
        found = other.docs.get(uid)
        return found[1] if found else None

    def _parsed_for_writer(self, writer: _Writer) -> ParsedRun | None:
        path = self.folder / writer.name
        if not path.exists():
            return None
        entry = self._index.file_of(writer.uid)
        # A run started in this call is not in the index yet: cached by name meanwhile.
        return self._cache.get(entry.id if entry else ("new", writer.name), path)

    def _write_stats(self, writer: _Writer) -> None:
        """Give the index the statistics of a run that just stopped: from what this store
        saw of its events, or from its file if the run was begun elsewhere."""
        states = writer.states
        if all(s.stats is not None for s in states.values()):
            stats = combine((writer.descriptors[u], s.stats) for u, s in states.items())
        else:
            stats = summarise_store(self, writer.uid)
        self._index.store.set_stats(writer.uid, stats)
