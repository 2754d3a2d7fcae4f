"""A pack's manifest: which runs it holds, and every file with its size and SHA-256.

``manifest.json`` is what runbroker reads; ``SHA256SUMS`` says the same in the form
``sha256sum -c SHA256SUMS`` checks, for those who verify a pack without runbroker. Paths are
relative to the pack and use ``/``, so a pack can be moved, renamed and copied anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..errors import PackCorruptError, PackError

__all__ = [
    "MANIFEST",
    "SUMS",
    "WORKERS",
    "FileEntry",
    "Manifest",
    "PackCorruptError",
    "PackError",
    "VerifyReport",
    "hash_files",
    "human_size",
    "sha256_of",
]

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
#: Written by runbroker itself, not listed in the manifest: the manifest and the folder
#: store's index (derived data, rebuilt when missing).
UNLISTED = (MANIFEST, SUMS, ".runbroker")
_KIND = "runbroker-pack"
_VERSION = 1
#: Threads that copy and checksum files at once (more only contend for the disk).
WORKERS = min(4, os.cpu_count() or 2)


@dataclass(frozen=True)
class FileEntry:
    """One file of a pack: its size in bytes and SHA-256 (hex)."""

    size: int
    sha256: str


@dataclass
class Manifest:
    """What a pack holds.

    ``runs`` maps each run's uid to its document file and how its detector files were
    packed (``copy``, ``fill``, ``manifest`` or ``ignore``); ``files`` every file of the pack
    but the manifest itself; ``outside`` the detector files left where they were
    (``--external manifest``), as absolute paths with sizes.

    Example:
        >>> m = Manifest(name="beamtime")
        >>> m.add_run("0b1c", "scan1_0b1c.jsonl", "copy")
        >>> m.files["scan1_0b1c.jsonl"] = FileEntry(10, "ab" * 32)
        >>> Manifest.from_json(m.to_json()).runs
        {'0b1c': {'file': 'scan1_0b1c.jsonl', 'external': 'copy'}}
    """

    name: str
    runs: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    outside: dict[str, int] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add_run(self, uid: str, file: str, external: str, notes: str | None = None) -> None:
        """Record a run packed into ``file`` (and its notes into ``notes``, if it has any)."""
        self.runs[uid] = {"file": file, "external": external}
        if notes is not None:
            self.runs[uid]["notes"] = notes

    def to_json(self) -> dict[str, Any]:
        """The manifest as ``manifest.json`` holds it."""
        from .. import __version__

        return {
            "kind": _KIND,
            "version": _VERSION,
            "name": self.name,
            "created": self.created,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "runbroker": __version__,
            "runs": self.runs,
            "files": {
                path: {"size": e.size, "sha256": e.sha256} for path, e in sorted(self.files.items())
            },
            "outside": dict(sorted(self.outside.items())),
        }

    @classmethod
    def from_json(cls, body: Any, where: str = MANIFEST) -> Manifest:
        """Read a manifest back; a malformed one gives a :class:`PackError` naming ``where``."""
        if not isinstance(body, dict) or body.get("kind") != _KIND:
            raise PackError(f"{where}: not a runbroker pack manifest")
        if body.get("version") != _VERSION:
            raise PackError(
                f"{where}: pack format version {body.get('version')!r}; this runbroker reads "
                f"version {_VERSION} (upgrade runbroker to open it)"
            )
        try:
            return cls(
                name=str(body["name"]),
                runs={str(u): dict(r) for u, r in body["runs"].items()},
                files={
                    str(p): FileEntry(int(e["size"]), str(e["sha256"]))
                    for p, e in body["files"].items()
                },
                outside={str(p): int(n) for p, n in body.get("outside", {}).items()},
                created=str(body.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PackError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Manifest:
        """The manifest of the pack in ``folder``."""
        path = Path(folder) / MANIFEST
        try:
            body = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise PackError(
                f"{folder} is not a pack: it has no {MANIFEST} (make one with `runbroker pack`)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackError(f"{path}: the manifest is corrupt: {exc}") from None
        return cls.from_json(body, str(path))

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``manifest.json`` and ``SHA256SUMS`` into ``folder``, each atomically."""
        folder = Path(folder)
        # orjson: the standard library indents in pure Python, a tenth of a second a
        # thousand runs.
        body = orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        _replace(folder / MANIFEST, body)
        sums = "".join(f"{e.sha256}  {p}\n" for p, e in sorted(self.files.items()))
        _replace(folder / SUMS, sums.encode())


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers see the old file or the new one, never half


