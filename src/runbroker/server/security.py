"""Hardening of the server: a limit on failed authentication, secure headers, CORS closed
by default, and short-lived download links.

:func:`install` (called by :func:`runbroker.server.build_app`) puts the pieces in place:

- :class:`FailedAuthLimiter`: after ``Settings.auth_failures`` failed authentications within
  ``Settings.auth_window`` seconds, an address gets 429 with ``Retry-After`` until the window
  has passed. The context dependency calls it around every credential it checks
  (:func:`counting_failures`).
- :class:`SecureHeaders`: ``nosniff``, no referrer, no framing, same-origin resources on
  every answer; a ``Content-Security-Policy`` on HTML pages (the ``/docs`` page may load
  Swagger UI from its CDN, nothing else); ``Strict-Transport-Security`` over https.
- CORS: no CORS header at all unless ``Settings.cors_origins`` names the web origins whose
  pages may call the server; ``"*"`` never together with credentials.

Download links. Keys and tokens never travel in URLs, where browser history, proxy logs and
``Referer`` headers keep them; but a plain link (``<a href>``) cannot carry an
``Authorization`` header. So a web page that offers a file first asks, with its credential in
the header, for a token for that one path (:func:`issue_download_token`, mounted as
``POST /api/v1/download-token?path=/api/v1/...``). The answer's ``url`` is the path with
``?token=...``: a link that works for 60 seconds, for GET of that path only, as that
principal. The context dependency recognises it with :func:`download_principal`. Tokens are
signed with ``Settings.secret`` (``$RUNBROKER_SESSION_SECRET``): processes behind one load
balancer need the same one; ``runbroker serve --workers N`` hands its own to its workers.

Secrets in logs: the access log (:mod:`runbroker.server.ops`) writes the path without its
query string and no header, so neither a ``token=`` parameter, nor ``Authorization``, nor a
cookie reaches it; ``runbroker serve`` turns uvicorn's own access log (which would write the
query string) off. No error message repeats a credential.

Example:
    >>> secret = b"signing secret of this server"
    >>> token = download_token(secret, "alice", "/api/v1/runs/ab12/export/csv")
    >>> check_download_token(secret, token, "/api/v1/runs/ab12/export/csv")
    'alice'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match

from ..errors import NotAuthenticatedError, TooManyRequestsError
from .settings import Settings

__all__ = [
    "MAX_TTL",
    "TOKEN_PARAM",
    "FailedAuthLimiter",
    "SecureHeaders",
    "answers_get",
    "check_download_token",
    "client_address",
    "counting_failures",
    "download_principal",
    "download_token",
    "install",
    "limiter",
]

#: The query parameter a download link carries its token in.
TOKEN_PARAM = "token"
#: The longest a download link may live, in seconds.
MAX_TTL = 3600


def install(app: FastAPI, settings: Settings) -> None:
    """Put the failed-authentication limit, secure headers and (when ``settings`` names
    origins) CORS on ``app``. Install it inside compression: it reads the HTML pages it
    sends. Refuses CORS settings that would open the server to every web site.

    Example:
        >>> app = FastAPI()
        >>> install(app, Settings(cors_origins=("https://app.example.org",)))
        >>> limiter(app).limit
        10
        >>> install(FastAPI(), Settings(cors_origins=("*",), cors_credentials=True))
        Traceback (most recent call last):
        ...
        ValueError: cors_origins=('*',) with cors_credentials=True would let every web site ...
    """
    app.state.auth_limiter = FailedAuthLimiter(settings.auth_failures, settings.auth_window)
    origins = _cors_origins(settings)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=settings.cors_credentials,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
            expose_headers=[
                "Retry-After",
                "Content-Disposition",
                "X-Runbroker-Dtype",
                "X-Runbroker-Shape",
                "X-Runbroker-Field",
            ],
            max_age=600,
        )
    pages = {app.docs_url, app.swagger_ui_oauth2_redirect_url} - {None}
    app.add_middleware(SecureHeaders, docs=frozenset(pages))


# -- failed authentication ----------------------------------------------------------------


class FailedAuthLimiter:
    """Counts failed authentications per client address: after ``limit`` of them within
    ``window`` seconds, :meth:`check` refuses that address until the oldest of them is
    ``window`` seconds old (429, with the seconds to wait).

    The counts live in this process only: with several workers or servers an address may fail
    ``limit`` times at each; a load balancer's own rate limit covers them together. Memory is
    bounded: at most ``limit`` times per address, addresses without a failure in the last
    window are forgotten, and past ``max_clients`` addresses the longest quiet goes first.
    A success forgets the address's failures (a mistyped key, then the right one).
    Thread-safe (routes run in a thread pool).

    Example:
        >>> gate = FailedAuthLimiter(limit=2, window=60)
        >>> gate.failed("10.0.0.7"); gate.check("10.0.0.7")
        >>> gate.failed("10.0.0.7"); gate.check("10.0.0.7")
        Traceback (most recent call last):
        ...
        runbroker.errors.TooManyRequestsError: too many failed authentications from this \
