"""A real OpenID Connect provider for tests, served on loopback.

:class:`IdentityProvider` signs JWTs with an RSA key it generates, and serves what a server and a
browser ask a provider for: its discovery document, its keys (JWKS), the authorization endpoint
of the browser login (which approves at once whoever :meth:`IdentityProvider.login_as` names)
and the token endpoint (the authorization-code grant with PKCE). It can rotate its key, count how
often its keys were fetched, and forge tokens with a key it never published.

Example:
    >>> import httpx
    >>> with IdentityProvider() as idp:
    ...     token = idp.token("alice", groups=["proposal:p1"], expires_in=60)
    ...     keys = httpx.get(idp.url + "/jwks").json()["keys"]
    ...     [k["kid"] for k in keys] == [idp.kid], idp.jwks_fetches
    (True, 1)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from ..auth.oidc import OIDCConfig
from .serving import ThreadServer

__all__ = ["IdentityProvider", "SigningKey"]


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A private key, the key id (``kid``) tokens signed with it name, and its algorithm
    (``RS256``: RSA 2048; ``ES256``: EC P-256)."""

    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str = "RS256"

    @classmethod
    def generate(cls, algorithm: str = "RS256") -> SigningKey:
        """A fresh key with a random kid."""
        if algorithm == "ES256":
            return cls(secrets.token_hex(8), ec.generate_private_key(ec.SECP256R1()), algorithm)
        if algorithm == "RS256":
            return cls(secrets.token_hex(8), rsa.generate_private_key(65537, 2048), algorithm)
        raise ValueError(f"the test provider signs with RS256 or ES256, not {algorithm!r}")

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK, as a JWKS lists it."""
        kind = (
            jwt.algorithms.ECAlgorithm if self.algorithm == "ES256" else jwt.algorithms.RSAAlgorithm
        )
        jwk = kind.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


@dataclasses.dataclass(frozen=True)
class _Grant:
    user: str
    groups: tuple[str, ...]
    scope: str | None
    client_id: str
    redirect_uri: str
    challenge: str
    method: str


class IdentityProvider:
    """``with IdentityProvider() as idp:`` serves a provider at ``idp.url`` (its issuer).

    ``audience``: the ``aud`` of its access tokens; ``client_id`` / ``client_secret``: the one
    client it knows (a secret, when given, must come with each code exchange).
    """

    def __init__(
        self,
        audience: str = "runbroker",
        client_id: str = "runbroker",
        client_secret: str | None = None,
    ) -> None:
        self.audience, self.client_id, self.client_secret = audience, client_id, client_secret
        self.key = SigningKey.generate()
        self.published: list[SigningKey] = [self.key]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.user: tuple[str, tuple[str, ...], str | None] | None = None
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self.server = ThreadServer(self._app())
        self.url = self.server.url

    # -- running

    def __enter__(self) -> IdentityProvider:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering (a provider that is down)."""
        self.server.stop()

    def config(self, **overrides: Any) -> OIDCConfig:
        """An :class:`OIDCConfig` for a server trusting this provider (``overrides`` set other
        fields)."""
        values = {"issuer": self.url, "audience": self.audience, "client_id": self.client_id}
        values["client_secret"] = self.client_secret
        return OIDCConfig(**{**values, **overrides})

    # -- tokens

    @property
    def kid(self) -> str:
        """The id of the key it signs with now."""
        return self.key.kid

    def token(
        self,
        sub: str,
        groups: Iterable[str] = (),
        scope: str | None = None,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        expires_in: float = 300,
        not_before: float | None = None,
        key: SigningKey | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An access token for user ``sub`` (also its ``preferred_username``), signed with
        ``key`` (default the current key). ``expires_in``: seconds from now (negative: already
        expired); ``not_before``: seconds from now it becomes valid; ``extra``: more claims
        (or claims replaced; a value None removes the claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "sub": sub,
            "preferred_username": sub,
            "aud": audience or self.audience,
            "iat": now,
            "exp": int(now + expires_in),
            "groups": list(groups),
        }
        if scope is not None:
            claims["scope"] = scope
        if not_before is not None:
            claims["nbf"] = int(now + not_before)
        for name, value in (extra or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = key or self.key
        return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def forge(self, sub: str, **claims: Any) -> str:
        """A token like :meth:`token`'s, naming the current kid but signed with a key this
        provider never published: its signature cannot verify."""
        stranger = SigningKey.generate(self.key.algorithm)
        return self.token(sub, key=dataclasses.replace(stranger, kid=self.kid), **claims)

    def rotate(self, keep_old: bool = False, algorithm: str = "RS256") -> SigningKey:
        """Sign with a new key (a new kid; ``algorithm`` RS256 or ES256) from now on; the old
        key leaves the JWKS unless ``keep_old``. Returns the old key."""
        old, self.key = self.key, SigningKey.generate(algorithm)
        with self._lock:
            self.published = [*(self.published if keep_old else []), self.key]
        return old

    def login_as(self, name: str, groups: Iterable[str] = (), scope: str | None = None) -> None:
        """Whom the authorization endpoint approves from now on (no one until this is
        called: logins are refused with ``error=login_required``)."""
        self.user = (name, tuple(groups), scope)

    # -- the app

    def _app(self) -> FastAPI:
        app = FastAPI()
        app.get("/.well-known/openid-configuration")(self._discovery)
        app.get("/jwks")(self._jwks)
        app.get("/authorize")(self._authorize)
        app.post("/token")(self._token)
        return app

    def _discovery(self) -> dict[str, Any]:
        self.discovery_fetches += 1
        return {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        }

    def _jwks(self) -> dict[str, Any]:
        with self._lock:
            self.jwks_fetches += 1
            return {"keys": [key.jwk() for key in self.published]}

    def _authorize(self, request: Request) -> Any:
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri:
            # Never redirect to an address a request made up for an unknown client.
            return JSONResponse({"error": "invalid_client"}, 400)
        back: dict[str, str] = {"state": q.get("state", "")}
        pkce = q.get("code_challenge_method") == "S256" and q.get("code_challenge")
        if q.get("response_type") != "code" or not pkce:
            back["error"] = "invalid_request"
        elif self.user is None:
            back["error"] = "login_required"
        else:
            code = secrets.token_urlsafe(24)
            name, groups, scope = self.user
            with self._lock:
                self._grants[code] = _Grant(
                    name, groups, scope, self.client_id, redirect_uri, q["code_challenge"], "S256"
                )
            back["code"] = code
        separator = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(redirect_uri + separator + urlencode(back), 302)

    async def _token(self, request: Request) -> Any:
        # A form body (application/x-www-form-urlencoded), read with the standard library:
        # FastAPI's Form() needs python-multipart, which runbroker does not depend on.
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        grant_type, code = form.get("grant_type", ""), form.get("code", "")
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        redirect_uri, code_verifier = form.get("redirect_uri", ""), form.get("code_verifier", "")
        if grant_type != "authorization_code":
            return _refuse("unsupported_grant_type", f"grant_type {grant_type!r}")
        if client_id != self.client_id or (
            self.client_secret is not None and client_secret != self.client_secret
        ):
            return _refuse("invalid_client", "unknown client or wrong secret", 401)
        with self._lock:
            grant = self._grants.pop(code, None)  # a code is good once
        if grant is None or grant.client_id != client_id:
            return _refuse("invalid_grant", "unknown or used code")
        if grant.redirect_uri != redirect_uri:
            return _refuse("invalid_grant", "redirect_uri differs from the authorization's")
        digest = hashlib.sha256(code_verifier.encode("ascii", "replace")).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return _refuse("invalid_grant", "code_verifier does not match the code_challenge")
        access = self.token(grant.user, groups=grant.groups, scope=grant.scope)
        ident = self.token(grant.user, groups=grant.groups, audience=grant.client_id)
        return {
            "access_token": access,
            "id_token": ident,
            "token_type": "Bearer",
            "expires_in": 300,
        }


def _refuse(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status)
