"""Writing runs into a pack folder: one document file per run, plus their detector files.

:class:`PackWriter` is the destination :func:`runbroker.transfer.copy_runs` copies into,
the same loop that ``runbroker copy`` and the mongo import use: it knows which runs the pack
has (``uid in writer``) and stores one run per :meth:`PackWriter.ingest` call, whole or not
at all.

What happens to detector files is the ``external`` mode:

- ``copy``: each file a run reads is copied under ``files/`` (its absolute path mirrored, so
  two roots never collide) while its SHA-256 is computed, in copier processes
  (:mod:`runbroker.pack.copier`); resource roots and ``stream_resource`` URIs are rewritten
  to those relative paths.
- ``fill``: the data is put into the events (resource and datum documents are left out).
- ``manifest``: the files stay where they are; their absolute paths and sizes are listed in the
  manifest and in ``transfer/`` lists for rsync (``--from0 --files-from``) and Globus (``--batch``).
- ``ignore``: the files are left out; documents are packed as they are.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import stat
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path, PurePath
from shlex import quote
from typing import IO, Any

from ..assets import Assets
from ..assets.paths import anchored
from ..export import exporter
from ..notestream import notes_file, notes_lines, without_notes
from . import copier
from .copier import Copiers, CopyError
from .manifest import WORKERS, FileEntry, Manifest, PackError, sha256_of

__all__ = [
    "EXTERNAL_MODES",
    "FORMATS",
    "PackWriter",
    "check_options",
    "copy_file",
]

EXTERNAL_MODES = ("copy", "fill", "manifest", "ignore")
FORMATS = ("jsonl", "msgpack")
FILES = "files"
TRANSFER = "transfer"
#: Where a run's file is written before it is moved into the pack whole: a pack stopped
#: however (Ctrl-C, a killed process) holds no half-written run file under a run's name,
#: and ``append`` writes over what a killed run left here. Left out of manifests, archives
#: and the folder catalog, like the rest of ``.runbroker/``.
STAGING = ".runbroker/incoming"
#: Run files are named by their full uid, so appending never meets a name already taken.
TEMPLATE = "{time:%Y%m%d-%H%M%S}_scan{scan_id}_{uid}"
_RESOURCES = ("resource", "stream_resource")
#: A run file larger than this is written as it is encoded, not kept for a copier process.
_IN_MEMORY = 8 << 20
#: How many run files may wait in memory for a copier process.
_BACKLOG = 32
#: Detector files are copied (and hashed) this many bytes at a time.
_BLOCK = 16 << 20


class PackWriter:
    """Adds runs to the pack in ``folder``; call :meth:`close` to write the manifest.

    ``assets`` is the source catalog's (its ``root_map`` and folder find the detector files).

    Example:
        >>> from runbroker.pack.manifest import Manifest
        >>> writer = PackWriter(tmp_path, Manifest("demo"), run.catalog.assets)
        >>> writer.ingest(run.documents()) > 0
        True
        >>> run.uid in writer
        True
        >>> writer.close()
        []
    """

    query = None  # what copy_runs asks a destination: this one is never a search result

    def __init__(
        self,
        folder: str | os.PathLike[str],
        manifest: Manifest,
        assets: Assets,
        *,
        external: str = "copy",
        format: str = "jsonl",
    ) -> None:
        check_options(external, format)
        self.folder = Path(folder)
        self._root = str(self.folder)
        self._staging = self.folder / STAGING
        self._roots: dict[str, str] = {}  # resource root -> where its files go (see _relocated)
        self.manifest = manifest
        self.assets = assets
        self.external = external
        self.format = format
        self._copiers = Copiers(WORKERS)
        #: Every file copied (or checksummed) since the writer was made, by pack path.
        self._files: dict[str, Future[tuple[int, str]]] = {}  # -> (size, SHA-256)
        self._copies: set[str] = set()  # the pack paths the run being packed added to _files
        self._needs: set[str] = set()  # the pack paths of _files the run being packed reads
        #: Runs packed, with the files they need: each is kept by close() only if every
        #: file it needs was copied (a file shared by runs is copied once, for the first).
        self._pending: list[tuple[str, set[str]]] = []
        self._confirmed: set[str] = set()  # files packed before, found the same again
        self._listed: dict[str, list[str]] = {}  # the files under each folder named (see _under)
        #: What the folder store's index needs of each run packed: its file, start and stop
        #: documents, and the uids documents point at (see :meth:`index`).
        self.packed: list[_Packed] = []
        self._backlog: deque[Future[tuple[int, str]]] = deque()  # run files not written yet

    def __contains__(self, uid: object) -> bool:
        return uid in self.manifest.runs

    def ingest(self, documents: Iterable[tuple[str, dict]]) -> int:
        """Pack one run's documents; return how many there were.

        Nothing of a run that fails stays behind: its document file and the files copied for
        it are removed, and :class:`PackError` says which run and file. The run's file is
        written, and detector files copied and checksummed, by copier processes while the next
        run is encoded; :meth:`close` waits for them.
        """
        spools: list[_Spool] = []

        def opener(path: Path) -> _Spool:  # written by a copier process: see copier.write
            spools.append(_Spool(path))
            return spools[-1]

        exp = exporter(
            self.format,
            self._staging,
            template=TEMPLATE,
            overwrite=True,  # left by a pack that was killed while writing this run
            fill=self.external == "fill",
            assets=self.assets,
            opener=opener,
        )
        exp.live = False  # nobody reads the file before it is closed: skip per-line flushes
        uid = "?"
        count = 0
        notes: dict[str, list[dict]] = {}
        headers: list[tuple[str, dict]] = []
        children: list[tuple[str, str]] = []
        resources: dict[str, tuple[str, dict]] = {}
        outside: dict[str, int] = {}
        self._copies, self._needs = set(), set()
        try:
            for name, doc in without_notes(documents, notes):
                count += 1
                if name == "start":
                    uid = doc.get("uid", "?")
                if self.external in ("copy", "manifest"):
                    doc = self._external(name, doc, resources, outside)
                if self.external in ("manifest", "ignore"):
                    # Files left where they are: a root relative to the source catalog's
                    # folder would be taken from the pack's.
                    doc = dict(anchored(name, doc, self.assets.base))
                exp(name, doc)
                if name in ("start", "stop"):
                    headers.append((name, doc))
                elif name == "descriptor" or (name in _RESOURCES and self.external != "fill"):
                    children.append((doc["uid"], name))
            (staged,) = exp.close()
        except BaseException as exc:
            self._undo(exp)  # on Ctrl-C too: the pack keeps only whole runs
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, PackError):
                raise PackError(f"run {uid}: {exc}") from exc
            raise PackError(f"run {uid}: {type(exc).__name__}: {exc}") from exc
        rel = staged.name  # run files lie at the top of the pack
        written = self._copiers.write(spools[0].data, str(staged), os.path.join(self._root, rel))
        self._files[rel] = written
        # Run files wait in memory for a worker: a few dozen at most, however fast runs come.
        self._backlog.append(written)
        while len(self._backlog) > _BACKLOG:
            wait([self._backlog.popleft()])
        needs = self._needs | {rel}
        revisions = notes.get(uid, [])
        if revisions:  # in a file of their own, beside the run's: the folder store reads it
            notes_rel = notes_file(rel).name
            staged_notes = str(self._staging / notes_rel)
            self._files[notes_rel] = self._copiers.write(
                notes_lines(revisions), staged_notes, os.path.join(self._root, notes_rel)
            )
            needs.add(notes_rel)
            count += len(revisions)
        self._pending.append((uid, needs))
        self.manifest.outside.update(outside)
        self.manifest.add_run(uid, rel, self.external, notes=notes_rel if revisions else None)
        self.packed.append(_Packed(rel, uid, headers, children))
        return count

    def index(self) -> None:
        """Tell the folder store's index about the runs packed, so that opening the pack reads
        no run file (otherwise its first open reads every one)."""
        from ..errors import DocumentError
        from ..store.folderindex import FolderIndex

        files, packed = [], []
        for run in self.packed:
            try:
                self._files[run.file].result()
                info = (self.folder / run.file).stat()
            except Exception:  # not written: close() takes the run out of the pack
                continue
            files.append((run.file, run.uid, info.st_size, info.st_mtime_ns))
            packed.append(run)
        try:
            index = FolderIndex(self.folder)
        except (OSError, sqlite3.Error):
            return  # a folder that cannot hold an index: the first open builds one elsewhere
        try:
            index.record(
                [h for run in packed for h in run.headers],
                files,
                [(child, kind, run.uid) for run in packed for child, kind in run.children],
            )
        except (DocumentError, sqlite3.Error):
            pass  # the first open reads the files instead
        finally:
            index.close()

    def close(self) -> list[tuple[str, str]]:
        """Wait for the copies, write the transfer lists (``manifest`` mode) and the
        manifest; return ``(uid, message)`` for runs whose files failed to copy late (a disk
        filling up): those are taken out of the pack again."""
        done: dict[str, FileEntry | Exception] = {}
        for rel, future in self._files.items():
            try:
                done[rel] = FileEntry(*future.result())
            except Exception as exc:  # reported with the runs that need the file, below
                done[rel] = exc
        failed, kept = [], set()
        for uid, needs in self._pending:
            errors = [e for rel in sorted(needs) if isinstance(e := done[rel], Exception)]
            if not errors:
                kept |= needs
                continue
            failed.append((uid, str(errors[0])))
            self.manifest.runs.pop(uid)
        for rel, entry in done.items():
            if rel in kept and isinstance(entry, FileEntry):
                self.manifest.files[rel] = entry
            else:  # only runs taken out again needed it
                with contextlib.suppress(OSError):
                    (self.folder / rel).unlink()
        self._pending, self._files = [], {}
        self._copiers.close()
        if self.manifest.outside:
            transfer = self.folder / TRANSFER
            transfer.mkdir(exist_ok=True)
            paths = sorted(self.manifest.outside)
            lists = {
                # Separated by NUL (rsync --from0): a file name may hold a newline.
                "rsync-files.nul": "".join(f"{p}\0" for p in paths),
                "globus-batch.txt": "".join(map(_globus_line, paths)),
            }
            for name, text in lists.items():
                (transfer / name).write_text(text)
                self.manifest.files[f"{TRANSFER}/{name}"] = sha256_of(transfer / name)
            # A list of another name (rsync-files.txt, from a runbroker before NUL-separated
            # lists) would name only the runs packed before this append.
            for rel in [r for r in self.manifest.files if r.startswith(f"{TRANSFER}/")]:
                if rel.removeprefix(f"{TRANSFER}/") not in lists:
                    del self.manifest.files[rel]
                    (self.folder / rel).unlink(missing_ok=True)
        self.manifest.save(self.folder)
        return failed

    # -- detector files -----------------------------------------------------------------

    def _external(
        self,
        name: str,
        doc: dict,
        resources: dict[str, tuple[str, dict]],
        outside: dict[str, int],
    ) -> dict:
        """The document as packed, after scheduling (or listing) the files it needs."""
        if name in _RESOURCES:
            resources[doc["uid"]] = (name, doc)
            if name == "stream_resource":
                self._need(name, doc, (), outside)
            if self.external == "copy":
                return self._relocated(name, doc)
        elif name in ("datum", "datum_page"):
            res_uid = doc.get("resource")
            if res_uid not in resources:
                raise PackError(f"{name} {doc.get('datum_id')!r}: resource {res_uid!r} unknown")
            kind, res = resources[res_uid]
            self._need(kind, res, _DatumKwargs(name, doc), outside)
        return doc

    def _need(
        self, kind: str, doc: Mapping[str, Any], kwargs: Sequence[dict], outside: dict[str, int]
    ) -> None:
        _, names = self.assets.files(kind, doc, kwargs)
        for src in names:
            if self.external == "manifest":
                self._list_outside(kind, doc, src, outside)
            else:
                self._copy_later(kind, doc, src)

    def _copy_later(self, kind: str, doc: Mapping[str, Any], src: str) -> None:
        """Copy detector file ``src`` (every file under it, if a folder) unless it is copied
        already, and note that the run being packed needs it."""
        rel = self._inside(src)
        if rel in self.manifest.files:
            self._same_as_packed(kind, doc, src, rel)
            return  # packed before, with another run
        if rel not in self._files:  # else another run reads it too (a shared dark): copied once
            try:
                mode = os.stat(src).st_mode
            except OSError:
                raise PackError(f"{kind} {doc['uid']}: detector file {src} not found") from None
            if stat.S_ISDIR(mode):
                for path in self._under(src) or ():
                    self._copy_later(kind, doc, path)
                return
            if not stat.S_ISREG(mode):
                raise PackError(f"{kind} {doc['uid']}: detector file {src} is not a file")
            self._copies.add(rel)
            self._files[rel] = self._copiers.copy(src, os.path.join(self._root, rel))
        self._needs.add(rel)

    def _same_as_packed(self, kind: str, doc: Mapping[str, Any], src: str, rel: str) -> None:
        """Refuse ``src`` unless it is the file the pack holds as ``rel``: a detector path
        used twice (a counter reset at the facility, another pack being merged in) must not
        let a run read another run's data."""
        if rel in self._confirmed:
            return
        want = self.manifest.files[rel]
        try:
            same = os.stat(src).st_size == want.size and sha256_of(src) == want
        except OSError as exc:
            raise PackError(f"{kind} {doc['uid']}: detector file {src}: {exc}") from None
        if not same:
            raise PackError(
                f"{kind} {doc['uid']}: detector file {src} differs from {rel}, which the pack "
                "holds for a run packed before (the same path used twice); pack this run "
                "into another pack"
            )
        self._confirmed.add(rel)

    def _list_outside(
        self, kind: str, doc: Mapping[str, Any], src: str, outside: dict[str, int]
    ) -> None:
        """List detector file ``src`` (every file under it, if a folder) with its size."""
        try:
            info = os.stat(src)
        except OSError as exc:
            raise PackError(f"{kind} {doc['uid']}: detector file {src}: {exc}") from None
        if not stat.S_ISDIR(info.st_mode):
            outside[src] = info.st_size
            return
        for path in self._under(src) or ():
            self._list_outside(kind, doc, path, outside)

    def _under(self, path: str) -> list[str] | None:
        """Every file under ``path`` if it is a folder (a handler may name one: a Zarr store,
        a folder of frames), else None. Each folder is listed once per pack."""
        files = self._listed.get(path)
        if files is None and os.path.isdir(path):
            files = self._listed[path] = sorted(
                os.path.join(root, name) for root, _, names in os.walk(path) for name in names
            )
        return files

    def _relocated(self, kind: str, doc: dict) -> dict:
        """A copy of ``doc`` whose root (or uri) is the pack-relative copy of its files."""
        location = self.assets.locate(kind, doc)
        if kind == "resource":
            root = self._roots.get(location.root)
            if root is None:  # most runs share a root or two
                root = self._roots[location.root] = self._inside(location.root)
            return {**doc, "root": root}
        return {**doc, "uri": self._inside(location.path)}

    def _inside(self, path: str) -> str:
        """Where a detector file's copy goes, relative to the pack."""
        base = self.assets.base
        if base:  # files of a pack being repacked are already under its files/
            rel = PurePath(os.path.relpath(path, base)).as_posix()
            if rel == FILES or rel.startswith(f"{FILES}/"):
                return rel
        return f"{FILES}/{PurePath(path).as_posix().lstrip('/')}".rstrip("/")

    def _undo(self, exp: Any) -> None:
        with contextlib.suppress(Exception):
            exp.close()
        for path in exp.files:
            with contextlib.suppress(OSError):
                path.unlink()
        for rel in self._copies:  # no run packed before needs these: it would have copied them
            with contextlib.suppress(Exception):
                self._files.pop(rel).result()
            with contextlib.suppress(OSError):
                (self.folder / rel).unlink()
        self._copies, self._needs = set(), set()


