"""Reading request bodies and writing answers in the format the caller asked for.

The Python client speaks msgpack (:mod:`runbroker.wire`, arrays kept whole); browsers, curl
and other languages get JSON. :func:`reply` chooses by the ``Accept`` header; :func:`body`
reads a JSON or msgpack body by its ``Content-Type``, refusing bodies past the server's
limit (413) and ones that do not parse (400), naming which.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from .. import wire
from ..errors import RequestError, RequestTooLargeError, RunbrokerError
from .context import Service

__all__ = ["body", "framed", "frames", "reply", "wants_msgpack"]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def wants_msgpack(request: Request) -> bool:
    return wire.MSGPACK in request.headers.get("accept", "")


def to_json(value: Any) -> bytes:
    """``value`` as JSON bytes (numpy arrays as lists; NaN and infinities as null)."""
    return orjson.dumps(value, option=_JSON_OPTIONS, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # of objects (datum ids, ...): orjson takes only numbers
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, np.ndarray | np.generic):
        # What orjson leaves (strings, objects, arrays not in C order): as Python values.
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def reply(request: Request, value: Any, status: int = 200) -> Response:
    """``value`` as msgpack when the caller accepts it, else as JSON."""
    if wants_msgpack(request):
        return Response(wire.pack(value), status, media_type=wire.MSGPACK)
    return Response(to_json(value), status, media_type="application/json")


async def body(request: Request) -> Any:
    """The request's body, parsed (msgpack or JSON by ``Content-Type``)."""
    service: Service = request.app.state.service
    limit = service.settings.max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"the request body of {declared} bytes is over the {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if kind == wire.MSGPACK:
            return wire.unpack(data)
        return orjson.loads(data or b"null")
    except Exception as err:  # the parsers raise several types; all mean the same here
        raise RequestError(f"the request body is not valid {kind}: {err}") from None


def frames(records: Iterable[tuple[str, Any]]) -> Iterator[bytes]:
    """The bytes of a framed msgpack stream (:mod:`runbroker.wire`) of ``records``.

    An error while producing them is sent as an error record (the status line is gone by
    then), so the client raises it rather than taking the records before it as all.
    """
    n = 0
    try:
        for tag, payload in records:
            yield wire.frame(tag, payload)
            n += 1
    except RunbrokerError as err:
        yield wire.frame("error", err.to_dict())
        return
    yield wire.end(n)


def framed(records: Iterable[tuple[str, Any]]) -> StreamingResponse:
    """:func:`frames` of ``records`` as an answer, sent as they come."""
    return StreamingResponse(frames(records), media_type=wire.MSGPACK)


def streamed(records: Iterable[tuple[str, Any]]) -> StreamingResponse:
    """``records`` as a raw-buffer stream (:func:`runbroker.wire.parts`): what the Python
    client reads, arrays sent from their own memory. Errors mid-stream as in :func:`frames`."""

    def pieces() -> Iterator[Any]:
        n = 0
        try:
            for tag, payload in records:
                yield from wire.parts(tag, payload)
                n += 1
        except RunbrokerError as err:
            yield from wire.parts("error", err.to_dict())
            return
        yield from wire.stream_end(n)

    return StreamingResponse(pieces(), media_type=wire.FRAMES)
