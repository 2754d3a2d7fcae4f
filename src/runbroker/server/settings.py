"""What a server is told at start-up: who may call it and how much one request may ask.

Example:
    >>> Settings(api_key="s3cret").public
    False
    >>> Settings(public=True).api_key is None
    True
"""

from __future__ import annotations

import dataclasses
import os
import secrets

__all__ = ["ENV_KEY", "Settings", "new_key"]

#: The environment variable both ``runbroker serve`` and the client read the API key from.
ENV_KEY = "RUNBROKER_API_KEY"


def new_key() -> str:
    """A fresh random API key (32 bytes of randomness, URL-safe).

    Example:
        >>> len(new_key()) >= 40
        True
    """
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True)
class Settings:
    """A server's settings.

    ``api_key``: the key every request must carry (``Authorization: Bearer KEY``); None with
    ``public=False`` is refused by :func:`runbroker.server.build_app` (``runbroker serve``
    makes one up and prints it). ``public``: anyone may read without a key; writes still need
    it. ``max_body``: the largest request body taken, in bytes (413 past it); ``max_page``:
    the most runs one search answer holds; ``max_query_depth``: how deeply queries may nest.
    ``poll_interval``: how often a held request (live following) looks for new data.
    """

    api_key: str | None = None
    public: bool = False
    max_body: int = 256 * 2**20
    max_page: int = 10_000
    max_query_depth: int = 32
    poll_interval: float = 0.05
    max_wait: float = 60.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings with ``api_key`` from ``$RUNBROKER_API_KEY`` unless given."""
        if overrides.get("api_key") is None and os.environ.get(ENV_KEY):
            overrides["api_key"] = os.environ[ENV_KEY]
        return cls(**overrides)  # type: ignore[arg-type]
