"""Packs: runs and their detector files in one folder (or archive) that can travel.

A pack is a folder holding one document file per run (``.jsonl`` or ``.msgpack``), the
detector files those runs read (under ``files/``, with ``--external copy``), a
``manifest.json`` (every file, its size and SHA-256) with the same sums in ``SHA256SUMS``,
and a ``catalog.yml`` naming the folder itself. Every path inside is relative, so the pack
opens wherever it lands: ``runbroker.open("pack/")`` reads it as a folder-of-files catalog.

- :func:`pack` writes runs of a catalog into a new pack, or adds to one (``append=True``);
- :func:`verify` re-checks every file against the manifest;
- :func:`unpack` verifies, then registers the pack as a named catalog in place, or copies its
  runs and files into a database.

See ``docs/pack.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from ..store.urls import redact
from ..transfer import CopyReport, copy_runs, gc_paused, select_runs
from .archive import extract, is_archive, pack_name, verify_archive, write_archive
from .manifest import (
    MANIFEST,
    Manifest,
    PackCorruptError,
    PackError,
    VerifyReport,
    compare,
    hash_files,
    human_size,
    listed_files,
)
from .writer import EXTERNAL_MODES, FILES, FORMATS, PackWriter, check_options, copy_file

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..queries import Query

__all__ = [
    "EXTERNAL_MODES",
    "FORMATS",
    "PackCorruptError",
    "PackError",
    "PackReport",
    "VerifyReport",
    "pack",
    "unpack",
    "verify",
]

CONFIG = "catalog.yml"
#: Held by the process adding runs to a pack (left out of manifests, like all of .runbroker/).
LOCK = ".runbroker/pack.lock"


@dataclass
class PackReport(CopyReport):
    """What :func:`pack` or :func:`unpack` did: the runs (as :class:`CopyReport`), where the
    pack is, and its size.

    Example:
        >>> report = PackReport(copied=2, documents=12, path=Path("p"), files=3, bytes=4096)
        >>> report.verb = "packed"
        >>> print(report)
        packed 2 runs (12 documents), skipped 0 already in the pack, 0 failed; p: 3 files, 4.0 KiB
    """

    path: Path | None = None
    files: int = 0
    bytes: int = 0
    into: str = field(default="the pack", repr=False)
    #: The name :func:`unpack` registered the pack under, in place (its runs counted as
    #: ``skipped``: nothing was copied).
    registered: str | None = None

    def __str__(self) -> str:
        if self.registered is not None:
            runs = "run" if self.skipped == 1 else "runs"
            return (
                f"catalog {self.registered!r} is the pack {self.path}: {self.skipped} {runs}, "
                f"{self.files} files, {human_size(self.bytes)}"
            )
        text = super().__str__()
        head, sep, failures = text.partition(":\n")
        where = f"; {self.path}: {self.files} files, {human_size(self.bytes)}" if self.path else ""
        return head + where + (sep + failures if sep else "")


def pack(
    source: Catalog,
    dest: str | os.PathLike[str],
    *,
    query: Query | None = None,
    uids: Iterable[str] | None = None,
    external: str = "copy",
    format: str = "jsonl",
    archive: bool = False,
    append: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> PackReport:
    """Pack runs of ``source`` (all, those matching ``query``, or those in ``uids``) into the
    folder ``dest``, with their detector files as ``external`` says: ``copy`` (into the pack),
    ``fill`` (into the events), ``manifest`` (listed for rsync / Globus) or ``ignore``.

    An existing ``dest`` is refused unless ``append=True``, which adds the runs it lacks.
    ``archive=True`` writes one ``.tar`` file instead (``.tar.zst`` compressed, when ``dest``
    ends so). A run that cannot be packed is reported in the result and the others go on,
    unless ``strict=True``.

    Example:
        >>> report = pack(cat, tmp_path / "beamtime", query=Key("sample") == "Ni",
        ...               progress=False)
        >>> report.copied, (tmp_path / "beamtime" / "manifest.json").exists()
        (1, True)
    """
    dest = Path(dest)
    check_options(external, format)  # before anything is written
    if archive:
        return _pack_archive(source, dest, query, uids, external, format, append, strict, progress)
    if dest.exists() and not dest.is_dir():
        raise PackError(
            f"{dest} is a file; a pack is a folder (or, with --archive, a new .tar file): "
            "choose another DEST"
        )
    chosen = select_runs(source, query, uids)
    if not chosen and not (append and dest.exists()):
        which = f"matches {query}" if query is not None else "is selected"
        raise PackError(f"no run of {source.store.uri} {which}; nothing was packed")
    if dest.exists() and not append:
        raise FileExistsError(f"{dest} exists; add runs to that pack with --append (append=True)")
    adding = append and dest.exists()
    if not adding:
        if is_archive(dest):
            raise PackError(f"{dest} names an archive: pass --archive (archive=True)")
        dest.mkdir(parents=True)
    with _writing(dest):
        if adding:
            manifest = Manifest.load(dest)  # once the lock is held: another writer's runs too
        else:
            manifest = Manifest(name=dest.resolve().name)
            _write_config(dest, manifest, external)
            # A pack from the start: one stopped however (even killed) is finished with append.
            manifest.save(dest)
        return _pack_runs(source, chosen, dest, manifest, external, format, strict, progress)


def _pack_runs(
    source: Catalog,
    chosen: list[Any],
    dest: Path,
    manifest: Manifest,
    external: str,
    format: str,
    strict: bool,
    progress: bool,
) -> PackReport:
    writer = PackWriter(dest, manifest, source.assets, external=external, format=format)
    report = PackReport(path=dest, verb="packed")
    try:
        with gc_paused():
            copy_runs(
                ((run.uid, _documents(run)) for run in chosen),
                writer,
                total=len(chosen),
                progress=progress,
                strict=strict,
                desc="pack",
                report=report,
            )
            writer.index()  # while the last detector files are still being copied
    finally:
        late = writer.close()
    report.copied -= len(late)
    report.failed += late
    if late and strict:
        raise PackError(f"run {late[0][0]}: {late[0][1]}")
    report.files = len(manifest.files)
    report.bytes = sum(e.size for e in manifest.files.values())
    return report


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Hold the pack's lock while runs are added: two processes appending to one pack at
    once would each write a manifest without the other's runs."""
    path = folder / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PackError(
            f"{folder} is being written by another runbroker process (it holds {path}); "
            "run again once it has finished"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _documents(run: Any) -> Any:
    # Straight from the store, columns as arrays: the writers encode arrays fastest. The
    # run's notes follow (the writer keeps them in a file of their own).
    from ..notestream import replay_notes

    return lambda: itertools.chain(
        run.store.documents(run.uid, arrays=True),
        replay_notes(run.store, run.uid, run.catalog.viewer),
    )


def _write_config(folder: Path, manifest: Manifest, external: str) -> None:
    import yaml

    from .manifest import sha256_of

    text = (
        "# This pack as a named catalog: put this file's path in $RUNBROKER_CATALOGS, or run\n"
        "# `runbroker unpack PACK`. Paths are relative to this file's folder.\n"
        + yaml.safe_dump({manifest.name: {"uri": "."}}, sort_keys=False)
    )
    if external == "manifest":
        text += (
            "# Detector files stayed outside the pack (listed in transfer/). Once copied, map\n"
            "# their old root to where they are now, e.g.:\n"
            "#   root_map: {/old/root: /where/they/are/now}\n"
        )
    (folder / CONFIG).write_text(text)
    manifest.files[CONFIG] = sha256_of(folder / CONFIG)


def _pack_archive(
    source: Catalog,
    dest: Path,
    query: Query | None,
    uids: Iterable[str] | None,
    external: str,
    format: str,
    append: bool,
    strict: bool,
    progress: bool,
) -> PackReport:
    if append:
        raise PackError(
            f"{dest}: an archive cannot be appended to; unpack it, append to the folder, "
            "and pack that folder again"
        )
    if not is_archive(dest):
        dest = dest.with_name(dest.name + ".tar")
    if dest.exists():
        raise FileExistsError(f"{dest} exists; choose another name or remove it")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        folder = Path(tmp) / pack_name(dest)
        report = pack(
            source,
            folder,
            query=query,
            uids=uids,
            external=external,
            format=format,
            strict=strict,
            progress=progress,
        )
        try:
            write_archive(folder, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    report.path = dest
    return report


def verify(path: str | os.PathLike[str], *, progress: bool = False) -> VerifyReport:
    """Check every file of a pack (folder or archive) against its manifest.

    Files missing or different are listed in the report (``report.ok`` is False); files the
    manifest does not know are listed as ``extra``.

    Example:
        >>> _ = pack(cat, tmp_path / "p", progress=False)
        >>> verify(tmp_path / "p").ok
        True
    """
    path = _pack_path(path)
    if path.is_file():
        return verify_archive(path)
    manifest = Manifest.load(path)
    on_disk = set(listed_files(path))
    bar = _bytes_bar(sum(e.size for e in manifest.files.values())) if progress else None
    found = hash_files(
        ((rel, path / rel) for rel in manifest.files if rel in on_disk),
        bar.update if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    return compare(manifest, found, on_disk - set(manifest.files))


def _pack_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it can be a pack: a folder, or a file named as an archive."""
    path = Path(path)
    if path.is_file() and not is_archive(path):
        raise PackError(f"{path} is a file, not a pack: a pack is a folder or a .tar / .tar.zst")
    if not path.exists():
        raise FileNotFoundError(f"no pack at {path}")
    return path


def _bytes_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="verify")


def _checked(folder: Path, progress: bool) -> Manifest:
    report = verify(folder, progress=progress)
    if not report.ok:
        raise PackCorruptError(f"{folder} failed verification; nothing was done:\n{report}", report)
    return Manifest.load(folder)


def unpack(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    into: str | None = None,
    files_root: str | os.PathLike[str] | None = None,
    to: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> PackReport:
    """Verify a pack, then make its runs usable here.

    - By default the pack is registered, in place, as the named catalog ``name`` (default:
      the pack's folder name): ``runbroker.catalog[name]`` opens it. If ``name`` already names
      another catalog, the pack's runs are merged into that one, skipping runs it has.
    - ``into=URI`` copies the runs into that database (SQLite file or PostgreSQL URL) and the
      pack's detector files under ``files_root`` (default: ``files/`` beside an SQLite file).

    An archive is first extracted into ``to`` (default: beside it). Nothing is registered or
    copied if any file is missing or corrupt: :class:`PackCorruptError` lists them.

    Example:
        >>> _ = pack(cat, tmp_path / "p", progress=False)
        >>> home = tmp_path / "home.db"
        >>> unpack(tmp_path / "p", into=str(home), progress=False).copied == len(cat)
        True
    """
    from ..config import NamedCatalogs

    path = _pack_path(path)
    if into is not None and name is not None:  # before anything is done
        entry = NamedCatalogs().entries().get(name)
        if entry is not None and _local(entry.uri) != _local(into):
            raise PackError(
                f"--name {name}: that name is taken by {redact(entry.uri)}; choose another name "
                "(or leave out --into to merge the pack into that catalog)"
            )
    if path.is_file():
        report = verify_archive(path)
        if not report.ok:
            raise PackCorruptError(
                f"{path} failed verification; nothing was done:\n{report}", report
            )
        path = extract(path, to if to is not None else path.parent)
        manifest = Manifest.load(path)
    else:
        manifest = _checked(path, progress)
    if into is not None:
        result = _ingest(path, manifest, into, files_root, strict, progress)
        if name is not None and name not in NamedCatalogs():
            NamedCatalogs().add(name, into)
        return result
    name = name or path.resolve().name
    entry = NamedCatalogs().entries().get(name)
    if entry is None or Path(entry.uri).resolve() == path.resolve():
        if entry is None:
            NamedCatalogs().add(name, str(path))
        _index_folder(path)
        return PackReport(
            skipped=len(manifest.runs),
            path=path,
            files=len(manifest.files),
            bytes=sum(e.size for e in manifest.files.values()),
            registered=name,
        )
    if (Path(entry.uri) / MANIFEST).is_file():  # another pack: add this one's runs and files
        from .. import open as open_catalog

        source = open_catalog(path, readonly=True)
        try:
            return pack(source, entry.uri, append=True, strict=strict, progress=progress)
        finally:
            source.close()
    # A database, or a folder catalog that is not a pack.
    return _ingest(path, manifest, entry.uri, files_root, strict, progress, entry.options)


def _index_folder(path: Path) -> None:
    """Bring the pack's folder index up to date now, so that its first open reads only
    headers: an archive comes without one (it is derived data), and building it reads every
    run file."""
    from ..store.folderindex import FolderIndex

    # Not through a read-only open: that keeps its index in the cache folder, not the pack's.
    index = FolderIndex(path)
    try:
        index.sync()
    finally:
        index.close()


def _local(uri: str) -> str:
    """A catalog URI with a local file's path made absolute, so two spellings compare equal."""
    path = uri.removeprefix("sqlite:///")
    return uri if "://" in path else str(Path(path).resolve())


def _ingest(
    folder: Path,
    manifest: Manifest,
    uri: str,
    files_root: str | os.PathLike[str] | None,
    strict: bool,
    progress: bool,
    options: dict[str, Any] | None = None,
) -> PackReport:
    from ..export import read_documents

    dest = _open_destination(uri, options)
    try:
        # Relative roots of the destination are taken from its folder (an SQLite file's, or
        # a folder catalog itself); PostgreSQL has none.
        base = Path(dest.assets.base) if dest.assets.base is not None else None
        root = _files_root(uri, files_root, manifest, base)
        if root is not None:
            _copy_tree(folder, manifest, root)
        runs = (
            (
                uid,
                _with_notes(
                    _relocating(read_documents(folder / entry["file"]), root, base), folder, entry
                ),
            )
            for uid, entry in manifest.runs.items()
        )
        report = PackReport(
            path=folder,
            into=redact(uri),
            files=len(manifest.files),
            bytes=sum(e.size for e in manifest.files.values()),
        )
        copy_runs(
            runs,
            dest,
            total=len(manifest.runs),
            progress=progress,
            strict=strict,
            desc="unpack",
            report=report,
        )
    finally:
        dest.close()
    return report


def _with_notes(documents: Any, folder: Path, entry: Mapping[str, Any]) -> Any:
    """A packed run's documents, then its notes (from their own file, when it has one)."""
    if not entry.get("notes"):
        return documents
    from ..notestream import read_notes

    return lambda: itertools.chain(documents(), read_notes(folder / entry["notes"]))


def _open_destination(uri: str, options: dict[str, Any] | None) -> Catalog:
    from .. import open as open_catalog

    try:
        # The destination is named on purpose: it is made if new (missing folders too).
        dest = open_catalog(uri, **{"create": True, **(options or {})})
        len(dest)  # a server is found unreachable here, before any file is copied
        return dest
    except Exception as exc:  # a driver's error (no such host, ...) or a path that is not one
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PackError(f"cannot unpack into {redact(uri)}: {redact(reason, uri)}") from exc


def _files_root(
    uri: str, files_root: str | os.PathLike[str] | None, manifest: Manifest, base: Path | None
) -> Path | None:
    if not any(p.startswith(f"{FILES}/") for p in manifest.files):
        return None
    if files_root is not None:
        return Path(files_root).expanduser().resolve()
    if base is None:
        raise PackError(
            f"the pack holds detector files; say where they go with --files-root DIR "
            f"(a folder every reader of {redact(uri)} can see)"
        )
    return base / FILES


def _copy_tree(folder: Path, manifest: Manifest, root: Path) -> None:
    """Copy the pack's detector files under ``root``. A file already there is left alone if
    it is the same (an unpack started again), and refused if not: a path used twice must not
    let runs of this pack read another pack's data."""
    todo, there = [], []
    for rel in manifest.files:
        if rel.startswith(f"{FILES}/"):
            target = root / rel[len(FILES) + 1 :]
            (there if target.exists() else todo).append((rel, target))
    found = hash_files(there)
    differ = [str(target) for rel, target in there if found[rel] != manifest.files[rel]]
    if differ:
        raise PackError(
            f"detector files of the pack differ from files already there ({len(differ)}), "
            f"e.g. {differ[0]}; nothing was copied: unpack with --files-root DIR (another "
            "folder) to keep both"
        )
    for rel, target in todo:
        copy_file(folder / rel, target)


def _relocating(docs: Iterator[tuple[str, dict]], root: Path | None, base: Path | None) -> Any:
    """The run's documents with roots under the pack's ``files/`` pointed at ``root``."""

    def relocated() -> Iterator[tuple[str, dict]]:
        for name, doc in docs:
            if root is not None and name == "resource":
                doc = {**doc, "root": _moved(doc.get("root") or "", root, base)}
            elif root is not None and name == "stream_resource":
                doc = {**doc, "uri": _moved(doc.get("uri") or "", root, base)}
            yield name, doc

    return relocated


def _moved(path: str, root: Path, base: Path | None) -> str:
    if path != FILES and not path.startswith(f"{FILES}/"):
        return path
    new = root / path[len(FILES) + 1 :]
    if base is not None and new.is_relative_to(base):
        return new.relative_to(base).as_posix()  # the catalog's folder can move too
    return str(new)
