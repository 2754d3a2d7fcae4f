"""Routes for clients other than runbroker's own: a run and its streams described, a stream's
data in a chosen format, a run's documents as a stream, exports as downloads.

Each route is thin over the user API (:class:`~runbroker.catalog.Run`,
:class:`~runbroker.stream.Stream`), reached through the caller's catalog, so detector data in
files is filled on the server and the errors are those a local user gets. A stream's data is
read in blocks of a few MB and each block is written as soon as it is read
(:mod:`runbroker.server.formats`): an answer is never held whole. ``docs/http-api.md`` shows
each route with curl.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from ..catalog import Run
from ..errors import RequestError
from ..stream import Stream
from . import exports
from .context import Context, Data, Metadata
from .encoding import framed, reply, to_json
from .formats import ENCODERS, Block, media_types

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["data"])
router.include_router(exports.router)

#: Bytes of data read per block of events while streaming a stream's data.
BLOCK_BYTES = 8 * 2**20
# Bytes per event assumed for a field whose size the descriptor does not give.
_UNSIZED = 64
_LIMIT = 2**62

Format = Literal["arrow", "msgpack", "json", "csv", "raw"]


def _run(ctx: Context, uid: str) -> Run:
    return ctx.catalog[uid]


def _stream(ctx: Context, uid: str, name: str) -> Stream:
    return ctx.catalog[uid][name]


def _about(stream: Stream) -> dict[str, Any]:
    return {
        "name": stream.name,
        "events": len(stream),
        "fields": stream.data_keys,
        "descriptors": [d["uid"] for d in stream.descriptors],
    }


@router.get("/runs/{uid}/summary", summary="A run at a glance: start, stop, streams, fields")
def run_summary(request: Request, uid: str, ctx: Metadata) -> Response:
    run = _run(ctx, uid)
    summary = dict(run.summary)
    when = summary.get("datetime")
    summary["datetime"] = when.isoformat() if when is not None else None
    streams = {name: _about(run[name]) for name in run}
    return reply(request, {"start": run.start, "stop": run.stop, **summary, "streams": streams})


@router.get("/runs/{uid}/streams", summary="The names of a run's streams")
def stream_names(request: Request, uid: str, ctx: Metadata) -> Response:
    return reply(request, list(_run(ctx, uid)))


@router.get("/runs/{uid}/streams/{stream}", summary="A stream: its fields and event count")
def stream_info(request: Request, uid: str, stream: str, ctx: Metadata) -> Response:
    return reply(request, _about(_stream(ctx, uid, stream)))


@router.get("/runs/{uid}/streams/{stream}/descriptors", summary="A stream's descriptors")
def stream_descriptors(request: Request, uid: str, stream: str, ctx: Metadata) -> Response:
    return reply(request, _stream(ctx, uid, stream).descriptors)


@router.get(
    "/runs/{uid}/streams/{stream}/config",
    summary="Configuration readings per device, one value per event",
)
def stream_config(request: Request, uid: str, stream: str, ctx: Metadata) -> Response:
    config = _stream(ctx, uid, stream).config
    return reply(request, {device: ds.to_dict(data="list") for device, ds in config.items()})


@router.get(
    "/runs/{uid}/streams/{stream}/data",
    summary="A stream's data in one request (Arrow IPC, msgpack, JSON, CSV or raw bytes)",
    response_class=StreamingResponse,
)
def stream_data(
    request: Request,
    uid: str,
    stream: str,
    ctx: Data,
    fields: Annotated[str | None, Query(description="comma-separated names (default: all)")] = None,
    start: Annotated[int, Query(ge=-_LIMIT, le=_LIMIT, description="first event (from 0)")] = 0,
    stop: Annotated[
        int | None, Query(ge=-_LIMIT, le=_LIMIT, description="the event after the last")
    ] = None,
    format: Annotated[Format | None, Query(description="default: by Accept, else arrow")] = None,
    fill: Annotated[bool, Query(description="detector data from files (false: references)")] = True,
) -> Response:
    s = _stream(ctx, uid, stream)
    names = _fields(s, fields)
    encoder = ENCODERS[format or _by_accept(request)]()
    lo, hi, _ = slice(start, stop).indices(len(s))
    hi = max(lo, hi)
    step = _block_events(s.data_keys, names)
    edges = [*range(lo, hi, step), hi] if hi > lo else [lo, lo]

    def block(a: int, b: int) -> Block:
        ds = s.read(names, events=slice(a, b), fill=fill)
        return {
            "time": ds["time"].values,
            "seq_num": ds["seq_num"].values,
            **{n: ds[n].values for n in names},
        }

    # The first block is read before the answer starts: what fails on it (a missing
    # detector file, an array field asked for as CSV) is the status, not a cut stream.
    first = block(edges[0], edges[1])
    headers = encoder.prepare(first, hi - lo, {n: s.data_keys[n] for n in names})

    def blocks() -> Iterator[Block]:
        yield first
        for a, b in itertools.pairwise(edges[1:]):
            yield block(a, b)

    return StreamingResponse(
        encoder.chunks(blocks()), media_type=encoder.media_type, headers=headers
    )


def _fields(stream: Stream, fields: str | None) -> list[str]:
    known = stream.fields
    if fields is None:
        return known
    names = [f.strip() for f in fields.split(",") if f.strip()]
    for name in names:
        if name not in known:
            raise RequestError(
                f"stream {stream.name!r} has no field {name!r}; its fields are "
                f"{', '.join(known) or 'none'}"
            )
    return names


def _by_accept(request: Request) -> str:
    accept = request.headers.get("accept", "")
    for media_type, name in media_types().items():
        if media_type in accept:
            return name
    return "arrow"


def _block_events(data_keys: Mapping[str, dict], names: list[str]) -> int:
    """How many events make about :data:`BLOCK_BYTES`, from what the descriptors say."""
    size = 16  # time and seq_num
    for name in names:
        dk = data_keys[name]
        shape = dk.get("shape") or []
        if any(s is None for s in shape):
            size += _UNSIZED * 1024
            continue
        try:
            itemsize = np.dtype(dk["dtype_numpy"]).itemsize if dk.get("dtype_numpy") else 8
        except TypeError:  # a dtype numpy does not know: assume a double
            itemsize = 8
        size += max(itemsize, 1) * int(np.prod(shape, dtype=np.int64)) or _UNSIZED
    return max(1, BLOCK_BYTES // size)


@router.get(
    "/runs/{uid}/documents.{kind}",
    summary="A run's documents as a stream (RFC 7464 JSON text sequence, or framed msgpack)",
    response_class=StreamingResponse,
)
def run_documents(
    uid: str,
    kind: Literal["json-seq", "msgpack"],
    ctx: Data,
    fill: Annotated[bool, Query(description="detector data from files in the events")] = False,
    pages: Annotated[bool, Query(description="events as event_page documents")] = True,
) -> Response:
    docs = _run(ctx, uid).documents(fill=fill, pages=pages, arrays=kind == "msgpack")
    if kind == "msgpack":
        return framed(("doc", [name, doc]) for name, doc in docs)
    # RFC 7464: each text is preceded by RS and followed by LF.
    sequence = (b"\x1e" + to_json([name, doc]) + b"\n" for name, doc in docs)
    return StreamingResponse(sequence, media_type="application/json-seq")
