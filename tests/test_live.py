"""Following runs while they are written: ``Stream.follow`` on every store, the server's held
requests and its feed of documents, and two server processes on one PostgreSQL catalog.

The writers are real RunEngines (``ophyd.sim`` devices, plans with delays) or documents made
with event_model; the servers are real uvicorn processes on loopback. A follower must see
every event once, in seq_num order, and its batches joined must be the run's final ``read()``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import xarray as xr
from bluesky import RunEngine
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import det, motor

import runbroker
from runbroker.catalog import Catalog
from runbroker.client import HTTPStore
from runbroker.client.cache import CachedStore
from runbroker.errors import NoStreamError, PageGone, RequestError, RunNotFoundError
from runbroker.follow import Cursor, newer
from runbroker.store.base import Follows, NewEvents
from runbroker.stream import Stream
from runbroker.testing.server import ServerProcess

# ---------------------------------------------------------------- helpers


class Follower(threading.Thread):
    """Follows the primary stream of the next run of ``catalog`` in a thread of its own,
    keeping each batch and when each event arrived."""

    def __init__(self, catalog: Catalog, **options: Any) -> None:
        super().__init__(daemon=True)
        self.catalog = catalog
        self.options = {"timeout": 30.0, **options}
        self.batches: list[xr.Dataset] = []
        self.arrived: dict[int, float] = {}
        self.error: BaseException | None = None
        self.uid: str | None = None
        #: Requests a remote follower sent while following (after finding the stream).
        self.requests = 0
        #: When following began (events stored before came at once, whatever their age).
        self.began = float("inf")

    def run(self) -> None:
        store = self.catalog.store
        try:
            stream = self._stream()
            sent = store.transport.requests if isinstance(store, HTTPStore) else 0
            self.began = time.time()
            for batch in stream.follow(**self.options):
                now = time.time()
                self.batches.append(batch)
                for seq in batch["seq_num"].values.tolist():
                    self.arrived.setdefault(seq, now)
            if isinstance(store, HTTPStore):
                self.requests = store.transport.requests - sent
        except BaseException as err:  # re-raised by result() in the test's thread
            self.error = err

    def _stream(self) -> Stream:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(self.catalog):
                run = self.catalog[-1]
                if "primary" in run:
                    self.uid = run.uid
                    return run.primary
            time.sleep(0.01)
        raise AssertionError("no run with a primary stream appeared")

    def result(self) -> xr.Dataset:
        self.join(60)
        assert not self.is_alive(), "the follower did not finish"
        if self.error is not None:
            raise self.error
        return xr.concat(self.batches, dim="time")


def engine(*subscribers: Callable[[str, dict], Any], **options: Any) -> RunEngine:
    RE = RunEngine({}, call_returns_result=False, **options)
    for s in subscribers:
        RE.subscribe(s)
    return RE


def check_same(followed: xr.Dataset, final: xr.Dataset) -> None:
    """The batches joined are the final read(): every event once, in seq_num order."""
    seq = followed["seq_num"].values
    assert seq.tolist() == sorted(set(seq.tolist())), "an event came twice or out of order"
    xr.testing.assert_identical(followed.drop_attrs(), final.drop_attrs())


def insert_times(stamps: dict[int, float]) -> Callable[[str, dict], None]:
    def stamp(name: str, doc: dict) -> None:
        if name == "event":
            stamps[doc["seq_num"]] = time.time()

    return stamp


class Documents:
    """A run made by hand (event_model): start, one descriptor, events by seq_num, stop."""

    def __init__(self) -> None:
        self.bundle = compose_run(metadata={"plan_name": "by-hand"})
        keys = {"x": {"source": "sim", "dtype": "number", "shape": []}}
        self.desc = self.bundle.compose_descriptor(name="primary", data_keys=keys)

    def start(self) -> list[tuple[str, dict]]:
        return [("start", self.bundle.start_doc), ("descriptor", self.desc.descriptor_doc)]

    def events(self, *seqs: int) -> list[tuple[str, dict]]:
        return [
            (
                "event",
                self.desc.compose_event(data={"x": 10.0 * s}, timestamps={"x": 1.0 + s}, seq_num=s),
            )
            for s in seqs
        ]

    def stop(self) -> list[tuple[str, dict]]:
        return [("stop", self.bundle.compose_stop())]


# ---------------------------------------------------------------- every store


def test_follow_a_running_plan(catalog: Catalog) -> None:
    """A RunEngine writes while a follower in another thread reads: every event once."""
    follower = Follower(catalog, poll=0.02)
    follower.start()
    RE = engine(catalog.insert)
    RE(count([det], num=40, delay=0.02))
    followed = follower.result()
    final = catalog[-1].primary.read()
    assert final.sizes["time"] == 40
    check_same(followed, final)
    assert len(follower.batches) > 1, "the events came in one batch: not followed live"


def test_follow_fields_and_start_points(catalog: Catalog) -> None:
    run_docs = Documents()
    catalog.ingest(run_docs.start() + run_docs.events(1, 2, 3))
    stream = catalog[-1].primary
    # "new" is fixed at the follow's first look, which over HTTP on a loaded machine may come
    # after any fixed sleep: the writer waits for that look instead.
    looked = threading.Event()
    follow_after = stream._follow_after

    def marked(start: Any) -> int | None:
        after = follow_after(start)
        looked.set()
        return after

    stream._follow_after = marked  # type: ignore[method-assign]

    def later() -> None:
        assert looked.wait(20), "the follow never looked at the stream"
        catalog.ingest(run_docs.events(4, 5) + run_docs.stop())

    writer = threading.Thread(target=later)
    writer.start()
    batches = list(stream.follow("x", start="new", timeout=20, poll=0.02))
    writer.join()
    got = xr.concat(batches, dim="time")
    assert got["seq_num"].values.tolist() == [4, 5]
    assert got["x"].values.tolist() == [40.0, 50.0]
    after_two = xr.concat(list(stream.follow(start=2)), dim="time")
    assert after_two["seq_num"].values.tolist() == [3, 4, 5]
    assert list(after_two.data_vars) == ["x"]
    with pytest.raises(ValueError, match="start is 'beginning', 'new' or a seq_num"):
        next(stream.follow(start="soon"))
    with pytest.raises(KeyError, match="no field 'nope'"):
        next(stream.follow("nope"))


def test_follow_gives_up_after_idle_seconds(catalog: Catalog) -> None:
    run_docs = Documents()
    catalog.ingest(run_docs.start() + run_docs.events(1, 2))
    follow = catalog[-1].primary.follow(timeout=0.4, poll=0.02)
    assert next(follow)["seq_num"].values.tolist() == [1, 2]  # what is stored comes at once
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no new event .* for 0.4 s"):
        next(follow)
    assert 0.3 < time.monotonic() - began < 5


def test_follow_of_a_run_that_does_not_exist(catalog: Catalog) -> None:
    stream = Stream(catalog.store, "no-such-run", "primary", [], catalog.filler)
    with pytest.raises(RunNotFoundError, match="no-such-run"):
        next(stream.follow(timeout=5))


def test_an_event_stored_late_comes_in_its_place(catalog: Catalog) -> None:
    """seq 3 is stored after 4: the follower holds 4 back until 3 is there."""
    run_docs = Documents()
    catalog.ingest(run_docs.start() + run_docs.events(1, 2, 4))
    batches: list[list[int]] = []

    def follow() -> None:
        for batch in catalog[-1].primary.follow(timeout=20, poll=0.02):
            batches.append(batch["seq_num"].values.tolist())

    follower = threading.Thread(target=follow)
    follower.start()
    waited = time.monotonic() + 10  # a loaded machine (or HTTP) may take a while to start
    while not batches and time.monotonic() < waited:
        time.sleep(0.02)
    time.sleep(0.3)  # time enough to see 4 given out too early
    assert batches == [[1, 2]]
    catalog.ingest(run_docs.events(3, 5) + run_docs.stop())
    follower.join(20)
    assert batches == [[1, 2], [3, 4, 5]]


def test_follow_across_a_second_descriptor(catalog: Catalog) -> None:
    """The stream is declared again mid-run (configuration changed): the follower reads on."""
    from conftest import _two_descriptor_documents

    docs = _two_descriptor_documents()
    second = [i for i, (name, _) in enumerate(docs) if name == "descriptor"][1]
    catalog.ingest(docs[:second])
    batches: list[xr.Dataset] = []

    def follow() -> None:
        for batch in catalog[-1].primary.follow(timeout=20, poll=0.02):
            batches.append(batch)

    follower = threading.Thread(target=follow)
    follower.start()
    # The first batch must be out before the second descriptor is stored, or both come as one
    # (a remote follower on a loaded machine may take longer than any fixed sleep to start).
    waited = time.monotonic() + 20
    while not batches and time.monotonic() < waited:
        time.sleep(0.02)
    assert len(batches) == 1, "the follower gave out nothing of the first descriptor's events"
    catalog.ingest(docs[second:])
    follower.join(20)
    assert len(batches) == 2
    check_same(xr.concat(batches, dim="time"), catalog[-1].primary.read())


def test_the_remote_store_waits_on_its_server(catalog: Catalog) -> None:
    """Only the HTTP store (and the cache over it) can wait by itself; every other store is
    polled."""
    remote = isinstance(catalog.store, HTTPStore | CachedStore)
    assert isinstance(catalog.store, Follows) == remote


# ---------------------------------------------------------------- pieces


class MergedOnce:
    """A real store whose pages are merged away once between listing and reading."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.listed = 0
        self.gone = False

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list:
        self.listed += 1
        return self.store.pages(run_uid, descriptor_uids)

    def read_pages(self, run_uid: str, page_ids: list[int], columns: Any) -> list:
        if not self.gone:
            self.gone = True
            raise PageGone("merged meanwhile")
        return self.store.read_pages(run_uid, page_ids, columns)


