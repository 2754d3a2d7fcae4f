"""Robustness: data loss, concurrency, validation holes and consistency found in review.

Documents are real event-model documents (``event_model.compose_run``) or come from a bluesky
RunEngine with ophyd's simulated devices. Every test uses its own catalog file.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

import runbroker
from runbroker import ConflictError, DocumentError
from runbroker.queries import Key, ScanIDRange

NUMBER = {"x": {"source": "sim:x", "dtype": "number", "shape": []}}


def _open(tmp_path: Path, name: str = "runs.db", **kw) -> runbroker.Catalog:
    return runbroker.open(tmp_path / name, **kw)


def _run(cat, data_keys=NUMBER, scan_id=1, **md):
    """Insert a start and a primary descriptor; return (run bundle, descriptor bundle)."""
    bundle = compose_run(metadata={"scan_id": scan_id, **md})
    cat.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
    cat.insert("descriptor", desc.descriptor_doc)
    return bundle, desc


def _event(desc, seq, **data):
    return desc.compose_event(data=data, timestamps={k: 100.0 + seq for k in data}, seq_num=seq)


def _committed_runs(path: Path) -> int:
    """Runs another process would see now (a plain sqlite3 reader)."""
    con = sqlite3.connect(path, timeout=0.5)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()


# -- metadata values the store changes or chokes on ------------------------------------------


def test_nan_and_inf_in_start_are_kept_or_refused_not_silently_nulled(tmp_path):
    cat = _open(tmp_path)
    bundle = compose_run(metadata={"scan_id": 1, "offset": math.nan, "limit": math.inf})
    try:
        cat.insert("start", bundle.start_doc)
    except DocumentError as err:  # refusing, naming the key, would be fine too
        assert err.key in ("offset", "limit")
        return
    start = cat[-1].start
    # Stored via orjson, NaN and inf silently become null (None).
    assert start["offset"] is not None and math.isnan(start["offset"])
    assert start["limit"] == math.inf


def test_identical_start_with_nan_reinserted_is_a_no_op(tmp_path):
    cat = _open(tmp_path)
    bundle = compose_run(metadata={"scan_id": 1, "offset": math.nan})
    try:
        cat.insert("start", bundle.start_doc)
    except DocumentError:
        return
    # docs/ingest.md: re-inserting an identical document is a no-op. Here: ConflictError,
    # because the stored copy holds null where the document holds NaN.
    cat.insert("start", bundle.start_doc)


@pytest.mark.parametrize("big", [2**63, 2**70, -(2**70)])
def test_huge_int_in_start_is_stored_or_refused_with_a_document_error(tmp_path, big):
    cat = _open(tmp_path)
    bundle = compose_run(metadata={"scan_id": 1, "counter": big})
    try:
        cat.insert("start", bundle.start_doc)
    except DocumentError as err:
        assert err.name == "start" and err.uid == bundle.start_doc["uid"]
        assert err.key == "counter"
        return
    # Today: orjson TypeError "Integer exceeds 64-bit range" or sqlite3 OverflowError,
    # naming neither the document nor the key.
    assert cat[-1].start["counter"] == big


def test_event_with_huge_int_does_not_lose_earlier_documents(tmp_path):
    """The event is accepted, then fails to encode at commit time: the whole open
    transaction (start, descriptor, good events) is rolled back, silently."""
    path = tmp_path / "runs.db"
    cat = runbroker.open(path)
    bundle, desc = _run(cat, {"n": {"source": "sim:n", "dtype": "integer", "shape": []}})
    for i in range(1, 4):
        cat.insert("event", _event(desc, i, n=i))
    # Refusing it at once is what docs/ingest.md promises for bad documents.
    with contextlib.suppress(DocumentError):
        cat.insert("event", _event(desc, 4, n=2**70))
    time.sleep(0.3)  # the background committer runs
    # An error at close would at least be honest; losing the run silently is the defect.
    with contextlib.suppress(Exception):
        cat.close()
    again = runbroker.open(path)
    assert bundle.start_doc["uid"] in again
    assert len(again[-1].primary) >= 3
    again.close()


def test_nan_inside_ragged_event_arrays_round_trips(tmp_path):
    cat = _open(tmp_path)
    keys = {"a": {"source": "sim:a", "dtype": "array", "shape": [None]}}
    _, desc = _run(cat, keys)
    events = [_event(desc, 1, a=[1.0]), _event(desc, 2, a=[math.nan, 2.0])]
    for ev in events:
        cat.insert("event", ev)
    cat.flush()
    # Ragged columns are stored as JSON, where NaN becomes null ...
    value = cat[-1].primary.read()["a"].values[1]
    assert np.asarray(value, dtype=float).tolist()[1] == 2.0
    assert math.isnan(float(value[0]))
    # ... so re-sending the identical event (a retried callback) raises ConflictError.
    cat.insert("event", events[1])


def test_numpy_int_scan_id_is_a_scan_id(tmp_path):
    cat = _open(tmp_path)
    uid = str(uuid.uuid4())
    # numpy scalars are accepted (docs: devices produce them) and Key("scan_id") finds the
    # run, but runs.scan_id is only filled for Python ints, so cat[5] says "no run".
    cat.insert("start", {"uid": uid, "time": time.time(), "scan_id": np.int64(5)})
    assert len(cat.search(Key("scan_id") == 5)) == 1
    assert cat[5].uid == uid


def test_scan_ids_beyond_2_53_are_exact(tmp_path):
    cat = _open(tmp_path)
    low = compose_run(metadata={"scan_id": 2**53}, time=1.0)
    high = compose_run(metadata={"scan_id": 2**53 + 1}, time=2.0)
    cat.insert("start", low.start_doc)
    cat.insert("start", high.start_doc)
    # runs.scan_id is a FLOAT column: 2**53 + 1 is stored as 2**53.
    assert cat[2**53].uid == low.start_doc["uid"]
    assert len(cat.search(ScanIDRange(2**53 + 1, 2**53 + 2))) == 1


# -- validation holes ----------------------------------------------------------------------


def test_empty_event_page_is_accepted_or_refused_as_a_document_error(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    page = desc.compose_event_page(data={"x": []}, timestamps={"x": []}, seq_num=[])
    try:
        cat.insert("event_page", page)  # today: bare numpy "zero-size array" ValueError
    except DocumentError:
        return
    cat.flush()
    assert len(cat[-1].primary) == 0


def test_event_page_filled_column_must_have_one_value_per_event(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    page = desc.compose_event_page(
        data={"x": [1.0, 2.0, 3.0]},
        timestamps={"x": [0.0, 0.0, 0.0]},
        seq_num=[1, 2, 3],
        filled={"x": [True]},
        validate=False,
    )
    with pytest.raises(DocumentError) as info:
        cat.insert("event_page", page)
    assert info.value.key == "filled.x"


def test_event_page_repeating_a_seq_num_is_refused(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    page = desc.compose_event_page(
        data={"x": [1.0, 2.0]}, timestamps={"x": [0.0, 0.0]}, seq_num=[1, 1]
    )
    # Events are identified by seq_num (docs/ingest.md); two different events with
    # seq_num 1 are stored side by side today.
    with pytest.raises(DocumentError):
        cat.insert("event_page", page)


def test_refused_event_page_stores_none_of_its_events(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    events = [_event(desc, i, x=float(i)) for i in (1, 2, 3)]
    for ev in events:
        cat.insert("event", ev)
    cat.flush()
    # Overlaps the stored events (seq 3 repeats event 3 exactly); seq 5 reuses event 1's
    # uid, which single-event checks refuse. The page is refused, but seq 4 was queued.
    page = {
        "descriptor": desc.descriptor_doc["uid"],
        "uid": [events[2]["uid"], str(uuid.uuid4()), events[0]["uid"]],
        "time": [events[2]["time"], 1.0, 1.0],
        "seq_num": [3, 4, 5],
        "data": {"x": [3.0, 4.0, 5.0]},
        "timestamps": {"x": [103.0, 0.0, 0.0]},
    }
    with pytest.raises(DocumentError):
        cat.insert("event_page", page)
    cat.flush()
    assert cat[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0]


# -- datums ------------------------------------------------------------------------------------


def _resource(cat):
    bundle = compose_run(metadata={"scan_id": 1})
    cat.insert("start", bundle.start_doc)
    res = bundle.compose_resource(
        spec="NPY_SEQ", root="/data", resource_path="scan.npy", resource_kwargs={}
    )
    cat.insert("resource", res.resource_doc)
    return res


def test_datum_page_overlapping_stored_datums_stores_the_new_ones_once(tmp_path):
    cat = _open(tmp_path)
    res = _resource(cat)
    first = res.compose_datum_page(datum_kwargs={"index": [0, 1]})
    cat.insert("datum_page", first)
    new_id = first["resource"] + "/9"
    second = {
        "resource": first["resource"],
        "datum_id": [first["datum_id"][1], new_id],
        "datum_kwargs": {"index": [1, 9]},
    }
    # _write_datums inserts the *original* id list into `datums`, repeats included:
    # sqlalchemy IntegrityError (UNIQUE constraint failed: datums.datum_id).
    cat.insert("datum_page", second)
    replayed = [d["datum_id"] for n, d in cat[-1].documents(pages=False) if n == "datum"]
    assert sorted(replayed) == sorted([*first["datum_id"], new_id])


def test_datum_page_repeating_a_datum_id_is_a_document_error(tmp_path):
    cat = _open(tmp_path)
    res = _resource(cat)
    page = res.compose_datum_page(datum_kwargs={"index": [5, 6]}, validate=False)
    page["datum_id"] = [page["datum_id"][0]] * 2
    with pytest.raises(DocumentError) as info:  # today: sqlalchemy IntegrityError
        cat.insert("datum_page", page)
    assert info.value.name == "datum_page"


def test_replay_keeps_each_datum_before_the_events_that_use_it(tmp_path):
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det, img

    cat = _open(tmp_path)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(count([img, det], 3))
    seen: set[str] = set()
    order = []
    for name, doc in cat[-1].documents(pages=False):
        order.append(name)
        if name == "datum":
            seen.add(doc["datum_id"])
        elif name == "event":
            # Compaction at stop gives the merged page the ord of the first page, so events
            # 2 and 3 replay before their datums: event-model consumers (Filler) fail.
            assert doc["data"]["img"] in seen, order


# -- group commit, locks and crash safety ----------------------------------------------------


def test_refused_document_does_not_hold_the_write_lock(tmp_path):
    path = tmp_path / "runs.db"
    cat = runbroker.open(path)
    bundle = compose_run(metadata={"scan_id": 1})
    cat.insert("start", bundle.start_doc)
    cat.flush()
    bad = {"uid": str(uuid.uuid4()), "run_start": "not-a-run", "time": 1.0, "data_keys": {}}
    with pytest.raises(DocumentError):
        cat.insert("descriptor", bad)
    # The refused insert opened a write transaction (BEGIN IMMEDIATE) that nothing commits:
    # _dirty_since stayed None. Every other writer now waits 60 s and fails.
    # The committer ends the empty one late under load: wait, but for less than those 60 s
    other = sqlite3.connect(path, timeout=20, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        cat.close()


def test_insert_after_close_is_refused_or_committed(tmp_path):
    path = tmp_path / "runs.db"
    cat = runbroker.open(path)
    cat.close()
    bundle = compose_run(metadata={"scan_id": 1})
    try:
        cat.insert("start", bundle.start_doc)
    except Exception:
        return  # refusing is fine
    time.sleep(0.3)
    # Accepted, but never committed (the committer thread exits at once because the store
    # is closed) and the write lock stays held until the process exits.
    assert _committed_runs(path) == 1


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "default"])
def test_opening_does_not_wait_for_a_writers_transaction(tmp_path, readonly):
    path = tmp_path / "runs.db"
    writer = runbroker.open(path)
    writer.insert("start", compose_run(metadata={"scan_id": 1}).start_doc)
    writer.flush()
    entered, release = threading.Event(), threading.Event()

    def documents():
        yield "start", compose_run(metadata={"scan_id": 2}).start_doc
        entered.set()
        release.wait(60)  # e.g. documents arriving from a slow source

    ingest = threading.Thread(target=lambda: writer.ingest(documents()))
    ingest.start()
    result: dict = {}

    def reader():
        cat = runbroker.open(path, readonly=readonly)  # a reader in another process
        result["len"] = len(cat)
        cat.close()

    try:
        assert entered.wait(20)
        opener = threading.Thread(target=reader, daemon=True)
        opener.start()
        # Opening can take seconds on a loaded machine; blocked, it would wait out the 60 s
        opener.join(20)
        # _init_schema runs BEGIN IMMEDIATE on an existing catalog (fixed for readonly=True
        # in e2fc708): opening blocks for as long as any writer holds a transaction
        # (busy_timeout is 60 s), e.g. during another process's ingest().
        assert result.get("len") == 1
    finally:
        release.set()
        ingest.join(10)
        writer.close()


def test_reader_racing_a_compaction_reads_the_stream(tmp_path, monkeypatch):
    """Another reader plans pages, then the writer merges them (stop), then reads them."""
    path = tmp_path / "runs.db"
    writer, reader = runbroker.open(path), runbroker.open(path)
    bundle, desc = _run(writer)
    for i in range(1, 4):
        writer.insert("event", _event(desc, i, x=float(i)))
        writer.flush()  # a slow live run: one small page per commit
    stream = reader[-1].primary
    read_pages = reader.store.read_pages

    stop = bundle.compose_stop()

    def racing(run_uid, page_ids, columns):
        writer.insert("stop", stop)  # compacts the stream's pages (a repeat is a no-op)
        writer.flush()
        return read_pages(run_uid, page_ids, columns)

    monkeypatch.setattr(reader.store, "read_pages", racing)
    try:
        # TypeError: 'NoneType' object is not subscriptable (the planned pages are gone).
        assert stream.read()["x"].values.tolist() == [1.0, 2.0, 3.0]
    finally:
        writer.close()
        reader.close()


def test_a_page_listed_before_a_compaction_is_never_read_with_other_events(tmp_path, monkeypatch):
    """A reader lists a big page and a small one; the writer then merges small pages while
    the run goes on. SQLite gives a new row the id after the largest one left, so a merged
    page written after its pieces were deleted took the id of the small page listed, and
    the read joined columns of different lengths ("conflicting sizes for dimension 'time'",
    seen with four writers and four readers)."""
    from runbroker.store import sqlwrite

    path = tmp_path / "runs.db"
    writer, reader = runbroker.open(path), runbroker.open(path)
    _, desc = _run(writer)
    big = 20_000  # more than a small page: never merged while the run goes on
    page = desc.compose_event_page(
        data={"x": list(map(float, range(1, big + 1)))},
        timestamps={"x": [0.0] * big},
        seq_num=list(range(1, big + 1)),
        validate=False,
    )
    writer.insert("event_page", page)
    writer.flush()
    writer.insert("event", _event(desc, big + 1, x=float(big + 1)))
    writer.flush()  # pages now: the big one and one small one
    stream = reader[-1].primary
    read_pages = reader.store.read_pages
    more = sqlwrite._COMPACT_AFTER

    def racing(run_uid, page_ids, columns):
        if not raced:  # once: the read lists the pages again and reads them
            raced.append(True)
            for seq in range(big + 2, big + 2 + more):  # small pages until they are merged
                writer.insert("event", _event(desc, seq, x=float(seq)))
                writer.flush()
        return read_pages(run_uid, page_ids, columns)

    raced: list[bool] = []
    monkeypatch.setattr(reader.store, "read_pages", racing)
    try:
        x = stream.read()["x"].values
        assert x.tolist() == list(map(float, range(1, big + 2 + more)))
    finally:
        writer.close()
        reader.close()


def test_insert_does_not_keep_references_to_the_callers_buffers(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    buffer = np.zeros(3)
    stamps = np.zeros(3)
    for k in range(2):  # a flyer reusing one buffer for every page it emits
        buffer[:] = [10 * k + 1, 10 * k + 2, 10 * k + 3]
        cat.insert(
            "event_page",
            desc.compose_event_page(
                data={"x": buffer},
                timestamps={"x": stamps},
                seq_num=[3 * k + 1, 3 * k + 2, 3 * k + 3],
                validate=False,
            ),
        )
    buffer[:] = -1.0
    ev = _event(desc, 7, x=7.0)
    cat.insert("event", ev)
    ev["data"]["x"] = -7.0  # e.g. a later in-place callback (Filler(inplace=True))
    cat.flush()
    assert cat[-1].primary.read()["x"].values.tolist() == [1, 2, 3, 11, 12, 13, 7]


def test_two_catalogs_on_one_file_share_a_descriptor(tmp_path):
    path = tmp_path / "runs.db"
    a, b = runbroker.open(path), runbroker.open(path)
    _, desc = _run(a)
    for i in (1, 2, 3):
        a.insert("event", _event(desc, i, x=float(i)))
    a.flush()
    ev4 = _event(desc, 4, x=4.0)
    b.insert("event", ev4)
    b.flush()
    # `a` still believes seq_max == 3 (cached DescriptorState), so it skips the repeat
    # check: the identical event is stored a second time ...
    a.insert("event", ev4)
    a.flush()
    try:
        assert b[-1].primary.read()["x"].values.tolist() == [1.0, 2.0, 3.0, 4.0]
        # ... and a *different* event with a stored seq_num is not a ConflictError.
        b.insert("event", _event(desc, 5, x=5.0))
        b.flush()
        with pytest.raises(ConflictError):
            a.insert("event", _event(desc, 5, x=55.0))
            a.flush()
    finally:
        a.close()
        b.close()


# -- reading -----------------------------------------------------------------------------------


def _three_page_stream(cat):
    keys = {
        "n": {"source": "sim:n", "dtype": "integer", "shape": []},
        "s": {"source": "sim:s", "dtype": "string", "shape": []},
    }
    _, desc = _run(cat, keys)
    for i, (n, s) in enumerate([(1, "ok"), (2, "ok"), (None, "failed")], start=1):
        cat.insert("event", _event(desc, i, n=n, s=s))
        cat.flush()  # live run without a stop: one page per commit
    return cat[-1].primary


def test_to_dask_matches_read_on_a_multi_page_stream(tmp_path):
    stream = _three_page_stream(_open(tmp_path))
    eager, lazy = stream.read(), stream.to_dask()
    # dtypes come from the first chunk: the missing reading becomes INT64_MIN instead of
    # NaN and "failed" is cut to "fa".
    assert lazy["s"].compute().values.tolist() == eager["s"].values.tolist()
    np.testing.assert_array_equal(lazy["n"].compute().values, eager["n"].values)


def test_to_dask_reads_nothing_before_compute(tmp_path, monkeypatch):
    cat = _open(tmp_path)
    stream = _three_page_stream(cat)
    calls = []
    read_pages = cat.store.read_pages

    def counting(run_uid, page_ids, columns):
        calls.append(page_ids)
        return read_pages(run_uid, page_ids, columns)

    monkeypatch.setattr(cat.store, "read_pages", counting)
    stream.to_dask()
    # docs/reading.md: "nothing read until compute()". The time coordinate is computed at
    # once, which reads every chunk (all fields).
    assert len(calls) <= 1


def test_read_has_a_seq_num_coordinate(tmp_path):
    cat = _open(tmp_path)
    _, desc = _run(cat)
    for i in (2, 1, 3):
        cat.insert("event", _event(desc, i, x=float(i)))
    ds = cat[-1].primary.read()
    # docs/reading.md: 'Dimension time, with the coordinate time ... and the coordinate
    # seq_num.' read() returns only the time coordinate.
    assert ds["seq_num"].values.tolist() == [1, 2, 3]


def test_iterating_while_runs_are_added_yields_each_run_once(tmp_path):
    cat = _open(tmp_path)
    cat.ingest(
        ("start", compose_run(metadata={"scan_id": i}, time=1000.0 + i).start_doc)
        for i in range(150)
    )
    it = iter(cat)
    seen = [next(it)]  # the first batch (100 runs) is fetched
    cat.ingest(
        ("start", compose_run(metadata={"scan_id": 1000 + i}, time=5000.0 + i).start_doc)
        for i in range(10)
    )
    seen += list(it)  # offset-based batches shift by the 10 new runs
    assert len(seen) == len(set(seen))


def test_stop_key_with_a_dot_follows_the_reference_semantics(tmp_path):
    cat = _open(tmp_path)
    bundle = compose_run(metadata={"scan_id": 1})
    cat.insert("start", bundle.start_doc)
    stop = bundle.compose_stop()
    stop["num_events"] = {"a.b": 3}  # stop documents allow dotted keys
    cat.insert("stop", stop)
    query = Key("stop.num_events.a.b") == 3
    record = {"start": bundle.start_doc, "stop": cat[-1].stop}
    # docs/queries.md: dots go into nested dicts, and SQL must agree with query.matches.
    assert len(cat.search(query)) == int(query.matches(record))


def test_missing_stream_attribute_is_an_attribute_error(tmp_path):
    cat = _open(tmp_path)
    _run(cat)
    run = cat[-1]
    # run.baseline raises KeyError, so getattr(run, "baseline", None) and hasattr() raise.
    assert getattr(run, "baseline", None) is None


# -- memory ------------------------------------------------------------------------------------


def test_writer_state_of_unfinished_runs_is_bounded(tmp_path):
    cat = _open(tmp_path)
    for i in range(600):
        _, desc = _run(cat, scan_id=i)
        cat.insert("event", _event(desc, 1, x=1.0))
    cat.flush()
    # Runs that never get a stop (crashed, or events after their stop) keep their
    # DescriptorState (with the uid set of every single event), run id and ord forever.
    store = cat.store
    assert len(store._states) + len(store._run_ids) + len(store._ords) < 3 * 600 // 2
