"""The browser login: the OIDC authorization-code flow with PKCE, leaving a session cookie.

``GET /auth/login?next=/path`` sends the browser to the identity provider;
the provider sends it back to ``GET /auth/callback`` (:attr:`OIDCConfig.redirect_path`) with a
code, which the server exchanges for an access token, checks, and keeps in the
``runbroker_session`` cookie (HttpOnly, SameSite=Lax, Secure over https) until the token
expires; ``POST /auth/logout`` clears it. Nothing is kept on the server between the two legs of
a login: the state, the PKCE verifier and where to go next travel in a signed cookie that
lives 10 minutes, so any process of a server with many can take the callback.

The session cookie is read by :func:`session_token`, for GET and HEAD requests only: a
cookie is sent by the browser whatever page asked, so a write must carry its token itself
(cross-site request forgery).

Example:
    >>> from fastapi import FastAPI
    >>> from runbroker.auth.oidc import OIDCConfig, OIDCVerifier
    >>> config = OIDCConfig("https://id.example", "runbroker", client_id="runbroker")
    >>> app = FastAPI()
    >>> app.include_router(login_router(config, OIDCVerifier(config), b"0123456789abcdef"))
    >>> sorted(app.openapi()["paths"])
    ['/auth/callback', '/auth/login', '/auth/logout']
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from ..auth.oidc import OIDCConfig, OIDCVerifier
from ..errors import NotAuthenticatedError, RequestError, RunbrokerError, ServerUnreachableError

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "login_router", "safe_next", "session_token"]

#: The cookie holding a logged-in browser's access token.
SESSION_COOKIE = "runbroker_session"
#: The cookie holding a login under way (state, PKCE verifier, next), signed.
LOGIN_COOKIE = "runbroker_login"
#: Seconds a login may take, from leaving for the provider to coming back.
LOGIN_TTL = 600
# Browsers drop cookies past 4096 bytes (name and attributes included), silently.
_MAX_COOKIE = 3800
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def session_token(request: Request) -> str | None:
    """The access token of a logged-in browser (its session cookie), for a GET or HEAD
    request; None for other methods, which must send ``Authorization: Bearer`` themselves
    (a cookie comes with every request to the site, whichever page sent it)."""
    if request.method not in _SAFE_METHODS:
        return None
    return request.cookies.get(SESSION_COOKIE) or None


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``"/"``: a login never sends a browser
    to another site (an open redirect).

    Example:
        >>> safe_next("/runs?plan=scan"), safe_next("https://evil.example"), safe_next("//evil")
        ('/runs?plan=scan', '/', '/')
    """
    if not target or len(target) > 2000 or not target.startswith("/"):
        return "/"
    # "//host" and "/\\host" are other hosts to a browser; control characters split headers
    if target.startswith(("//", "/\\")) or "\\" in target:
        return "/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return "/"
    return target


