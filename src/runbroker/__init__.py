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
from .store.files import FolderStore
from .store.sql import SchemaVersionError, SQLStore
from .stream import Stream
from .v1 import Broker

__all__ = [
    "AmbiguousUIDError",
    "Catalog",
    "ConflictError",
    "DocumentError",
    "ExternalDataError",
    "HandlerNotFoundError",
    "ProvenanceError",
    "Run",
    "SchemaVersionError",
    "Stream",
    "UnknownParentError",
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
    """Open (or create) a catalog.

    ``uri`` is a file path (an SQLite catalog, created if missing), a SQLAlchemy URL
    (``sqlite:///path``, ``postgresql://...``) or a folder of run files (``.jsonl`` /
    ``.msgpack``, one per run, as ``run.export`` writes them; a path ending in ``/`` that
    does not exist yet is made such a folder; see ``docs/folder-store.md``).
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
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme.split("+")[0] not in ("sqlite", "postgresql"):
            raise ValueError(
                f"cannot open {text!r}: unknown scheme {scheme!r}. This version opens SQLite "
                "files (a path or sqlite:///path)."
            )
        # The psycopg (3) driver is the one runbroker installs for PostgreSQL.
        url = text.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        path = Path(text).expanduser()
        if path.is_dir() or (text.endswith(("/", os.sep)) and not path.exists()):
            return _open_folder(path, readonly, durability, indexes, root_map, handlers, readers)
        if readonly and not path.exists():
            raise FileNotFoundError(f"no catalog at {text!r} (opening read-only creates none)")
        url = f"sqlite:///{path.resolve()}"
    # Relative resource roots are taken from the folder of an SQLite catalog's file.
    sqlite_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    base = str(Path(sqlite_file).resolve().parent) if sqlite_file else None
    assets = Assets(Registry(handlers, readers), dict(root_map or {}), base)
    store = SQLStore(
        url,
        durability=durability,
        flush_interval=flush_interval,
        readonly=readonly,
        pool_size=pool_size,
        max_overflow=max_overflow,
    )
    return _catalog(store, indexes, assets)


def _catalog(store: SQLStore | FolderStore, indexes: Iterable[str], assets: Assets) -> Catalog:
    """The catalog of ``store``, after giving it the ``indexes`` it lacks."""
    if indexes:
        try:
            store.create_index(*indexes)
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
            raise FileNotFoundError(f"no folder at {str(path)!r} (opening read-only creates none)")
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