def test_newer_lists_pages_again_after_a_merge() -> None:
    cat = runbroker.temp()
    run_docs = Documents()
    cat.ingest(run_docs.start())
    for s in range(1, 7):  # a page per ingest
        cat.ingest(run_docs.events(s))
    merged = MergedOnce(cat.store)
    desc = run_docs.desc.descriptor_doc["uid"]
    cols = newer(merged, cat[-1].uid, [desc], 3, ["d:x"])  # type: ignore[arg-type]
    assert merged.listed == 2
    assert cols["seq_num"].tolist() == [4, 5, 6]
    assert cols["d:x"].tolist() == [40.0, 50.0, 60.0]
    assert sorted(cols) == ["d:x", "seq_num", "time"]


def test_cursor_holds_events_after_a_gap() -> None:
    def found(seqs: list[int], stopped: bool = False) -> NewEvents:
        cols = {"time": np.zeros(len(seqs)), "seq_num": np.array(seqs, dtype=np.int64)}
        return NewEvents(cols, [], stopped)

    cursor = Cursor(after=0, gap_wait=0.2)
    assert cursor.take(found([2, 3])) is None and cursor.waiting
    assert cursor.take(found([1, 2, 3]))["seq_num"].tolist() == [1, 2, 3]
    assert not cursor.waiting
    assert cursor.take(found([3, 5])) is None  # 3 was handed out; 4 is missing
    time.sleep(0.25)
    assert cursor.take(found([5]))["seq_num"].tolist() == [5]  # waited long enough
    assert cursor.take(found([7, 8], stopped=True))["seq_num"].tolist() == [7, 8]
    assert Cursor().take(found([4, 5]))["seq_num"].tolist() == [4, 5]


