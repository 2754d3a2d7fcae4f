"""runbroker's errors: one tree, each class with an HTTP status and a machine-readable code.

Each also derives from the built-in exception that code written before it would catch, so
``except KeyError`` still catches a missing run and ``except ValueError`` a refused document.
The status is what a server answers with; the code names the class on the wire, and
``err.to_dict()`` / :func:`from_dict` carry an error from a server to a client unchanged.
``docs/errors.md`` tabulates the classes with their statuses and codes.

Example:
    >>> import runbroker
    >>> try:
    ...     runbroker.open("mongodb://host/db")
    ... except runbroker.UnknownSchemeError as err:
    ...     print(err)
    cannot open 'mongodb://host/db': unknown scheme 'mongodb'. runbroker opens sqlite://,
    postgresql://, file://, http://, https:// URLs, file paths and folders (to copy runs out of
    a databroker MongoDB, use: runbroker import mongodb://... runs.db)
    >>> err = AmbiguousUIDError("ab", ["ab12", "ab34"])
    >>> err.status, err.to_dict()["code"], err.to_dict()["detail"]
    (409, 'ambiguous_uid', {'prefix': 'ab', 'candidates': ['ab12', 'ab34']})
    >>> again = from_dict(err.to_dict())
    >>> type(again).__name__, str(again) == str(err), again.candidates
    ('AmbiguousUIDError', True, ['ab12', 'ab34'])
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccessDeniedError",
    "AliasError",
    "AmbiguousUIDError",
    "BadRunFile",
    "CatalogConfigError",
    "CatalogNotFoundError",
    "CatalogUnavailableError",
    "ConflictError",
    "CopyError",
    "CorruptCatalogError",
    "DocumentError",
    "ExportError",
    "ExternalDataError",
    "HandlerNotFoundError",
    "MissingDependencyError",
    "NoStreamError",
    "NotACatalogError",
    "NotAuthenticatedError",
    "NotFoundError",
    "NotTheAuthorError",
    "NotesUnsupportedError",
    "PackCorruptError",
    "PackError",
    "PageGone",
    "ProvenanceError",
    "QueryError",
    "ReadOnlyError",
    "ReadOnlyMediumError",
    "RequestError",
    "RequestTooLargeError",
    "RunNotFoundError",
    "RunbrokerError",
    "SchemaVersionError",
    "ServerUnreachableError",
    "TemplateError",
    "TooManyRequestsError",
    "TruncatedStreamError",
    "UnknownParentError",
    "UnknownSchemeError",
    "UnsafePathError",
    "from_dict",
]

# code -> class, filled as classes are defined (a class inheriting its parent's code is not in it)
_BY_CODE: dict[str, type[RunbrokerError]] = {}


class RunbrokerError(Exception):
    """The base of runbroker's own errors; its message prints as a sentence.

    ``status`` is the HTTP status a server answers with, ``code`` the stable name of the class
    in a response; ``detail`` names the attributes that carry facts beyond the message.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"
    detail: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        if code in _BY_CODE:
            raise TypeError(f"{cls.__name__}.code {code!r} is taken by {_BY_CODE[code].__name__}")
        _BY_CODE[code] = cls

    def __str__(self) -> str:
        # KeyError would print its one argument as a quoted repr
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-safe data: ``{"code", "message", "detail"}``.

        Example:
            >>> RunNotFoundError("no run 'ab12'").to_dict()
            {'code': 'run_not_found', 'message': "no run 'ab12'", 'detail': {}}
        """
        detail = {name: _jsonable(getattr(self, name)) for name in self.detail}
        return {"code": self.code, "message": str(self), "detail": detail}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers a server sends with this error (none, unless a class says so).

        Example:
            >>> TooManyRequestsError(30).headers
            {'Retry-After': '30'}
        """
        return {}


_BY_CODE[RunbrokerError.code] = RunbrokerError


def from_dict(data: dict[str, Any]) -> RunbrokerError:
    """The error ``RunbrokerError.to_dict`` described: same class, message and attributes.

    An unknown code (from a newer server) gives a plain :class:`RunbrokerError`.

    Example:
        >>> err = from_dict({"code": "conflict", "message": "uid 'e1' differs", "detail": {}})
        >>> isinstance(err, ConflictError), isinstance(err, ValueError), str(err)
        (True, True, "uid 'e1' differs")
        >>> type(from_dict({"code": "from_the_future", "message": "new"})).__name__
        'RunbrokerError'
    """
    cls = _BY_CODE.get(data.get("code", ""), RunbrokerError)
    message = data.get("message", "")
    # Not cls(message): constructors take the facts, the message is already made from them.
    err = cls.__new__(cls, message)
    detail = data.get("detail") or {}
    for name in cls.detail:
        setattr(err, name, detail.get(name))
    return err


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# -- looked up and not there --------------------------------------------------------------


class NotFoundError(RunbrokerError, KeyError):
    """Something looked up is not there (a run, a stream, a field): a ``KeyError`` for users,
    whose message prints as a sentence rather than a quoted repr."""

    status, code = 404, "not_found"


