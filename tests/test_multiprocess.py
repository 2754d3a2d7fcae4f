"""Several processes on one catalog file: a writer inserts single events while this process
reads; events must be visible within 100 ms and stored exactly once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

import runbroker

N_EVENTS = 40
LATENCY_LIMIT = 0.1  # seconds, from insert() returning in the writer to a reader seeing it

SPAWN = mp.get_context("spawn")


def _run_engine_writer(path: str, inserted, go) -> None:
    """Child process: a RunEngine counting a detector, its documents inserted one by one.

    After each event's ``insert`` returns, the wall-clock time goes into ``inserted``.
    """
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import SynSignal

    cat = runbroker.open(path)
    rng = np.random.default_rng(0)
    det = SynSignal(func=lambda: float(rng.random()), name="det")
    engine = RunEngine({}, call_returns_result=False)

    def insert(name, doc):
        cat.insert(name, doc)
        if name == "event":
            inserted[doc["seq_num"] - 1] = time.time()

    engine.subscribe(insert)
    go.wait(30)
    engine(bp.count([det], num=N_EVENTS, delay=0.02), purpose="latency")
    cat.close()


def _compose_writer(path: str, label: str, n: int, crash: bool) -> None:
    """Child process: one run made with compose_run; with ``crash`` it dies without a stop."""
    from event_model import compose_run

    cat = runbroker.open(path)
    bundle = compose_run(metadata={"label": label})
    cat.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"i": {"source": label, "dtype": "integer", "shape": []}}
    )
    cat.insert("descriptor", desc.descriptor_doc)
    for i in range(n):
        cat.insert("event", desc.compose_event(data={"i": i}, timestamps={"i": time.time()}))
        time.sleep(0.003)
    if crash:
        # A loaded machine can hold the committer up past any fixed pause: wait to see all n.
        other = runbroker.open(path, readonly=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(other) and "primary" in other[-1] and len(other[-1].primary) == n:
                break
            time.sleep(0.01)
        os._exit(3)  # no close(), no stop document, no atexit handlers
    cat.insert("stop", bundle.compose_stop())
    cat.close()


def _events_once(run) -> list[dict]:
    events = [doc for name, doc in run.documents(pages=False) if name == "event"]
    uids = [e["uid"] for e in events]
    assert len(uids) == len(set(uids)), "an event was stored twice"
    return events


def _watch_a_live_run(path: str) -> np.ndarray:
    """Run the RunEngine writer on ``path`` while this process reads; check what was stored
    and return each event's latency (seconds from its insert returning to a sighting)."""
    reader = runbroker.open(path)  # create the file before the writer starts
    inserted = SPAWN.Array("d", N_EVENTS, lock=False)
    go = SPAWN.Event()
    writer = SPAWN.Process(target=_run_engine_writer, args=(path, inserted, go))
    writer.start()
    seen = np.zeros(N_EVENTS)
    visible = 0
    try:
        go.set()
        deadline = time.monotonic() + 120
        while visible < N_EVENTS and time.monotonic() < deadline:
            if len(reader):
                run = reader[-1]
                if "primary" in run:
                    n = len(run.primary)
                    now = time.time()  # after the read: a conservative (late) sighting
                    seen[visible:n] = now
                    visible = max(visible, n)
            time.sleep(0.002)
        writer.join(60)
    finally:
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0
    assert visible == N_EVENTS

    done = np.frombuffer(inserted, dtype=np.float64)
    assert (done > 0).all(), "the writer did not record every insert"

    run = reader[-1]
    assert run.start["purpose"] == "latency"
    assert run.stop["exit_status"] == "success"
    events = _events_once(run)
    assert sorted(e["seq_num"] for e in events) == list(range(1, N_EVENTS + 1))
    ds = run.primary.read()
    assert ds.sizes["time"] == N_EVENTS
    np.testing.assert_array_equal(ds["det"].values, [e["data"]["det"] for e in events])
    reader.close()
    return seen - done


def test_reader_sees_events_within_100_ms(tmp_path: Path):
    # A loaded machine can pause reader or writer past the limit once; a store that is always
    # late still fails all three rounds.
    for attempt in range(3):
        latency = _watch_a_live_run(str(tmp_path / f"live{attempt}.db"))
        if latency.min() > -0.05 and latency.max() < LATENCY_LIMIT:
            break
    # Sightings cannot come much before insert() returned (clock and scheduling jitter only).
    assert latency.min() > -0.05, latency
    assert latency.max() < LATENCY_LIMIT, f"max latency {latency.max():.3f} s: {latency}"


def test_two_writer_processes_and_a_reader(tmp_path: Path):
    path = str(tmp_path / "shared.db")
    reader = runbroker.open(path)
    writers = [
        SPAWN.Process(target=_compose_writer, args=(path, label, 60, False))
        for label in ("left", "right")
    ]
    for w in writers:
        w.start()
    counts: list[int] = []
    try:
        while any(w.is_alive() for w in writers):
            counts.append(sum(len(run.primary) for run in reader.values() if "primary" in run))
            time.sleep(0.01)
        for w in writers:
            w.join(60)
    finally:
        for w in writers:
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in writers] == [0, 0]
    assert counts == sorted(counts)  # a reader never sees events disappear
    assert len(reader) == 2
    for run in reader.values():
        assert run.stop["exit_status"] == "success"
        events = _events_once(run)
        assert [e["data"]["i"] for e in events] == list(range(60))
        assert run.primary.read()["i"].values.tolist() == list(range(60))
    reader.close()


def test_crashed_writer_leaves_a_readable_run(tmp_path: Path):
    path = str(tmp_path / "crash.db")
    runbroker.open(path).close()
    writer = SPAWN.Process(target=_compose_writer, args=(path, "crash", 25, True))
    writer.start()
    writer.join(60)
    assert writer.exitcode == 3
    with runbroker.open(path) as cat:
        assert len(cat) == 1
        run = cat[-1]
        assert run.start["label"] == "crash"
        assert run.stop is None
        assert "running" in repr(run)
        events = _events_once(run)
        assert [e["data"]["i"] for e in events] == list(range(25))
        assert run.primary.read()["i"].values.tolist() == list(range(25))
