"""The HTTP store: a runbroker server's catalog as a :class:`~runbroker.store.base.Store`.

Each method is one request to the route of the same name (:mod:`runbroker.server.protocol`),
so a :class:`~runbroker.catalog.Catalog` over an :class:`HTTPStore` is the whole user API --
lookups, search, read, dask, export, pack, documents, insert -- with no second copy of it.
Detector data is filled on the server (:class:`RemoteFiller`): the files need not be
reachable from here.

Writes are batched: events and datums wait up to ``linger`` seconds (or until ``batch``
documents wait) and go in one request, so a RunEngine far from the database writes at full
speed. Any other document (start, descriptor, resource, stop) first sends what waits and then
goes at once, and every read sends what waits first, so this store's own readers see every
document at once. A batched document is validated here first, and waits only when the server
will surely take it (its descriptor was sent from here, its keys are declared, its seq_num is
new); so nearly every refusal comes from the ``insert`` that sent the document, as locally.
What only the server can know (an event reusing another's uid) raises from the next
``insert``, ``flush`` or ``close``, naming the document.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import numpy as np

from .. import wire
from ..documents import validate
from ..errors import ReadOnlyError, RunNotFoundError
from ..filler import FieldEvents, Filler
from ..notes import Viewer
from ..queries import Query
from ..store.base import Columns, NewEvents, PageInfo, RunRecord, run_not_found
from .transport import Transport

__all__ = ["HTTPStore", "RemoteFiller"]

_BATCHED = frozenset({"event", "event_page", "datum", "datum_page", "stream_datum"})
# Runs asked for per search request when the caller wants them all.
_SEARCH_PAGE = 10_000


def _run(uid: str) -> str:
    return "/runs/" + quote(uid, safe="")


class HTTPStore:
    """The catalog served at ``url`` (``http://host:port``, or a path below it).

    ``api_key`` is sent with every request; ``timeout`` and ``retries`` go to the
    :class:`~runbroker.client.transport.Transport`. ``readonly`` refuses writes here, before
    any request. ``batch`` and ``linger`` bound how many events wait, and how long, before
    they are sent (``batch=1`` sends each at once).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        readonly: bool = False,
        batch: int = 1000,
        linger: float = 0.05,
    ) -> None:
        self.uri = url.rstrip("/")
        self.readonly = readonly
        self.transport = Transport(self.uri, api_key=api_key, timeout=timeout, retries=retries)
        self._options = {"api_key": api_key, "timeout": timeout, "retries": retries}
        self._batch = max(1, batch)
        self._linger = linger
        self._pending: list[tuple[str, dict]] = []
        self._deferred: BaseException | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        # Descriptors (their data keys, the highest seq_num sent) and resources sent from here.
        self._known: dict[str, tuple[frozenset, int]] = {}
        self._viewer: Viewer | None = None

    def __repr__(self) -> str:
        return f"HTTPStore({self.uri!r})"

    def __reduce__(self) -> tuple:
        # dask workers reopen the same server read-only, with the same key
        return (_reader_for, (self.uri, tuple(sorted(self._options.items()))))

    # -- writing

    def insert(self, name: str, doc: dict) -> None:
        self._refuse_if_readonly()
        self._raise_deferred()
        if name in _BATCHED and self._may_wait(name, validate(name, doc)):
            with self._lock:
                self._pending.append((name, doc))
                full = len(self._pending) >= self._batch
                if not full and self._timer is None:
                    self._timer = threading.Timer(self._linger, self._send_in_background)
                    self._timer.daemon = True
                    self._timer.start()
            if full:
                self._send_pending()
            return
        # With the events that wait, in one request: a small run is three requests, not four.
        self._send_pending(then=(name, doc))
        if name == "descriptor":
            self._known[doc["uid"]] = (frozenset(doc["data_keys"]), -1)
        elif name in ("resource", "stream_resource"):
            self._known[doc["uid"]] = (frozenset(), -1)

    def _may_wait(self, name: str, doc: dict) -> bool:
        """Whether a valid batched document can wait for its batch: only when the server will
        surely take it as this store has seen its parents -- a descriptor or resource sent
        from here, declared keys, seq_nums above those sent. Anything else goes at once, so
        that the server's refusal comes from this ``insert``, as a local store's would."""
        if name in ("datum", "datum_page", "stream_datum"):
            parent = doc.get("stream_resource" if name == "stream_datum" else "resource")
            return parent in self._known
        known = self._known.get(doc["descriptor"])
        if known is None:
            return False
        keys, seq_max = known
        if name == "event":
            seqs = [doc["seq_num"]]
        else:
            seqs = list(doc["seq_num"])
            columns = [doc["time"], doc["uid"], *doc["data"].values(), *doc["timestamps"].values()]
            if not seqs or any(len(c) != len(seqs) for c in columns):
                return False
        if not doc["data"].keys() <= keys or min(seqs) <= seq_max:
            return False
        self._known[doc["descriptor"]] = (keys, max(seqs))
        return True

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        self._refuse_if_readonly()
        self._send_pending()
        batch = [(name, doc) for name, doc in pairs]
        if not batch:
            return 0
        return int(self.transport.post("/documents", content=batch)["count"])

    def flush(self) -> None:
        self._send_pending()

    def close(self) -> None:
        try:
            self._send_pending()
        finally:
            self.transport.close()

    def _refuse_if_readonly(self) -> None:
        if self.readonly:
            raise ReadOnlyError(f"{self.uri} was opened read-only (readonly=True)")

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err

    def _send_in_background(self) -> None:
        try:
            self._send_pending(raise_deferred=False)
        except BaseException as err:  # raised to the writer at its next call
            self._deferred = err

    def _send_pending(
        self, raise_deferred: bool = True, then: tuple[str, dict] | None = None
    ) -> None:
        """Send the documents that wait, and ``then`` after them in the same request."""
        with self._send_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if then is not None:
                batch.append(then)
            if batch:
                self.transport.post("/documents?atomic=false", content=batch)
        if raise_deferred:
            self._raise_deferred()

    # -- reading

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        self._send_pending()
        wanted = _wire(query)
        found: list[RunRecord] = []
        while True:
            ask = _SEARCH_PAGE if limit is None else min(_SEARCH_PAGE, limit - len(found))
            body = {
                "query": wanted,
                "offset": offset,
                "limit": ask,
                "before": before,
                "sort": "time" if oldest_first else "-time",
            }
            page = [_record(r) for r in self.transport.post("/search", json=body)]
            found.extend(page)
            if len(page) < ask or (limit is not None and len(found) >= limit):
                return found
            offset, before = 0, (float(page[-1].start.get("time", 0.0)), page[-1].uid)

    def count(self, query: Query | None) -> int:
        self._send_pending()
        return int(self.transport.post("/count", json={"query": _wire(query)}))

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        self._send_pending()
        body = {"key": key, "query": _wire(query), "limit": limit}
        return [(value, n) for value, n in self.transport.post("/distinct", json=body)]

    def get_run(self, uid: str) -> RunRecord | None:
        self._send_pending()
        try:
            return _record(self.transport.get(_run(uid)))
        except RunNotFoundError:
            return None

    @contextlib.contextmanager
    def _about(self, run_uid: str) -> Iterator[None]:
        """Send what waits; name this store (its URL) when the run is not found."""
        self._send_pending()
        try:
            yield
        except RunNotFoundError:
            raise run_not_found(self, run_uid) from None

    def descriptors(self, run_uid: str) -> list[dict]:
        with self._about(run_uid):
            return self.transport.get(_run(run_uid) + "/descriptors")

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        with self._about(run_uid):
            rows = self.transport.post(
                _run(run_uid) + "/pages", json={"descriptors": list(descriptor_uids)}
            )
        return [PageInfo(*row) for row in rows]

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        body = {"pages": list(page_ids), "columns": columns}
        with self._about(run_uid):
            answer = self.transport.records("POST", _run(run_uid) + "/read", json=body)
        return [cols for _, cols in answer]

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        params = {"arrays": "true" if arrays else "false", "uids": str(uids).lower()}
        with self._about(run_uid):
            replay = self.transport.stream("GET", _run(run_uid) + "/documents", params=params)
            for _, (name, doc) in replay:
                yield name, doc

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        with self._about(run_uid):
            found = self.transport.get(_run(run_uid) + "/assets")
        return [(name, doc) for name, doc in found]

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        with self._about(run_uid):
            found = self.transport.post(_run(run_uid) + "/datums", json={"ids": list(datum_ids)})
        return {k: (v[0], v[1]) for k, v in found.items()}

    # -- following a live run (runbroker.store.base.Follows)

    def wait_events(
        self,
        run_uid: str,
        stream: str,
        after: int | None,
        fields: list[str] | None,
        timeout: float,
    ) -> NewEvents:
        """One held request: the server answers when new events are stored (or the run
        stops, or ``timeout`` passes), so a follower sends one request per batch."""
        self._send_pending()
        # Held no longer than half the read timeout: an idle wait is never a timeout error.
        params: dict[str, Any] = {"wait": max(0.0, min(timeout, self.transport.timeout / 2))}
        if after is not None:
            params["after"] = after
        if fields is not None:
            params["field"] = list(fields)
        path = f"{_run(run_uid)}/streams/{quote(stream, safe='')}/events"
        got = self.transport.get(path, **params)
        return NewEvents(got["columns"], got["descriptors"], got["stopped"])

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        with self._about(run_uid):
            return self.transport.get(_run(run_uid) + "/stats")

    # -- notes (runbroker.store.base.Annotates): the server keeps them, and shows its caller
    # the ones it may see

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        with self._about(run_uid):
            path = _run(run_uid) + "/notes"
            return self.transport.get(path, history="true" if history else "false")

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        self._refuse_if_readonly()
        with self._about(run_uid):
            self.transport.post(_run(run_uid) + "/notes", json=list(notes))

    def viewer(self) -> Viewer:
        """Who the server takes this client to be when it reads and writes notes (asked
        once): the principal of its key, or this machine's user on a server of one key. The
        server shows only the notes that reader may see, so no group limits them here."""
        if self._viewer is None:
            me = self.transport.get("/auth/whoami")
            self._viewer = Viewer(str(me["viewer"]), admin=bool(me["admin"]))
        return self._viewer

    # -- filling on the server

    def filler(self) -> Filler:
        return RemoteFiller(self)