class RunNotFoundError(NotFoundError):
    """No run for a key: ``cat[...]`` found none, or a per-run call of a Store named a run
    the store does not hold."""

    code = "run_not_found"


class NoStreamError(NotFoundError, AttributeError):
    """A run has no stream of that name: a KeyError for ``run[name]``, an AttributeError for
    ``run.baseline`` (so that ``getattr(run, "baseline", None)`` works)."""

    code = "stream_not_found"


class AmbiguousUIDError(RunbrokerError, KeyError):
    """A uid prefix matched more than one run. ``candidates`` lists their uids."""

    status, code, detail = 409, "ambiguous_uid", ("prefix", "candidates")

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix, self.candidates = prefix, candidates
        shown = "\n  ".join(candidates)
        more = " (showing the first 10)" if len(candidates) >= 10 else ""
        super().__init__(
            f"uid prefix {prefix!r} matches several runs{more}; "
            f"give more characters. Candidates:\n  {shown}"
        )


class PageGone(RunbrokerError, LookupError):
    """A page listed by ``Store.pages`` was merged away before it was read; list again."""

    status, code = 410, "page_gone"


# -- refused requests and documents -------------------------------------------------------


class QueryError(RunbrokerError, ValueError):
    """A query is malformed; the message names the offending key, value or field."""

    status, code = 400, "bad_query"


class DocumentError(RunbrokerError, ValueError):
    """A document was refused; the message names its type, uid and key, as do the attributes
    ``name``, ``uid`` and ``key`` (and ``reason``)."""

    status, code, detail = 400, "bad_document", ("name", "uid", "key", "reason")

    def __init__(self, name: str, uid: Any, key: str | None, reason: str) -> None:
        self.name, self.uid, self.key, self.reason = name, uid, key, reason
        where = f" at key {key!r}" if key else ""
        super().__init__(f"Invalid {name} document {describe(name, uid)}{where}: {reason}")


class UnknownParentError(DocumentError):
    """A document points at a parent (run, descriptor, resource) that the store has not seen."""

    code = "unknown_parent"

    @classmethod
    def missing(cls, name: str, uid: Any, key: str, parent: Any) -> UnknownParentError:
        """The error for a ``name`` document whose ``key`` names ``parent``, not stored.

        Example:
            >>> print(UnknownParentError.missing("stop", "s1", "run_start", "r1"))
            Invalid stop document (uid 's1') at key 'run_start': refers to run 'r1', which is \
not in this catalog (insert its start document first)
        """
        kind, hint = _PARENTS[key]
        return cls(
            name, uid, key, f"refers to {kind} {parent!r}, which is not in this catalog{hint}"
        )


# What each key that names a parent points at, and what to do when it is missing.
_PARENTS = {
    "run_start": ("run", " (insert its start document first)"),
    "descriptor": ("descriptor", " (insert the descriptor before its events)"),
    "resource": ("resource", ""),
    "stream_resource": ("stream_resource", ""),
}


class ConflictError(DocumentError):
    """A document reuses the uid of a stored document but differs from it."""

    status, code = 409, "conflict"


def describe(name: str, uid: Any) -> str:
    """Short human form of a document's identity, e.g. ``(uid 'ab12…')``.

    Example:
        >>> describe("event_page", ["a", "b", "c"])
        "(uids 'a' … 'c', 3 events)"
    """
    if isinstance(uid, list):
        if not uid:
            return "(empty page)"
        unit = "datums" if name.startswith("datum") else "events"
        return f"(uids {uid[0]!r} … {uid[-1]!r}, {len(uid)} {unit})"
    return f"(uid {uid!r})" if uid is not None else "(no uid)"


class ProvenanceError(RunbrokerError, ValueError):
    """Derived data was saved without saying where it came from."""

    status, code = 400, "missing_provenance"


class ReadOnlyError(RunbrokerError, PermissionError):
    """A write to a catalog opened read-only (``runbroker.open(..., readonly=True)``)."""

    status, code = 403, "read_only"


class NotTheAuthorError(RunbrokerError, PermissionError):
    """An edit or deletion of an annotation or correction by someone other than its author
    (the message names the note and its author). Tags are not this: whoever sees a tag may
    take it off."""

    status, code = 403, "not_the_author"


class NotesUnsupportedError(RunbrokerError, TypeError):
    """Notes (annotations, tags, corrections) asked of a store that keeps none; the message
    names the store."""

    status, code = 501, "notes_unsupported"


class UnsafePathError(RunbrokerError, ValueError):
    """A resource or datum names a file outside its root (``..`` or an absolute path)."""

    # refused for safety, whoever asks: a server never reads such a file
    status, code = 403, "unsafe_path"


# -- export and packs ---------------------------------------------------------------------


class ExportError(RunbrokerError, ValueError):
    """Documents an exporter cannot turn into a file (named by document and key), or a file
    of documents that cannot be read back (named by file and line)."""

    status, code = 422, "export_refused"


