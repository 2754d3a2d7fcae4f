"""Routes about the caller rather than the runs: who am I, my API keys, the audit log, a
download link; and :func:`audit`, which every authenticated write calls.

A caller manages its own keys (a user creates the key its RunEngine will use); a caller with
``admin:keys`` manages anyone's, and one with ``admin:principals`` reads the audit log. These
exist only on a server with access control (``runbroker serve --access FILE``); a server with
one key has no principals to speak of.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..errors import AccessDeniedError, RequestError
from .context import Caller, Context, context
from .encoding import reply
from .security import MAX_TTL, TOKEN_PARAM, answers_get, download_token

__all__ = ["audit", "router"]

router = APIRouter(prefix="/api/v1/auth", tags=["access"])
log = logging.getLogger("runbroker.server.audit")

#: A route parameter: a caller holding ``admin:principals``.
Auditor = Annotated[Context, Security(context, scopes=["admin:principals"])]


def audit(ctx: Context, action: str, target: str = "", detail: dict | None = None) -> None:
    """Record that the caller did ``action`` to ``target``: in the directory's audit log
    when the server has access control, and as a JSON line on the ``runbroker.server.audit``
    logger always (who, what, when -- the log record's time -- and from where)."""
    line = {
        "principal": ctx.principal.name,
        "via": ctx.principal.via,
        "action": action,
        "target": target,
        "detail": detail or {},
        "client": ctx.client,
    }
    log.info(json.dumps(line, default=str, sort_keys=True))
    access = ctx.service.access
    if access is not None:
        access.directory.record(
            ctx.principal.name, action, target, detail=detail or {}, client=ctx.client
        )


def _access(ctx: Context) -> Any:
    if ctx.service.access is None:
        raise RequestError(
            "this server has no principals or API keys of its own: it runs with one key "
            "(serve it with --access FILE for access control)"
        )
    return ctx.service.access


def _may_manage(ctx: Context, principal: str) -> None:
    if principal != ctx.principal.name and not ctx.principal.holds("admin:keys"):
        raise AccessDeniedError(
            f"managing {principal!r}'s keys needs the admin:keys scope; "
            "a caller manages its own keys without it"
        )


def _key(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "principal": info.principal,
        "scopes": sorted(info.scopes),
        "defaults": dict(info.defaults),
        "note": info.note,
        "created": info.created.isoformat(),
        "expires": info.expires.isoformat() if info.expires else None,
        "revoked": info.revoked.isoformat() if info.revoked else None,
        "last_used": info.last_used.isoformat() if info.last_used else None,
    }


@router.get("/whoami", summary="The caller: its name, scopes and groups")
def whoami(request: Request, ctx: Caller) -> Response:
    p = ctx.principal
    return reply(
        request,
        {
            "name": p.name,
            "kind": p.kind,
            "via": p.via,
            "admin": p.admin,
            "scopes": sorted(p.scopes),
            "groups": sorted([list(g) for g in p.groups]),
            # who reads and writes notes: the principal, or a shared key's client's user
            "viewer": ctx.viewer.name,
        },
    )


class NewKey(BaseModel):
    scopes: list[str] = Field(min_length=1)
    expires: str = Field("30d", description="a lifetime: 30d, 12h, 90m, or never")
    note: str = ""
    defaults: dict[str, str] = {}
    principal: str | None = Field(None, description="another principal's (needs admin:keys)")


@router.post("/keys", summary="Create an API key (its secret is in this answer only)")
def create_key(request: Request, args: NewKey, ctx: Caller) -> Response:
    from ..auth.keys import parse_duration
    from ..auth.principal import parse_scopes

    access = _access(ctx)
    owner = args.principal or ctx.principal.name
    _may_manage(ctx, owner)
    try:
        scopes = parse_scopes(args.scopes)
        expires: timedelta | None = parse_duration(args.expires)
    except ValueError as err:
        raise RequestError(str(err)) from None
    if owner == ctx.principal.name and scopes - ctx.principal.scopes:
        extra = ", ".join(sorted(scopes - ctx.principal.scopes))
        raise AccessDeniedError(f"a key cannot give more than its maker holds: not {extra}")
    if access.directory.principal(owner) is None and owner == ctx.principal.name:
        # A user known from the identity provider gets a directory entry with its first key.
        access.directory.add_principal(owner, scopes=ctx.principal.scopes)
    info, secret = access.directory.create_key(
        owner, scopes, expires=expires, defaults=args.defaults, note=args.note
    )
    audit(ctx, "keys.create", info.id, {"principal": owner, "scopes": sorted(scopes)})
    return reply(request, {"key": _key(info), "secret": secret}, 201)


@router.get("/keys", summary="API keys (a caller's own, or anyone's with admin:keys)")
def list_keys(request: Request, ctx: Caller, principal: str | None = None) -> Response:
    access = _access(ctx)
    owner = principal or ctx.principal.name
    _may_manage(ctx, owner)
    return reply(request, [_key(k) for k in access.directory.keys(owner)])


@router.delete("/keys/{key_id}", summary="Revoke an API key")
def revoke_key(request: Request, key_id: str, ctx: Caller) -> Response:
    access = _access(ctx)
    info = access.directory.key(key_id)
    _may_manage(ctx, info.principal)
    info = access.directory.revoke_key(key_id, by=ctx.principal.name)
    audit(ctx, "keys.revoke", key_id, {"principal": info.principal})
    return reply(request, _key(info))


@router.get("/audit", summary="The audit log, newest first")
async def audit_log(
    request: Request,
    ctx: Auditor,
    since: str | None = None,
    principal: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    from ..auth.audit import parse_since

    access = _access(ctx)
    try:
        when = parse_since(since) if since else None
    except ValueError as err:
        raise RequestError(f"since: {err}") from None
    entries = await run_in_threadpool(access.directory.audit_log, when, principal, limit)
    return reply(
        request,
        [
            {
                "time": e.time.isoformat(),
                "principal": e.principal,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
                "client": e.client,
            }
            for e in entries
        ],
    )


@router.post("/download-token", summary="A short-lived link to download one file")
def issue_download_token(
    request: Request,
    ctx: Caller,
    path: Annotated[str, Query(description="The path of the file, /api/v1/...")],
    ttl: Annotated[int, Query(ge=1, le=MAX_TTL, description="Seconds the link works")] = 60,
) -> Response:
    """A download link for ``path`` (a GET route of this server) as the caller: ``{"token",
    "url", "expires"}``; ``url`` is the path with its token, for a browser to follow."""
    if not any(answers_get(route, path) for route in request.app.routes):
        raise RequestError(f"path: {path!r} is not a route of this server that GET answers")
    from ..auth.principal import READ_SCOPES

    caller = ctx.principal
    # The link carries what its maker holds now: its groups may come from a token's claims,
    # which the link's follower does not send; its scopes, only the reading ones.
    token = download_token(
        ctx.service.settings.secret,
        caller.name,
        path,
        ttl,
        scopes=caller.scopes & READ_SCOPES,
        groups=caller.groups,
    )
    expires = datetime.fromtimestamp(math.ceil(time.time()) + ttl, UTC)
    url = f"{request.scope.get('root_path', '')}{path}?{TOKEN_PARAM}={token}"
    return reply(request, {"token": token, "url": url, "expires": expires.isoformat()})
