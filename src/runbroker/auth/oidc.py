"""OIDC bearer tokens: check a JWT against the facility's identity provider, and say who it names.

An identity provider (Keycloak, Okta, Azure AD, Authentik, ...) signs access tokens (JWTs) with
keys it publishes at its JWKS address, named by its discovery document
(``ISSUER/.well-known/openid-configuration``). :class:`OIDCVerifier` fetches that document once,
the keys through PyJWT's :class:`jwt.PyJWKClient` (cached for ``jwks_ttl`` seconds, and fetched
again when a token names a key it has not seen: the provider rotated its keys), and checks each
token's signature, issuer, audience, expiry, not-before and issued-at times.
:meth:`OIDCVerifier.identity` then reads the caller's name, scopes and groups from its claims.

Example:
    >>> from runbroker.testing.idp import IdentityProvider
    >>> with IdentityProvider() as idp:
    ...     verifier = OIDCVerifier(idp.config())
    ...     claims = verifier.verify(idp.token("alice", groups=["proposal:p1"]))
    ...     verifier.identity(claims)
    ('alice', None, ('proposal:p1',))
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from ..errors import NotAuthenticatedError, RunbrokerError, ServerUnreachableError
from .principal import SCOPES

__all__ = ["OIDCConfig", "OIDCVerifier", "Provider", "looks_like_jwt"]

# Three base64url parts; the third (the signature) is empty for alg "none", which verify()
# refuses by name rather than mistaking the token for an API key.
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWT's shape (three base64url parts joined by dots), so a server
    can tell an OIDC token from an API key before checking either.

    Example:
        >>> looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln")
        True
        >>> looks_like_jwt("Xk3v9q_LZ0s-2HqQ")
        False
    """
    return bool(_JWT.match(token))