class TemplateError(RunbrokerError, ValueError):
    """A file-name template names something the run does not have, or is malformed."""

    status, code = 422, "bad_template"


class BadRunFile(RunbrokerError, ValueError):
    """A file that is not one valid run; the message names the file and the line or record."""

    status, code = 422, "bad_run_file"


class PackError(RunbrokerError, ValueError):
    """A pack (or a run going into one) that cannot be used; the message says which file."""

    status, code = 400, "bad_pack"


class PackCorruptError(PackError):
    """Files of a pack are missing or differ from its manifest: ``missing`` lists their
    paths, ``corrupt`` maps each damaged one to what differs (both from a ``VerifyReport``)."""

    status, code, detail = 422, "pack_corrupt", ("missing", "corrupt")

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.missing: list[str] = list(report.missing)
        self.corrupt: dict[str, str] = dict(report.corrupt)


class CopyError(RunbrokerError):
    """A file could not be copied or written; the message says which and why."""

    code = "copy_failed"


# -- what this installation or its files cannot do ----------------------------------------


class ExternalDataError(RunbrokerError, OSError):
    """Detector data an event points at cannot be read: the message names the run, the field,
    the file (and whether ``root_map`` changed its path) and the handler used."""

    code = "external_data"


class HandlerNotFoundError(RunbrokerError, LookupError):
    """No handler is known for a resource's ``spec`` (or no reader for a mimetype)."""

    status, code = 501, "handler_not_found"


class MissingDependencyError(RunbrokerError, ImportError):
    """An optional package that this use of runbroker needs is not installed."""

    status, code = 501, "missing_dependency"


class CatalogConfigError(RunbrokerError, ValueError):
    """A catalog configuration file that cannot be used, named with its line."""

    code = "catalog_config"


class AliasError(RunbrokerError, ValueError):
    """A standard-names alias table that cannot be used, or that gives two fields of one
    stream the same standard name."""

    status, code = 400, "bad_aliases"


# -- opening a catalog --------------------------------------------------------------------


class CatalogNotFoundError(RunbrokerError, FileNotFoundError):
    """No catalog at the path given, and opening it would have created one by accident."""

    status, code = 404, "catalog_not_found"


class NotACatalogError(RunbrokerError, ValueError):
    """The path or database names something that is not a runbroker catalog."""

    status, code = 400, "not_a_catalog"


class CorruptCatalogError(NotACatalogError):
    """A catalog file that SQLite reports as damaged."""

    status, code = 500, "corrupt_catalog"


class UnknownSchemeError(RunbrokerError, ValueError):
    """A URL whose scheme runbroker does not open."""

    status, code = 400, "unknown_scheme"


class SchemaVersionError(RunbrokerError, RuntimeError):
    """The catalog was written by a different schema version than this runbroker uses."""

    code = "schema_version"


class ReadOnlyMediumError(RunbrokerError, PermissionError):
    """A catalog on a read-only folder or medium that cannot be read without writing there."""

    status, code = 503, "read_only_medium"


class CatalogUnavailableError(RunbrokerError, ConnectionError):
    """A database server that cannot be reached (or refuses the connection)."""

    status, code = 503, "catalog_unavailable"


# -- the service ---------------------------------------------------------------------------


class NotAuthenticatedError(RunbrokerError, PermissionError):
    """A request to a runbroker server without a valid API key (or a write, without one, to a
    server that serves reads anonymously)."""

    status, code = 401, "not_authenticated"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class TooManyRequestsError(RunbrokerError):
    """Too many failed authentications came from one address: its requests are refused for
    ``retry_after`` seconds (sent as the ``Retry-After`` header too). Not a PermissionError:
    the address is refused, not a credential."""

    status, code, detail = 429, "too_many_requests", ("retry_after",)

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"too many failed authentications from this address: try again in {retry_after} s"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class AccessDeniedError(RunbrokerError, PermissionError):
    """An authenticated caller asked for what it may not do: a route needing a scope its key
    or token lacks, or a write into a run whose access tags it does not hold. (A run it may
    not *see* is never this error: it is absent, :class:`RunNotFoundError`.)"""

    status, code = 403, "access_denied"


class RequestError(RunbrokerError, ValueError):
    """A request a server cannot take as sent: a malformed body, a parameter of the wrong
    type or out of range, an unknown format."""

    status, code = 400, "bad_request"


class RequestTooLargeError(RequestError):
    """A request body larger than the server takes (``max_body`` in its settings)."""

    status, code = 413, "request_too_large"


class ServerUnreachableError(CatalogUnavailableError):
    """A runbroker server did not answer (down, restarting, or the network is in the way),
    after the client's retries. The message names the URL."""

    code = "server_unreachable"


class TruncatedStreamError(RunbrokerError, ConnectionError):
    """A server's answer ended before its end record: the server stopped mid-answer
    (restarted or killed) or the connection dropped. None of a cut answer is handed on."""

    status, code = 502, "truncated_stream"
