"""Following runs in progress: held requests for new events, and a feed of new documents.

Both look at the catalog's store every ``settings.poll_interval`` seconds and keep nothing
between requests, so any server process on the same database answers them alike: a run
written through one process is followed through another.

* ``GET /runs/{uid}/streams/{stream}/events?after=N&wait=S`` (long poll): the stream's
  events after seq_num ``N``, at once when there are some, else as soon as some arrive or
  after ``wait`` seconds (at most ``settings.max_wait``). The answer says whether the run
  has stopped (then it holds every remaining event).
* ``GET /runs/{uid}/feed``: server-sent events (``text/event-stream``), one per document
  (start, descriptors, resources, event pages, stop) as the run is written, with comment
  lines as heartbeats so proxies keep it open; it ends after the stop document.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import NoStreamError, RequestError
from ..follow import Cursor, look, newer
from ..store.base import NewEvents, Store, run_not_found
from ..store.events import page_from_columns
from .context import Data
from .encoding import reply, to_json

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["live"])


@router.get(
    "/runs/{uid}/streams/{stream}/events",
    summary="A stream's events after a seq_num; held until some arrive (long poll)",
)
async def events(
    request: Request,
    uid: str,
    stream: str,
    ctx: Data,
    after: int | None = Query(None, ge=-(2**62), le=2**62, description="last seq_num seen"),
    wait: float = Query(0.0, ge=0, le=3600, description="seconds to hold the request"),
    field: Annotated[list[str] | None, Query(description="fields to send (default: all)")] = None,
) -> Response:
    settings = ctx.service.settings
    deadline = time.monotonic() + min(wait, settings.max_wait)
    found = await run_in_threadpool(look, ctx.store, uid, stream, after, field)
    await run_in_threadpool(_check, ctx.store, uid, stream, field, found)
    while not (len(found) or found.stopped):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(settings.poll_interval, left))
        found = await run_in_threadpool(look, ctx.store, uid, stream, after, field)
    value = {"columns": found.columns, "descriptors": found.descriptors, "stopped": found.stopped}
    return reply(request, value)


def _check(store: Store, uid: str, stream: str, fields: list[str] | None, found: NewEvents) -> None:
    """Refuse what can never be answered: a stream a stopped run lacks, unknown fields."""
    if not found.descriptors:
        if found.stopped:
            names = sorted({d.get("name", "primary") for d in store.descriptors(uid)})
            raise NoStreamError(f"run {uid[:8]} has no stream {stream!r}; its streams are {names}")
        return
    known = {f for d in store.descriptors(uid) for f in d.get("data_keys") or {}}
    unknown = [f for f in fields or () if f not in known]
    if unknown:
        raise RequestError(
            f"stream {stream!r} has no field {unknown[0]!r}; its fields are {sorted(known)}"
        )


@router.get(
    "/runs/{uid}/feed",
    summary="A run's documents as they are written (server-sent events), until its stop",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def feed(
    uid: str,
    ctx: Data,
    heartbeat: float = Query(15.0, gt=0, le=300, description="seconds between heartbeats"),
) -> Response:
    store = ctx.store
    run = await run_in_threadpool(store.get_run, uid)
    if run is None:  # before the answer starts: a 404, not an empty feed
        raise run_not_found(store, uid)
    poll = ctx.service.settings.poll_interval

    async def produce() -> AsyncIterator[bytes]:
        written = _Written(store, uid)
        yield _event("start", run.start)
        sent = time.monotonic()
        while True:
            docs, stopped = await run_in_threadpool(written.step)
            for name, doc in docs:
                yield _event(name, doc)
                sent = time.monotonic()
            if stopped:
                return
            if time.monotonic() - sent >= heartbeat:
                yield b": heartbeat\n\n"
                sent = time.monotonic()
            await asyncio.sleep(poll)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(produce(), media_type="text/event-stream", headers=headers)


def _event(name: str, doc: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + to_json(doc) + b"\n\n"


class _Written:
    """What of one run a feed has sent, and what the store holds beyond it."""

    def __init__(self, store: Store, uid: str) -> None:
        self.store = store
        self.uid = uid
        self.descriptors: list[str] = []
        self.assets = 0
        self.cursors: dict[str, Cursor] = {}

    def step(self) -> tuple[list[tuple[str, Any]], bool]:
        """The documents stored since the last step, in an order a reader can take (a
        descriptor before its events), and whether the run has stopped (then the last
        document is its stop)."""
        run = self.store.get_run(self.uid)
        if run is None:
            raise run_not_found(self.store, self.uid)
        stopped = run.stop is not None  # read first: then every event is in this step
        docs: list[tuple[str, Any]] = []
        for d in self.store.descriptors(self.uid):
            if d["uid"] not in self.cursors:
                self.cursors[d["uid"]] = Cursor()
                docs.append(("descriptor", d))
        assets = self.store.assets(self.uid)
        docs.extend(assets[self.assets :])
        self.assets = len(assets)
        for desc, cursor in self.cursors.items():
            cols = newer(self.store, self.uid, [desc], cursor.after, None)
            taken = cursor.take(NewEvents(cols, [], stopped))
            if taken is not None:
                docs.append(("event_page", _page(desc, taken)))
        if stopped:
            docs.append(("stop", run.stop))
        return docs, stopped


def _page(descriptor: str, columns: dict[str, Any]) -> dict:
    data = {k: v for k, v in columns.items() if k in ("time", "seq_num") or k.startswith("d:")}
    extra = {k: v for k, v in columns.items() if k not in data}
    return page_from_columns(descriptor, data, extra)