address: try again in 60 s
        >>> gate.succeeded("10.0.0.7"); gate.check("10.0.0.7")
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ValueError(
                f"FailedAuthLimiter(limit={limit}, window={window}, max_clients={max_clients}): "
                "each must be more than 0"
            )
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._clock = clock
        # address -> times of its latest failures; ordered by each address's latest failure
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise :class:`~runbroker.errors.TooManyRequestsError` if ``client`` failed
        ``limit`` times within the last window."""
        with self._lock:
            times = self._failures.get(client)
            if times is None or len(times) < self.limit:
                return
            wait = times[0] + self.window - self._clock()
        if wait > 0:
            raise TooManyRequestsError(max(1, math.ceil(wait)))

    def failed(self, client: str) -> None:
        """Count a failed authentication from ``client``."""
        now = self._clock()
        with self._lock:
            self._forget(now - self.window)
            times = self._failures.pop(client, None) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        with self._lock:
            self._failures.pop(client, None)

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._failures)

    def _forget(self, before: float) -> None:
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest[-1] > before:
                return
            self._failures.popitem(last=False)


def limiter(app: Any) -> FailedAuthLimiter:
    """The failed-authentication limiter :func:`install` gave ``app``."""
    return app.state.auth_limiter


def client_address(request: Request) -> str:
    """The address a request came from (the proxy's, unless the server is told to trust its
    ``X-Forwarded-For``: ``uvicorn --forwarded-allow-ips``)."""
    return request.client.host if request.client else "unknown"


@contextmanager
def counting_failures(request: Request) -> Iterator[None]:
    """Check a credential inside this block: a request from an address over the limit is
    refused before the check (429), a :class:`~runbroker.errors.NotAuthenticatedError`
    raised in the block counts as a failure, and a block that ends well forgets the
    address's failures. For the context dependency::

        with counting_failures(request):
            principal = keys.verify(presented)  # raises NotAuthenticatedError
    """
    gate, client = limiter(request.app), client_address(request)
    gate.check(client)
    try:
        yield
    except NotAuthenticatedError:
        gate.failed(client)
        raise
    gate.succeeded(client)


# -- secure headers -----------------------------------------------------------------------

_EVERY_ANSWER = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_HSTS = "max-age=31536000"
# Pages of our own: scripts, styles and images from this server only.
_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SWAGGER = {
    name: inspect.signature(get_swagger_ui_html).parameters[name].default
    for name in ("swagger_js_url", "swagger_css_url", "swagger_favicon_url")
}
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)


def docs_policy(page: bytes) -> str:
    """The Content-Security-Policy of FastAPI's ``/docs`` page ``page``: Swagger UI's script,
    stylesheet and icon from their CDN addresses exactly, the page's own start-up script by
    its hash (no other inline script runs), inline styles (Swagger UI sets them), images
    from ``data:`` URLs (its icons), requests to this server only.

    Example:
        >>> print(docs_policy(b"<script>go()</script>").replace("; ", ";\\n"))
        default-src 'none';
        script-src https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js \
