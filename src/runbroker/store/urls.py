"""Catalog URLs: the schemes runbroker opens, the driver each uses, and hiding passwords.

Example:
    >>> redact("postgresql://beamline:s3cret@db.example.org/runs")
    'postgresql://beamline:***@db.example.org/runs'
"""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["SCHEMES", "driver_url", "password_of", "redact", "scheme_of"]

#: The URL schemes :func:`runbroker.open` accepts (besides file paths and folders).
SCHEMES = ("sqlite", "postgresql")


def scheme_of(url: str) -> str:
    """The scheme of ``url`` without its driver: ``"postgresql"`` for ``postgresql+psycopg://``.

    Example:
        >>> scheme_of("postgresql+psycopg://host/db")
        'postgresql'
    """
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def driver_url(url: str) -> str:
    """``url`` with the driver runbroker uses for it: psycopg (3) for PostgreSQL.

    Example:
        >>> driver_url("postgresql://host/db")
        'postgresql+psycopg://host/db'
    """
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def password_of(url: str) -> str | None:
    """The password in ``url``, if it has one (in its user part or as ``?password=``).

    Example:
        >>> password_of("postgresql://u:pw@host/db"), password_of("sqlite:///runs.db")
        ('pw', None)
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    found = parsed.password or parsed.query.get("password")
    return found if isinstance(found, str) and found else None


def redact(text: str, url: str | None = None) -> str:
    """``text`` with the password of ``url`` (by default ``text`` itself, a URL) replaced by
    ``***``, wherever it appears: for reprs, messages and logs.

    Example:
        >>> redact("cannot reach postgresql://u:pw@host/db", "postgresql://u:pw@host/db")
        'cannot reach postgresql://u:***@host/db'
    """
    password = password_of(text if url is None else url)
    if password is None:
        return text
    for form in {quote(password, safe=""), password}:
        text = text.replace(form, "***")
    return text
