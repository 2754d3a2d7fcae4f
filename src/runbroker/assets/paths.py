"""Where a resource's files are: roots, ``root_map`` and the guard against climbing out.

A resource names its files as ``root`` + ``resource_path`` (legacy ``resource``) or as a
``file://`` URI (``stream_resource``). Data moves -- to another mount, another machine, a USB
disk -- so a catalog may map old roots to new ones, and a relative root is taken relative to the
catalog's own location so that a folder moved as a whole keeps working.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlparse

from ..errors import UnsafePathError

__all__ = [
    "Location",
    "UnsafePathError",
    "anchored",
    "check_inside",
    "locate_resource",
    "locate_uri",
]


@dataclass(frozen=True)
class Location:
    """A resource's resolved file location, and how it was found.

    ``path`` is the file (or folder) on this machine; ``root`` the folder it must stay under;
    ``original`` what the document said; ``mapped_from`` the ``root_map`` entry that changed it.
    """

    path: str
    root: str
    original: str
    mapped_from: str | None = None

    def describe(self) -> str:
        """How the path was found, for error messages.

        Example:
            >>> Location("/mnt/a/x.h5", "/mnt/a", "/data/x.h5", "/data").describe()
            "/mnt/a/x.h5 (the document says /data/x.h5; root_map changed '/data' to '/mnt/a')"
        """
        if self.mapped_from is not None:
            return (
                f"{self.path} (the document says {self.original}; root_map changed "
                f"{self.mapped_from!r} to {self.root!r})"
            )
        if self.path != self.original:
            return f"{self.path} (the document says {self.original}; no root_map entry applied)"
        return f"{self.path} (no root_map entry applied)"


def _apply_root_map(
    root: str, root_map: Mapping[str, str], base: str | None
) -> tuple[str, str | None]:
    """The root after ``root_map`` (longest matching prefix, whole path components)."""
    best = None
    for old in root_map:
        old_norm = old.rstrip("/") or "/"
        inside = root == old_norm or root.startswith(old_norm.rstrip("/") + "/")
        if inside and (best is None or len(old_norm) > len(best[0])):
            best = (old_norm, old)
    if best is None:
        return _anchor(root, base), None
    old_norm, key = best
    new = _anchor(root_map[key], base)
    rest = root[len(old_norm) :].lstrip("/")
    return (os.path.join(new, rest) if rest else new), key


def _anchor(path: str, base: str | None) -> str:
    """Relative paths are relative to the catalog's folder (or the working folder)."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(base or os.getcwd(), path))


def check_inside(path: str, root: str, what: str) -> str:
    """``path`` normalised, refused unless it lies under ``root``.

    Example:
        >>> check_inside("/data/a/../b.h5", "/data", "resource_path")
        '/data/b.h5'
        >>> check_inside("/data/../etc/passwd", "/data", "resource_path")
        Traceback (most recent call last):
        ...
        runbroker.errors.UnsafePathError: resource_path leads to /etc/passwd, outside ...
    """
    norm = os.path.normpath(path)
    root_norm = os.path.normpath(root)
    if norm != root_norm and not norm.startswith(root_norm.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{what} leads to {norm}, outside the resource root {root_norm}; refused"
        )
    return norm


def relative_part(value: str, what: str) -> str:
    """A path that must stay relative: no absolute path, no climbing out with ``..``.

    Example:
        >>> relative_part("2026/11/scan.h5", "resource_path")
        '2026/11/scan.h5'
        >>> relative_part("../../etc", "resource_path")
        Traceback (most recent call last):
        ...
        runbroker.errors.UnsafePathError: resource_path '../../etc' climbs out of ...
    """
    if os.path.isabs(value) or PurePosixPath(value).is_absolute() or value[1:3] == ":\\":
        raise UnsafePathError(
            f"{what} {value!r} is an absolute path; it must be relative to the resource root"
        )
    depth = 0
    for part in PurePosixPath(value.replace("\\", "/")).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise UnsafePathError(f"{what} {value!r} climbs out of its root with '..'; refused")
    return value


def locate_resource(resource: Mapping, root_map: Mapping[str, str], base: str | None) -> Location:
    """Resolve a legacy ``resource`` document's ``root`` + ``resource_path``.

    Example:
        >>> doc = {"root": "/nsls2/data", "resource_path": "2026/a.h5"}
        >>> locate_resource(doc, {"/nsls2/data": "/mnt/copy"}, None).path
        '/mnt/copy/2026/a.h5'
    """
    raw_root = resource.get("root") or ""
    rel = relative_part(resource.get("resource_path") or "", "resource_path")
    root, mapped = _apply_root_map(raw_root.rstrip("/") or raw_root, root_map, base)
    path = check_inside(os.path.join(root, rel), root, "resource_path")
    original = os.path.join(raw_root, rel) if raw_root else rel
    return Location(path, root, original, mapped)


def locate_uri(uri: str, root_map: Mapping[str, str], base: str | None) -> Location:
    """Resolve a ``stream_resource`` URI (``file://host/abs/path`` or a relative path).

    The file's folder is its root; ``root_map`` applies to the path as to a legacy root.

    Example:
        >>> locate_uri("file://localhost/nsls2/data/a.h5", {"/nsls2/data": "/mnt"}, None).path
        '/mnt/a.h5'
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(
            f"stream_resource uri {uri!r} has scheme {parsed.scheme!r}; only file:// URIs "
            "(or relative paths) can be read from disk"
        )
    raw = unquote(parsed.path) if parsed.scheme else uri
    if not os.path.isabs(raw):
        relative_part(raw, "stream_resource uri")
    elif ".." in PurePosixPath(raw).parts:
        raise UnsafePathError(f"stream_resource uri {uri!r} contains '..'; refused")
    folder, name = os.path.split(raw)
    root, mapped = _apply_root_map(folder, root_map, base)
    path = check_inside(os.path.join(root, name), root, "stream_resource uri")
    return Location(path, root, raw, mapped)


def anchored(name: str, doc: Mapping[str, Any], base: str | None) -> Mapping[str, Any]:
    """``doc`` with a relative resource ``root`` (or relative ``stream_resource`` uri) made
    absolute from ``base``, the folder its catalog takes relative roots from.

    A relative root means "beside this catalog": a run copied into a catalog elsewhere (or
    into a pack, its files left where they are) keeps pointing at the same files only with
    the root made absolute. Other documents, absolute roots and ``base=None`` (a catalog
    with no folder of its own) are returned as they are.

    Example:
        >>> doc = {"uid": "r1", "root": "frames", "resource_path": "a.h5"}
        >>> anchored("resource", doc, "/data/catalog")["root"]
        '/data/catalog/frames'
        >>> anchored("resource", {**doc, "root": "/data/frames"}, "/elsewhere")["root"]
        '/data/frames'
        >>> anchored("stream_resource", {"uri": "file:frames/a.h5"}, "/data/catalog")["uri"]
        'file://localhost/data/catalog/frames/a.h5'
    """
    if base is None:
        return doc
    if name == "resource":
        root = doc.get("root") or ""
        if os.path.isabs(os.path.expanduser(root)):
            return doc
        return {**doc, "root": _anchor(root, base)}
    if name == "stream_resource":
        uri = doc.get("uri") or ""
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            return doc
        # "file:frames/a.h5" is as relative as "frames/a.h5" (locate_uri reads both so).
        path = unquote(parsed.path) if parsed.scheme else uri
        if os.path.isabs(os.path.expanduser(path)):
            return doc
        absolute = _anchor(path, base)
        return {**doc, "uri": f"file://localhost{quote(absolute)}" if parsed.scheme else absolute}
    return doc
