"""What operators need: liveness and readiness probes, the server's description, metrics."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from .. import __version__
from ..filler import Fills
from ..store.base import Indexes
from .context import Ctx, Service
from .encoding import reply

__all__ = ["instrument", "router"]

router = APIRouter()


@router.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Readiness: the catalog's database answers")
def readyz(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        service.catalog.store.count(None)
    except Exception as err:  # any failure means: do not send traffic here
        return reply(request, {"status": "unavailable", "reason": str(err)}, 503)
    return reply(request, {"status": "ready"})


@router.get("/api/v1/info", tags=["store"], summary="What this server serves")
def info(request: Request, ctx: Ctx) -> Response:
    store = ctx.store
    return reply(
        request,
        {
            "version": __version__,
            "caller": ctx.caller.name,
            "writable": ctx.caller.can_write,
            "capabilities": {
                "indexes": isinstance(store, Indexes),
                "fills": True,
                "serves_fills_of": isinstance(store, Fills),
            },
        },
    )


def instrument(app: FastAPI) -> None:
    """Metrics and access logs (filled in by the operations work)."""
