"""A pack as one file: ``.tar``, or ``.tar.zst`` compressed with zstandard.

The archive holds the pack's folder under one top-level name, ``manifest.json`` first, so an
archive can be verified in one streaming pass (the manifest is known before the files it lists)
and ``tar -xf`` gives back the folder. Members that would land outside the pack's folder
(absolute paths, ``..``, another top folder) and links are reported as corrupt by verification
and refused by extraction (which also applies tarfile's ``data`` filter); an extraction that
fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .manifest import MANIFEST, FileEntry, Manifest, PackError, VerifyReport, compare

__all__ = ["extract", "is_archive", "pack_name", "verify_archive", "write_archive"]

_SUFFIXES = (".tar.zst", ".tzst", ".tar")


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a pack archive (by its suffix).

    Example:
        >>> is_archive("beamtime.tar.zst"), is_archive("beamtime")
        (True, False)
    """
    return str(path).lower().endswith(_SUFFIXES)


def pack_name(path: str | os.PathLike[str]) -> str:
    """The pack's name: the archive's file name without its suffix.

    Example:
        >>> pack_name("/data/beamtime-45id.tar.zst")
        'beamtime-45id'
    """
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith((".tar.zst", ".tzst"))


def write_archive(folder: Path, dest: Path) -> None:
    """Write the pack in ``folder`` to the archive ``dest`` (which must not exist)."""
    top = pack_name(dest)
    rest = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and ".runbroker" not in p.relative_to(folder).parts
    )
    with (
        open(dest, "xb") as raw,
        _compressor(raw, _compressed(dest)) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in [MANIFEST, *rest]:
            tar.add(folder / rel, arcname=f"{top}/{rel}", recursive=False)


@contextlib.contextmanager
def _compressor(raw: IO[bytes], compressed: bool) -> Iterator[IO[bytes]]:
    if not compressed:
        yield raw
        return
    import zstandard

    # Several threads compress at once; level 3 keeps up with a disk.
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    with cctx.stream_writer(raw, closefd=False) as writer:
        yield writer  # type: ignore[misc]


@contextlib.contextmanager
def _stream(path: Path) -> Iterator[tarfile.TarFile]:
    with open(path, "rb") as raw:
        if _compressed(path):
            import zstandard

            source: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[assignment]
        else:
            source = raw
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                yield tar
        except (tarfile.TarError, EOFError) as exc:
            raise PackError(f"{path}: not a readable pack archive ({exc})") from None
        except Exception as exc:
            if type(exc).__module__.startswith("zstandard"):
                raise PackError(f"{path}: not a readable zstd archive ({exc})") from None
            raise


def verify_archive(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every file of an archived pack against its manifest, in one streaming pass."""
    path = Path(path)
    manifest: Manifest | None = None
    found: dict[str, FileEntry | OSError] = {}
    extra: list[str] = []
    unsafe: list[tuple[str, str]] = []  # members unpack would refuse: corrupt, by name
    with _stream(path) as tar:
        for member, rel, problem in _members(tar):
            if problem is not None:
                unsafe.append((member.name, problem))
                continue
            if not member.isfile():
                continue
            if manifest is None:
                if rel != MANIFEST:
                    raise PackError(f"{path}: {MANIFEST} is not the archive's first file")
                data = _read(tar, member)
                try:
                    body = json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise PackError(f"{path}: the manifest is corrupt: {exc}") from None
                manifest = Manifest.from_json(body, f"{path}:{member.name}")
                continue
            digest = hashlib.sha256()
            f = tar.extractfile(member)
            assert f is not None
            size = 0
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            found[rel] = FileEntry(size, digest.hexdigest())
            if rel not in manifest.files and rel != "SHA256SUMS":
                extra.append(rel)
    if manifest is None:
        raise PackError(f"{path}: an empty archive, not a pack")
    report = compare(manifest, found, extra)
    report.corrupt += unsafe
    return report


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str | None]]:
    """Each member, its path inside the pack folder, and why unpacking would refuse it."""
    top = None
    for member in tar:
        top = top or member.name.partition("/")[0]
        yield member, member.name.partition("/")[2], _unsafe(member, top)


def _unsafe(member: tarfile.TarInfo, top: str) -> str | None:
    """Why unpacking would refuse ``member`` of a pack archive whose folder is ``top``."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or parts[0] != top:
        return f"outside the pack folder {top!r}"
    if ".." in parts:
        return "climbs out of the pack folder with '..'"
    if not (member.isfile() or member.isdir()):
        return "a link or device, which a pack never holds"
    return None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def extract(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> Path:
    """Unpack the archive into the folder ``into``; return the pack's folder inside it,
    named after the archive (which may have been renamed since it was written).

    Refuses to write over an existing folder.
    """
    path, into = Path(path), Path(into)
    target = into / pack_name(path)
    if target.exists():
        raise FileExistsError(
            f"{target} exists; unpack the archive elsewhere (--to DIR) or open that folder"
        )
    into.mkdir(parents=True, exist_ok=True)
    try:
        _extract(path, into, target.name)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # nothing half-extracted stays behind
        raise
    return target


def _extract(path: Path, into: Path, name: str) -> None:
    with _stream(path) as tar:
        for member, rel, problem in _members(tar):
            if problem is not None or not rel:
                raise PackError(
                    f"{path}: member {member.name!r} refused: {problem or 'not in a folder'}"
                )
            # The archive may have been renamed: its folder takes the archive's name.
            member.name = f"{name}/{rel}"
            try:
                tar.extract(member, into, filter="data")  # the checks again, by tarfile
            except tarfile.FilterError as exc:
                raise PackError(f"{path}: member {member.name!r} refused: {exc}") from None
