"""Resource routes for clients other than runbroker's own: a stream's data in a chosen format,
a run's documents, exports as downloads. (Filled in by the resource-routes work.)"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["data"])
