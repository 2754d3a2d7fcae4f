""":func:`runbroker.open`: what it may open or create, and its errors in the user's terms.

The scheme of a URL chooses the store (:mod:`runbroker.store.registry`): this module registers
``sqlite``, ``postgresql`` and ``file`` (what a plain path is).

A path opens what is there: an SQLite catalog file, or a folder of run files. It creates a
catalog only where that is plainly what was asked for, a new file whose name ends in one of
:data:`SQLITE_SUFFIXES` in a folder that exists; anything else new (a missing parent folder,
a name without such a suffix, a folder that holds no run files) is refused with a message
saying what would be made and that ``create=True`` makes it.

Example:
    >>> import runbroker
    >>> runbroker.open(tmp_path / "no" / "such" / "dir")
    Traceback (most recent call last):
    ...
    runbroker.errors.CatalogNotFoundError: no catalog at '.../no/such/dir', and its folder
    '.../no/such' does not exist: runbroker.open(..., create=True) creates the folder and ...
"""

from __future__ import annotations

import difflib
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from .assets import Assets, Registry
from .catalog import Catalog
from .errors import (
    CatalogConfigError,
    CatalogNotFoundError,
    CatalogUnavailableError,
    CorruptCatalogError,
    MissingDependencyError,
    NotACatalogError,
    RunbrokerError,
    UnknownSchemeError,
)
from .standard_names import Aliases
from .store import registry
from .store.base import Store, indexing
from .store.files import FolderStore
from .store.runfile import SUFFIXES as RUN_FILE_SUFFIXES
from .store.runfile import is_run_file
from .store.sql import SQLStore
from .store.urls import driver_url, redact, scheme_of

if TYPE_CHECKING:
    from .config import NamedCatalog  # config opens catalogs through this module

__all__ = [
    "SQLITE_SUFFIXES",
    "check_folder",
    "check_sqlite_path",
    "integrity_check",
    "open",
    "open_path",
    "open_sources",
    "open_sql",
    "translate",
]

#: Names that :func:`runbroker.open` creates a new SQLite catalog under without ``create=True``.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

# Files that hold runs but are not catalogs: `runbroker ingest` reads them into one.
_INGESTIBLE = (*RUN_FILE_SUFFIXES, ".h5", ".hdf5", ".nxs")
_SQLITE_HEADER = b"SQLite format 3\x00"
_DIGITS = re.compile(r"\d+")


def check_sqlite_path(path: Path, *, create: bool, readonly: bool) -> None:
    """Refuse to open ``path`` as an SQLite catalog if that would create something by
    accident, or if the file there is not an SQLite database.

    Example:
        >>> check_sqlite_path(tmp_path / "runs.db", create=False, readonly=False)  # allowed
        >>> (tmp_path / "api.db").touch()
        >>> check_sqlite_path(tmp_path / "apii.db", create=False, readonly=False)
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogNotFoundError: no catalog at '.../apii.db'; did you mean
        'api.db' in the same folder? runbroker.open(..., create=True) creates a new, ...
        >>> check_sqlite_path(tmp_path / "runs", create=False, readonly=False)
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogNotFoundError: no catalog at '.../runs': a new SQLite catalog
        file needs a name ending in .db, .sqlite or .sqlite3 (or pass create=True ...)
    """
    shown = str(path)
    if path.is_file():
        _check_header(path)
        return
    near = _near_catalogs(path) if path.parent.is_dir() else []
    did_you_mean = f"; did you mean {' or '.join(map(repr, near))} in the same folder?"
    if readonly:
        raise CatalogNotFoundError(
            f"no catalog at {shown!r}"
            + (did_you_mean if near else "")
            + " (opening read-only creates none)"
        )
    if create:
        return
    if not path.parent.is_dir():
        raise CatalogNotFoundError(
            f"no catalog at {shown!r}, and its folder {str(path.parent)!r} does not exist: "
            f"runbroker.open(..., create=True) creates the folder and a new SQLite catalog "
            f"file {path.name!r} in it"
        )
    if not path.name.lower().endswith(SQLITE_SUFFIXES):
        raise CatalogNotFoundError(
            f"no catalog at {shown!r}: a new SQLite catalog file needs a name ending in "
            f".db, .sqlite or .sqlite3 (or pass create=True to create {path.name!r} as one)"
        )
    if near:
        raise CatalogNotFoundError(
            f"no catalog at {shown!r}{did_you_mean} runbroker.open(..., create=True) creates "
            f"a new, empty catalog {path.name!r} beside it"
        )


