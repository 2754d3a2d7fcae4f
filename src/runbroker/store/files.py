"""The folder-of-files store: a folder of run files (``.jsonl`` / ``.msgpack``) as a catalog.

``runbroker.open("some/folder/")`` opens a folder holding one file per run at its top level,
as ``run.export("jsonl", folder)`` or ``run.export("msgpack", folder)`` write them (and as
``runbroker pack`` makes them). An index (:mod:`runbroker.store.folderindex`) holds every run's
start and stop documents, so opening, listing and searching read no run file; a run's file is
read when the run is, and a few parsed runs are kept (:class:`~runbroker.store.runfile.RunCache`,
bounded). Files added, changed or removed are noticed when the folder is opened, and at most
every ``refresh_interval`` seconds after that; only those files are read again.

Opened writable, the store also takes documents (``cat.insert``, ``cat.ingest``), with the
checks, repeats and conflicts of the SQL store: a start document creates a new ``.jsonl``
file named as ``run.export("jsonl", ...)`` names it, and each later document is appended to its
run's file by the JSON Lines exporter itself, so the file is exactly such an export. A
descriptor is written just before its stream's first event (or when the run is read or
flushed), with ``dtype_numpy`` declared where JSON would lose the dtype (see
:mod:`runbroker.store.folderwrite`).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..errors import ReadOnlyError
from ..notes import check_note
from ..queries import Query
from . import pages as codec
from .base import PageGone, PageInfo, RunRecord, run_not_found
from .folderindex import FolderIndex, read_notes
from .folderwrite import FolderWriting, undeclared
from .runfile import NOTES, ParsedRun, RunCache

__all__ = ["FolderStore", "FolderWarning"]

# Page ids: file id, page number in the file, events in the page (a listing made before the
# file changed names a page that is not there any more: PageGone).
_N_BITS, _NUMBER_BITS = 24, 20


class FolderWarning(UserWarning):
    """A file of a folder catalog was left out (it is not one valid run), or is read only up
    to a damaged document; the others load."""


def _page_id(file_id: int, number: int, n: int) -> int:
    return (file_id << (_N_BITS + _NUMBER_BITS)) | (number << _N_BITS) | n


def _split_page_id(page_id: int) -> tuple[int, int, int]:
    n = page_id & ((1 << _N_BITS) - 1)
    number = (page_id >> _N_BITS) & ((1 << _NUMBER_BITS) - 1)
    return page_id >> (_N_BITS + _NUMBER_BITS), number, n


class FolderStore(FolderWriting):
    """Runs in a folder of document files. Use :func:`runbroker.open` rather than this class.

    Example:
        >>> _ = run.export("jsonl", tmp_path)
        >>> store = FolderStore(tmp_path)
        >>> store.count(None), store.get_run(run.uid).start["plan_name"]
        (1, 'scan')
        >>> store.close()
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        readonly: bool = False,
        durability: Literal["batch", "event"] = "batch",
        refresh_interval: float = 2.0,
        cache_runs: int = 16,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{os.fspath(folder)!r} is not a folder")
        self.uri = str(self.folder)
        self.readonly = readonly
        self.durability = durability
        self.refresh_interval = refresh_interval
        self._lock = threading.RLock()
        self._cache = RunCache(cache_runs, cache_bytes)
        self._writers = OrderedDict()  # typed in FolderWriting
        self._owner: dict[str, tuple[str, str]] = {}  # child uid -> (kind, run uid)
        self._closed = False
        self._index = FolderIndex(self.folder, readonly)
        self._warned: set[str] = set()
        self._refreshed = 0.0
        self.refresh()
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s.close())

    def __reduce__(self) -> tuple:
        # Sent to another process (a dask worker): it opens the same folder to read.
        return (_reader_for, (self.uri,))

    @property
    def index_path(self) -> Path:
        """Where the folder's index is kept (inside it, or in the user's cache folder)."""
        return self._index.path

    def refresh(self) -> None:
        """Take in files added, changed or removed since the folder was last looked at
        (warning once about each file left out or read only in part)."""
        with self._lock:
            problems = self._index.sync(self._cache.put)
            self._refreshed = time.monotonic()
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                warnings.warn(problem, FolderWarning, stacklevel=3)

    def left_out(self) -> list[str]:
        """Names of the folder's files left out of the catalog: a run in one is not found.

        Example:
            >>> _ = (tmp_path / "broken.jsonl").write_text("[not json\\n")
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     store = FolderStore(tmp_path)
            >>> store.left_out()
            ['broken.jsonl']
            >>> store.close()
        """
        self._refresh_if_due()
        return self._index.left_out()

    def _refresh_if_due(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh_interval:
            self.refresh()

    # -- indexes on chosen metadata keys ---------------------------------------------------

    def indexed_keys(self) -> list[str]:
        """The metadata keys with an index of their own in the folder's index."""
        return self._index.store.indexed_keys()

    def create_index(self, *keys: str) -> list[str]:
        """Index metadata keys in the folder's index (derived data: allowed read-only too)."""
        return self._index.store.create_index(*keys)

    # -- statistics (derived data of the index, see runbroker.store.stats) -----------------

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        """The run's statistics, or None if they were not computed (a run file that this
        store did not write: ``runbroker db stats`` computes them)."""
        self._refresh_if_due()
        return self._index.store.stats(run_uid)

    def set_stats(self, run_uid: str, stats: dict, filled: bool = False) -> None:
        """Replace the run's statistics in the folder's index (allowed read-only too)."""
        self._index.store.set_stats(run_uid, stats, filled)

    def unsummarised(self, filled: bool = False) -> list[str]:
        """The uids of stopped runs without statistics, oldest first."""
        self._refresh_if_due()
        return self._index.store.unsummarised(filled)

    # -- reading ---------------------------------------------------------------------------

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        """Runs matching ``query``, newest first (the index answers)."""
        self._refresh_if_due()
        return self._index.store.search(
            query, offset=offset, limit=limit, before=before, oldest_first=oldest_first
        )

    def count(self, query: Query | None) -> int:
        """How many runs match ``query``."""
        self._refresh_if_due()
        return self._index.store.count(query)

    def get_run(self, uid: str) -> RunRecord | None:
        """The run with exactly this uid."""
        self._refresh_if_due()
        return self._index.store.get_run(uid)

    def _parsed(self, run_uid: str) -> ParsedRun | None:
        """The run's file, parsed (after writing what this store holds back of it)."""
        writer = self._writers.get(run_uid)
        if writer is not None and writer.lines.holding:
            with self._lock:
                self._release(writer)
        for attempt in (1, 2):
            entry = self._index.file_of(run_uid)
            if entry is None:
                return None
            try:
                run = self._cache.get(entry.id, self.folder / entry.name)
            except FileNotFoundError:
                run = None
            if run is not None and run.uid == run_uid:
                return run
            if attempt == 1:  # the file went, or holds another run now: look at the folder
                self.refresh()
        raise FileNotFoundError(
            f"run {run_uid}: its file {self.folder / entry.name} is gone or holds another run "
            "now; the folder changed since it was indexed (open it again)"
        )

    def _run(self, run_uid: str) -> ParsedRun:
        """The run's file, parsed; RunNotFoundError when the folder holds no such run."""
        run = self._parsed(run_uid)
        if run is None:
            raise run_not_found(self, run_uid)
        return run

    def descriptors(self, run_uid: str) -> list[dict]:
        """The run's descriptors, in the order of its file."""
        run = self._run(run_uid)
        declared = self._index.declared(run_uid)
        return [undeclared(d, declared) for d in run.descriptor_docs()]

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        """Pages of these descriptors of the run, in descriptor order then seq order."""
        run = self._run(run_uid)
        entry = self._index.file_of(run_uid)
        if entry is None:  # the file went since it was parsed
            raise run_not_found(self, run_uid)
        out = []
        for uid in descriptor_uids:
            for number in run.by_descriptor.get(uid, ()):
                p = run.pages[number]
                page_id = _page_id(entry.id, number, p.n)
                out.append(PageInfo(page_id, uid, p.n, p.seq_min, p.seq_max, p.ordered))
        return out

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[dict]:
        """Decoded columns of each page of the run, in the order of ``page_ids``."""
        extra = columns is None or any(c == "uid" or c[:2] in ("t:", "f:") for c in columns)
        run = self._run(run_uid)
        entry = self._index.file_of(run_uid)
        out = []
        for page_id in page_ids:
            file_id, number, n = _split_page_id(page_id)
            # A file indexed again has a new id: pages listed before it changed are gone.
            page = run.pages[number] if number < len(run.pages) else None
            if entry is None or file_id != entry.id or page is None or page.n != n:
                raise PageGone(
                    f"page {page_id} is no page of run {run_uid} in {self.uri} (its file "
                    "changed, or it is of another run); list pages again"
                )
            decoded = codec.decode(page.data, columns)
            if extra:
                decoded.update(codec.decode(page.extra, columns))
            out.append(decoded)
        return out

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool = True
    ) -> Iterator[tuple[str, Any]]:
        """The run's documents, replayed as the SQL store replays them."""
        run = self._run(run_uid)
        declared = self._index.declared(run_uid)
        for name, doc in run.documents(arrays, uids):
            yield name, undeclared(doc, declared) if name == "descriptor" else doc

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The run's resource, stream_resource and stream_datum documents, in file order."""
        return self._run(run_uid).asset_docs()

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        """datum_id -> (resource uid, datum_kwargs) for those of ``datum_ids`` in the run."""
        stored = self._run(run_uid).datums
        return {i: stored[i] for i in datum_ids if i in stored}

    # -- notes (runbroker.notes) -------------------------------------------------------------

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        """The run's notes, as the index holds them (see
        :class:`~runbroker.store.base.Annotates`): another process's notes show within
        ``refresh_interval``.

        Example:
            >>> _ = run.export("jsonl", tmp_path)
            >>> FolderStore(tmp_path).notes(run.uid)
            []
        """
        self._refresh_if_due()
        return self._index.store.notes(run_uid, history)

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        """Store note revisions in the run's notes file, ``<run file>.notes.jsonl`` beside
        it (the run file is never changed): one JSON record a line, the file replaced whole
        with one more batch of lines, so a reader sees all of a batch or none of it."""
        if self.readonly:
            raise ReadOnlyError(f"{self.uri} is opened read-only")
        with self._lock:
            entry = self._index.file_of(run_uid)
            if entry is None:
                self.refresh()
                entry = self._index.file_of(run_uid)
            if entry is None:
                raise run_not_found(self, run_uid)
            name = entry.name + NOTES
            path = self.folder / name
            with open(self.folder / entry.name, "rb") as held:
                # Writers of the run's notes take turns (an advisory lock on its run file,
                # which readers never take), each checking against the file as it is.
                fcntl.flock(held, fcntl.LOCK_EX)
                self._index.note_file(name, run_uid)
                stored = {(n["id"], n["revision"]) for n in read_notes(path)}
                try:
                    self._index.store.add_notes(run_uid, notes)  # checks; nothing written
                    lines = b"".join(
                        json.dumps(n, separators=(",", ":")).encode() + b"\n"
                        for n in (check_note(n) for n in notes)
                        if (n["id"], n["revision"]) not in stored
                    )
                    if lines:
                        _replace(path, lines)
                finally:
                    # The index as the file is now (as it was, if the batch was refused).
                    self._index.note_file(name, run_uid)

    # -- writing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is held back and release the index."""
        if self._closed:
            return
        if not self.readonly:
            self.flush()
        self._closed = True
        self._index.close()

    def __repr__(self) -> str:
        return f"FolderStore({self.uri!r})"


def _replace(path: Path, lines: bytes) -> None:
    """Append ``lines`` to ``path`` by writing the whole new file beside it and renaming it
    over the old one: atomic for readers, and whole after a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    with open(tmp, "wb") as out:
        out.write(old + lines)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


_readers: dict[str, FolderStore] = {}


def _reader_for(uri: str) -> FolderStore:
    """One read-only store per folder per process, shared by the tasks that need it."""
    store = _readers.get(uri)
    if store is None or store._closed:
        store = _readers[uri] = FolderStore(uri, readonly=True)
    return store
