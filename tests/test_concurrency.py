"""Many writers and readers at once on one catalog (PostgreSQL and SQLite).

Four writer processes each store runs of their own and, all at the same time, one shared run
(as four retries of one RunEngine would); four reader processes search and read throughout.
Afterwards every document must be there exactly once, and the shared run exactly once.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
from event_model import compose_run

import runbroker
from runbroker.testing.stores import stores_except

WRITERS, READERS, OWN_RUNS, EVENTS = 4, 4, 2, 60
KEYS = {"x": {"dtype": "number", "shape": [], "source": "sim:x"}}


def _run_docs(scan_id: int) -> list[tuple[str, dict]]:
    bundle = compose_run(metadata={"scan_id": scan_id, "sample": f"s{scan_id}"})
    desc = bundle.compose_descriptor(name="primary", data_keys=KEYS)
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(EVENTS):
        event = desc.compose_event(data={"x": scan_id + i / 1000}, timestamps={"x": 0.0})
        docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def _writer(uri: str, runs: list[list[tuple[str, dict]]], shared, barrier, errors) -> None:
    try:
        cat = runbroker.open(uri)
        for docs in runs:
            for name, doc in docs:
                cat.insert(name, doc)
        # All writers at once, interleaved document by document: the shared run.
        barrier.wait(60)
        for name, doc in shared:
            cat.insert(name, doc)
            time.sleep(0.001)
        cat.close()
    except Exception as exc:  # reported to the test, which fails with it
        errors.put(f"writer: {exc!r}")


def _reader(uri: str, stop, errors) -> None:
    try:
        cat = runbroker.open(uri, readonly=True)
        while not stop.is_set():
            for run in cat.values():
                if "primary" not in run:
                    continue
                seq = run.primary.read()["seq_num"].values
                if len(seq) > EVENTS or len(set(seq.tolist())) != len(seq):
                    errors.put(f"reader saw {len(seq)} events, repeats in {run.uid}")
                if (np.diff(seq) <= 0).any():
                    errors.put(f"reader saw events out of order in {run.uid}")
            len(cat.search(runbroker.queries.Key("sample") == "s1"))
        cat.close()
    except Exception as exc:
        errors.put(f"reader: {exc!r}")


@stores_except(
    "folder",
    reason="several processes writing one run at once: a run file has one writer at a time",
)
def test_four_writers_four_readers_and_a_run_written_four_times(catalog):
    uri = catalog.store.uri
    catalog.flush()
    ctx = mp.get_context("spawn")
    own = [[_run_docs(100 * w + k) for k in range(OWN_RUNS)] for w in range(WRITERS)]
    shared = _run_docs(999)
    errors, stop, barrier = ctx.Queue(), ctx.Event(), ctx.Barrier(WRITERS)
    readers = [ctx.Process(target=_reader, args=(uri, stop, errors)) for _ in range(READERS)]
    writers = [
        ctx.Process(target=_writer, args=(uri, own[w], shared, barrier, errors))
        for w in range(WRITERS)
    ]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(180)
    stop.set()
    for p in readers:
        p.join(60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems
    assert all(p.exitcode == 0 for p in readers + writers)

    expected = [docs for runs in own for docs in runs] + [shared]
    assert len(catalog) == len(expected)
    for docs in expected:
        start = docs[0][1]
        run = catalog[start["uid"]]
        assert run.start == start
        assert run.stop == docs[-1][1]
        ds = run.primary.read()
        events = [d for n, d in docs if n == "event"]
        assert ds["seq_num"].values.tolist() == [e["seq_num"] for e in events]
        assert ds["x"].values.tolist() == [e["data"]["x"] for e in events]
        replayed = list(run.documents(pages=False))
        assert [d["uid"] for n, d in replayed if n == "event"] == [e["uid"] for e in events]
        assert sum(n == "descriptor" for n, _ in replayed) == 1


@stores_except(
    "folder", "http", reason="the SQL layout of pages (a run file has one writer at a time)"
)
def test_two_writers_of_one_run_give_its_pages_rising_replay_positions(catalog):
    """Two catalog objects take turns writing the same run (as two retries of a RunEngine),
    each dropping what the other stored. Each page must replay after the pages before it:
    a writer that counted replay positions from memory gave two pages the same one, and a
    later merge of small pages could then replay events out of order (seen once in the
    four-writer test above)."""
    from sqlalchemy import select

    from runbroker.store.schema import descriptors, pages

    docs = _run_docs(7)
    start, desc, events, stop = docs[0], docs[1], docs[2:-1], docs[-1]
    uri = catalog.store.uri
    catalog.close()
    a, b = runbroker.open(uri), runbroker.open(uri)
    for writer, upto in ((a, 20), (b, 30), (a, 40), (b, 50), (a, 55)):
        for name, doc in [start, desc, *events[:upto]]:
            writer.insert(name, doc)
        writer.flush()
    store = a.store
    with store._read() as conn:
        found = conn.execute(
            select(pages.c.ord, pages.c.seq_min)
            .join(descriptors, descriptors.c.id == pages.c.descriptor_id)
            .where(descriptors.c.uid == desc[1]["uid"])
            .order_by(pages.c.seq_min)
        ).all()
    ords = [row.ord for row in found]
    assert ords == sorted(set(ords)), found  # strictly rising with seq_num
    for name, doc in [*events[55:], stop]:
        b.insert(name, doc)
    b.flush()
    replayed = [d["uid"] for n, d in a[start[1]["uid"]].documents(pages=False) if n == "event"]
    assert replayed == [d["uid"] for _, d in events]
    a.close()
    b.close()
