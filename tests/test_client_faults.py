"""The remote client when the connection fails: timeouts, retries with backoff (connection
errors, 502/503/504, Retry-After), and a server killed in the middle of a large ``read()``:
the client resumes or raises, and never returns part of the data as if it were all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from event_model import compose_run

import runbroker
from runbroker import wire
from runbroker.catalog import Catalog
from runbroker.client.store import HTTPStore
from runbroker.client.transport import Transport
from runbroker.errors import (
    CatalogUnavailableError,
    RunbrokerError,
    ServerUnreachableError,
    TruncatedStreamError,
)
from runbroker.server import Settings, build_app
from runbroker.testing.server import free_port
from runbroker.testing.serving import ServeCommand, ThreadServer

KEY = "faults-key"


class Flaky:
    """An ASGI app failing its first ``failures`` requests with ``status`` (and a
    ``Retry-After`` when given), then answering ``7`` (or, under ``/framed``, a framed stream
    of three records)."""

    def __init__(self, failures: int, status: int = 503, retry_after: str | None = None) -> None:
        self.failures, self.status, self.retry_after = failures, status, retry_after
        self.calls = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.calls += 1
        if self.calls <= self.failures:
            err = CatalogUnavailableError("the database is restarting")
            headers = [(b"content-type", wire.MSGPACK.encode())]
            if self.retry_after is not None:
                headers.append((b"retry-after", self.retry_after.encode()))
            body = wire.pack({"error": err.to_dict()})
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"].endswith("/framed"):
            body = b"".join(bytes(p) for i in range(3) for p in wire.parts("n", i)) + b"".join(
                bytes(p) for p in wire.stream_end(3)
            )
        else:
            body = wire.pack(7)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def flaky() -> Iterator[Any]:
    servers: list[ThreadServer] = []

    def serve(app: Flaky) -> Transport:
        servers.append(ThreadServer(app).start())
        return Transport(servers[-1].url, retries=3, backoff=0.01)

    yield serve
    for server in servers:
        server.stop()


def test_503_twice_then_200(flaky: Any) -> None:
    app = Flaky(2)
    transport = flaky(app)
    assert transport.get("/x") == 7
    assert app.calls == 3 and transport.requests == 3


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried_too(flaky: Any, status: int) -> None:
    app = Flaky(1, status)
    assert flaky(app).post("/x", json={}) == 7 and app.calls == 2


def test_a_framed_answer_is_asked_again_after_503(flaky: Any) -> None:
    app = Flaky(2)
    assert flaky(app).records("POST", "/framed", json={}) == [("n", 0), ("n", 1), ("n", 2)]
    assert app.calls == 3


def test_a_stream_is_asked_again_after_503(flaky: Any) -> None:
    app = Flaky(1)
    assert list(flaky(app).stream("GET", "/framed")) == [("n", 0), ("n", 1), ("n", 2)]
    assert app.calls == 2


def test_past_the_retries_the_servers_error_is_raised(flaky: Any) -> None:
    app = Flaky(100)
    transport = flaky(app)
    with pytest.raises(CatalogUnavailableError, match="restarting"):
        transport.get("/x")
    with pytest.raises(CatalogUnavailableError, match="restarting"):
        transport.records("GET", "/framed")
    assert app.calls == 8  # 1 + 3 retries, twice


@pytest.mark.parametrize("status", [500, 400, 404])
def test_other_errors_are_not_retried(flaky: Any, status: int) -> None:
    app = Flaky(1, status)
    with pytest.raises(RunbrokerError):
        flaky(app).get("/x")
    assert app.calls == 1


def test_retry_after_is_honoured(flaky: Any) -> None:
    transport = flaky(Flaky(1, retry_after="1"))
    began = time.monotonic()
    assert transport.get("/x") == 7
    assert time.monotonic() - began >= 1.0


def _store(url: str, *, api_key: str, retries: int, backoff: float) -> HTTPStore:
    store = HTTPStore(url, api_key=api_key, retries=retries)
    store.transport.backoff = backoff
    return store


def test_a_server_started_late_is_reached(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = build_app(runbroker.open(tmp_path / "runs.db"), Settings(api_key=KEY))
    server = ThreadServer(app, port=port)
    store = _store(url, api_key=KEY, retries=8, backoff=0.1)
    starting = threading.Timer(0.5, server.start)
    starting.start()
    try:
        assert len(Catalog(store)) == 0  # the first requests find nobody listening
        assert store.transport.requests > 1
        starting.join()
        late = HTTPStore(url, api_key=KEY, retries=0)
        server.stop()
        with pytest.raises(ServerUnreachableError, match=f"cannot reach .* at {url}"):
            len(Catalog(late))
    finally:
        starting.cancel()
        server.stop()


def test_documents_wait_for_a_server_started_late(tmp_path: Path) -> None:
    cat = runbroker.open(tmp_path / "runs.db")
    bundle = compose_run()
    cat.ingest([("start", bundle.start_doc), ("stop", bundle.compose_stop())])
    port = free_port()
    server = ThreadServer(build_app(cat, Settings(api_key=KEY)), port=port)
    store = _store(f"http://127.0.0.1:{port}", api_key=KEY, retries=8, backoff=0.1)
    starting = threading.Timer(0.5, server.start)
    starting.start()
    try:
        replay = list(store.documents(bundle.start_doc["uid"]))
        assert [name for name, _ in replay] == ["start", "stop"]
    finally:
        starting.join()
        server.stop()


class Slow:
    """An app that answers after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] != "http":
            return
        await asyncio.sleep(self.seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": wire.pack(1)})


def test_the_timeout_is_the_users() -> None:
    with ThreadServer(Slow(3.0)) as server:
        transport = Transport(server.url, timeout=0.3, retries=0)
        began = time.monotonic()
        with pytest.raises(ServerUnreachableError, match=r"did not answer within 0.3 s"):
            transport.get("/x")
        assert time.monotonic() - began < 2.0
        assert Transport(server.url, timeout=10, retries=0).get("/x") == 1
        cat = runbroker.open(server.url, api_key=KEY, timeout=0.3, cache=False)
        began = time.monotonic()
        with pytest.raises(ServerUnreachableError, match="timeout="):
            len(cat)
        # 4 tries of 0.3 s + waits of 1.05 s at most (2.2 s seen under load), not 3 s each
        assert time.monotonic() - began < 3.5


# -- a server killed in the middle of a large read ------------------------------------------

EVENTS = 2_000_000
FIELDS = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An SQLite catalog holding one run of 2,000,000 events of four fields, and the run's
    primary stream as read locally."""
    folder = tmp_path_factory.mktemp("big")
    with runbroker.open(folder / "runs.db") as cat:
        bundle = compose_run(metadata={"plan_name": "big"})
        keys = {f: {"source": "sim", "dtype": "number", "shape": []} for f in FIELDS}
        desc = bundle.compose_descriptor(name="primary", data_keys=keys)
        cat.ingest([("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)])
        step = 100_000
        for lo in range(0, EVENTS, step):
            seq = np.arange(lo + 1, lo + step + 1)
            t = (seq * 1e-3).tolist()
            page = {
                "descriptor": desc.descriptor_doc["uid"],
                "uid": [f"{bundle.start_doc['uid']}-{i}" for i in seq],
                "seq_num": seq.tolist(),
                "time": t,
                "data": {f: (seq * k + 0.5).tolist() for k, f in enumerate(FIELDS)},
                "timestamps": {f: t for f in FIELDS},
                "filled": {},
            }
            cat.insert("event_page", page)
        cat.insert("stop", bundle.compose_stop())
        local = cat[-1].primary.read()
    return folder, local


class Watched(httpx.SyncByteStream):
    """A response body passed through unchanged, calling ``at`` once ``after`` bytes of it
    have arrived (the test's way to act in the middle of an answer)."""

    def __init__(self, inner: Any, after: int, at: Any) -> None:
        self.inner, self.after, self.at = inner, after, at
        self.seen = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.seen += len(chunk)
            if self.seen >= self.after and self.at is not None:
                self.at()
                self.at = None
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _kill_mid_read(store: HTTPStore, served: ServeCommand, then: Any = None) -> list[int]:
    """Kill the server (-9) once 4 MB of the first /read answer have arrived; then ``then()``."""
    killed: list[int] = []

    def kill() -> None:
        served.kill()
        killed.append(watched.seen)
        if then is not None:
            threading.Thread(target=then, daemon=True).start()

    def hook(response: httpx.Response) -> None:
        nonlocal watched
        if response.request.url.path.endswith("/read") and not killed:
            watched = Watched(response.stream, 4 * 2**20, kill)
            response.stream = watched

    watched: Watched | None = None
    store.transport.client.event_hooks["response"].append(hook)
    return killed


def test_a_server_killed_mid_read_raises(big_run: tuple[Path, Any]) -> None:
    folder, _ = big_run
    served = ServeCommand(folder, "runs.db", "--api-key", KEY, "--no-access-log")
    try:
        store = _store(served.url, api_key=KEY, retries=2, backoff=0.05)
        run = Catalog(store)[-1]
        killed = _kill_mid_read(store, served)
        result = None
        with pytest.raises((ServerUnreachableError, TruncatedStreamError)):
            result = run.primary.read()
        assert result is None
        assert killed and killed[0] >= 4 * 2**20  # it died with the answer under way
    finally:
        served.stop()


def test_a_server_restarted_mid_read_is_resumed(big_run: tuple[Path, Any]) -> None:
    folder, local = big_run
    served = ServeCommand(folder, "runs.db", "--api-key", KEY, "--no-access-log")
    try:
        store = _store(served.url, api_key=KEY, retries=12, backoff=0.1)
        run = Catalog(store)[-1]
        killed = _kill_mid_read(store, served, then=served.start)
        remote = run.primary.read()
        assert killed
        assert remote.sizes["time"] == EVENTS
        for name in FIELDS:
            np.testing.assert_array_equal(remote[name].values, local[name].values)
        np.testing.assert_array_equal(remote["time"].values, local["time"].values)
    finally:
        served.stop()
