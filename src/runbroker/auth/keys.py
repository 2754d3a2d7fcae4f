"""API keys: their format, how they are hashed, and how long they live.

A secret reads ``rbk_<id>_<random>``: the id (12 url-safe characters) finds the key's row
without a scan, and the random part (``secrets.token_urlsafe(32)``, 256 bits) is what proves
the holder. Only the id, a random 16-byte salt and ``HMAC-SHA256(salt, secret)`` are stored;
the secret is shown once, when the key is made.

A fast salted hash is right here, where a password would want a slow one (bcrypt, argon2):
a slow hash protects *guessable* secrets from a stolen table, but a 256-bit random secret
cannot be guessed at any speed, so slowness would only cost every request its time.

Example:
    >>> key_id, secret = new_secret()
    >>> parse_secret(secret) == key_id, len(key_id)
    (True, 12)
    >>> salt = new_salt(); stored = digest(salt, secret)
    >>> matches(secret, salt, stored), matches(secret + "x", salt, stored)
    (True, False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta

__all__ = [
    "PREFIX",
    "KeyInfo",
    "digest",
    "matches",
    "new_salt",
    "new_secret",
    "parse_duration",
    "parse_secret",
    "spend_as_unknown",
]

PREFIX = "rbk_"
_ID_LENGTH = 12
# token_urlsafe(32) gives 43 characters; a little slack for other lengths, none for junk.
_SECRET = re.compile(r"rbk_([A-Za-z0-9_-]{12})_([A-Za-z0-9_-]{32,128})")
# Checked against when a secret names no key, so that answer costs what a known key's does.
_DUMMY_SALT = secrets.token_bytes(16)
_DUMMY_DIGEST = hmac.new(_DUMMY_SALT, b"no such key", hashlib.sha256).digest()


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What is known of an API key, never its secret nor its digest.

    Times are timezone-aware (UTC); ``expires``, ``revoked`` and ``last_used`` are ``None``
    for a key that never expires, is not revoked, or was never used.
    """

    id: str
    principal: str
    scopes: frozenset[str]
    defaults: Mapping[str, str]
    note: str
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None
    revoked_by: str | None = None
    last_used: datetime | None = None

    def state(self, now: datetime) -> str:
        """``"active"``, ``"revoked"`` or ``"expired"`` at time ``now``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


def new_secret() -> tuple[str, str]:
    """A new key's id and secret.

    Example:
        >>> key_id, secret = new_secret()
        >>> secret.startswith(f"rbk_{key_id}_")
        True
    """
    # An id of letters and digits only: '_' would make the secret ambiguous to split.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(_ID_LENGTH))
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def new_salt() -> bytes:
    """16 random bytes, one salt per key."""
    return secrets.token_bytes(16)


def parse_secret(secret: str) -> str | None:
    """The key id a secret names, or ``None`` when it is not shaped as a runbroker key.

    Example:
        >>> parse_secret("rbk_ABCDEFGHJKLM_" + "x" * 43)
        'ABCDEFGHJKLM'
        >>> parse_secret("hunter2") is None
        True
    """
    found = _SECRET.fullmatch(secret) if isinstance(secret, str) else None
    return found.group(1) if found else None


def digest(salt: bytes, secret: str) -> bytes:
    """``HMAC-SHA256(salt, secret)``: what is stored in place of the secret."""
    return hmac.new(salt, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def matches(secret: str, salt: bytes, stored: bytes) -> bool:
    """Whether ``secret`` hashes to ``stored``, compared in constant time."""
    return hmac.compare_digest(digest(salt, secret), stored)


def spend_as_unknown(secret: str) -> None:
    """Do the work of checking a key for a secret that names none, so that an unknown key
    takes as long to refuse as a known one (its id cannot be learnt from the time taken)."""
    text = secret if isinstance(secret, str) else ""
    hmac.compare_digest(digest(_DUMMY_SALT, text), _DUMMY_DIGEST)


_DURATION = re.compile(r"(\d+)\s*([dhmw])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str) -> timedelta | None:
    """How long a key lives: ``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, or ``"never"`` (None).

    Example:
        >>> parse_duration("30d"), parse_duration("90m"), parse_duration("never")
        (datetime.timedelta(days=30), datetime.timedelta(seconds=5400), None)
        >>> parse_duration("soon")
        Traceback (most recent call last):
        ...
        ValueError: duration 'soon': write a number and a unit (30d, 12h, 90m, 2w) or never
    """
    cleaned = text.strip().lower()
    if cleaned == "never":
        return None
    found = _DURATION.fullmatch(cleaned)
    if not found or int(found.group(1)) == 0:
        raise ValueError(
            f"duration {text!r}: write a number and a unit (30d, 12h, 90m, 2w) or never"
        )
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
