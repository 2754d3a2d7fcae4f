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

__all__ = ["ENV_KEY", "ENV_SESSION_SECRET", "ENV_SETTINGS", "Settings", "new_key"]

#: The environment variable both ``runbroker serve`` and the client read the API key from.
ENV_KEY = "RUNBROKER_API_KEY"
#: The environment variable holding the other settings (JSON), for worker processes.
ENV_SETTINGS = "RUNBROKER_SERVER_SETTINGS"
#: The environment variable holding the secret that signs download links (and sessions).
ENV_SESSION_SECRET = "RUNBROKER_SESSION_SECRET"
# Settings whose values are secrets: kept out of the JSON of the other settings and out of repr.
_SECRETS = {"api_key": ENV_KEY, "session_secret": ENV_SESSION_SECRET}
# The signing secret of this process when none is given: made up once, handed to workers.
_MADE_UP_SECRET = secrets.token_urlsafe(32)


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

    Hardening (:mod:`runbroker.server.security`): ``cors_origins``: the web origins
    (``https://app.example.org``, or ``"*"``) whose pages may call this server from a browser
    (none by default); ``cors_credentials``: whether those pages may send cookies too (never
    with ``"*"``). ``session_secret``: signs download links; from
    ``$RUNBROKER_SESSION_SECRET``, else made up for this process (give every process behind a
    load balancer the same one). ``auth_failures`` failed authentications per ``auth_window``
    seconds from one address, then 429 until the window has passed.
    """

    api_key: str | None = dataclasses.field(default=None, repr=False)
    public: bool = False
    max_body: int = 256 * 2**20
    max_page: int = 10_000
    max_query_depth: int = 32
    poll_interval: float = 0.05
    max_wait: float = 60.0
    access: str | None = None
    cors_origins: tuple[str, ...] = ()
    cors_credentials: bool = False
    session_secret: str | None = dataclasses.field(default=None, repr=False)
    auth_failures: int = 10
    auth_window: float = 60.0

    def __post_init__(self) -> None:
        # From JSON (worker processes) a tuple arrives as a list.
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if self.auth_failures < 1 or self.auth_window <= 0:
            raise ValueError(
                f"auth_failures={self.auth_failures}, auth_window={self.auth_window}: allow at "
                "least 1 failed authentication in a window of more than 0 seconds"
            )

    @property
    def secret(self) -> bytes:
        """The key that signs download links: ``session_secret``, or one made up for this
        process (:meth:`to_env` hands it to worker processes).

        Example:
            >>> Settings(session_secret="s").secret
            b's'
            >>> Settings().secret == Settings().secret != b""
            True
        """
        return (self.session_secret or _MADE_UP_SECRET).encode()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment (:meth:`to_env`'s variables) unless given:
        ``api_key`` from ``$RUNBROKER_API_KEY``, ``session_secret`` from
        ``$RUNBROKER_SESSION_SECRET``, the others from ``$RUNBROKER_SERVER_SETTINGS``.

        Example:
            >>> given = Settings(api_key="k", public=True, max_page=50, session_secret="s")
            >>> env = given.to_env()
            >>> os.environ.update(env)
            >>> Settings.from_env() == given
            True
            >>> for name in env: del os.environ[name]
        """
        known = {f.name for f in dataclasses.fields(cls)} - set(_SECRETS)
        stored = json.loads(os.environ.get(ENV_SETTINGS) or "{}")
        unknown = sorted(set(stored) - known)
        if unknown:
            raise ValueError(f"${ENV_SETTINGS} names unknown settings: {', '.join(unknown)}")
        values = {**stored, **{k: v for k, v in overrides.items() if v is not None}}
        for name, variable in _SECRETS.items():
            if values.get(name) is None and os.environ.get(variable):
                values[name] = os.environ[variable]
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Environment variables that give these settings to :meth:`from_env` in another
        process (a worker of ``runbroker serve --workers N``). The signing secret always
        goes along, made up or not: every worker must accept the links any of them signed."""
        others = {k: v for k, v in dataclasses.asdict(self).items() if k not in _SECRETS}
        env = {ENV_SETTINGS: json.dumps(others), ENV_SESSION_SECRET: self.secret.decode()}
        if self.api_key is not None:
            env[ENV_KEY] = self.api_key
        return env