def login_router(config: OIDCConfig, verifier: OIDCVerifier, session_secret: bytes) -> APIRouter:
    """The routes of the browser login, for ``app.include_router``. ``session_secret``
    signs the login cookie: the same bytes in every process of one server (16 or more)."""
    if config.client_id is None:
        raise ValueError("oidc: the browser login needs 'client_id' (this server's client)")
    if len(session_secret) < 16:
        raise ValueError("the login's session_secret must be at least 16 bytes")
    signer = _Signer(session_secret)
    router = APIRouter(tags=["login"])

    @router.get("/auth/login")
    def login(request: Request, next: str = "/") -> RedirectResponse:
        """Send the browser to the identity provider to log in, then back to ``next``."""
        endpoint = verifier.provider().authorization_endpoint
        if not endpoint:
            raise RunbrokerError("the identity provider names no authorization endpoint")
        pkce = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(32)
        here = request.url
        redirect_uri = f"{here.scheme}://{here.netloc}{_root(request)}{config.redirect_path}"
        params = {
            "response_type": "code",
            "client_id": config.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": state,
            "code_challenge": _challenge(pkce),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in endpoint else "?"
        response = RedirectResponse(endpoint + separator + urlencode(params), 302)
        payload = {"state": state, "pkce": pkce, "next": safe_next(next), "back": redirect_uri}
        response.set_cookie(
            LOGIN_COOKIE,
            signer.sign(payload, LOGIN_TTL),
            max_age=LOGIN_TTL,
            path=_root(request) + config.redirect_path,
            httponly=True,
            samesite="lax",  # sent on the provider's top-level redirect back, not on others
            secure=request.url.scheme == "https",
        )
        return response

    @router.get(config.redirect_path)
    def callback(request: Request) -> RedirectResponse:
        """Where the provider sends the browser back: exchange the code, keep the token."""
        q = request.query_params
        started = signer.unsign(request.cookies.get(LOGIN_COOKIE))
        if not hmac.compare_digest(q.get("state", "").encode(), started["state"].encode()):
            raise NotAuthenticatedError(
                "the login's state does not match the one this browser started: "
                "start again at /auth/login"
            )
        if "error" in q:
            said = f"{q['error']}: {q.get('error_description', '')}".strip(": ")[:200]
            raise NotAuthenticatedError(f"the identity provider refused the login ({said})")
        code = q.get("code")
        if not code:
            raise RequestError("the identity provider sent the browser back without a code")
        token, claims = _exchange(config, verifier, code, started)
        response = RedirectResponse(safe_next(started["next"]), 303)
        response.delete_cookie(LOGIN_COOKIE, path=_root(request) + config.redirect_path)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=max(0, int(claims["exp"] - time.time())),
            path=_root(request) or "/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/auth/logout")
    def logout(request: Request, next: str = "/") -> RedirectResponse:
        """Forget the browser's session (the provider's own session is the provider's)."""
        response = RedirectResponse(safe_next(next), 303)
        response.delete_cookie(SESSION_COOKIE, path=_root(request) or "/")
        return response

    return router


def _exchange(
    config: OIDCConfig, verifier: OIDCVerifier, code: str, started: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The checked access token (and its claims) the provider gives for ``code``."""
    endpoint = verifier.provider().token_endpoint
    if not endpoint:
        raise RunbrokerError("the identity provider names no token endpoint")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": started["back"],
        "client_id": config.client_id,
        "code_verifier": started["pkce"],
    }
    if config.client_secret is not None:
        form["client_secret"] = config.client_secret
    try:
        answer = httpx.post(endpoint, data=form, timeout=config.timeout)
    except httpx.HTTPError as err:
        raise ServerUnreachableError(
            f"the identity provider's token endpoint {endpoint} did not answer "
            f"({type(err).__name__}): try logging in again"
        ) from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if answer.status_code != 200 or not isinstance(body.get("access_token"), str):
        said = f"{body.get('error', answer.status_code)}: {body.get('error_description', '')}"
        raise NotAuthenticatedError(
            f"the identity provider refused the login code ({said.strip(': ')[:200]})"
        )
    token = body["access_token"]
    claims = verifier.verify(token)
    if len(token) > _MAX_COOKIE:
        raise RunbrokerError(
            f"the identity provider's access token is {len(token)} bytes, too large for a "
            f"browser cookie ({_MAX_COOKIE}): have it put fewer claims (groups) in its tokens"
        )
    return token, claims


class _Signer:
    """JSON payloads with an expiry, signed with HMAC-SHA256 so a browser cannot alter them."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, so these signatures mean nothing anywhere else the secret is used.
        self.key = hmac.new(secret, b"runbroker login cookie", hashlib.sha256).digest()

    def sign(self, payload: dict[str, Any], ttl: float) -> str:
        body = _b64(json.dumps({**payload, "exp": time.time() + ttl}).encode())
        return body + "." + _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())

    def unsign(self, value: str | None) -> dict[str, Any]:
        if not value:
            raise NotAuthenticatedError(
                "no login is under way in this browser (its login cookie is missing): "
                "start again at /auth/login"
            )
        body, _, signature = value.partition(".")
        good = _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature.encode(), good.encode()):
            raise NotAuthenticatedError(
                "the login cookie was altered or signed by another server: start again at "
                "/auth/login"
            )
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if payload["exp"] < time.time():
            raise NotAuthenticatedError(
                f"the login took longer than {LOGIN_TTL // 60} minutes: start again at /auth/login"
            )
        return payload


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _challenge(verifier: str) -> str:
    """The S256 PKCE code challenge of ``verifier`` (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode()).digest())


def _root(request: Request) -> str:
    # Where the app is mounted (a proxy's prefix): cookies are scoped below it.
    return request.scope.get("root_path", "").rstrip("/")