# ---------------------------------------------------------------- through a server


def remote(server: ServerProcess, name: str, **options: Any) -> Catalog:
    return runbroker.open(server.catalog_url(name), api_key=server.api_key, **options)


def test_plan_written_through_the_server_followed_by_another_client(http_server: Any) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    writer, reader = remote(http_server, name), remote(http_server, name)
    follower = Follower(reader)
    follower.start()
    stamps: dict[int, float] = {}
    RE = engine(insert_times(stamps), writer.insert)
    RE(scan([det], motor, -1, 1, 50))
    followed = follower.result()
    check_same(followed, reader[-1].primary.read())
    assert followed.sizes["time"] == 50
    # One request per batch (the last one says the run stopped), not a busy loop.
    assert follower.requests <= len(follower.batches) + 2, follower.requests
    delays = sorted(follower.arrived[s] - t for s, t in stamps.items() if t > follower.began)
    assert delays and delays[len(delays) // 2] < 0.5, delays


def test_remote_follow_errors(http_server: Any) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    cat = remote(http_server, name)
    with pytest.raises(RunNotFoundError, match="no-such-run"):
        cat.store.wait_events("no-such-run", "primary", None, None, 1.0)
    run_docs = Documents()
    cat.ingest(run_docs.start() + run_docs.events(1) + run_docs.stop())
    uid = cat[-1].uid
    with pytest.raises(NoStreamError, match="no stream 'baseline'; its streams are"):
        cat.store.wait_events(uid, "baseline", None, None, 1.0)
    with pytest.raises(RequestError, match="no field 'y'; its fields are"):
        cat.store.wait_events(uid, "primary", None, ["y"], 1.0)
    # Anyone else asks in JSON: the same answer, as lists.
    url = f"{http_server.catalog_url(name)}/api/v1/runs/{uid}/streams/primary/events"
    got = httpx.get(url, params={"after": 0}, headers=auth(http_server)).json()
    assert got == {
        "columns": {"time": [got["columns"]["time"][0]], "seq_num": [1], "d:x": [10.0]},
        "descriptors": [run_docs.desc.descriptor_doc["uid"]],
        "stopped": True,
    }
    bad = httpx.get(url, params={"after": "x"}, headers=auth(http_server))
    assert bad.status_code == 400 and "after" in bad.json()["error"]["message"]


def test_a_held_request_answers_when_events_arrive(http_server: Any) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    cat = remote(http_server, name)
    run_docs = Documents()
    cat.ingest(run_docs.start() + run_docs.events(1))
    uid = cat[-1].uid
    began = time.monotonic()
    idle = cat.store.wait_events(uid, "primary", 1, None, 0.3)
    assert len(idle) == 0 and not idle.stopped and 0.25 < time.monotonic() - began < 3
    threading.Timer(0.3, lambda: cat.ingest(run_docs.events(2))).start()
    began = time.monotonic()
    got = cat.store.wait_events(uid, "primary", 1, None, 10.0)
    assert got.columns["seq_num"].tolist() == [2]
    assert 0.25 < time.monotonic() - began < 2  # answered on arrival, not at the timeout


def auth(server: ServerProcess) -> dict[str, str]:
    return {"authorization": f"Bearer {server.api_key}"}


def read_feed(response: httpx.Response, on_heartbeat: Callable[[], None] | None = None) -> list:
    """The (event, document) pairs of a feed, to its end; ``on_heartbeat`` at the first."""
    events, name, beats = [], None, 0
    for line in response.iter_lines():
        if line.startswith(":"):
            beats += 1
            if beats == 1 and on_heartbeat is not None:
                on_heartbeat()
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, orjson.loads(line[len("data: ") :])))
    return events


