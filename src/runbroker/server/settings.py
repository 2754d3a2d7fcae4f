"""What a server is told at start-up: who may call it and how much one request may ask.

Example:
    >>> Settings(api_key="s3cret").public
    False
    >>> Settings(public=True).api_key is None
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets

__all__ = ["ENV_KEY", "ENV_SETTINGS", "Settings", "new_key"]

#: The environment variable both ``runbroker serve`` and the client read the API key from.
ENV_KEY = "RUNBROKER_API_KEY"
#: The environment variable holding the other settings (JSON), for worker processes.
ENV_SETTINGS = "RUNBROKER_SERVER_SETTINGS"


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
    ``access``: an access configuration file (principals, groups, API keys, OIDC: see
    ``docs/access.md``); without one, every caller with the key sees every run.
    """

    api_key: str | None = None
    public: bool = False
    max_body: int = 256 * 2**20
    max_page: int = 10_000
    max_query_depth: int = 32
    poll_interval: float = 0.05
    max_wait: float = 60.0
    access: str | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment (:meth:`to_env`'s variables) unless given:
        ``api_key`` from ``$RUNBROKER_API_KEY``, the others from ``$RUNBROKER_SERVER_SETTINGS``.

        Example:
            >>> env = Settings(api_key="k", public=True, max_page=50).to_env()
            >>> os.environ.update(env)
            >>> Settings.from_env() == Settings(api_key="k", public=True, max_page=50)
            True
            >>> for name in env: del os.environ[name]
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"api_key"}
        stored = json.loads(os.environ.get(ENV_SETTINGS) or "{}")
        unknown = sorted(set(stored) - known)
        if unknown:
            raise ValueError(f"${ENV_SETTINGS} names unknown settings: {', '.join(unknown)}")
        values = {**stored, **{k: v for k, v in overrides.items() if v is not None}}
        if values.get("api_key") is None and os.environ.get(ENV_KEY):
            values["api_key"] = os.environ[ENV_KEY]
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Environment variables that give these settings to :meth:`from_env` in another
        process (a worker of ``runbroker serve --workers N``)."""
        others = {k: v for k, v in dataclasses.asdict(self).items() if k != "api_key"}
        env = {ENV_SETTINGS: json.dumps(others)}
        if self.api_key is not None:
            env[ENV_KEY] = self.api_key
        return env
