"""The one dependency every route takes: who is calling, and the catalog as they may see it.

A route names what it needs by the type of its context parameter -- :data:`Metadata`,
:data:`Data`, :data:`Writer` or :data:`Caller` -- and nothing else: the scope it requires is
part of that type (a FastAPI ``Security`` dependency), so the whole app's scopes can be listed
from its routes (:func:`route_scopes`), and a route cannot reach runs except through
``ctx.catalog``, which is the catalog narrowed to the caller's runs. A run the caller may not
see is absent from it: 404, as for a run that does not exist.

Credentials, in the order they are looked for:

* ``Authorization: Bearer <secret>``: the server's own key (``runbroker serve --api-key``,
  an admin), an API key of the identity directory (``rbk_...``), or an OIDC token (a JWT);
* the browser login's session cookie, for reading (GET and HEAD) only, so that a page of
  another site cannot make a logged-in browser write;
* ``?token=``: a short-lived download token for one path (a link a browser follows);
* nothing: the anonymous caller, on a server that serves public runs to anyone.

Secrets are compared in constant time, never logged, and never repeated in an error.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterator
from typing import Annotated, Any, get_origin, get_type_hints

from fastapi import Request, Security, params
from fastapi.routing import APIRoute
from fastapi.security import SecurityScopes

from ..auth.noterules import viewer_for
from ..auth.oidc import looks_like_jwt
from ..auth.principal import ALL_SCOPES, ANONYMOUS, Principal
from ..catalog import Catalog
from ..errors import AccessDeniedError, NotAuthenticatedError
from ..notes import Viewer
from ..store.base import Store
from .login import session_token
from .security import counting_failures, download_grant
from .settings import Settings

__all__ = [
    "CALLER",
    "USER_HEADER",
    "Annotator",
    "Caller",
    "Context",
    "Data",
    "Metadata",
    "Service",
    "Writer",
    "api_routes",
    "context",
    "route_scopes",
]

#: Where the caller's name is left in the request's state, for the access log.
CALLER = "runbroker_caller"
#: The header naming the local user of a client that holds the server's own key.
USER_HEADER = "x-runbroker-user"


@dataclasses.dataclass
class Service:
    """What a server process holds: the catalog it serves, its settings, and its access
    control (None: one key, or public reading, and every caller sees every run). State
    shared between processes lives in databases, not here."""

    catalog: Catalog
    settings: Settings
    access: Any = None  # runbroker.auth.access.AccessControl


@dataclasses.dataclass(frozen=True)
class Context:
    """One request's caller (a :class:`~runbroker.auth.Principal`), the catalog they see,
    and where the request came from (for the audit log)."""

    principal: Principal
    catalog: Catalog
    service: Service
    client: str = ""
    #: The user a client of the server's own key says it is (``X-Runbroker-User``).
    user: str = ""

    @property
    def store(self) -> Store:
        return self.catalog.store

    @property
    def viewer(self) -> Viewer:
        """Who reads and writes notes (:mod:`runbroker.notes`) in this request: the
        principal, with its groups (none for an admin, whom groups do not limit). The holder
        of the server's own key is one identity shared by every client: it is taken to be the
        user each client names in the ``X-Runbroker-User`` header, as on a shared local
        catalog."""
        if self.principal is SERVER_KEY:
            return Viewer(self.user or SERVER_KEY.name)
        return viewer_for(self.principal)


#: The caller holding the server's own key (``runbroker serve --api-key``): an admin.
SERVER_KEY = Principal(
    "server-key", kind="service", scopes=ALL_SCOPES, admin=True, via="server-key"
)


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticatedError("the Authorization header must read 'Bearer <key or token>'")
    return token.strip()


def _from_secret(service: Service, secret: str) -> Any:
    settings, access = service.settings, service.access
    if settings.api_key is not None and hmac.compare_digest(
        secret.encode(), settings.api_key.encode()
    ):
        return SERVER_KEY
    if access is None:
        raise NotAuthenticatedError("the API key given is not this server's")
    if access.oidc is not None and looks_like_jwt(secret):
        return access.from_token(secret)
    return access.from_key(secret)


def _from_download_token(service: Service, grant: Any) -> Any:
    if service.access is None:
        who = SERVER_KEY
    else:
        who = service.access.named(grant.principal)
    # A link reads one file as its maker could when it asked: the groups it had then (a
    # token's claims among them) and its reading scopes, narrowed by what it may do now.
    return dataclasses.replace(
        who,
        groups=who.groups | grant.groups,
        scopes=who.scopes & grant.scopes,
        via="download-token",
    )


def _authenticate(request: Request) -> Any:
    service: Service = request.app.state.service
    secret = _bearer(request)
    if secret is None and request.method in ("GET", "HEAD"):
        secret = session_token(request)
    with counting_failures(request):
        if secret is not None:
            return _from_secret(service, secret)
        grant = download_grant(request, service.settings.secret)
        if grant is not None:
            return _from_download_token(service, grant)
    if service.access is not None:
        return service.access.anonymous_caller()
    if service.settings.public:
        return ANONYMOUS
    raise NotAuthenticatedError(
        "this server needs an API key: send 'Authorization: Bearer <key>', or open it with "
        "runbroker.open(URL, api_key=...) or $RUNBROKER_API_KEY"
    )


def context(request: Request, security_scopes: SecurityScopes) -> Context:
    """Authenticate the request and check it holds the route's scopes: a :class:`Context`,
    or 401 naming what was missing (403 naming the scope, for a known caller without it)."""
    principal = _authenticate(request)
    setattr(request.state, CALLER, principal.name)
    missing = [s for s in security_scopes.scopes if not principal.holds(s)]
    if missing:
        if principal.via == "anonymous":
            raise NotAuthenticatedError(
                f"this needs credentials with the {missing[0]} scope (it serves only "
                "reading to callers without any)"
            )
        raise AccessDeniedError(
            f"{request.method} {request.url.path} needs the {' and '.join(missing)} scope; "
            f"{principal.name}'s credentials give {', '.join(sorted(principal.scopes)) or 'none'}"
        )
    service: Service = request.app.state.service
    catalog = service.catalog
    if service.access is not None and principal is not SERVER_KEY:
        # admins too: the guard then limits nothing, but its notes are the admin's own
        catalog = service.access.catalog_for(catalog, principal)
    user = request.headers.get(USER_HEADER, "")[:256] if principal is SERVER_KEY else ""
    return Context(principal, catalog, service, _client(request), user)


def route_scopes(route: APIRoute) -> list[str] | None:
    """The scopes ``route`` requires (from the type of its context parameter), or None when
    it takes no caller at all (health, metrics, the login pages).

    Example:
        >>> from runbroker.server import protocol
        >>> search = next(r for r in protocol.router.routes if r.name == "search")
        >>> route_scopes(search)
        ['read:metadata']
    """
    for hint in get_type_hints(route.endpoint, include_extras=True).values():
        if get_origin(hint) is Annotated:
            for meta in hint.__metadata__:
                if isinstance(meta, params.Security) and meta.dependency is context:
                    return sorted(meta.scopes or [])
    return None


def api_routes(app: Any) -> list[tuple[str, APIRoute]]:
    """Every API route of ``app`` with its full path, through included routers.

    Example:
        >>> import runbroker
        >>> from runbroker.server import Settings, build_app
        >>> app = build_app(runbroker.temp(), Settings(api_key="k"))
        >>> "/api/v1/runs/{uid}/export/{format}" in dict(api_routes(app))
        True
    """
    return list(_flatten(app.routes, ""))


def _flatten(routes: Any, prefix: str) -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
            continue
        # FastAPI 0.16x keeps an included router whole (older versions copy its routes in)
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes, prefix + route.include_context.prefix)


#: A route parameter: the caller, who may read runs' metadata (``def route(ctx: Metadata)``).
Metadata = Annotated[Context, Security(context, scopes=["read:metadata"])]
#: The same, for routes that hand out event data, detector data, documents or exports.
Data = Annotated[Context, Security(context, scopes=["read:data"])]
#: The same, for routes that write runs.
Writer = Annotated[Context, Security(context, scopes=["write:runs"])]
#: The same, for routes that annotate, tag and correct runs.
Annotator = Annotated[Context, Security(context, scopes=["write:annotations"])]
#: Any authenticated caller, whatever its scopes (``whoami``, one's own keys).
Caller = Annotated[Context, Security(context, scopes=[])]
