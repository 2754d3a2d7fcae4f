"""The notes routes: a run's annotations, tags and corrections (:mod:`runbroker.notes`).

``GET /runs/{uid}/notes`` lists the notes the caller may see (every revision with
``?history=true``); ``POST /runs/{uid}/notes`` stores revisions, which needs the
``write:annotations`` scope. With access control the guard admits them
(:class:`~runbroker.auth.noterules.NoteRules`: the author is the caller, whatever was sent);
a server of one shared key takes the author its client names, as a shared local catalog does.
:class:`runbroker.client.HTTPStore` is the client of both.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..errors import RequestError, RunbrokerError, RunNotFoundError
from ..notes import visible
from ..store.base import annotating
from .accounts import audit
from .context import Annotator, Context, Metadata
from .encoding import body, reply

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["notes"])

#: Revisions one request may store.
MAX_REVISIONS = 1000


def _store(ctx: Context, uid: str) -> Any:
    try:
        store = annotating(ctx.store)
    except TypeError as err:
        raise RequestError(f"this server's catalog cannot keep notes: {err}") from None
    if ctx.store.get_run(uid) is None:
        raise RunNotFoundError(f"no run {uid!r} in this catalog")
    return store


@router.get("/runs/{uid}/notes", summary="A run's notes (annotations, tags, corrections)")
def list_notes(request: Request, uid: str, ctx: Metadata, history: bool = False) -> Response:
    found = _store(ctx, uid).notes(uid, history)
    viewer = ctx.viewer
    return reply(request, [n for n in found if visible(n, viewer)])


@router.post(
    "/runs/{uid}/notes",
    summary="Store revisions of a run's notes: a list of note records, atomically",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
            },
        }
    },
)
async def add_notes(request: Request, uid: str, ctx: Annotator) -> Response:
    revisions = await body(request)
    if not isinstance(revisions, list) or not all(isinstance(r, dict) for r in revisions):
        raise RequestError("the body must be a list of note records (JSON objects)")
    if len(revisions) > MAX_REVISIONS:
        raise RequestError(f"{len(revisions)} notes in one request; at most {MAX_REVISIONS}")
    store = await run_in_threadpool(_store, ctx, uid)
    detail: dict[str, Any] = {"notes": sorted({str(r.get("id")) for r in revisions})[:50]}
    try:
        await run_in_threadpool(store.add_notes, uid, revisions)
    except RunbrokerError as err:
        detail["error"] = str(err)[:500]
        await run_in_threadpool(audit, ctx, "runs.notes.refused", uid, detail)
        raise
    await run_in_threadpool(audit, ctx, "runs.notes", uid, detail)
    return reply(request, {"count": len(revisions)})
