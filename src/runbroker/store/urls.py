"""Catalog URLs: their scheme, the driver each uses, and hiding passwords.

Example:
    >>> redact("postgresql://beamline:s3cret@db.example.org/runs")
    'postgresql://beamline:***@db.example.org/runs'
"""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["driver_url", "password_of", "redact", "scheme_of"]


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


# The password of a URL written in a text (``scheme://user:PASSWORD@``) and of a libpq or
# query-string setting (``password=PASSWORD``), whatever the password is.
_IN_URL = re.compile(r"(://[^\s:/@?#]*:)[^\s/@?#]+(?=@)")
_AS_SETTING = re.compile(r"(\bpassword=)[^\s&'\",;)]+")


def redact(text: str, *urls: str | None) -> str:
    """``text`` with passwords replaced by ``***``, for reprs, messages and logs: the password
    of each of ``urls`` (by default ``text`` itself, a URL) and of any URL written in ``text``.

    Only the places a password takes are changed (between ``user:`` and ``@``, and after
    ``password=``), so a host, port or database name that happens to contain the password's
    characters is shown as it is.

    Example:
        >>> redact("postgresql://postgres:postgres@db.host:5432/postgres")
        'postgresql://postgres:***@db.host:5432/postgres'
        >>> redact("cannot reach db.host:5432 (password=5)", "postgresql://u:5@db.host:5432/db")
        'cannot reach db.host:5432 (password=***)'
    """
    for url in urls or (text,):
        password = password_of(url) if url else None
        if password is None:
            continue
        for form in {quote(password, safe=""), password}:
            escaped = re.escape(form)
            # The patterns below stop at a / or @, which a password may hold.
            text = re.sub(f"(?<=:){escaped}(?=@)", "***", text)
            text = re.sub(f"(?<=password=){escaped}(?![^\\s&'\",;)])", "***", text)
    return _AS_SETTING.sub(r"\1***", _IN_URL.sub(r"\1***", text))
