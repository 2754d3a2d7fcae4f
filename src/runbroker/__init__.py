"""runbroker: store Bluesky runs, find them again, read them back fast.

Example:
    >>> import runbroker
    >>> cat = runbroker.temp()                   # or runbroker.open("runs.db")
    >>> len(cat)
    0
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

from . import export  # runbroker.export.live(...) without a second import
from .assets import (
    Assets,
    ExternalDataError,
    HandlerNotFoundError,
    Registry,
    UnsafePathError,
    register_handler,
    register_reader,
)
from .catalog import AmbiguousUIDError, Catalog, Run
from .config import NamedCatalogs
from .derived import ProvenanceError, derived_from
from .documents import ConflictError, DocumentError, UnknownParentError
from .errors import (
    CatalogNotFoundError,
    CatalogUnavailableError,
    CorruptCatalogError,
    MissingDependencyError,
    NotACatalogError,
    RunbrokerError,
    UnknownSchemeError,
)
from .opening import check_folder, check_sqlite_path, integrity_check, translate
from .store.base import indexing
from .store.files import FolderStore
from .store.sql import SchemaVersionError, SQLStore
from .store.urls import SCHEMES, driver_url, redact, scheme_of
from .stream import Stream
from .v1 import Broker

__all__ = [
    "AmbiguousUIDError",
    "Catalog",
    "CatalogNotFoundError",
    "CatalogUnavailableError",
    "ConflictError",
    "CorruptCatalogError",
    "DocumentError",
    "ExternalDataError",
    "HandlerNotFoundError",
    "MissingDependencyError",
    "NotACatalogError",
    "ProvenanceError",
    "Run",
    "RunbrokerError",
    "SchemaVersionError",
    "Stream",
    "UnknownParentError",
    "UnknownSchemeError",
    "UnsafePathError",
    "catalog",
    "derived_from",
    "export",
    "open",
    "register_handler",
    "register_reader",
    "temp",
    "v1",
]

__version__ = "0.1.0"

#: Catalogs by name, as configured (``runbroker.catalog["45id"]``, ``list(runbroker.catalog)``;
#: see ``runbroker.config``). The name is databroker's; it hides the ``runbroker.catalog``
#: submodule as an attribute only: ``from runbroker.catalog import Run`` still works.
catalog: NamedCatalogs = NamedCatalogs()


def open(
    uri: str | os.PathLike,
    *,
    create: bool = False,
    check: bool = False,
    durability: Literal["batch", "event"] = "batch",
    flush_interval: float = 0.05,
    readonly: bool = False,
    pool_size: int = 5,
    max_overflow: int = 10,
    indexes: Iterable[str] = (),
    root_map: Mapping[str, str] | None = None,
    handlers: Mapping[str, type | str] | None = None,
    readers: Mapping[str, type | str] | None = None,
) -> Catalog:
    """Open a catalog (or create one, where that is plainly what was asked for).

    ``uri`` is a file path (an SQLite catalog), a URL (``sqlite:///path``,
    ``postgresql://user@host/db``) or a folder of run files (``.jsonl`` / ``.msgpack``, one
    per run, as ``run.export`` writes them; see ``docs/folder-store.md``). A new SQLite
    catalog is created for a path whose name ends in ``.db``, ``.sqlite`` or ``.sqlite3``
    in a folder that exists, and a new folder catalog for a path ending in ``/`` whose
    parent folder exists; anything else that is not there yet (a missing parent folder,
    another name, a name one typo away from a catalog beside it) and an existing folder that
    holds no run files are refused with a message, unless ``create=True`` (see
    ``docs/catalog.md``).
    ``readonly=True`` writes nothing beside the catalog, and opens catalogs on read-only
    folders and media. ``check=True`` runs SQLite's integrity check on a catalog file first.

    ``durability="event"`` commits every single event to disk before ``insert`` returns; the
    default queues events for at most ``flush_interval`` seconds.
    ``pool_size`` and ``max_overflow`` size each process's connection pool to a server
    database (PostgreSQL). ``indexes`` names metadata keys (``"sample"``, ``"proposal_id"``)
    to give an index of their own (see ``docs/catalog.md``): missing ones are created, ones
    that exist cost nothing; a read-only open refuses with the command that creates them.

    Detector files: ``root_map`` maps roots recorded in resource documents to where the files
    are now (``{"/nsls2/data": "/mnt/copy"}``); relative roots are taken from the catalog's
    folder (from the folder itself, for a folder of run files). ``handlers`` (by spec) and
    ``readers`` (by mimetype) add or replace the classes that read them, as classes or
    ``"module:Class"`` strings.

    Example:
        >>> import runbroker, tempfile, os
        >>> cat = runbroker.open(os.path.join(tempfile.mkdtemp(), "runs.db"))
        >>> len(cat)
        0
    """
    text = os.fspath(uri)
    sqlite_file: Path | None = None
    if "://" in text:
        head, rest = text.split("://", 1)
        text = f"{head.lower()}://{rest}"  # SQLITE:///runs.db is sqlite:///runs.db
        scheme = scheme_of(text)
        if scheme not in SCHEMES:
            hint = ""
            if scheme.startswith("mongodb"):
                hint = (
                    " (to copy runs out of a databroker MongoDB, use: "
                    "runbroker import mongodb://... runs.db)"
                )
            raise UnknownSchemeError(
                f"cannot open {redact(text)!r}: unknown scheme {scheme!r}. runbroker opens "
                f"{', '.join(s + '://' for s in SCHEMES)} URLs, file paths and folders{hint}"
            )
        if text == "sqlite:///:memory:":
            text = "sqlite://"  # one in-memory database shared by the store's connections
        url = driver_url(text)
        if scheme == "sqlite":
            sqlite_file = _sqlite_file(text)
    else:
        path = Path(text).expanduser()
        if path.is_dir() or (text.endswith(("/", os.sep)) and not path.exists()):
            check_folder(path, create=create, readonly=readonly)
            return _open_folder(path, readonly, durability, indexes, root_map, handlers, readers)
        sqlite_file = path.resolve()
        url = f"sqlite:///{sqlite_file}"
    if check and sqlite_file is None:
        raise ValueError(f"check=True checks SQLite catalog files; {redact(text)!r} is not one")
    if sqlite_file is not None:
        check_sqlite_path(sqlite_file, create=create, readonly=readonly)
        if check:
            integrity_check(sqlite_file)
        if create and not readonly:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    # Relative resource roots are taken from the folder of an SQLite catalog's file.
    base = str(sqlite_file.resolve().parent) if sqlite_file else None
    assets = Assets(Registry(handlers, readers), dict(root_map or {}), base)
    try:
        store = SQLStore(
            url,
            durability=durability,
            flush_interval=flush_interval,
            readonly=readonly,
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
    except Exception as err:
        translated = translate(err, url)
        if translated is err:
            raise
        raise translated from None
    return _catalog(store, indexes, assets)


def _sqlite_file(url: str) -> Path | None:
    """The catalog file an ``sqlite://`` URL names, or None where it names none to check:
    in memory (``sqlite://``), or SQLite's own ``file:`` URI form (its options are SQLite's)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _catalog(store: SQLStore | FolderStore, indexes: Iterable[str], assets: Assets) -> Catalog:
    """The catalog of ``store``, after giving it the ``indexes`` it lacks."""
    if indexes:
        try:
            indexing(store).create_index(*indexes)
        except BaseException:
            store.close()
            raise
    return Catalog(store, assets=assets)


def _open_folder(
    path: Path,
    readonly: bool,
    durability: Literal["batch", "event"],
    indexes: Iterable[str],
    root_map: Mapping[str, str] | None,
    handlers: Mapping[str, type | str] | None,
    readers: Mapping[str, type | str] | None,
) -> Catalog:
    """A folder of run files as a catalog; relative resource roots are taken from it."""
    if not path.exists():
        if readonly:
            raise CatalogNotFoundError(
                f"no folder at {str(path)!r} (opening read-only creates none)"
            )
        path.mkdir(parents=True)
    store = FolderStore(path, readonly=readonly, durability=durability)
    assets = Assets(Registry(handlers, readers), dict(root_map or {}), store.uri)
    return _catalog(store, indexes, assets)


def temp(**options: Any) -> Catalog:
    """A throwaway catalog in a temporary folder, deleted when the process exits.

    Example:
        >>> cat = temp()
        >>> len(cat)
        0
    """
    folder = tempfile.mkdtemp(prefix="runbroker-")
    cat = open(os.path.join(folder, "temp.db"), **options)
    weakref.finalize(cat.store, shutil.rmtree, folder, True)
    return cat


def v1(catalog: Catalog) -> Broker:
    """``catalog`` through databroker's v1 API: ``db[-1].table()``, ``db(plan_name="scan")``.

    The same as ``catalog.v1``; what is covered is listed in ``docs/v1.md``. (The name hides
    the ``runbroker.v1`` submodule as an attribute only: ``from runbroker.v1 import Header``
    still works.)

    Example:
        >>> db = runbroker.v1(cat)
        >>> db[run.uid].table(fields=["motor"])["motor"].tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return Broker(catalog)