def _near_catalogs(path: Path) -> list[str]:
    """Catalog files beside ``path`` whose names are one slip of the keyboard away from its
    name (``apii.db`` for ``api.db``): a new empty catalog there is most likely a typo."""
    stem, suffix = os.path.splitext(path.name)
    with os.scandir(path.parent) as entries:
        stems = [
            os.path.splitext(e.name)[0]
            for e in entries
            if e.name.endswith(suffix) and e.name != path.name and e.is_file()
        ]
    # Numbered names (scan1.db, scan2.db) are a series, not typos of each other.
    stems = [s for s in stems if _DIGITS.sub("", s) != _DIGITS.sub("", stem)]
    return [s + suffix for s in difflib.get_close_matches(stem, stems, n=3, cutoff=0.8)]


def _check_header(path: Path) -> None:
    """An existing file is an SQLite database (or empty: a catalog is made in it)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as err:
        raise NotACatalogError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    if head == _SQLITE_HEADER or (not head and path.name.lower().endswith(SQLITE_SUFFIXES)):
        return
    hint = ""
    if path.name.lower().endswith(_INGESTIBLE):
        hint = (
            f": it looks like a file of documents or data; read its runs into a catalog with "
            f"`runbroker ingest runs.db {path}`"
        )
    raise NotACatalogError(
        f"{str(path)!r} is not a runbroker catalog (not an SQLite database){hint}"
    )


def check_folder(path: Path, *, create: bool, readonly: bool = False) -> None:
    """Refuse to open a folder that holds no run files (and was never a folder catalog),
    and to make a new one (asked for by a path ending in ``/``) in a folder that does not
    exist, unless ``create=True``.

    Example:
        >>> check_folder(tmp_path, create=False)
        Traceback (most recent call last):
        ...
        runbroker.errors.NotACatalogError: the folder '...' holds no run files (.jsonl,
        .msgpack) and is not a folder catalog: runbroker.open(..., create=True) makes it ...
    """
    if create:
        return
    if not path.exists():
        if path.parent.is_dir():
            return  # "new/": a new folder catalog, plainly asked for
        raise CatalogNotFoundError(
            f"no folder at {str(path)!r}, and its parent {str(path.parent)!r} does not exist "
            "either: runbroker.open(..., create=True) creates them, as an empty folder catalog"
        )
    if (path / ".runbroker").is_dir() or (path / "manifest.json").is_file():
        return  # a folder catalog (its index) or a pack, even with no run yet
    with os.scandir(path) as entries:
        if any(is_run_file(entry.name) for entry in entries):
            return
    what = (
        f"the folder {str(path)!r} holds no run files (.jsonl, .msgpack) and is not a folder "
        "catalog"
    )
    if readonly:
        raise NotACatalogError(what)
    raise NotACatalogError(
        f"{what}: runbroker.open(..., create=True) makes it an empty folder catalog (new runs "
        "are written into it as .jsonl files)"
    )


def integrity_check(path: Path) -> None:
    """Run SQLite's integrity check on the catalog file ``path`` (reading only); raise
    :class:`~runbroker.errors.CorruptCatalogError` listing the first problems it finds.

    Example:
        >>> integrity_check(Path(cat.store.uri.removeprefix("sqlite:///")))
    """
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = [row[0] for row in db.execute("PRAGMA integrity_check(10)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        found = [str(err)]
    if found != ["ok"]:
        raise CorruptCatalogError(
            f"{str(path)!r} is damaged; SQLite's integrity check reports: " + "; ".join(found)
        )


def translate(err: BaseException, url: str) -> BaseException:
    """The error to show for ``err``, raised by the database while opening ``url``: ours with
    a message naming the catalog and what to do, or ``err`` itself.

    Example:
        >>> import sqlite3
        >>> translate(sqlite3.DatabaseError("file is not a database"), "sqlite:///x.db")
        NotACatalogError("'x.db' is not a runbroker catalog (SQLite: file is not a database)")
    """
    if isinstance(err, RunbrokerError):
        return err
    cause = err.orig if isinstance(err, DBAPIError) and err.orig is not None else err
    text = redact(str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause), url)
    if scheme_of(url) == "sqlite":
        path = url.removeprefix("sqlite:///")
        if "malformed" in text or "corrupt" in text:
            return CorruptCatalogError(
                f"{path!r} is damaged (SQLite: {text}); list the damage with "
                f"runbroker.open({path!r}, readonly=True, check=True), and restore the file "
                "from a copy"
            )
        if "not a database" in text:
            return NotACatalogError(f"{path!r} is not a runbroker catalog (SQLite: {text})")
        if isinstance(err, OperationalError):
            return CatalogUnavailableError(
                f"cannot open the catalog {path!r} (SQLite: {text}); check that the file and "
                "its folder can be read (and written, unless readonly=True)"
            )
        return err
    if scheme_of(url) == "postgresql" and isinstance(err, OperationalError):
        # While opening, the driver's operational errors are about reaching the server.
        return CatalogUnavailableError(_unreachable_message(url, text))
    return err


def _unreachable_message(url: str, text: str) -> str:
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "localhost (the local socket)"
    port = parsed.port or parsed.query.get("port") or 5432
    return (
        f"cannot connect to the PostgreSQL catalog {redact(url)} (host {host}, port {port}, "
        f"database {parsed.database!r}): {text}. Check that the server runs and listens on that "
        "host and port (pg_isready -h HOST -p PORT), that a firewall lets you through, and "
        "that the user, password and database name are right"
    )


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
    api_key: str | None = None,
    timeout: float | None = None,
    cache: str | os.PathLike | bool | None = None,
    cache_size: int | str | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Catalog:
    """Open a catalog (or create one, where that is plainly what was asked for).

    ``uri`` is a file path (an SQLite catalog), a URL (``sqlite:///path``,
    ``postgresql://user@host/db``, ``file:///path``; a package may add schemes, see
    :mod:`runbroker.store.registry`) or a folder of run files (``.jsonl`` / ``.msgpack``, one
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

    A runbroker server (``http://host:8000``, see ``docs/server.md``): ``api_key`` (default
    ``$RUNBROKER_API_KEY``), ``timeout`` in seconds, and ``cache``: where downloaded data is
    kept (a folder; ``False`` keeps none; default: the user's cache folder) and ``cache_size``,
    its limit (bytes, or ``"500MB"``; default 2 GB): see ``docs/remote.md``.

    ``aliases`` maps beamline field names to standard (NeXus) names, ``{"I0": "monitor"}``:
    ``read(names="standard")``, searches and the NeXus export use them (see
    ``docs/hardware-search.md``).

    Example:
        >>> import runbroker, tempfile, os
        >>> cat = runbroker.open(os.path.join(tempfile.mkdtemp(), "runs.db"))
        >>> len(cat)
        0
    """
    text = os.fspath(uri)
    scheme = "file"
    if "://" in text:
        head, rest = text.split("://", 1)
        text = f"{head.lower()}://{rest}"  # SQLITE:///runs.db is sqlite:///runs.db
        scheme = scheme_of(text)
    opener = registry.opener(scheme)
    if opener is None:
        raise UnknownSchemeError(_unknown_scheme(text, scheme))
    handler_registry = Registry(handlers, readers)  # bad handler names fail before any opening
    table = Aliases.of(aliases)  # and a bad alias table
    remote = {"api_key": api_key, "timeout": timeout, "cache": cache, "cache_size": cache_size}
    remote = {k: v for k, v in remote.items() if v is not None}
    if remote and scheme not in ("http", "https"):
        raise ValueError(
            f"{', '.join(remote)} apply to catalogs on a server (http:// URLs), not to "
            f"{redact(text)!r}"
        )
    store = opener(
        text,
        **remote,
        create=create,
        check=check,
        readonly=readonly,
        durability=durability,
        flush_interval=flush_interval,
        pool_size=pool_size,
        max_overflow=max_overflow,
    )
    assets = Assets(handler_registry, dict(root_map or {}), _resource_base(store, text, scheme))
    if indexes:
        try:
            indexing(store).create_index(*indexes)
        except BaseException:
            store.close()
            raise
    return Catalog(store, assets=assets, aliases=table)


def _unknown_scheme(text: str, scheme: str) -> str:
    hint = ""
    if scheme.startswith("mongodb"):
        hint = (
            " (to copy runs out of a databroker MongoDB, use: "
            "runbroker import mongodb://... runs.db)"
        )
    return (
        f"cannot open {redact(text)!r}: unknown scheme {scheme!r}. runbroker opens "
        f"{', '.join(s + '://' for s in registry.schemes())} URLs, file paths and folders{hint}"
    )


def _resource_base(store: Store, text: str, scheme: str) -> str | None:
    """The folder relative resource roots are taken from: the folder of run files itself, or
    an SQLite catalog file's folder (None for a server database or a store of a package)."""
    if isinstance(store, FolderStore):
        return store.uri
    if scheme == "file":
        return str(_path(text).resolve().parent)
    sqlite_file = _sqlite_file(text) if scheme == "sqlite" else None
    return str(sqlite_file.resolve().parent) if sqlite_file else None


def open_sql(
    url: str, *, create: bool = False, check: bool = False, readonly: bool = False, **options: Any
) -> SQLStore:
    """The SQL store at an ``sqlite://`` or ``postgresql://`` URL (the opener of both), after
    the checks of :func:`check_sqlite_path` (and :func:`integrity_check` if ``check``) on an
    SQLite catalog file; database errors come as ours, in the user's terms (:func:`translate`).
    ``options`` go to :class:`~runbroker.store.sql.SQLStore` (``durability``, ...).

    Example:
        >>> open_sql("sqlite:///:memory:").uri
        'sqlite://'
    """
    if url == "sqlite:///:memory:":
        url = "sqlite://"  # one in-memory database shared by the store's connections
    sqlite_file = _sqlite_file(url) if scheme_of(url) == "sqlite" else None
    if check and sqlite_file is None:
        raise ValueError(f"check=True checks SQLite catalog files; {redact(url)!r} is not one")
    if sqlite_file is not None:
        check_sqlite_path(sqlite_file, create=create, readonly=readonly)
        if check:
            integrity_check(sqlite_file)
        if create and not readonly:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    url = driver_url(url)
    try:
        return SQLStore(url, readonly=readonly, **options)
    except Exception as err:
        translated = translate(err, url)
        if translated is err:
            raise
        raise translated from None


def open_path(
    location: str,
    *,
    create: bool = False,
    readonly: bool = False,
    durability: Literal["batch", "event"] = "batch",
    **options: Any,
) -> Store:
    """The store at a path or ``file://`` URL (the opener of ``file``): the folder store for a
    folder (or a new one, for a path ending in ``/``), else an SQLite catalog file
    (:func:`open_sql` takes ``options``).

    Example:
        >>> open_path(str(tmp_path) + "/runs/")
        FolderStore('.../runs')
    """
    path = _path(location)
    if not (path.is_dir() or (location.endswith(("/", os.sep)) and not path.exists())):
        return open_sql(
            _sql_url(location), create=create, readonly=readonly, durability=durability, **options
        )
    check_folder(path, create=create, readonly=readonly)
    if not path.exists():
        if readonly:
            raise CatalogNotFoundError(
                f"no folder at {str(path)!r} (opening read-only creates none)"
            )
        path.mkdir(parents=True)
    return FolderStore(path, readonly=readonly, durability=durability)


def _path(location: str) -> Path:
    """The local path a plain path or a ``file://`` URL names."""
    if not location.startswith("file://"):
        return Path(location).expanduser()
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{location!r} names a file on {parts.netloc!r}; file:// URLs are local")
    return Path(url2pathname(parts.path))


def _sql_url(location: str) -> str:
    """The ``sqlite:///`` URL of the catalog file a path or ``file://`` URL names."""
    return f"sqlite:///{_path(location).resolve()}"


def _sqlite_file(url: str) -> Path | None:
    """The catalog file an ``sqlite://`` URL names, or None where it names none to check:
    in memory (``sqlite://``), or SQLite's own ``file:`` URI form (its options are SQLite's)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def open_remote(url: str, **options: Any) -> Store:
    """The store of a runbroker server (the opener of ``http`` and ``https``): see
    :func:`runbroker.client.open_http`. The client's packages (the ``client`` extra) are
    loaded only when a server is opened."""
    try:
        from .client import open_http
    except ImportError as err:
        raise MissingDependencyError(
            f"opening {redact(url)!r} needs the remote client's packages ({err.name} is "
            "missing): pip install 'runbroker[client]'"
        ) from None
    return open_http(url, **options)


# -- a named catalog that merges others (``sources:`` in the catalogs configuration)


def open_sources(
    name: str, entries: Mapping[str, NamedCatalog], chain: tuple[str, ...] = ()
) -> Catalog:
    """The configured catalog ``name`` whose entry lists ``sources``: :func:`runbroker.merge`
    of them, opened in that order (a source that merges others is opened the same way). A
    name met again on the way is a cycle, refused naming it; a source that cannot be reached
    is left out with a warning (all of them: the first error).

    Example:
        >>> from runbroker.config import NamedCatalog
        >>> entries = {"a": NamedCatalog("a", "merge(b)", sources=("b",)),
        ...            "b": NamedCatalog("b", "merge(a)", sources=("a",))}
        >>> open_sources("a", entries)
        Traceback (most recent call last):
        ...
        runbroker.errors.CatalogConfigError: catalog 'a': its sources lead back to 'a' (a -> b ->
        a); a catalog cannot merge itself
    """
    import warnings

    from .federation import FederationWarning, merge

    chain = (*chain, name)
    entry = entries[name]
    opened: list[Catalog] = []
    down: list[BaseException] = []
    try:
        for source in entry.sources:
            if source in chain:
                raise CatalogConfigError(
                    f"catalog {chain[0]!r}: its sources lead back to {source!r} "
                    f"({' -> '.join((*chain, source))}); a catalog cannot merge itself"
                )
            other = entries.get(source)
            if other is None:
                raise CatalogConfigError(
                    f"catalog {name!r} ({entry.source}) merges {source!r}, which no catalog "
                    f"configuration names (known: {', '.join(sorted(entries))})"
                )
            try:
                opened.append(
                    open_sources(source, entries, chain) if other.sources else other.open()
                )
            except OSError as err:  # unreachable: CatalogUnavailableError is one
                down.append(err)
                warnings.warn(
                    FederationWarning(
                        f"catalog {name!r}: its source {source!r} ({redact(other.uri)}) cannot "
                        f"be opened and is left out ({type(err).__name__}: {err})"
                    ),
                    stacklevel=2,
                )
        if not opened:
            raise down[0]
    except BaseException:
        for cat in opened:
            cat.close()
        raise
    merged = merge(*opened)
    merged.store.close_sources = True  # type: ignore[attr-defined]  # opened here, closed with it
    return merged


for _scheme, _opener in (
    ("sqlite", open_sql),
    ("postgresql", open_sql),
    ("file", open_path),
    ("http", open_remote),
    ("https", open_remote),
):
    registry.register(_scheme, _opener)