def test_feed_of_a_plan_written_through_the_server(http_server: Any) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    writer = remote(http_server, name)
    # Run in a thread of its own: no SIGINT handler (that needs the main thread).
    RE = engine(writer.insert, context_managers=[])
    started = threading.Event()
    RE.subscribe(lambda kind, doc: started.set() if kind == "descriptor" else None)
    plan = threading.Thread(target=lambda: RE(count([det], num=30, delay=0.02)))

    plan.start()
    assert started.wait(20)
    uid = writer[-1].uid
    feed_url = f"{http_server.catalog_url(name)}/api/v1/runs/{uid}/feed"
    with httpx.stream("GET", feed_url, headers=auth(http_server), timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_feed(response)
    plan.join(30)
    names = [n for n, _ in events]
    assert names[0] == "start" and names[1] == "descriptor" and names[-1] == "stop"
    assert set(names[2:-1]) == {"event_page"}
    seqs = [s for n, doc in events if n == "event_page" for s in doc["seq_num"]]
    assert seqs == list(range(1, 31))
    values = [v for n, doc in events if n == "event_page" for v in doc["data"]["det"]]
    assert values == writer[-1].primary.read()["det"].values.tolist()


def test_feed_heartbeats_until_the_run_stops(http_server: Any) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    cat = remote(http_server, name)
    run_docs = Documents()
    cat.ingest(run_docs.start())
    url = f"{http_server.catalog_url(name)}/api/v1/runs/{cat[-1].uid}/feed"

    def finish() -> None:
        cat.ingest(run_docs.events(1, 2) + run_docs.stop())

    with httpx.stream(
        "GET", url, params={"heartbeat": 0.1}, headers=auth(http_server), timeout=30
    ) as response:
        events = read_feed(response, on_heartbeat=finish)
    assert [n for n, _ in events] == ["start", "descriptor", "event_page", "stop"]
    missing = httpx.get(
        f"{http_server.catalog_url(name)}/api/v1/runs/nope/feed", headers=auth(http_server)
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "run_not_found"


# ---------------------------------------------------------------- two server processes


def test_two_servers_on_one_postgresql_catalog(postgres_url: str, tmp_path: Any) -> None:
    """Written through one server process, read and followed through another."""
    first = ServerProcess(tmp_path / "a", postgres=postgres_url)
    second = ServerProcess(tmp_path / "b", postgres=postgres_url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    name = f"pg-live{uuid.uuid4().hex[:8]}"
    try:
        starting = threading.Thread(target=second.start)
        starting.start()  # both at once: each takes seconds to import and open
        first.start()
        starting.join()
        writer = remote(first, name)
        assert len(writer) == 0  # the first server makes the catalog ...
        reader = remote(second, name)
        assert len(reader) == 0  # ... and the second one opens it
        follower = Follower(reader)
        follower.start()
        RE = engine(writer.insert)
        RE(count([det, motor], num=30, delay=0.02))
        writer.flush()
        followed = follower.result()
        final = reader[-1].primary.read()
        check_same(followed, final)
        assert final["det"].values.tolist() == writer[-1].primary.read()["det"].values.tolist()
        assert len(follower.batches) > 1
    finally:
        first.stop()
        second.stop()
