"""What operators need: liveness and readiness probes, the server's description, metrics, and
one structured access log line per request.

``/healthz`` answers 200 while the process runs; ``/readyz`` answers 503 while the catalog's
database does not (take the process out of the load balancer, do not restart it). Neither
needs a key, nor does ``/metrics`` (Prometheus text format): none of them shows a run.

:func:`instrument` wraps the app in ASGI middleware that counts each request under its route's
path template (``/api/v1/runs/{uid}``, never the raw path: the label stays small), times it
until its last byte is sent (a streamed answer included) and logs it as one JSON line on the
``runbroker.server.access`` logger. With several worker processes, set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before they start (``runbroker serve
--workers N`` does): each worker writes its counts there and ``/metrics`` adds them up.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..filler import Fills
from ..store.base import Indexes
from .context import CALLER, Metadata, Service
from .encoding import reply

__all__ = ["REGISTRY", "access_log", "instrument", "router"]

router = APIRouter()
access_log = logging.getLogger("runbroker.server.access")

#: The metrics of this process (every app in it counts into the same ones).
REGISTRY = CollectorRegistry()
_LABELS = ("method", "route")
_REQUESTS = Counter(
    "runbroker_http_requests",
    "Requests answered, by route and status",
    (*_LABELS, "status"),
    registry=REGISTRY,
)
_ERRORS = Counter(
    "runbroker_http_errors",
    "Requests answered with a 4xx or 5xx status, by route and status",
    (*_LABELS, "status"),
    registry=REGISTRY,
)
_LATENCY = Histogram(
    "runbroker_http_request_duration_seconds",
    "Time from a request's arrival to the last byte of its answer",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
_BYTES = Counter(
    "runbroker_http_response_bytes",
    "Bytes of answers sent (bodies, before compression by a proxy)",
    _LABELS,
    registry=REGISTRY,
)
# Requests that matched no route are counted under this one label, not under their paths.
UNMATCHED = "(unmatched)"


@router.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Readiness: the catalog's database answers")
def readyz(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        service.catalog.store.count(None)
    except Exception as err:  # any failure means: do not send traffic here
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return reply(request, {"status": "unavailable", "reason": reason}, 503)
    return reply(request, {"status": "ready"})


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics of this server")
async def metrics() -> Response:
    return Response(await run_in_threadpool(_exposition), media_type=CONTENT_TYPE_LATEST)


def _exposition() -> bytes:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


@router.get("/api/v1/info", tags=["store"], summary="What this server serves")
def info(request: Request, ctx: Metadata) -> Response:
    store = ctx.store
    return reply(
        request,
        {
            "version": __version__,
            "caller": ctx.principal.name,
            "scopes": sorted(ctx.principal.scopes),
            "writable": ctx.principal.holds("write:runs"),
            "capabilities": {
                "indexes": isinstance(store, Indexes),
                "fills": True,
                "serves_fills_of": isinstance(store, Fills),
            },
        },
    )


def instrument(app: FastAPI) -> None:
    """Count, time and log every request ``app`` answers (see the module's docstring).

    Example:
        >>> from fastapi.testclient import TestClient
        >>> app = FastAPI()
        >>> instrument(app)
        >>> TestClient(app).get("/nothing/here").status_code
        404
        >>> b'route="(unmatched)",status="404"' in generate_latest(REGISTRY)
        True
    """
    app.add_middleware(Instrumented)


class Instrumented:
    """ASGI middleware behind :func:`instrument`: it sees the messages an answer is sent in,
    so a streamed answer is measured to its end and passes through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        # The context dependency names the caller here (a dict shared with the request).
        state = scope.setdefault("state", {})
        seen = {"status": 500, "bytes": 0}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            _record(
                scope["method"],
                template,
                seen["status"],
                time.perf_counter() - began,
                seen["bytes"],
                state.get(CALLER),
                scope,
            )


def _record(
    method: str,
    route: str,
    status: int,
    seconds: float,
    size: int,
    caller: str | None,
    scope: dict[str, Any],
) -> None:
    _REQUESTS.labels(method, route, str(status)).inc()
    if status >= 400:
        _ERRORS.labels(method, route, str(status)).inc()
    _LATENCY.labels(method, route).observe(seconds)
    _BYTES.labels(method, route).inc(size)
    if access_log.isEnabledFor(logging.INFO):
        client = scope.get("client")
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": method,
            "route": route,
            # The path without its query string: an api_key parameter stays out of the log.
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": size,
            "caller": caller,
            "client": client[0] if client else None,
            "pid": os.getpid(),  # which worker, when several share the port
        }
        access_log.info(json.dumps(line))
