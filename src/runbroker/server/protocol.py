"""The store routes: one route per :class:`~runbroker.store.base.Store` method.

:class:`runbroker.client.HTTPStore` calls these and nothing else, so a catalog over it is the
whole user API over HTTP. Each route hands its arguments to the caller's store
(:func:`~runbroker.server.context.context`) and writes the answer back; the rules (order,
not-found, PageGone) are the store's. Bodies and answers are msgpack for the Python client and
JSON for anyone else (:mod:`runbroker.server.encoding`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..errors import RequestError, RunbrokerError, RunNotFoundError
from ..filler import FieldEvents
from ..queries import Query as RunQuery
from ..queries import bind
from ..store.base import PageInfo, RunRecord, Summarises, distinct_values
from .accounts import audit
from .context import Context, Data, Metadata, Writer
from .encoding import body, reply, streamed

__all__ = ["parse_query", "record", "router"]

router = APIRouter(prefix="/api/v1", tags=["store"])

# Pages read per store call while streaming a read: bounds the memory one answer holds.
_PAGES_PER_READ = 4
# Detector data filled per store call while streaming a fill (bytes, roughly): blocks stay
# under glibc's threshold for reusing freed memory, so each is not written to fresh pages.
_FILL_BYTES = 8 * 2**20


def record(run: RunRecord, keys: list[str] | None = None) -> dict[str, Any]:
    """A run record as sent: ``{"uid", "start", "stop"}`` and, for a corrected run, the start
    as stored in ``original``; ``keys`` keeps only those top-level keys of the start document
    (and always ``uid`` and ``time``)."""
    start = run.start
    if keys is not None:
        start = {k: start[k] for k in ("uid", "time", *keys) if k in start}
    sent = {"uid": run.uid, "start": start, "stop": run.stop}
    if run.original is not None and keys is None:
        sent["original"] = run.original
    return sent


def _depth(value: Any) -> tuple[int, int]:
    """How deeply ``value`` nests: in dicts (a query's levels: each query is one) and in
    dicts and lists together. Counted without recursion, so no input can exhaust the stack."""
    deepest = (0, 0)
    todo = [(value, 0, 0)]
    while todo:
        item, dicts, both = todo.pop()
        if isinstance(item, dict) and item:
            todo.extend((v, dicts + 1, both + 1) for v in item.values())
        elif isinstance(item, list) and item:
            todo.extend((v, dicts, both + 1) for v in item)
        else:
            deepest = (max(deepest[0], dicts), max(deepest[1], both))
    return deepest


def parse_query(ctx: Context, data: Any) -> RunQuery | None:
    """The query of a request (its JSON form), or None for all runs; a query nested deeper
    than the server allows is refused before it is built. Its note queries answer for the
    caller (:attr:`Context.viewer`), whoever the query names."""
    if data is None:
        return None
    limit = ctx.service.settings.max_query_depth
    dicts, both = _depth(data)
    if dicts > limit or both > 3 * limit:
        raise RequestError(f"the query nests deeper than the {limit} levels this server takes")
    return bind(RunQuery.from_dict(data), ctx.viewer)


class SearchBody(BaseModel):
    query: dict[str, Any] | None = Field(None, description="a query in its JSON form")
    offset: int = Field(0, ge=0, le=2**62)
    limit: int | None = Field(None, ge=0, le=2**62)
    before: tuple[float, str] | None = Field(
        None, description="(time, uid) of the last run of the previous page: the cursor"
    )
    keys: list[str] | None = Field(None, description="start keys to send (default: all)")
    sort: Literal["-time", "time"] = Field("-time", description="newest first, or oldest")


@router.post("/search", summary="Runs matching a query, newest first")
def search(request: Request, args: SearchBody, ctx: Metadata) -> Response:
    query = parse_query(ctx, args.query)
    limit = ctx.service.settings.max_page
    if args.limit is not None and args.limit > limit:
        raise RequestError(f"limit={args.limit} is over the {limit} runs one page may hold")
    runs = ctx.store.search(
        query,
        offset=args.offset,
        limit=args.limit or limit,
        before=args.before,
        oldest_first=args.sort == "time",
    )
    return reply(request, [record(r, args.keys) for r in runs])


class CountBody(BaseModel):
    query: dict[str, Any] | None = None


@router.post("/count", summary="How many runs match a query")
def count(request: Request, args: CountBody, ctx: Metadata) -> Response:
    return reply(request, ctx.store.count(parse_query(ctx, args.query)))


class DistinctBody(BaseModel):
    key: str = Field(description="a metadata key, as queries name it: sample.name, stop.x")
    query: dict[str, Any] | None = None
    limit: int = Field(100, ge=1, le=10_000)


@router.post("/distinct", summary="Distinct values of a metadata key, with their run counts")
def distinct(request: Request, args: DistinctBody, ctx: Metadata) -> Response:
    found = distinct_values(ctx.store, args.key, parse_query(ctx, args.query), args.limit)
    return reply(request, [[value, n] for value, n in found])


@router.get("/runs/{uid}", summary="One run's start and stop documents")
def get_run(request: Request, uid: str, ctx: Metadata) -> Response:
    run = ctx.store.get_run(uid)
    if run is None:
        raise RunNotFoundError(f"no run {uid!r} in this catalog")
    return reply(request, record(run))


@router.get("/runs/{uid}/stats", summary="A run's per-field statistics (null: none)")
def run_stats(request: Request, uid: str, ctx: Metadata) -> Response:
    if not isinstance(ctx.store, Summarises):
        raise RequestError("this server's catalog keeps no statistics of its runs")
    return reply(request, ctx.store.stats(uid))


@router.get("/runs/{uid}/descriptors", summary="A run's descriptor documents")
def descriptors(request: Request, uid: str, ctx: Metadata) -> Response:
    return reply(request, ctx.store.descriptors(uid))


class PagesBody(BaseModel):
    descriptors: list[str]


def page_row(page: PageInfo) -> list[Any]:
    return [page.id, page.descriptor, page.n, page.seq_min, page.seq_max, page.ordered]


@router.post("/runs/{uid}/pages", summary="Where a run's events are, by descriptor")
def pages(request: Request, uid: str, args: PagesBody, ctx: Metadata) -> Response:
    return reply(request, [page_row(p) for p in ctx.store.pages(uid, args.descriptors)])


class ReadBody(BaseModel):
    pages: list[Annotated[int, Field(ge=-(2**63), lt=2**63)]] = Field(
        description="page ids, as /pages gave them"
    )
    columns: list[str] | None = None


@router.post(
    "/runs/{uid}/read", summary="Columns of pages (a raw-buffer stream: runbroker.wire.parts)"
)
def read_pages(uid: str, args: ReadBody, ctx: Data) -> Response:
    store, ids = ctx.store, args.pages
    # The first page is read before the answer starts: an unknown run is a 404, not an
    # error record inside a 200; alone, so the client decodes it while the rest is read.
    first = store.read_pages(uid, ids[:1], args.columns)

    def produce() -> Iterator[tuple[str, Any]]:
        yield from (("page", cols) for cols in first)
        for i in range(1, len(ids), _PAGES_PER_READ):
            block = store.read_pages(uid, ids[i : i + _PAGES_PER_READ], args.columns)
            yield from (("page", cols) for cols in block)

    return streamed(produce())


def _flag(value: str) -> bool | str:
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return value


@router.get("/runs/{uid}/documents", summary="Replay a run's documents (a raw-buffer stream)")
def documents(
    uid: str,
    ctx: Data,
    arrays: bool = False,
    uids: str = Query("true", pattern="^(true|false|bytes)$"),
) -> Response:
    replay = ctx.store.documents(uid, arrays=arrays, uids=_flag(uids))
    first = next(replay, None)  # an unknown run raises here: a 404

    def produce() -> Iterator[tuple[str, Any]]:
        if first is not None:
            yield "doc", first
            yield from (("doc", pair) for pair in replay)

    return streamed(produce())


@router.get("/runs/{uid}/assets", summary="A run's resource and stream documents")
def assets(request: Request, uid: str, ctx: Metadata) -> Response:
    return reply(request, ctx.store.assets(uid))


class DatumsBody(BaseModel):
    ids: list[str]


@router.post("/runs/{uid}/datums", summary="Datums of a run by id")
def datums(request: Request, uid: str, args: DatumsBody, ctx: Data) -> Response:
    found = ctx.store.datums(uid, args.ids)
    return reply(request, {k: list(v) for k, v in found.items()})


@router.post(
    "/documents",
    summary="Store documents: a list of [name, document] pairs, atomically",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "array"}}},
                "application/x-msgpack": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def insert(request: Request, ctx: Writer, atomic: bool = True) -> Response:
    """``atomic=true`` stores all the pairs or none (``Store.ingest``); ``atomic=false``
    stores them one by one and stops at the first refused, whose error names its place in the
    batch (a client's batch of single inserts: what came before it stays stored)."""
    pairs = _pairs(await body(request))
    try:
        if atomic:
            n = await run_in_threadpool(ctx.store.ingest, pairs)
        else:
            n = await run_in_threadpool(_insert_each, ctx.store, pairs)
    except RunbrokerError as err:
        await run_in_threadpool(audit, ctx, "runs.insert.refused", *_written(pairs, str(err)))
        raise
    await run_in_threadpool(audit, ctx, "runs.insert", *_written(pairs))
    return reply(request, {"count": n})


def _written(pairs: list[tuple[str, dict]], error: str = "") -> tuple[str, dict[str, Any]]:
    """What a batch wrote, for the audit log: the runs it names, and its documents by kind."""
    named = (d.get("uid" if name == "start" else "run_start") for name, d in pairs)
    runs = sorted({str(uid) for uid in named if uid is not None})
    kinds: dict[str, int] = {}
    for name, _ in pairs:
        kinds[name] = kinds.get(name, 0) + 1
    detail: dict[str, Any] = {"documents": len(pairs), "kinds": kinds}
    descriptors = sorted({str(d["descriptor"]) for _, d in pairs if "descriptor" in d})
    if descriptors:
        detail["descriptors"] = descriptors
    if error:
        detail["error"] = error[:500]
    return ", ".join(runs), detail


def _insert_each(store: Any, pairs: list[tuple[str, dict]]) -> int:
    for i, (name, doc) in enumerate(pairs):
        try:
            store.insert(name, doc)
        except RunbrokerError as err:
            if len(pairs) > 1:
                err.args = (
                    f"{err} (document {i + 1} of a batch of {len(pairs)}; the "
                    f"{i} before it were stored)",
                )
            raise
    # No flush: the server's own store sees the documents at once, other processes on the
    # catalog within the store's flush interval -- the visibility a local insert has.
    return len(pairs)


def _pairs(data: Any) -> list[tuple[str, dict]]:
    if not isinstance(data, list):
        raise RequestError(
            f"the body must be a list of [name, document] pairs, not {type(data).__name__}"
        )
    pairs = []
    for i, item in enumerate(data):
        if not (
            isinstance(item, list | tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            raise RequestError(
                f"item {i} of the body is not a [name, document] pair: {item!r:.100}"
            )
        pairs.append((item[0], item[1]))
    return pairs


@router.post(
    "/runs/{uid}/fill",
    summary="Detector data of a file-backed field (a raw-buffer stream)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-msgpack": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def fill(request: Request, uid: str, ctx: Data) -> Response:
    """``op`` is ``fill``, ``references`` or ``cuts`` (:class:`runbroker.filler.Filler`)."""
    args = await body(request)
    if not isinstance(args, dict) or args.get("op") not in ("fill", "references", "cuts"):
        raise RequestError("the body must be a map with op = fill, references or cuts")
    try:
        events = FieldEvents(
            uid,
            tuple(args["descriptors"]),
            str(args["field"]),
            dict(args["data_key"]),
            args.get("refs"),
            np.asarray(args["seq_nums"], dtype=np.int64),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise RequestError(f"the fill request lacks or mangles {err}") from None
    refs = events.refs
    if refs is not None and len(refs) and all(isinstance(r, str) for r in refs):
        # datum ids: only the run's own are read (what the events of the run name)
        known = await run_in_threadpool(ctx.store.datums, uid, list(set(refs)))
        unknown = sorted(set(refs) - known.keys())
        if unknown:
            raise RequestError(
                f"field {events.field!r}: {unknown[0]!r} is not a datum of run {uid!r}"
            )
    filler = ctx.catalog.filler
    if args["op"] == "cuts":
        return reply(request, await run_in_threadpool(filler.cuts, events))
    if args["op"] == "references":
        return reply(request, await run_in_threadpool(filler.references, events))
    cuts = await run_in_threadpool(filler.cuts, events)
    # One event first: errors (a missing file) become the status, and its size sets how
    # many events each later block holds.
    first = await run_in_threadpool(filler.fill, events[0:1])
    step = max(1, _FILL_BYTES // max(1, first.nbytes))

    def produce() -> Iterator[tuple[str, Any]]:
        yield "block", first
        for a, b in itertools.pairwise(cuts):
            for lo in range(max(a, 1), b, step):
                yield "block", filler.fill(events[lo : min(b, lo + step)])

    return streamed(produce())