def _globus_line(path: str) -> str:
    """One line of a Globus batch file: the path as source and destination.

    Globus reads the file line by line, each as a shell would (shlex, ``#`` comments): quoting
    keeps any name whole, but one holding a line break cannot be listed; it becomes a comment
    naming it, and the rsync list (NUL-separated) carries it.

    Example:
        >>> _globus_line("/data/scan 1.h5")
        "'/data/scan 1.h5' '/data/scan 1.h5'\\n"
        >>> _globus_line("/data/a\\nb.h5").startswith("# not listed")
        True
    """
    if len(f"{path}.".splitlines()) == 1:
        return f"{quote(path)} {quote(path)}\n"
    return f"# not listed, its name holds a line break (rsync-files.nul lists it): {path!r}\n"


def check_options(external: str, format: str) -> None:
    """Refuse an ``external`` mode or a ``format`` packs do not have.

    Example:
        >>> check_options("copy", "tar")
        Traceback (most recent call last):
        ...
        ValueError: format='tar': a pack holds jsonl or msgpack files (--archive makes a .tar)
    """
    if external not in EXTERNAL_MODES:
        raise ValueError(
            f"external={external!r}: choose one of {', '.join(EXTERNAL_MODES)} "
            "(what to do with the detector files runs point at)"
        )
    if format not in FORMATS:
        raise ValueError(
            f"format={format!r}: a pack holds {' or '.join(FORMATS)} files (--archive makes a .tar)"
        )