@dataclasses.dataclass(frozen=True)
class OIDCConfig:
    """How a server trusts its identity provider.

    ``issuer``: the provider's issuer URL, exactly as its tokens' ``iss`` claim says it.
    ``audience``: the ``aud`` a token must carry to be meant for this server. ``client_id`` /
    ``client_secret``: this server as a client of the provider, for the browser login.
    ``name_claim``: the claim naming the user (``sub`` when a token lacks it);
    ``groups_claim`` / ``scopes_claim``: where groups and scopes are (a dotted path reaches
    into an object, e.g. ``realm_access.roles``). ``algorithms``: the signature algorithms
    taken. ``leeway``: seconds of clock difference forgiven on ``exp``/``nbf``/``iat``.
    ``jwks_ttl``: seconds the provider's keys are cached; ``jwks_cooldown``: the least
    seconds between two fetches caused by tokens naming unknown keys (so forged tokens cannot
    make the server hammer the provider). ``discovery_url``: default
    ``ISSUER/.well-known/openid-configuration``. ``redirect_path``: where the provider sends a
    browser back after a login. ``timeout``: seconds to wait for the provider.

    Example:
        >>> OIDCConfig.from_mapping({"issuer": "https://id.example/realms/f", "audience": "rb"})
        ... # doctest: +ELLIPSIS
        OIDCConfig(issuer='https://id.example/realms/f', audience='rb', client_id=None, ...)
        >>> OIDCConfig.from_mapping({"issuer": "https://id.example", "audiense": "rb"})
        Traceback (most recent call last):
        ...
        ValueError: oidc: unknown setting 'audiense' (the settings are: issuer, audience, ...)
    """

    issuer: str
    audience: str
    client_id: str | None = None
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    name_claim: str = "preferred_username"
    groups_claim: str = "groups"
    scopes_claim: str = "scope"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30
    jwks_ttl: float = 300
    jwks_cooldown: float = 10
    discovery_url: str | None = None
    redirect_path: str = "/auth/callback"
    timeout: float = 10

    def __post_init__(self) -> None:
        for name in ("issuer", "audience"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"oidc: {name!r} must be a non-empty string")
        if not self.issuer.startswith(("https://", "http://")):
            raise ValueError(f"oidc: 'issuer' must be an http(s) URL, not {self.issuer!r}")
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise ValueError("oidc: 'algorithms' must be a list such as [RS256, ES256]")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        weak = sorted(a for a in self.algorithms if a.lower() == "none" or a.startswith("HS"))
        if weak:
            # HS* would make the provider's public key a shared secret anyone can sign with
            raise ValueError(f"oidc: 'algorithms' may not include {', '.join(weak)}")
        if not self.redirect_path.startswith("/"):
            raise ValueError(f"oidc: 'redirect_path' must start with '/': {self.redirect_path!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OIDCConfig:
        """The configuration from a mapping (a YAML file's ``oidc:`` section, say); unknown or
        missing keys are named in the error."""
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in fields:
                raise ValueError(
                    f"oidc: unknown setting {key!r} (the settings are: {', '.join(fields)})"
                )
        missing = [name for name in ("issuer", "audience") if name not in data]
        if missing:
            raise ValueError(f"oidc: missing setting(s): {', '.join(missing)}")
        return cls(**data)

    @property
    def discovery(self) -> str:
        """The address of the provider's discovery document."""
        return self.discovery_url or (self.issuer.rstrip("/") + "/.well-known/openid-configuration")


@dataclasses.dataclass(frozen=True)
class Provider:
    """What the provider's discovery document says: its endpoints."""

    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None


class OIDCVerifier:
    """Checks tokens against the provider ``config`` names; safe to share between threads.

    Nothing is fetched until the first token (or login) needs it; the discovery document is
    then kept for the life of the verifier, the keys for ``config.jwks_ttl`` seconds.
    """

    def __init__(self, config: OIDCConfig) -> None:
        self.config = config
        self._provider: Provider | None = None
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()
        self._last_forced = float("-inf")

    # -- the provider

    def provider(self) -> Provider:
        """The provider's endpoints, from its discovery document (fetched once)."""
        with self._lock:
            if self._provider is None:
                self._provider = self._discover()
                self._jwks = jwt.PyJWKClient(
                    self._provider.jwks_uri,
                    lifespan=self.config.jwks_ttl,
                    timeout=self.config.timeout,
                )
            return self._provider

    def _discover(self) -> Provider:
        url = self.config.discovery
        try:
            response = httpx.get(url, timeout=self.config.timeout)
        except httpx.HTTPError as err:
            raise ServerUnreachableError(
                f"the identity provider did not answer at {url} ({type(err).__name__}); "
                "tokens cannot be checked until it does"
            ) from None
        try:
            response.raise_for_status()
            doc = response.json()
            issuer, jwks_uri = doc["issuer"], doc["jwks_uri"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            raise ServerUnreachableError(
                f"the identity provider's discovery document at {url} could not be used "
                f"({type(err).__name__}: {err})"
            ) from None
        if issuer.rstrip("/") != self.config.issuer.rstrip("/"):
            raise RunbrokerError(
                f"the identity provider at {url} names its issuer {issuer!r}, not the "
                f"configured {self.config.issuer!r}: correct the server's oidc issuer"
            )
        return Provider(
            issuer, jwks_uri, doc.get("authorization_endpoint"), doc.get("token_endpoint")
        )

    def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        self.provider()
        assert self._jwks is not None
        # One lookup at a time: threads arriving at an empty or stale cache share one fetch.
        try:
            with self._keys_lock:
                key = self._jwks.match_kid(self._jwks.get_signing_keys(), kid or "")
                now = time.monotonic()
                if key is None and now - self._last_forced >= self.config.jwks_cooldown:
                    # A key not seen: the provider may have rotated. Fetch again, at most once
                    # per cooldown, so tokens naming made-up keys cannot flood the provider.
                    self._last_forced = now
                    key = self._jwks.match_kid(self._jwks.get_signing_keys(refresh=True), kid or "")
        except jwt.PyJWKClientConnectionError:
            raise ServerUnreachableError(
                f"the identity provider's keys could not be fetched from {self._jwks.uri}; "
                "tokens cannot be checked until it answers"
            ) from None
        except jwt.exceptions.PyJWKError as err:
            raise ServerUnreachableError(
                f"the identity provider's keys at {self._jwks.uri} could not be used: {err}"
            ) from None
        if key is None:
            raise NotAuthenticatedError(
                "the token is signed with a key the identity provider does not publish"
                + ("" if kid else " (it names no key id, 'kid')")
            )
        return key

    # -- tokens

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature, issuer, audience and times check out;
        :class:`~runbroker.errors.NotAuthenticatedError` saying what is wrong otherwise (the
        token itself is never repeated), :class:`~runbroker.errors.ServerUnreachableError`
        when the provider cannot be asked."""
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise NotAuthenticatedError("the token is not a JWT that can be read") from None
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise NotAuthenticatedError(
                f"the token is signed with algorithm {str(alg)[:20]!r}; this server takes "
                f"{', '.join(config.algorithms)}"
            )
        kid = header.get("kid")
        key = self._signing_key(kid if isinstance(kid, str) else None)
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as err:
            raise NotAuthenticatedError(self._reason(token, err)) from None

    def _reason(self, token: str, err: jwt.InvalidTokenError) -> str:
        # Claims are read unverified only to word the message; nothing else trusts them.
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            claims = {}
        if isinstance(err, jwt.ExpiredSignatureError):
            return "the token has expired: log in again or get a new token"
        if isinstance(err, jwt.ImmatureSignatureError):
            return "the token is not valid yet (is this server's clock right?)"
        if isinstance(err, jwt.InvalidSignatureError):
            return "the token's signature does not verify"
        if isinstance(err, jwt.InvalidIssuerError):
            return (
                f"the token was issued by {_short(claims.get('iss'))}, not this server's "
                f"identity provider {self.config.issuer}"
            )
        if isinstance(err, jwt.InvalidAudienceError):
            return (
                f"the token is for audience {_short(claims.get('aud'))}, not "
                f"{self.config.audience!r}"
            )
        if isinstance(err, jwt.MissingRequiredClaimError):
            return f"the token has no {err.claim!r} claim"
        if isinstance(err, jwt.InvalidAlgorithmError):
            return f"the token's algorithm is not one of {', '.join(self.config.algorithms)}"
        return f"the token could not be checked ({type(err).__name__})"

    def identity(self, claims: Mapping[str, Any]) -> tuple[str, frozenset[str] | None, tuple]:
        """``(name, scopes, groups)`` from verified ``claims``: the name from ``name_claim``
        (else ``sub``); the scopes of ``scopes_claim`` (space-separated or a list) that are
        runbroker's, or None when it names none of them (the server gives user scopes); the
        group strings of ``groups_claim`` as the provider writes them.

        Example:
            >>> v = OIDCVerifier(OIDCConfig("https://id.example", "rb"))
            >>> v.identity({"sub": "u-17", "scope": "openid read:metadata", "groups": ["p1"]})
            ('u-17', frozenset({'read:metadata'}), ('p1',))
        """
        config = self.config
        name = _claim(claims, config.name_claim) or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise NotAuthenticatedError(
                f"the token names no user (no {config.name_claim!r} or 'sub' claim)"
            )
        raw_scopes = _strings(_claim(claims, config.scopes_claim))
        scopes = frozenset(s for s in raw_scopes if s in SCOPES) or None
        return name, scopes, _strings(_claim(claims, config.groups_claim))


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> tuple[str, ...]:
    # Providers write lists as JSON arrays or as one space-separated string.
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _short(value: Any) -> str:
    # A claim quoted in a message is cut short: the message must not become the token.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
