"""What :func:`runbroker.open` may open or create, and its errors in the user's terms.

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
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from .errors import (
    CatalogNotFoundError,
    CatalogUnavailableError,
    CorruptCatalogError,
    NotACatalogError,
    RunbrokerError,
)
from .store.runfile import SUFFIXES as RUN_FILE_SUFFIXES
from .store.runfile import is_run_file
from .store.urls import redact, scheme_of

__all__ = ["SQLITE_SUFFIXES", "check_folder", "check_sqlite_path", "integrity_check", "translate"]

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
