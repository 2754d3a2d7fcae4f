"""The request body limit, for every route at once.

Routes whose bodies FastAPI parses (a search, a list of pages) never see the body arrive, so
the limit cannot live in the routes: :class:`BodyLimit` sits in front of all of them. A body
that declares a size past ``Settings.max_body`` is refused before a byte of it is read; one
sent in chunks without a declared size is refused as soon as it passes the limit. Either way
the answer is 413 with the usual error body, and the connection is not left half-read.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..errors import RequestTooLargeError
from .encoding import reply

__all__ = ["BodyLimit"]

Scope = dict[str, Any]


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413.

    Example:
        >>> from fastapi import FastAPI
        >>> BodyLimit(FastAPI(), 1024).limit
        1024
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send, f"the request body of {int(declared)} bytes is")
            return
        if declared is not None or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            # A declared size is enforced by the server: it never passes more than that.
            await self.app(scope, receive, send)
            return
        # A body of unknown size (chunked): read it here, up to the limit, then hand it on.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, send, "the request body is")
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Any, what: str) -> None:
        err = RequestTooLargeError(f"{what} over this server's limit of {self.limit} bytes")
        response = reply(Request(scope), {"error": err.to_dict()}, err.status)
        await response(scope, _nothing, send)


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}
