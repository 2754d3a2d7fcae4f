"""The one dependency every route takes: who is calling, and the catalog as they may see it.

Every route gets a :class:`Context` from :func:`context` (or :func:`writer` for routes that
write), and reaches runs only through ``ctx.catalog`` / ``ctx.store``. Authentication lives
here and nowhere else, so access rules (per proposal and beamtime) slot in by narrowing the
catalog this function hands out: no route can forget them.

A key is looked for in the ``Authorization: Bearer`` header, or (for links a browser
follows to download a file) in an ``api_key`` query parameter; it is compared in constant
time.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Annotated

from fastapi import Depends, Request

from ..catalog import Catalog
from ..errors import NotAuthenticatedError
from ..store.base import Store
from .settings import Settings

__all__ = ["CALLER", "Caller", "Context", "Ctx", "Service", "Writer", "context", "writer"]

#: Where the caller's name is left in the request's state, for the access log.
CALLER = "runbroker_caller"

READ = frozenset({"read:metadata", "read:data"})
WRITE = frozenset({"write:runs"})


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sent a request: a name (``"api-key"`` or ``"anonymous"``) and what they may do."""

    name: str
    scopes: frozenset[str]

    @property
    def can_write(self) -> bool:
        return not WRITE - self.scopes


@dataclasses.dataclass
class Service:
    """What a server process holds: the catalog it serves and its settings (nothing a second
    process would need: state shared between processes lives in the catalog's database)."""

    catalog: Catalog
    settings: Settings


@dataclasses.dataclass(frozen=True)
class Context:
    """One request's caller and the catalog they see."""

    caller: Caller
    catalog: Catalog
    service: Service

    @property
    def store(self) -> Store:
        return self.catalog.store


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticatedError("the Authorization header must read 'Bearer <API key>'")
        return token.strip()
    return request.query_params.get("api_key")


def context(request: Request) -> Context:
    """Authenticate the request: a :class:`Context`, or 401 naming what was missing."""
    ctx = _authenticate(request)
    setattr(request.state, CALLER, ctx.caller.name)
    return ctx


def _authenticate(request: Request) -> Context:
    service: Service = request.app.state.service
    settings = service.settings
    key = _presented_key(request)
    if key is not None and settings.api_key is not None:
        if hmac.compare_digest(key.encode(), settings.api_key.encode()):
            return Context(Caller("api-key", READ | WRITE), service.catalog, service)
        raise NotAuthenticatedError("the API key given is not this server's")
    if settings.public:
        return Context(Caller("anonymous", READ), service.catalog, service)
    raise NotAuthenticatedError(
        "this server needs an API key: send 'Authorization: Bearer <key>', or open it with "
        "runbroker.open(URL, api_key=...) or $RUNBROKER_API_KEY"
    )


def writer(ctx: Annotated[Context, Depends(context)]) -> Context:
    """:func:`context`, for routes that write: anonymous callers are refused."""
    if not ctx.caller.can_write:
        raise NotAuthenticatedError(
            "writing to this server needs its API key (it serves reads anonymously)"
        )
    return ctx


#: A route parameter that is the caller's context (``def route(ctx: Ctx)``).
Ctx = Annotated[Context, Depends(context)]
#: The same, for routes that write.
Writer = Annotated[Context, Depends(writer)]