'sha256-...';
        style-src https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css 'unsafe-inline';
        img-src https://fastapi.tiangolo.com/img/favicon.png data:;
        connect-src 'self';
        base-uri 'none';
        form-action 'none';
        frame-ancestors 'none'
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()}'"
        for m in _INLINE_SCRIPT.finditer(page)
    )
    return (
        f"default-src 'none'; script-src {_SWAGGER['swagger_js_url']} {hashes}; "
        f"style-src {_SWAGGER['swagger_css_url']} 'unsafe-inline'; "
        f"img-src {_SWAGGER['swagger_favicon_url']} data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class SecureHeaders:
    """ASGI middleware adding secure headers to every answer (see the module's docstring);
    a header a route set itself is kept. ``docs``: the paths of FastAPI's own pages, whose
    policy is :func:`docs_policy` (their HTML is held until complete, to hash its script).

    Example:
        >>> SecureHeaders(FastAPI(), docs=frozenset({"/docs"})).docs
        frozenset({'/docs'})
    """

    def __init__(self, app: Any, docs: frozenset[str] = frozenset()) -> None:
        self.app, self.docs = app, docs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root, path = scope.get("root_path", ""), scope["path"]
        docs_page = path.removeprefix(root) in self.docs
        held: list[dict[str, Any]] = []

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", ())))
                for name, value in _EVERY_ANSWER.items():
                    headers.setdefault(name, value)
                if scope.get("scheme") == "https":
                    headers.setdefault("Strict-Transport-Security", _HSTS)
                html = headers.get("content-type", "").startswith("text/html")
                if html and not docs_page:
                    headers.setdefault("Content-Security-Policy", _PAGE_POLICY)
                message = {**message, "headers": headers.raw}
                if html and docs_page:  # its policy needs its whole body: hold it
                    held.append(message)
                    return
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body"):
                    return
                start, *parts = held
                page = b"".join(part.get("body", b"") for part in parts)
                headers = MutableHeaders(raw=list(start["headers"]))
                headers.setdefault("Content-Security-Policy", docs_policy(page))
                await send({**start, "headers": headers.raw})
                message = {"type": "http.response.body", "body": page}
            await send(message)

        await self.app(scope, receive, sending)


# -- CORS ---------------------------------------------------------------------------------


def _cors_origins(settings: Settings) -> list[str]:
    origins = list(settings.cors_origins)
    if "*" in origins and settings.cors_credentials:
        raise ValueError(
            f"cors_origins={settings.cors_origins!r} with cors_credentials=True would let every "
            "web site act with its visitors' logins on this server: name the origins allowed "
            "(cors_origins=('https://app.example.org',))"
        )
    if "*" in origins and len(origins) > 1:
        raise ValueError(
            f"cors_origins={settings.cors_origins!r}: '*' already allows every origin; give "
            "either '*' alone or the origins"
        )
    for origin in origins:
        if origin != "*" and not _is_origin(origin):
            raise ValueError(
                f"cors_origins: {origin!r} is not a web origin; write scheme://host[:port], "
                "e.g. 'https://app.example.org' (no path, no trailing slash)"
            )
    return origins


def _is_origin(text: str) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not (parts.path or parts.query or parts.fragment or parts.username)
        and text == f"{parts.scheme}://{parts.netloc}"
    )


# -- download links -----------------------------------------------------------------------

# Says what the MAC is for, so no other signature made with the same secret passes as a token.
_PURPOSE = b"runbroker download link v1\0"


def download_token(secret: bytes, principal: str, path: str, ttl: int = 60) -> str:
    """A token letting ``principal`` GET ``path`` for ``ttl`` seconds (at most
    :data:`MAX_TTL`): the principal, path and expiry, signed with HMAC-SHA256 by ``secret``,
    URL-safe (letters, digits, ``-_.``).

    Example:
        >>> token = download_token(b"k" * 32, "alice", "/api/v1/runs/ab12/export/csv")
        >>> set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
        True
    """
    if not secret:
        raise ValueError("download_token: the signing secret is empty")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"download_token: ttl={ttl}: give 1 to {MAX_TTL} seconds")
    expires = math.ceil(time.time()) + int(ttl)
    payload = _b64(json.dumps([principal, path, expires], separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(secret, payload))}"


def check_download_token(secret: bytes, token: str, path: str) -> str:
    """The principal a :func:`download_token` was issued to, if it is for ``path`` and has not
    expired; else :class:`~runbroker.errors.NotAuthenticatedError` saying which.

    Example:
        >>> token = download_token(b"k" * 32, "alice", "/api/v1/runs/ab12/export/csv")
        >>> check_download_token(b"k" * 32, token, "/api/v1/runs/cd34/export/csv")
        Traceback (most recent call last):
        ...
        runbroker.errors.NotAuthenticatedError: the download link is for another file
    """
    payload, _, mac = token.partition(".")
    try:
        signed = hmac.compare_digest(_unb64(mac), _mac(secret, payload))
        principal, for_path, expires = json.loads(_unb64(payload)) if signed else (0, 0, 0)
    except (ValueError, TypeError, binascii.Error):
        signed = False
    if not signed:
        raise NotAuthenticatedError(
            "the download link is not valid: it was altered, or not issued by this server"
        )
    if for_path != path:
        raise NotAuthenticatedError("the download link is for another file")
    if time.time() >= expires:
        raise NotAuthenticatedError("the download link has expired: ask for a new one")
    return str(principal)


def download_principal(request: Request, secret: bytes) -> str | None:
    """For the context dependency: the principal a request's download token names, None when
    it carries none; a bad token, or one on a request other than GET/HEAD, is refused."""
    token = request.query_params.get(TOKEN_PARAM)
    if token is None:
        return None
    if request.method not in ("GET", "HEAD"):
        raise NotAuthenticatedError(f"a download link is for GET requests, not {request.method}")
    return check_download_token(secret, token, _route_path(request.scope))


def answers_get(route: Any, path: str) -> bool:
    if not path.startswith("/api/") or any(c in path for c in "?#\\") or "/../" in path:
        return False
    probe = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    match, _ = route.matches(probe)
    return match is Match.FULL


def _route_path(scope: dict[str, Any]) -> str:
    return scope["path"].removeprefix(scope.get("root_path", ""))


def _mac(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, _PURPOSE + payload.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
