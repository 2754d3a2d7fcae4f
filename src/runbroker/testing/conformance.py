"""The Store contract as tests: what every Store, and every Store wrapper, must pass.

The rules are written out in :mod:`runbroker.store.base`; each test here checks one of them
with real documents. To check a store, subclass :class:`StoreContract` in a test module,
say how to make a fresh, empty, writable store, and pytest runs every test on it::

    import pytest
    from runbroker.testing.conformance import StoreContract
    from runbroker.store.base import Indexes
    from mystore import MyStore

    class TestMyStore(StoreContract):
        capabilities = frozenset({Indexes})     # the optional protocols it implements

        def make_store(self, path, request):
            return MyStore(path / "catalog")

A wrapper (a cache, an access guard) is checked the same way: ``make_store`` returns the
wrapper around a fresh store. The suite runs on SQLite, PostgreSQL and a folder in
``tests/test_conformance.py``.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from event_model import compose_run, unpack_event_page

from ..documents import ConflictError, DocumentError
from ..errors import RunNotFoundError
from ..queries import Key
from ..store.base import Indexes, LeavesOut, PageGone, Store

__all__ = ["StoreContract", "datum_run", "scan_run", "stream_datum_run"]

Docs = list[tuple[str, dict]]
#: The optional capabilities a store may have; ``StoreContract.capabilities`` names its own.
CAPABILITIES = (Indexes, LeavesOut)
# Data keys of the scans: a number, an integer, a string and an inline 2x3 array.
_KEYS = {
    "x": {"source": "sim", "dtype": "number", "shape": []},
    "n": {"source": "sim", "dtype": "integer", "shape": []},
    "label": {"source": "sim", "dtype": "string", "shape": []},
    "img": {"source": "sim", "dtype": "array", "shape": [2, 3], "dtype_numpy": "<f8"},
}


def scan_run(
    n: int = 6, *, start_time: float | None = None, pages: int = 2, **metadata: Any
) -> Docs:
    """A run's documents: a ``baseline`` stream (one reading before and one after) and a
    ``primary`` one of ``n`` events over the four kinds of field, sent as single events and
    as ``pages`` event pages.

    Example:
        >>> docs = scan_run(4, pages=1, sample="Si")
        >>> [name for name, _ in docs][3:]
        ['descriptor', 'event', 'event', 'event_page', 'event', 'stop']
    """
    bundle = compose_run(metadata=metadata, time=start_time)
    docs: Docs = [("start", bundle.start_doc)]
    base = bundle.compose_descriptor(name="baseline", data_keys={"m": _KEYS["x"]})
    docs.append(("descriptor", base.descriptor_doc))
    docs.append(("event", base.compose_event(data={"m": 1.0}, timestamps={"m": 1.0})))
    primary = bundle.compose_descriptor(name="primary", data_keys=_KEYS)
    docs.append(("descriptor", primary.descriptor_doc))

    def reading(i: int) -> tuple[dict, dict]:
        data = {"x": i / 2, "n": i, "label": f"p{i}", "img": np.full((2, 3), float(i)).tolist()}
        return data, dict.fromkeys(data, 1e9 + i)

    singles = n - n // 2
    for i in range(1, singles + 1):
        data, stamps = reading(i)
        docs.append(("event", primary.compose_event(data=data, timestamps=stamps)))
    rest = list(range(singles + 1, n + 1))
    for part in np.array_split(np.array(rest, dtype=int), pages) if rest else []:
        if len(part):
            readings = [reading(int(i)) for i in part]
            page = primary.compose_event_page(
                data={k: [d[k] for d, _ in readings] for k in _KEYS},
                timestamps={k: [t[k] for _, t in readings] for k in _KEYS},
                seq_num=[int(i) for i in part],
                time=[time.time()] * len(part),
                uid=[str(uuid.uuid4()) for _ in part],
            )
            docs.append(("event_page", page))
    docs.append(("event", base.compose_event(data={"m": 2.0}, timestamps={"m": 2.0})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def datum_run(n: int = 3) -> Docs:
    """A run whose ``img`` field is in detector files named by a resource and its datums.

    Example:
        >>> [name for name, _ in datum_run(1)]
        ['start', 'resource', 'descriptor', 'datum', 'event', 'stop']
    """
    bundle = compose_run()
    docs: Docs = [("start", bundle.start_doc)]
    res = bundle.compose_resource(
        spec="NPY", root="/data", resource_path="img.npy", resource_kwargs={}
    )
    docs.append(("resource", res.resource_doc))
    keys = {"img": {**_KEYS["img"], "external": "FILESTORE:"}, "x": _KEYS["x"]}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n):
        datum = res.compose_datum(datum_kwargs={"index": i})
        docs.append(("datum", datum))
        event = desc.compose_event(
            data={"img": datum["datum_id"], "x": float(i)},
            timestamps={"img": 1.0, "x": 1.0},
            filled={"img": False},
        )
        docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def stream_datum_run(n: int = 3) -> Docs:
    """A run whose ``img`` field is in an HDF5 file named by a stream_resource.

    Example:
        >>> [name for name, _ in stream_datum_run(2)]
        ['start', 'descriptor', 'stream_resource', 'stream_datum', 'event', 'event', 'stop']
    """
    bundle = compose_run()
    docs: Docs = [("start", bundle.start_doc)]
    keys = {"img": {**_KEYS["img"], "external": "STREAM:"}, "x": _KEYS["x"]}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs.append(("descriptor", desc.descriptor_doc))
    res = bundle.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri="file://localhost/data/img.h5",
        data_key="img",
        parameters={"dataset": "/entry/data"},
    )
    docs.append(("stream_resource", res.stream_resource_doc))
    datum = res.compose_stream_datum(indices={"start": 0, "stop": n})
    datum["descriptor"] = desc.descriptor_doc["uid"]
    datum["seq_nums"] = {"start": 1, "stop": n + 1}
    docs.append(("stream_datum", datum))
    for i in range(n):
        docs.append(("event", desc.compose_event(data={"x": float(i)}, timestamps={"x": 1.0})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def _uid(docs: Docs) -> str:
    return docs[0][1]["uid"]


def _of(docs: Docs, *names: str) -> list[dict]:
    return [doc for name, doc in docs if name in names]


def _events(docs: Docs) -> list[dict]:
    """Every event of ``docs``, event pages unpacked, in order."""
    out = []
    for name, doc in docs:
        if name == "event":
            out.append(doc)
        elif name == "event_page":
            out.extend(unpack_event_page(doc))
    return out


def _plain(value: Any) -> Any:
    """A column value as JSON would carry it (arrays as lists, bytes uids as str)."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def _event_view(event: dict) -> tuple:
    """What of an event a store keeps, comparable across stores."""
    return (
        event["uid"],
        event["descriptor"],
        event["seq_num"],
        event["time"],
        {k: _plain(v) for k, v in event["data"].items()},
        event["timestamps"],
        event.get("filled") or {},
    )