@dataclass(frozen=True)
class _Packed:
    file: str
    uid: str
    headers: list[tuple[str, dict]]
    children: list[tuple[str, str]]


class _DatumKwargs(Sequence[dict]):
    """The datum_kwargs of a ``datum`` or ``datum_page``, one dict per datum, made only if a
    handler asks (most list their one file whatever the datums say)."""

    def __init__(self, name: str, doc: Mapping[str, Any]) -> None:
        self._name, self._doc = name, doc
        self._made: list[dict] | None = None

    def _all(self) -> list[dict]:
        if self._made is None:
            self._made = _datum_kwargs(self._name, self._doc)
        return self._made

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]


def _datum_kwargs(name: str, doc: Mapping[str, Any]) -> list[dict]:
    if name == "datum":
        return [dict(doc.get("datum_kwargs") or {})]
    columns = {k: list(v) for k, v in (doc.get("datum_kwargs") or {}).items()}
    n = len(doc.get("datum_id") or ())
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


class _Spool(io.BytesIO):
    """A run file's bytes in memory (``data`` once closed), or in the file ``path`` once
    they pass :data:`_IN_MEMORY` (a run with its detector data filled in can be large)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.spilled: IO[bytes] | None = None
        self.data: bytes | None = None

    def write(self, b: Any) -> int:
        if self.spilled is not None:
            return self.spilled.write(b)
        n = super().write(b)
        if self.tell() > _IN_MEMORY:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.spilled = open(self.path, "wb")  # noqa: SIM115 -- closed in close()
            with self.getbuffer() as held:
                self.spilled.write(held)
            self.seek(0)
            self.truncate()
        return n

    def close(self) -> None:
        if not self.closed:
            if self.spilled is not None:
                self.spilled.close()
            else:
                self.data = self.getvalue()
        super().close()


def copy_file(src: str | os.PathLike[str], dest: Path) -> FileEntry:
    """Copy one file, keeping its times and mode, and checksum the bytes copied (see
    :func:`runbroker.pack.copier.copy`). ``dest`` appears whole or not at all.

    Example:
        >>> _ = (tmp_path / "a.h5").write_bytes(b"frames")
        >>> copy_file(tmp_path / "a.h5", tmp_path / "copy" / "a.h5").size
        6
    """
    try:
        return FileEntry(*copier.copy(os.fspath(src), os.fspath(dest)))
    except CopyError as exc:
        raise PackError(str(exc)) from None