def _wire(query: Query | None) -> dict | None:
    return query.to_dict() if query is not None else None


def _record(data: dict) -> RunRecord:
    return RunRecord(data["uid"], data["start"], data["stop"], data.get("original"))


class RemoteFiller:
    """Fills file-backed fields by asking the server, which reads the files (one request per
    call, its answer streamed in blocks)."""

    def __init__(self, store: HTTPStore) -> None:
        self.store = store

    def _ask(self, op: str, events: FieldEvents) -> Any:
        refs = events.refs
        body = {
            "op": op,
            "descriptors": list(events.descriptors),
            "field": events.field,
            "data_key": dict(events.data_key),
            "refs": None
            if refs is None
            else (refs if isinstance(refs, np.ndarray) else list(refs)),
            "seq_nums": np.asarray(events.seq_nums, dtype=np.int64),
        }
        path = _run(events.run_uid) + "/fill"
        if op != "fill":
            return self.store.transport.post(path, content=body)
        records = self.store.transport.records(
            "POST", path, content=wire.pack(body), headers={"content-type": wire.MSGPACK}
        )
        return records

    def fill(self, events: FieldEvents) -> np.ndarray:
        blocks = [block for _, block in self._ask("fill", events)]
        if len(blocks) == 1:
            return blocks[0][: len(events)]
        return np.concatenate(blocks)[: len(events)]

    def references(self, events: FieldEvents) -> np.ndarray:
        refs = self._ask("references", events)
        out = np.empty(len(refs), dtype=object)
        out[:] = list(refs)
        return out

    def cuts(self, events: FieldEvents) -> list[int]:
        return [int(c) for c in self._ask("cuts", events)]


_readers: dict[tuple, HTTPStore] = {}
_readers_lock = threading.Lock()


def _reader_for(uri: str, options: tuple) -> HTTPStore:
    """The read-only HTTP store of ``uri`` in this process (one per process and key)."""
    with _readers_lock:
        key = (uri, options)
        if key not in _readers:
            _readers[key] = HTTPStore(uri, readonly=True, **dict(options))
        return _readers[key]
