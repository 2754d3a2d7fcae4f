"""Build the ASGI application that serves one catalog.

Example:
    >>> import runbroker
    >>> from runbroker.server import Settings, build_app
    >>> app = build_app(runbroker.temp(), Settings(api_key="s3cret"))
    >>> "/api/v1/search" in app.openapi()["paths"]
    True
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..catalog import Catalog
from ..errors import RequestError, RunbrokerError
from . import accounts, live, notes, ops, protocol, resources, security
from .compression import Compression
from .context import Service
from .encoding import reply
from .limits import BodyLimit
from .settings import Settings

if TYPE_CHECKING:
    from ..auth.access import AccessControl

__all__ = ["ENV_CATALOG", "app_from_env", "build_app"]

log = logging.getLogger("runbroker.server")

#: The environment variable naming the catalog :func:`app_from_env` serves.
ENV_CATALOG = "RUNBROKER_SERVE_CATALOG"


def build_app(
    catalog: Catalog, settings: Settings | None = None, access: AccessControl | None = None
) -> FastAPI:
    """The ASGI app serving ``catalog`` with ``settings``; run it with any ASGI server
    (``uvicorn.run(app)``), or use ``runbroker serve``.

    ``access`` (or ``settings.access``, a configuration file) turns on access control:
    principals, groups and API keys from its directory, OIDC tokens, and each caller seeing
    only its groups' runs. Without it, the server's one API key sees everything. A server
    with no key, no access control and not public would be open to anyone by accident, so it
    is refused.
    """
    settings = settings if settings is not None else Settings.from_env()
    if access is None and settings.access is not None:
        from ..auth.access import AccessControl

        access = AccessControl.from_config(settings.access, catalog.store.uri)
    if settings.api_key is None and not settings.public and access is None:
        raise ValueError(
            "a server needs an API key (Settings(api_key=...), $RUNBROKER_API_KEY), an "
            "access configuration (Settings(access=FILE)) or public=True to serve reads "
            "anonymously"
        )
    app = FastAPI(
        title="runbroker",
        version=__version__,
        description="Bluesky runs: search them, read their data, replay their documents.",
        redoc_url=None,  # /docs is the one page: the security policy allows its CDN only
    )
    if access is not None:
        _index_access_keys(catalog, access)
    app.state.service = Service(catalog, settings, access)
    for module in (protocol, notes, resources, live, ops, accounts):
        app.include_router(module.router)
    if access is not None and access.oidc is not None and access.oidc.config.client_id:
        from .login import login_router

        app.include_router(login_router(access.oidc.config, access.oidc, settings.secret))
    app.add_middleware(BodyLimit, limit=settings.max_body)
    security.install(app, settings)  # inside compression: it reads the pages it sends
    app.add_middleware(Compression)
    ops.instrument(app)  # added last, so outermost: refused bodies and compressed bytes count
    app.add_exception_handler(RunbrokerError, _our_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _index_access_keys(catalog: Catalog, access: AccessControl) -> None:
    """Give the access keys (and ``public``) indexes of their own, kept in time order: a
    caller's page of runs is then read value by value, newest first (``docs/access.md``).
    Done once per catalog; a catalog opened read-only is served as it is."""
    from ..store.base import Indexes

    store = catalog.store
    if not isinstance(store, Indexes):
        return
    keys = [*access.policy.keys.values(), "public"]
    try:
        made = store.create_index(*keys)
    except PermissionError as err:  # read-only: searches work, only slower
        log.warning("access keys not indexed: %s", err)
        return
    if made:
        log.info("indexed the access keys %s", ", ".join(made))


def app_from_env() -> FastAPI:
    """The app of a worker process of ``runbroker serve --workers N`` (a uvicorn factory:
    ``uvicorn --factory runbroker.server.app:app_from_env``): it serves the catalog named by
    ``$RUNBROKER_SERVE_CATALOG`` (a path, URL or catalog name, as ``runbroker serve`` takes)
    with the settings of :meth:`Settings.from_env`. Each worker opens the catalog itself and
    keeps nothing another worker needs.

    Example:
        >>> os.environ.update({ENV_CATALOG: str(tmp_path / "runs.db"), "RUNBROKER_API_KEY": "k"})
        >>> "/api/v1/search" in app_from_env().openapi()["paths"]
        True
        >>> del os.environ[ENV_CATALOG], os.environ["RUNBROKER_API_KEY"]
    """
    from ..config import resolve
    from ..opening import open as open_catalog

    where = os.environ.get(ENV_CATALOG)
    if not where:
        raise RuntimeError(f"${ENV_CATALOG} must name the catalog to serve")
    uri, options = resolve(where)
    catalog = open_catalog(uri, **options)
    app = build_app(catalog, Settings.from_env())
    app.router.on_shutdown.append(catalog.close)
    return app


def _error(request: Request, err: RunbrokerError) -> Response:
    response = reply(request, {"error": err.to_dict()}, err.status)
    response.headers.update(err.headers)  # WWW-Authenticate, Retry-After ...
    return response


async def _our_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, RunbrokerError)
    # Where the catalog lives on the server (a file path, a database URL) is not the caller's
    # business: messages name it "this catalog".
    served = request.app.state.service.catalog.store.uri
    if served and len(err.args) == 1 and served in str(err):
        err.args = (str(err).replace(served, "this catalog"),)
    return _error(request, err)


async def _invalid_request(request: Request, err: Exception) -> Response:
    assert isinstance(err, RequestValidationError)
    problems = []
    for e in err.errors():
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "JSON decode error")
            at = e.get("loc", ("body", "?"))[-1]
            problems.append(f"the request body is not valid JSON: {reason} (at character {at})")
            continue
        where = ".".join(str(p) for p in e.get("loc", ()))
        problems.append(f"{where}: {e.get('msg', 'invalid')}")
    kind = request.headers.get("content-type", "")
    if "json" not in kind and "msgpack" not in kind and request.method in ("POST", "PUT"):
        problems.append(f"send the body as Content-Type: application/json (not {kind!r})")
    return _error(request, RequestError("bad request: " + "; ".join(problems)))


async def _http_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, StarletteHTTPException)
    cause = err.__cause__
    if err.status_code == 400 and cause is not None:  # FastAPI could not parse the body
        reason = f"{type(cause).__name__}: {cause}"
        return _error(request, RequestError(f"the request body could not be read ({reason})"))
    body: dict[str, Any] = {"code": f"http_{err.status_code}", "message": str(err.detail)}
    body["detail"] = {}
    return reply(request, {"error": body}, err.status_code)


async def _unexpected(request: Request, err: Exception) -> Response:
    log.exception("unexpected error serving %s %s", request.method, request.url.path)
    body = {
        "code": "error",
        "message": f"the server failed on this request ({type(err).__name__}); its log has why",
        "detail": {},
    }
    return reply(request, {"error": body}, 500)