def _by_descriptor(events: list[dict]) -> dict[str, list[tuple]]:
    """Each descriptor's events, in order, as :func:`_event_view` gives them."""
    out: dict[str, list[tuple]] = {}
    for event in events:
        out.setdefault(event["descriptor"], []).append(_event_view(event))
    return out


def _sequence(docs: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """``(kind, uid)`` of each document, event pages unpacked into events."""
    out = []
    for name, doc in docs:
        if name == "event_page":
            out.extend(("event", uid) for uid in _plain(doc["uid"]))
        else:
            out.append((name, doc["uid"]))
    return out


class StoreContract:
    """Tests of the Store contract (:mod:`runbroker.store.base`); subclass to run them.

    A subclass gives :meth:`make_store`, and may override :meth:`reopen`,
    :attr:`capabilities` and :attr:`visible_within`.
    """

    #: The optional capability protocols (``Indexes``, ``LeavesOut``) the store implements.
    capabilities: ClassVar[frozenset[type]] = frozenset()
    #: Seconds within which a store already open on the catalog sees another's insert.
    visible_within: ClassVar[float] = 0.1

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        """A fresh, empty, writable store; ``path`` is an empty folder it may use."""
        raise NotImplementedError("a StoreContract subclass gives make_store")

    def reopen(self, store: Store) -> Store:
        """A second store on the same catalog, as another process would open it (reading
        is enough). By default the pickled store, as a dask worker gets it."""
        return pickle.loads(pickle.dumps(store))

    @pytest.fixture
    def store(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
        folder = tmp_path / "store"
        folder.mkdir()
        made = self.make_store(folder, request)
        yield made
        made.close()

    @pytest.fixture
    def second(self, store: Store) -> Iterator[Any]:
        """Opens second stores on ``store``'s catalog, closed after the test."""
        opened: list[Store] = []

        def open_() -> Store:
            opened.append(self.reopen(store))
            return opened[-1]

        yield open_
        for other in opened:
            other.close()

    # -- searching and ordering -------------------------------------------------------------

    def _runs(self, store: Store) -> list[str]:
        """Five stored runs, two of them started at the same time; uids newest first."""
        times = [100.0, 300.0, 200.0, 300.0, 50.0]
        runs = [
            scan_run(1, start_time=t, sample="a" if i % 2 else "b") for i, t in enumerate(times)
        ]
        for docs in runs:
            store.ingest(docs)
        return [_uid(d) for d in sorted(runs, key=lambda d: (d[0][1]["time"], _uid(d)))][::-1]

    def test_search_gives_runs_newest_first_by_time_then_uid(self, store: Store) -> None:
        newest_first = self._runs(store)
        assert [r.uid for r in store.search(None)] == newest_first

    def test_offset_and_limit_cut_the_same_order(self, store: Store) -> None:
        newest_first = self._runs(store)
        assert [r.uid for r in store.search(None, offset=1, limit=2)] == newest_first[1:3]
        assert [r.uid for r in store.search(None, offset=3)] == newest_first[3:]
        assert store.search(None, offset=5, limit=2) == []

    def test_before_pages_stably_while_runs_are_added(self, store: Store) -> None:
        newest_first = self._runs(store)
        first = store.search(None, limit=2)
        store.ingest(scan_run(1, start_time=1000.0))  # newer than all: would shift offsets
        last = first[-1]
        after = store.search(None, limit=2, before=(last.start["time"], last.uid))
        assert [r.uid for r in after] == newest_first[2:4]

    def test_count_agrees_with_search(self, store: Store) -> None:
        self._runs(store)
        for query in (None, Key("sample") == "a", Key("sample") == "none"):
            assert store.count(query) == len(store.search(query))
        assert store.count(Key("sample") == "a") == 2

    # -- finding runs --------------------------------------------------------------------------

    def test_get_run_gives_the_header_or_none(self, store: Store) -> None:
        docs = scan_run(2)
        store.ingest(docs[:-1])
        record = store.get_run(_uid(docs))
        assert record is not None and record.start == docs[0][1] and record.stop is None
        store.insert(*docs[-1])
        assert store.get_run(_uid(docs)).stop == docs[-1][1]
        assert store.get_run("no-such-run") is None
        assert store.get_run(_uid(docs)[:8]) is None  # exact uids only

    def test_every_per_run_call_raises_run_not_found_for_an_unknown_run(self, store: Store) -> None:
        store.ingest(scan_run(2))
        calls = {
            "descriptors": lambda uid: store.descriptors(uid),
            "pages": lambda uid: store.pages(uid, []),
            "read_pages": lambda uid: store.read_pages(uid, [], None),
            "documents": lambda uid: next(iter(store.documents(uid))),
            "assets": lambda uid: store.assets(uid),
            "datums": lambda uid: store.datums(uid, ["d/0"]),
        }
        for method, call in calls.items():
            with pytest.raises(RunNotFoundError) as err:
                call("no-such-run")
            assert isinstance(err.value, KeyError), method
            assert "no-such-run" in str(err.value) and store.uri in str(err.value), method

    def test_a_run_without_descriptors_gives_empty_answers(self, store: Store) -> None:
        docs = scan_run(1)
        store.insert(*docs[0])
        uid = _uid(docs)
        assert store.descriptors(uid) == []
        assert store.pages(uid, []) == []
        assert store.read_pages(uid, [], None) == []
        assert store.assets(uid) == []
        assert store.datums(uid, ["d/0"]) == {}
        assert [name for name, _ in store.documents(uid)] == ["start"]

    # -- descriptors and pages ---------------------------------------------------------------

    def test_descriptors_come_in_stored_order(self, store: Store) -> None:
        docs = scan_run(3)
        store.ingest(docs)
        stored = [d["uid"] for d in store.descriptors(_uid(docs))]
        assert stored == [d["uid"] for d in _of(docs, "descriptor")]
        assert store.descriptors(_uid(docs)) == _of(docs, "descriptor")

    def test_pages_are_grouped_by_descriptor_in_the_order_asked(self, store: Store) -> None:
        docs = scan_run(9, pages=3)
        store.ingest(docs)
        uid = _uid(docs)
        base, primary = (d["uid"] for d in _of(docs, "descriptor"))
        for order in ([primary, base], [base, primary]):
            pages = store.pages(uid, order)
            assert [d for d, _ in groupby(p.descriptor for p in pages)] == order
            for desc in order:
                mine = [p for p in pages if p.descriptor == desc]
                assert [p.seq_min for p in mine] == sorted(p.seq_min for p in mine)
        assert store.pages(uid, [primary, "not-a-descriptor"]) == store.pages(uid, [primary])

    def test_pages_count_every_event_within_their_seq_range(self, store: Store) -> None:
        docs = scan_run(9, pages=3)
        store.ingest(docs)
        uid = _uid(docs)
        events = _events(docs)
        for desc in _of(docs, "descriptor"):
            pages = store.pages(uid, [desc["uid"]])
            seqs = sorted(e["seq_num"] for e in events if e["descriptor"] == desc["uid"])
            assert sum(p.n for p in pages) == len(seqs)
            read = store.read_pages(uid, [p.id for p in pages], ["seq_num"])
            for page, columns in zip(pages, read, strict=True):
                got = np.asarray(columns["seq_num"]).tolist()
                assert len(got) == page.n
                assert page.seq_min == min(got) and page.seq_max == max(got)
                if page.ordered:
                    assert got == sorted(got)
            assert sorted(s for c in read for s in np.asarray(c["seq_num"]).tolist()) == seqs

    def test_read_pages_speaks_the_column_vocabulary(self, store: Store) -> None:
        docs = scan_run(4)
        store.ingest(docs)
        uid = _uid(docs)
        primary = _of(docs, "descriptor")[1]["uid"]
        pages = store.pages(uid, [primary])
        ids = [p.id for p in pages]
        everything = store.read_pages(uid, ids, None)
        expected = {"time", "seq_num", "uid"} | {f"{p}:{k}" for p in "dt" for k in _KEYS}
        assert all(set(columns) >= expected for columns in everything)
        assert (
            not {c for columns in everything for c in columns}
            - expected
            - {f"f:{k}" for k in _KEYS}
        )
        picked = store.read_pages(uid, ids, ["time", "d:x"])
        assert all(set(columns) == {"time", "d:x"} for columns in picked)
        # Values as inserted, in the order of the pages' events.
        by_seq = {e["seq_num"]: e for e in _events(docs) if e["descriptor"] == primary}
        for columns in everything:
            for i, seq in enumerate(np.asarray(columns["seq_num"]).tolist()):
                event = by_seq[seq]
                assert _plain(columns["uid"][i]) == event["uid"]
                assert float(columns["time"][i]) == event["time"]
                for key in _KEYS:
                    assert _plain(columns["d:" + key][i]) == event["data"][key]
                    assert float(columns["t:" + key][i]) == event["timestamps"][key]
        assert isinstance(everything[0]["d:x"], np.ndarray)
        assert np.asarray(everything[0]["d:img"]).shape[1:] == (2, 3)

    def test_read_pages_answers_in_the_order_of_the_ids(self, store: Store) -> None:
        docs = scan_run(9, pages=3)
        store.ingest(docs)
        uid = _uid(docs)
        ids = [p.id for p in store.pages(uid, [d["uid"] for d in _of(docs, "descriptor")])]
        assert len(ids) >= 2
        forward = store.read_pages(uid, ids, ["seq_num", "time"])
        backward = store.read_pages(uid, ids[::-1], ["seq_num", "time"])
        assert [_plain(c["time"]) for c in backward] == [_plain(c["time"]) for c in forward][::-1]

    def test_a_page_id_of_another_run_is_gone(self, store: Store) -> None:
        one, two = scan_run(3), scan_run(3)
        store.ingest(one)
        store.ingest(two)
        theirs = store.pages(_uid(two), [d["uid"] for d in _of(two, "descriptor")])
        with pytest.raises(PageGone):
            store.read_pages(_uid(one), [theirs[0].id], None)
        assert store.pages(_uid(one), [d["uid"] for d in _of(two, "descriptor")]) == []

    # -- replay -----------------------------------------------------------------------------

    def test_documents_replay_what_was_inserted(self, store: Store) -> None:
        docs = scan_run(7)
        store.ingest(docs)
        replay = list(store.documents(_uid(docs)))
        assert {n for n, _ in replay} <= {"start", "descriptor", "event_page", "stop"}
        assert [d for n, d in replay if n != "event_page"] == _of(
            docs, "start", "descriptor", "stop"
        )
        assert _by_descriptor(_events(replay)) == _by_descriptor(_events(docs))
        # Events may come later than inserted (gathered into pages), never earlier.
        where = {key: i for i, key in enumerate(_sequence(replay))}
        last = -1
        for key in _sequence(docs):
            if key[0] == "event":
                assert where[key] > last, f"event {key[1]} replayed before its elders"
            else:
                last = max(last, where[key])
        for _, page in replay:
            if "seq_num" in page:
                assert all(isinstance(v, list) for v in page["data"].values())

    def test_documents_with_arrays_and_without_uids(self, store: Store) -> None:
        docs = scan_run(5)
        store.ingest(docs)
        uid = _uid(docs)
        pages = [d for n, d in store.documents(uid, arrays=True) if n == "event_page"]
        primary = [p for p in pages if "img" in p["data"]]
        assert primary and all(isinstance(p["data"]["img"], np.ndarray) for p in primary)
        assert sum(len(p["data"]["img"]) for p in primary) == 5
        assert all(p["data"]["img"].shape[1:] == (2, 3) for p in primary)
        bare = [d for n, d in store.documents(uid, uids=False) if n == "event_page"]
        assert bare and all(list(p["uid"]) == [] for p in bare)
        assert [len(p["seq_num"]) for p in bare] == [len(p["seq_num"]) for p in pages]
        raw = [d for n, d in store.documents(uid, arrays=True, uids="bytes") if n == "event_page"]
        assert sorted(_plain(u) for p in raw for u in p["uid"]) == sorted(
            e["uid"] for e in _events(docs)
        )

    def test_documents_is_a_generator_that_raises_by_its_first_item(self, store: Store) -> None:
        replay = store.documents("no-such-run")  # may raise here, or at next()
        with pytest.raises(RunNotFoundError):
            next(iter(replay))

    # -- detector-file documents -----------------------------------------------------------

    def test_assets_and_datums_of_resources(self, store: Store) -> None:
        docs, other = datum_run(3), datum_run(2)
        store.ingest(docs)
        store.ingest(other)
        uid = _uid(docs)
        assert store.assets(uid) == [("resource", _of(docs, "resource")[0])]
        datums = _of(docs, "datum")
        ids = [d["datum_id"] for d in datums]
        expected = {d["datum_id"]: (d["resource"], d["datum_kwargs"]) for d in datums}
        assert store.datums(uid, [*ids, "missing/0"]) == expected
        theirs = [d["datum_id"] for d in _of(other, "datum")]
        assert store.datums(uid, theirs) == {}  # only the named run is looked in
        assert set(store.datums(_uid(other), theirs)) == set(theirs)
        events = _events(list(store.documents(uid)))
        assert [e["data"]["img"] for e in events] == ids
        assert all(e["filled"] == {"img": False} for e in events)

    def test_assets_of_stream_resources(self, store: Store) -> None:
        docs = stream_datum_run(3)
        store.ingest(docs)
        expected = [(n, d) for n, d in docs if n in ("stream_resource", "stream_datum")]
        assert store.assets(_uid(docs)) == expected
        assert store.datums(_uid(docs), ["x/0"]) == {}

    # -- writing ------------------------------------------------------------------------------

    def test_a_flushed_insert_is_seen_by_a_store_opened_after(self, store: Store, second) -> None:
        docs = scan_run(3)
        for name, doc in docs[:-1]:
            store.insert(name, doc)
        store.flush()
        other = second()
        assert other.get_run(_uid(docs)) is not None
        assert [e["uid"] for e in _events(list(other.documents(_uid(docs))))] == [
            e["uid"] for e in _events(docs[:-1])
        ]

    def test_an_insert_is_seen_by_an_open_store_soon(self, store: Store, second) -> None:
        first, later = scan_run(1), scan_run(1)
        store.insert(*first[0])
        store.flush()
        other = second()
        assert other.get_run(_uid(first)) is not None
        store.insert(*later[0])
        deadline = time.monotonic() + self.visible_within + 1.0  # slack for a busy machine
        while other.get_run(_uid(later)) is None:
            assert time.monotonic() < deadline, "an insert not seen by another store in time"
            time.sleep(0.02)

    def test_ingest_is_atomic(self, store: Store) -> None:
        docs = scan_run(3)
        broken = dict(_of(docs, "event")[1], descriptor="no-such-descriptor")
        batch = [*docs[:4], ("event", broken), *docs[4:]]
        with pytest.raises(DocumentError):
            store.ingest(batch)
        assert store.get_run(_uid(docs)) is None
        assert store.count(None) == 0
        store.ingest(docs)  # nothing half-stored gets in the way
        assert store.count(None) == 1

    def test_an_identical_repeat_is_a_no_op(self, store: Store) -> None:
        docs = scan_run(4)
        store.ingest(docs)
        before = list(store.documents(_uid(docs)))
        store.ingest(docs)
        for name, doc in docs:
            store.insert(name, doc)
        assert store.count(None) == 1
        after = list(store.documents(_uid(docs)))
        assert _by_descriptor(_events(after)) == _by_descriptor(_events(before))
        assert len(_events(after)) == len(_events(docs))

    def test_a_different_document_under_a_stored_uid_conflicts(self, store: Store) -> None:
        docs = scan_run(2, sample="a")
        store.ingest(docs)
        with pytest.raises(ConflictError):
            store.insert("start", {**docs[0][1], "sample": "b"})
        event = _of(docs, "event")[1]
        with pytest.raises(ConflictError):
            # a store sending events in batches raises at the flush at the latest
            store.insert("event", {**event, "data": {**event["data"], "x": -1.0}})
            store.flush()
        assert store.get_run(_uid(docs)).start["sample"] == "a"

    # -- processes, capabilities, closing ----------------------------------------------------

    def test_a_pickled_store_reads_the_same(self, store: Store) -> None:
        docs = scan_run(5)
        store.ingest(docs)
        store.flush()
        uid = _uid(docs)
        copy = pickle.loads(pickle.dumps(store))
        try:
            assert copy.search(None) == store.search(None)
            descs = [d["uid"] for d in store.descriptors(uid)]
            assert copy.descriptors(uid) == store.descriptors(uid)
            assert copy.pages(uid, descs) == store.pages(uid, descs)
            ids = [p.id for p in store.pages(uid, descs)]
            mine, theirs = store.read_pages(uid, ids, None), copy.read_pages(uid, ids, None)
            assert [{k: _plain(v) for k, v in c.items()} for c in theirs] == [
                {k: _plain(v) for k, v in c.items()} for c in mine
            ]
        finally:
            copy.close()

    def test_capabilities_are_told_by_isinstance(self, store: Store) -> None:
        assert isinstance(store, Store)
        for capability in CAPABILITIES:
            assert isinstance(store, capability) == (capability in self.capabilities), capability
        if isinstance(store, Indexes):
            store.ingest(scan_run(1, sample="a"))
            assert store.create_index("sample") == ["sample"]
            assert store.create_index("sample") == []
            assert "sample" in store.indexed_keys()
            assert store.count(Key("sample") == "a") == 1
        if isinstance(store, LeavesOut):
            assert store.left_out() == []

    def test_close_twice_is_allowed(self, store: Store) -> None:
        store.ingest(scan_run(1))
        store.close()
        store.close()
