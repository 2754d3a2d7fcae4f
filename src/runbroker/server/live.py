"""Following runs in progress: held requests for new events, and a feed of new documents.
(Filled in by the live-following work.)"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["live"])
