"""The index of a folder-of-files catalog: which file holds which run, and every run's header.

It is one SQLite file. The runs' start and stop documents are kept by an ordinary
:class:`~runbroker.store.sql.SQLStore`, so searching, counting and looking up runs behave exactly
as in an SQLite catalog, with every query type. Beside its tables are two of the folder's own:

- ``folder_files``: each run file by its name relative to the folder (so the index survives the
  folder being moved or renamed), its size and modification time (a file whose size or time
  changed is read again), the uid of the run it holds, or the problem that keeps it out, and
  where it is damaged if the run is read only up to there;
- ``folder_parents``: the uid of every descriptor, resource and stream resource, and its run,
  so that a document pointing at one finds its run without reading files.

The index lives in ``<folder>/.runbroker/index.db`` (derived data: packs leave ``.runbroker/``
out), or, when the folder cannot be written, in a per-folder file under the user's cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import platformdirs
import sqlalchemy.exc

from ..errors import BadRunFile, DocumentError, NotACatalogError, SchemaVersionError
from ..naming import safe_name
from .events import canonical
from .hardwarerows import put_sqlite
from .runfile import NOTES, ParsedRun, is_run_file, parse
from .sql import SQLStore

__all__ = ["Entry", "FolderIndex", "index_path", "run_files", "undeclared"]

#: Bumped when the folder tables change: an index of another version is built again.
INDEX_VERSION = "6"  # 4: statistics in field_stats (migration 0006); 6: hardware facts
FOLDER = ".runbroker"
_DDL = (
    "CREATE TABLE IF NOT EXISTS folder_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # AUTOINCREMENT: a file indexed again gets a new id, so page ids handed out before fail.
    "CREATE TABLE IF NOT EXISTS folder_files (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "name TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
    "uid TEXT, problem TEXT, damage TEXT)",
    "CREATE INDEX IF NOT EXISTS ix_folder_files_uid ON folder_files (uid)",
    # ``declared``: data keys whose dtype_numpy the store's writer added (JSON list), left out
    # when the descriptor is read so that it replays as it was inserted.
    "CREATE TABLE IF NOT EXISTS folder_parents (uid TEXT PRIMARY KEY, kind TEXT NOT NULL, "
    "run_uid TEXT NOT NULL, declared TEXT)",
    "CREATE INDEX IF NOT EXISTS ix_folder_parents_run ON folder_parents (run_uid)",
    # Notes files (``<run file>.notes.jsonl``) as last read into the store's notes.
    "CREATE TABLE IF NOT EXISTS folder_notes (name TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, run_uid TEXT NOT NULL)",
)
# New files are indexed in batches of this many (one transaction each).
_BATCH = 500
_UPSERT_PARENT = (
    "INSERT INTO folder_parents (uid, kind, run_uid) VALUES (?, ?, ?) "
    "ON CONFLICT (uid) DO UPDATE SET kind = excluded.kind, run_uid = excluded.run_uid"
)


class Entry(NamedTuple):
    """One run file as the index knows it."""

    id: int
    name: str
    size: int
    mtime_ns: int
    uid: str | None
    problem: str | None
    damage: str | None = None


def index_path(folder: Path, readonly: bool = False) -> Path:
    """Where the index of ``folder`` is kept: ``.runbroker/index.db`` inside it when the
    folder can be written, else (or when it is opened ``readonly``, which writes nothing in
    it) a file of its own in the user's cache folder.

    Example:
        >>> index_path(tmp_path).relative_to(tmp_path).as_posix()
        '.runbroker/index.db'
    """
    if not readonly:
        inside = folder / FOLDER
        try:
            inside.mkdir(exist_ok=True)
            # Permission bits do not say it for root, or for read-only mounts: try.
            probe = inside / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.touch()
            probe.unlink()
            return inside / "index.db"
        except OSError:
            pass  # read-only media: the cache folder
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    cache = Path(platformdirs.user_cache_dir("runbroker")) / "folders"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{safe_name(folder.name)}-{digest}.db"


def undeclared(descriptor: dict, declared: dict[str, list[str]]) -> dict:
    """The descriptor as it was inserted: without the ``dtype_numpy`` the writer added
    (``declared``: descriptor uid -> those keys). The events in the file were read with the
    declarations, so their dtypes are kept.

    Example:
        >>> desc = {"uid": "d1", "data_keys": {"img": {"dtype": "array", "dtype_numpy": "<u2"}}}
        >>> undeclared(desc, {"d1": ["img"]})["data_keys"]
        {'img': {'dtype': 'array'}}
    """
    keys = declared.get(descriptor["uid"])
    if not keys:
        return descriptor
    data_keys = dict(descriptor["data_keys"])
    for key in keys:
        if key in data_keys:
            data_keys[key] = {k: v for k, v in data_keys[key].items() if k != "dtype_numpy"}
    return {**descriptor, "data_keys": data_keys}


def _seed(shipped: Path, path: Path) -> None:
    """Start the cache's index of a folder that cannot be written (read-only media) from the
    one that came with it (a pack's): checked against the files like any index, it spares
    reading every run file. Best effort: without it the index is built from the files."""
    try:
        for suffix in ("-wal", "-shm"):  # left by an index of the same name, since removed
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        for suffix in ("-wal", ""):  # the log first: the database appears last, whole
            source = Path(f"{shipped}{suffix}")
            if source.is_file():
                tmp = Path(f"{path}{suffix}.{os.getpid()}.tmp")
                shutil.copyfile(source, tmp)
                os.replace(tmp, f"{path}{suffix}")
    except OSError:
        for suffix in ("-wal", ""):
            Path(f"{path}{suffix}.{os.getpid()}.tmp").unlink(missing_ok=True)


def run_files(folder: Path, notes: bool = False) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime_ns) of the run files at the top of ``folder`` (hidden ones left
    out: files being written under a temporary name are); of the notes files with ``notes``.

    Example:
        >>> _ = run.export("jsonl", tmp_path, template="one")
        >>> list(run_files(tmp_path))
        ['one.jsonl']
    """
    out = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if not (_is_notes_file(name) if notes else is_run_file(name)):
                continue
            try:
                if not entry.is_file():
                    continue
                stat = entry.stat()
            except FileNotFoundError:  # removed while we looked
                continue
            out[name] = (stat.st_size, stat.st_mtime_ns)
    return out


class FolderIndex:
    """The index of one folder (see the module docstring). Use through ``FolderStore``.

    Example:
        >>> _ = run.export("jsonl", tmp_path)
        >>> index = FolderIndex(tmp_path)
        >>> index.sync(), index.store.count(None)
        ([], 1)
        >>> index.close()
    """

    def __init__(self, folder: Path, readonly: bool = False) -> None:
        self.folder = folder
        self.path = index_path(folder, readonly)
        shipped = folder / FOLDER / "index.db"
        if self.path != shipped and not self.path.exists() and shipped.is_file():
            _seed(shipped, self.path)
        self._lock = threading.RLock()
        self.store, self._db = self._open()
        self._run_tables: list[str] | None = None

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> tuple[SQLStore, sqlite3.Connection]:
        """The index's store and connection; an index of another version is made anew."""
        for attempt in (1, 2):
            store = db = None
            try:
                store = SQLStore(f"sqlite:///{self.path}")
                store.stats_at_stop = False  # the folder's writer gives them
                db = sqlite3.connect(
                    self.path, timeout=60, check_same_thread=False, isolation_level=None
                )
                db.execute("PRAGMA busy_timeout=60000")
                db.execute("PRAGMA synchronous=NORMAL")
                for ddl in _DDL:
                    db.execute(ddl)
                db.execute(
                    "INSERT OR IGNORE INTO folder_info (key, value) VALUES ('version', ?)",
                    (INDEX_VERSION,),
                )
                (version,) = db.execute(
                    "SELECT value FROM folder_info WHERE key = 'version'"
                ).fetchone()
                if version == INDEX_VERSION:
                    return store, db
            except (
                SchemaVersionError,
                NotACatalogError,
                sqlite3.DatabaseError,
                sqlalchemy.exc.DatabaseError,
            ):
                if attempt == 2:
                    raise
            # Derived data of another runbroker version (or damaged): build it again.
            if db is not None:
                db.close()
            if store is not None:
                store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the index file."""
        with self._lock:
            self.store.close()
            self._db.close()

    # -- looking up ----------------------------------------------------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every file the index knows, by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, size, mtime_ns, uid, problem, damage FROM folder_files"
            ).fetchall()
        return {row[1]: Entry(*row) for row in rows}

    def file_of(self, run_uid: str) -> Entry | None:
        """The file holding run ``run_uid``, or None."""
        return self._entry_where("uid = ? AND problem IS NULL", run_uid)

    def entry(self, file_id: int) -> Entry | None:
        """The file with this id, or None."""
        return self._entry_where("id = ?", file_id)

    def _entry_where(self, condition: str, value: object) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, size, mtime_ns, uid, problem, damage FROM folder_files "
                f"WHERE {condition}",
                (value,),
            ).fetchone()
        return Entry(*row) if row else None

    def declared(self, run_uid: str) -> dict[str, list[str]]:
        """Descriptor uid -> data keys whose ``dtype_numpy`` the writer added, for a run."""
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, declared FROM folder_parents WHERE run_uid = ? AND declared "
                "IS NOT NULL",
                (run_uid,),
            ).fetchall()
        return {uid: json.loads(keys) for uid, keys in rows}

    def parent(self, uid: str) -> tuple[str, str] | None:
        """``(kind, run uid)`` of the descriptor, resource or stream resource ``uid``."""
        with self._lock:
            row = self._db.execute(
                "SELECT kind, run_uid FROM folder_parents WHERE uid = ?", (uid,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    # -- keeping up with the folder ------------------------------------------------------------

    def sync(self, keep: Callable[[int, ParsedRun], None] | None = None) -> list[str]:
        """Bring the index up to date with the folder, reading only files added or changed
        since; return what to warn of: each file left out, and each file read only up to a
        damaged document. ``keep(file_id, parsed)`` is given each run parsed on the way (a
        cache may keep it)."""
        on_disk = run_files(self.folder)
        with self._lock:
            known = self.entries()
            removed = [e for name, e in known.items() if name not in on_disk]
            todo = sorted(
                name
                for name, stat in on_disk.items()
                if name not in known or (known[name].size, known[name].mtime_ns) != stat
            )
            if removed:
                todo = sorted(set(todo) | self._orphans_of(removed, known))
                self._write(lambda db: [self._drop(db, e) for e in removed])
            for i in range(0, len(todo), _BATCH):
                self._index_files(todo[i : i + _BATCH], known, keep)
            self._sync_notes()
            entries = sorted(self.entries().values(), key=lambda e: e.name)
        return [
            f"left out of the catalog: {e.problem}" if e.problem else f"partly read: {e.damage}"
            for e in entries
            if e.problem or e.damage
        ]

    def _sync_notes(self) -> None:
        """Read again the notes files added, changed or removed since last read (and those of
        runs indexed afresh)."""
        on_disk = run_files(self.folder, notes=True)
        known = {
            name: (size, mtime, uid)
            for name, size, mtime, uid in self._db.execute(
                "SELECT name, size, mtime_ns, run_uid FROM folder_notes"
            )
        }
        for name, (_, _, uid) in known.items():
            if name not in on_disk:
                self.note_file(name, uid)
        for name, stat in on_disk.items():
            if name not in known or known[name][:2] != stat:
                entry = self._entry_where("name = ? AND problem IS NULL", name[: -len(NOTES)])
                if entry is not None and entry.uid:
                    self.note_file(name, entry.uid)

    def note_file(self, name: str, run_uid: str) -> None:
        """Read the notes file ``name`` of run ``run_uid`` into the store's notes (gone:
        the run has none), and remember its size and time."""
        path = self.folder / name
        size, mtime = _stat(path)
        revisions = [n for n in read_notes(path) if n["run"] == run_uid]
        with self._lock:
            if self.store.get_run(run_uid) is not None:
                self.store.replace_notes(run_uid, revisions)

            def remember(db: sqlite3.Connection) -> None:
                db.execute("DELETE FROM folder_notes WHERE name = ?", (name,))
                if size >= 0:
                    db.execute(
                        "INSERT INTO folder_notes (name, size, mtime_ns, run_uid) "
                        "VALUES (?, ?, ?, ?)",
                        (name, size, mtime, run_uid),
                    )

            self._write(remember)

    def left_out(self) -> list[str]:
        """Names of the files left out of the catalog (not one valid run each)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM folder_files WHERE problem IS NOT NULL ORDER BY name"
            ).fetchall()
        return [name for (name,) in rows]

    def _orphans_of(self, removed: list[Entry], known: dict[str, Entry]) -> set[str]:
        """Files left out as copies of a run whose indexed file is going away: read again."""
        gone = {e.uid for e in removed if e.uid and not e.problem}
        return {e.name for e in known.values() if e.problem and e.uid in gone and e not in removed}

    def _index_files(
        self,
        names: list[str],
        known: dict[str, Entry],
        keep: Callable[[int, ParsedRun], None] | None,
    ) -> None:
        parsed: dict[str, ParsedRun] = {}
        problems: dict[str, tuple[str | None, str]] = {}
        for name in names:
            try:
                parsed[name] = parse(self.folder / name)
            except (BadRunFile, OSError) as err:
                problems[name] = (None, str(err))
        holders = {e.uid: e.name for e in known.values() if e.uid and not e.problem}
        docs: list[tuple[str, dict]] = []
        forget: set[str] = set()
        for name, run in parsed.items():
            old = known.get(name)
            if old is not None and old.uid and old.uid != run.uid and not old.problem:
                forget.add(old.uid)
                holders.pop(old.uid, None)
            holder = holders.get(run.uid)
            if holder is not None and holder != name:
                problems[name] = (
                    run.uid,
                    f"{self.folder / name}: holds run {run.uid}, as {holder} does; "
                    f"only {holder} is read",
                )
                continue
            holders[run.uid] = name
            record = self.store.get_run(run.uid)
            if record is not None and run.uid not in forget:
                stored = record.original if record.original is not None else record.start
                same_start = canonical(stored) == canonical(run.start)
                same_stop = record.stop is None or (
                    run.stop is not None and canonical(record.stop) == canonical(run.stop)
                )
                if same_start and same_stop:
                    if record.stop is None and run.stop is not None:
                        docs.append(("stop", run.stop))
                    continue
                forget.add(run.uid)  # the file was rewritten: index it afresh
            docs.append(("start", run.start))
            if run.stop is not None:
                docs.append(("stop", run.stop))
        if forget:
            self._write(lambda db: [self._forget(db, uid) for uid in forget])
        try:
            self.store.ingest(docs)
        except DocumentError:
            # One file the store refuses: find it, and keep the others.
            for name, run in parsed.items():
                if name in problems:
                    continue
                mine = [(n, d) for n, d in docs if d.get("uid") in (run.uid, *_stop_uid(run))]
                try:
                    self.store.ingest(mine)
                except DocumentError as err:
                    problems[name] = (None, f"{self.folder / name}: {err}")

        def record(db: sqlite3.Connection) -> None:
            for name in names:
                uid, problem = problems.get(name, (None, None))
                run = parsed.get(name)
                # The size and time the file had when it was read: if it grew meanwhile, it
                # is read again next time.
                size, mtime = (run.size, run.mtime_ns) if run else _stat(self.folder / name)
                if problem is None and run is not None:
                    uid = run.uid
                    db.executemany(
                        _UPSERT_PARENT, [(child, kind, uid) for child, kind in run.children()]
                    )
                    declared = self.declared(uid)
                    descriptors = [undeclared(d, declared) for d in run.descriptor_docs()]
                    _put_facts(db, uid, descriptors, replace=True)
                db.execute("DELETE FROM folder_files WHERE name = ?", (name,))
                damage = run.damage if run is not None and problem is None else None
                db.execute(
                    "INSERT INTO folder_files (name, size, mtime_ns, uid, problem, damage) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, size, mtime, uid, problem, damage),
                )

        self._write(record)
        if keep is not None:
            for name, run in parsed.items():
                entry = self.file_of(run.uid)
                if entry is not None and entry.name == name:
                    keep(entry.id, run)

    def _drop(self, db: sqlite3.Connection, entry: Entry) -> None:
        db.execute("DELETE FROM folder_files WHERE id = ?", (entry.id,))
        if entry.uid and not entry.problem:
            self._forget(db, entry.uid)

    def _forget(self, db: sqlite3.Connection, uid: str) -> None:
        """Remove run ``uid`` from the index's store.

        The SQL store never deletes runs, so its rows are removed here: from every table with
        a ``run_id`` column (whatever tables a later schema adds), the full-text table and
        ``runs``. Nothing else holds a run in the index (events stay in the files).
        """
        row = db.execute("SELECT id FROM runs WHERE uid = ?", (uid,)).fetchone()
        if row is not None:
            for table in self._tables_with_run_id(db):
                db.execute(f'DELETE FROM "{table}" WHERE run_id = ?', row)
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_fts'").fetchone():
                db.execute("DELETE FROM runs_fts WHERE rowid = ?", row)
            db.execute("DELETE FROM runs WHERE id = ?", row)
        db.execute("DELETE FROM folder_parents WHERE run_uid = ?", (uid,))
        # Its notes are read again if the run comes back (its rows went with it).
        db.execute("DELETE FROM folder_notes WHERE run_uid = ?", (uid,))

    def _tables_with_run_id(self, db: sqlite3.Connection) -> list[str]:
        if self._run_tables is None:
            tables = [
                name
                for (name,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE "
                    "'CREATE VIRTUAL%'"
                )
            ]
            self._run_tables = [
                t
                for t in tables
                if any(col[1] == "run_id" for col in db.execute(f'PRAGMA table_info("{t}")'))
            ]
        return self._run_tables

    def _write(self, change: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``change`` in one transaction of the folder tables (and the store's rows)."""
        with self._lock:
            self.store.flush()  # the store holds no write lock while this connection writes
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                change(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- what a writer adds ----------------------------------------------------------------

    def record(
        self,
        headers: list[tuple[str, dict]],
        files: Iterable[tuple[str, str, int, int]],
        children: Iterable[tuple[str, str, str]],
        declared: Iterable[tuple[str, list[str]]] = (),
        descriptors: Iterable[tuple[str, dict]] = (),
    ) -> None:
        """Note what a writer appended: start/stop documents ``headers``, files
        ``(name, run uid, size, mtime_ns)``, children ``(uid, kind, run uid)``,
        ``(descriptor uid, keys)`` whose dtype_numpy it declared and ``(run uid,
        descriptor)`` written (as inserted), whose hardware facts become searchable."""
        with self._lock:
            if headers:
                self.store.ingest(headers)
            files, children, declared = list(files), list(children), list(declared)
            descriptors = list(descriptors)
            if not files and not children and not declared and not descriptors:
                return

            def change(db: sqlite3.Connection) -> None:
                for name, uid, size, mtime in files:
                    updated = db.execute(
                        "UPDATE folder_files SET size = ?, mtime_ns = ?, uid = ?, problem = NULL, "
                        "damage = NULL "
                        "WHERE name = ?",
                        (size, mtime, uid, name),
                    ).rowcount
                    if not updated:
                        db.execute(
                            "INSERT INTO folder_files (name, size, mtime_ns, uid) "
                            "VALUES (?, ?, ?, ?)",
                            (name, size, mtime, uid),
                        )
                db.executemany(_UPSERT_PARENT, children)
                db.executemany(
                    "UPDATE folder_parents SET declared = ? WHERE uid = ?",
                    [(json.dumps(keys), uid) for uid, keys in declared],
                )
                for run_uid, descriptor in descriptors:
                    _put_facts(db, run_uid, [descriptor], replace=False)

            self._write(change)


def _is_notes_file(name: str) -> bool:
    return not name.startswith(".") and name.endswith(NOTES)


def read_notes(path: Path) -> list[dict]:
    """The note revisions in a notes file, one JSON record a line (a line cut short by a
    writer that died is left out; nothing else is written in place)."""
    from ..notes import check_note

    out = []
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(check_note(json.loads(line)))
        except (ValueError, DocumentError):
            continue
    return out


def _put_facts(
    db: sqlite3.Connection, run_uid: str, descriptors: list[dict], replace: bool
) -> None:
    """Write the hardware facts of these descriptors of a run (``replace``: instead of the
    run's facts written before, as when its file is read again)."""
    row = db.execute("SELECT id FROM runs WHERE uid = ?", (run_uid,)).fetchone()
    if row is None:
        return
    if replace:
        db.execute("DELETE FROM run_facts WHERE run_id = ?", row)
    put_sqlite(db, row[0], descriptors)


def _stop_uid(run: ParsedRun) -> tuple[str, ...]:
    return (run.stop["uid"],) if run.stop is not None else ()


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return -1, -1  # gone meanwhile: the next look finds it changed
    return stat.st_size, stat.st_mtime_ns
