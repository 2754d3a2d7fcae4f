"""Errors raised when a catalog is opened, with one base class for the library's own errors.

::

    RunbrokerError
     ├── CatalogNotFoundError (FileNotFoundError)   nothing there, and open() creates nothing
     ├── NotACatalogError (ValueError)              something there that is not a catalog
     │    └── CorruptCatalogError                   a catalog file that is damaged
     ├── UnknownSchemeError (ValueError)            a URL of a kind runbroker does not open
     ├── ReadOnlyMediumError (PermissionError)      what cannot be read without writing
     ├── CatalogUnavailableError (ConnectionError)  a database server that does not answer
     ├── ExportError (ValueError)                   an export that cannot be written or read
     └── MissingDependencyError (ImportError)       an optional package is not installed

Each also derives from the built-in exception that code written before it would catch.

Example:
    >>> import runbroker
    >>> try:
    ...     runbroker.open("mongodb://host/db")
    ... except runbroker.UnknownSchemeError as err:
    ...     print(err)
    cannot open 'mongodb://host/db': unknown scheme 'mongodb'. runbroker opens sqlite://,
    postgresql://, file:// URLs, file paths and folders (to copy runs out of a databroker MongoDB,
    use: runbroker import mongodb://... runs.db)
"""

from __future__ import annotations

__all__ = [
    "CatalogNotFoundError",
    "CatalogUnavailableError",
    "CorruptCatalogError",
    "ExportError",
    "MissingDependencyError",
    "NotACatalogError",
    "NotFoundError",
    "ReadOnlyMediumError",
    "RunNotFoundError",
    "RunbrokerError",
    "UnknownSchemeError",
]


class RunbrokerError(Exception):
    """The base of runbroker's own errors."""


class CatalogNotFoundError(RunbrokerError, FileNotFoundError):
    """No catalog at the path given, and opening it would have created one by accident."""


class NotACatalogError(RunbrokerError, ValueError):
    """The path or database names something that is not a runbroker catalog."""


class CorruptCatalogError(NotACatalogError):
    """A catalog file that SQLite reports as damaged."""


class UnknownSchemeError(RunbrokerError, ValueError):
    """A URL whose scheme runbroker does not open."""


class ReadOnlyMediumError(RunbrokerError, PermissionError):
    """A catalog on a read-only folder or medium that cannot be read without writing there."""


class CatalogUnavailableError(RunbrokerError, ConnectionError):
    """A database server that cannot be reached (or refuses the connection)."""


class ExportError(RunbrokerError, ValueError):
    """Documents an exporter cannot turn into a file (named by document and key), or a file
    of documents that cannot be read back (named by file and line)."""


class MissingDependencyError(RunbrokerError, ImportError):
    """An optional package that this use of runbroker needs is not installed."""


class NotFoundError(RunbrokerError, KeyError):
    """Something looked up is not there (a run, a stream, a field): a ``KeyError`` for users,
    whose message prints as a sentence rather than a quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunNotFoundError(NotFoundError):
    """A per-run call of a Store named a run the store does not hold."""