def sha256_of(path: str | os.PathLike[str]) -> FileEntry:
    """Size and SHA-256 of a file.

    Example:
        >>> p = tmp_path / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_of(p).sha256[:16]
        'ba7816bf8f01cfea'
    """
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()  # releases the GIL while hashing
        return FileEntry(f.tell(), digest)


def hash_files(
    paths: Iterable[tuple[str, Path]], progress: Callable[[int], None] | None = None
) -> dict[str, FileEntry | OSError]:
    """``{name: FileEntry}`` for each ``(name, path)``, hashed on several threads; a file
    that cannot be read gives its ``OSError`` instead."""

    def one(item: tuple[str, Path]) -> tuple[str, FileEntry | OSError]:
        name, path = item
        try:
            entry: FileEntry | OSError = sha256_of(path)
        except OSError as exc:
            entry = exc
        if progress is not None:
            progress(entry.size if isinstance(entry, FileEntry) else 0)
        return name, entry

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, list(paths)))


@dataclass
class VerifyReport:
    """What ``verify`` found: files ``missing``, ``corrupt`` (path, what differs), ``extra``
    (in the pack but not in the manifest: reported, not an error), and ``checked`` files of
    ``bytes`` in total.

    Example:
        >>> r = VerifyReport(checked=3, bytes=2048, corrupt=[("a.jsonl", "SHA-256 differs")])
        >>> r.ok
        False
        >>> print(r)
        checked 3 files (2.0 KiB): 1 corrupt, 0 missing
          corrupt: a.jsonl (SHA-256 differs)
    """

    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No file missing or corrupt."""
        return not (self.missing or self.corrupt)

    def __str__(self) -> str:
        text = (
            f"checked {self.checked} files ({human_size(self.bytes)}): "
            f"{len(self.corrupt)} corrupt, {len(self.missing)} missing"
        )
        text += "".join(f"\n  corrupt: {p} ({why})" for p, why in self.corrupt)
        text += "".join(f"\n  missing: {p}" for p in self.missing)
        text += "".join(f"\n  not in the manifest (ignored): {p}" for p in self.extra)
        return text


def human_size(n: float) -> str:
    """A size in bytes as people read it.

    Example:
        >>> human_size(512), human_size(3 * 2**20)
        ('512 bytes', '3.0 MiB')
    """
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def compare(
    manifest: Manifest, found: dict[str, FileEntry | OSError], extra: Iterable[str] = ()
) -> VerifyReport:
    """Check what was found on disk (or in an archive) against the manifest."""
    report = VerifyReport(extra=sorted(extra))
    for path, want in sorted(manifest.files.items()):
        got = found.get(path)
        if got is None or isinstance(got, FileNotFoundError):
            report.missing.append(path)
            continue
        report.checked += 1
        if isinstance(got, OSError):
            report.corrupt.append((path, f"cannot read: {got.strerror or got}"))
            continue
        report.bytes += got.size
        if got.size != want.size:
            report.corrupt.append((path, f"{got.size} bytes, the manifest says {want.size}"))
        elif got.sha256 != want.sha256:
            report.corrupt.append((path, "SHA-256 differs from the manifest"))
    return report


def listed_files(folder: Path) -> list[str]:
    """Every file under ``folder`` as a pack-relative ``/`` path, but those runbroker keeps
    out of the manifest."""
    out = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in UNLISTED]
            names = [n for n in names if n not in UNLISTED and not _temporary(n)]
        out.extend((rel_root / n).as_posix() for n in names if not _temporary(n))
    return sorted(out)


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")
