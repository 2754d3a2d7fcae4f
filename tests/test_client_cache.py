"""The remote client's local cache (runbroker.client.cache): hits, revalidation, eviction,
offline use, several processes on one folder, and `runbroker cache`.

Everything runs against real servers on loopback: the session's test server, or one of the
test's own where the test stops it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import SynSignal, det, motor

import runbroker
from runbroker.cli import main
from runbroker.client import HTTPStore
from runbroker.client.cache import CachedStore, OfflineWarning, server_caches
from runbroker.errors import PageGone, ServerUnreachableError
from runbroker.store.base import Store
from runbroker.store.sql import SQLStore
from runbroker.testing.conformance import StoreContract, scan_run
from runbroker.testing.detectors import ADHDF5Detector, expected_frame
from runbroker.testing.server import ServerProcess

_names = itertools.count()


def _url(server) -> str:
    return server.catalog_url(f"cache{os.getpid()}-{next(_names)}")


def _requests(cat: runbroker.Catalog) -> int:
    # Anything a CachedStore does not keep is its inner HTTPStore's: the transport too.
    return cat.store.transport.requests


class TestCachedHTTPStore(StoreContract):
    """The cache over the HTTP store passes the whole Store contract."""

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        server = request.getfixturevalue("http_server")
        inner = HTTPStore(_url(server), api_key=server.api_key)
        return CachedStore(inner, root=path / "cache")


@pytest.fixture
def remote(http_server, tmp_path):
    """A fresh catalog on the test server, its cache in this test's folder."""
    cat = runbroker.open(_url(http_server), api_key=http_server.api_key, cache=tmp_path / "c")
    yield cat
    cat.close()


def _reopen(cat: runbroker.Catalog, **options) -> runbroker.Catalog:
    """The same server and cache folder, as a new session would open them."""
    root = cat.store.folder.parent
    return runbroker.open(cat.store.uri, cache=root, **options)


def test_a_second_read_of_a_finished_run_makes_no_request(remote, tmp_path):
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(remote.insert)
    cam = ADHDF5Detector("cam", tmp_path / "files", shape=(6, 8))
    (uid,) = RE(scan([det, cam], motor, -1, 1, 5))
    remote.flush()
    first = remote[uid].primary.read()
    assert first["cam_image"].shape == (5, 6, 8)
    assert np.array_equal(first["cam_image"].values[3], expected_frame(3, (6, 8)))

    before = _requests(remote)
    again = remote[uid].primary.read()
    assert _requests(remote) == before, "the second read asked the server"
    assert again.identical(first)

    # A new session on the same folder: opening the run and reading it ask nothing either.
    later = _reopen(remote)
    try:
        run = later[uid]
        assert run.stop["exit_status"] == "success"
        assert later.store.transport.requests == 0
        assert run.primary.read().identical(first)
        assert run.primary.read(["det"], events=slice(1, 3))["det"].shape == (2,)
        unfilled = run.primary.read(fill=False)
        assert later.store.transport.requests > 0  # references: not asked before
        n = later.store.transport.requests
        assert run.primary.read(fill=False).identical(unfilled)
        assert list(run.documents()) == list(run.documents())
        assert later.store.transport.requests == n + 1  # the replay: asked once
    finally:
        later.close()


def test_a_run_in_progress_is_asked_again_until_it_stops(remote):
    bundle = compose_run()
    remote.insert("start", bundle.start_doc)
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    remote.insert("descriptor", desc.descriptor_doc)
    for i in range(3):
        remote.insert("event", desc.compose_event(data={"x": i}, timestamps={"x": 0.0}))
    remote.flush()
    uid = bundle.start_doc["uid"]
    assert remote[uid].primary.read()["x"].values.tolist() == [0, 1, 2]
    before = _requests(remote)
    run = remote[uid]
    assert run.primary.read()["x"].values.tolist() == [0, 1, 2]
    assert _requests(remote) > before  # revalidated

    remote.insert("event", desc.compose_event(data={"x": 3}, timestamps={"x": 0.0}))
    remote.insert("stop", bundle.compose_stop())
    remote.flush()
    assert run.stop is not None
    assert run.primary.read()["x"].values.tolist() == [0, 1, 2, 3]
    before = _requests(remote)
    assert remote[uid].primary.read()["x"].values.tolist() == [0, 1, 2, 3]
    assert _requests(remote) == before


def test_a_page_gone_drops_what_was_kept_of_the_run(tmp_path):
    # Over a local store, whose pages can be named wrongly on purpose: a listing kept from
    # before the run was laid out anew names pages the store no longer has.
    store = CachedStore(SQLStore(f"sqlite:///{tmp_path / 'runs.db'}"), tmp_path / "c")
    docs = scan_run(4)
    store.ingest(docs)
    uid = docs[0][1]["uid"]
    assert store.get_run(uid).stop is not None
    descs = [d["uid"] for d in store.descriptors(uid)]
    listed = store.pages(uid, descs)
    assert ("pages", uid) in store.cache
    with pytest.raises(PageGone):
        store.read_pages(uid, [max(p.id for p in listed) + 1000], None)
    assert ("pages", uid) not in store.cache
    assert store.pages(uid, descs) == listed  # listed again, from the store
    store.close()


def _image_run(RE, size: int = 200) -> str:
    frames = itertools.count()
    cam = SynSignal(name="cam", func=lambda: np.full((size, size), float(next(frames))))
    (uid,) = RE(count([cam], 3))
    return uid


def test_the_least_recently_used_runs_are_evicted_first(http_server, tmp_path):
    # Each run keeps 3 frames of 200x200 float64 (1 MB) and a descriptor holding one more in
    # its configuration (0.4 MB): the limit holds two runs.
    cat = runbroker.open(
        _url(http_server), api_key=http_server.api_key, cache=tmp_path / "c", cache_size="3.2MB"
    )
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    a, b, c = (_image_run(RE) for _ in range(3))
    cat.flush()

    def read(uid: str) -> int:
        """Requests a fresh session makes to read the run."""
        session = _reopen(cat, cache_size="3.2MB")
        try:
            session[uid].primary.read()
            return session.store.transport.requests
        finally:
            session.close()

    assert read(a) > 0 and read(b) > 0
    assert read(a) == 0  # a is now used more recently than b
    assert read(c) > 0  # c pushes out the least recently used: b
    assert cat.store.cache.volume() <= 3_200_000  # the database and the files it names
    assert read(c) == 0 and read(a) == 0
    assert read(b) > 0
    cat.close()


def _read_runs(url: str, key: str, root: str, uids: list[str]) -> list[float]:
    # In a process of its own: several sessions read through one cache folder at once.
    cat = runbroker.open(url, api_key=key, cache=root)
    sums = []
    for _ in range(3):
        for uid in uids:
            sums.append(float(cat[uid].primary.read()["cam"].sum()))
    cat.close()
    return sums


def test_several_processes_share_one_cache_folder(remote, tmp_path):
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(remote.insert)
    uids = [_image_run(RE, size=40) for _ in range(4)]
    remote.flush()
    expected = [float(remote[u].primary.read()["cam"].sum()) for u in uids]
    root = str(tmp_path / "shared")
    key = os.environ["RUNBROKER_API_KEY"]
    jobs = [(remote.store.uri, key, root, uids[i:] + uids[:i]) for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        answers = pool.starmap(_read_runs, jobs)
    for (_, _, _, order), sums in zip(jobs, answers, strict=True):
        assert sums == [expected[uids.index(u)] for u in order] * 3
    # The folder is whole: a last session reads every run from it alone.
    last = runbroker.open(remote.store.uri, cache=root)
    assert [float(last[u].primary.read()["cam"].sum()) for u in uids] == expected
    assert last.store.transport.requests == 0
    last.close()


def test_offline_cached_runs_open_and_read_and_others_say_the_server_is_down(tmp_path):
    (tmp_path / "served").mkdir()
    server = ServerProcess(tmp_path / "served").start()
    try:
        url = server.catalog_url("offline")
        cat = runbroker.open(url, api_key=server.api_key, cache=tmp_path / "c")
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(cat.insert)
        (read_uid,) = RE(scan([det], motor, -1, 1, 4), sample="Ni")
        (other_uid,) = RE(count([det], 2))
        cat.flush()
        data = cat[read_uid].primary.read()
        latest = cat[-1].uid
        cat.close()
    finally:
        server.stop()

    offline = runbroker.open(url, api_key=server.api_key, cache=tmp_path / "c", timeout=2)
    run = offline[read_uid]
    assert run.start["sample"] == "Ni" and run.stop["exit_status"] == "success"
    assert list(run) == ["primary"]
    assert run.primary.read().identical(data)
    with pytest.raises(ServerUnreachableError, match=url) as err:
        offline[other_uid].primary.read()
    assert "cache" in str(err.value)
    with pytest.raises(ServerUnreachableError, match=url):
        offline.search(runbroker.queries.Key("sample") == "Cu").values().__next__()
    # A lookup asked before is answered as it was then, with a warning saying so.
    with pytest.warns(OfflineWarning, match="cannot be reached"):
        assert offline[-1].uid == latest
    offline.close()


def _cli(*args: str, root: Path) -> subprocess.CompletedProcess:
    """``runbroker cache ...`` as a command, in a process of its own."""
    env = dict(os.environ, RUNBROKER_CACHE_DIR=str(root))
    return subprocess.run(
        [sys.executable, "-m", "runbroker.cli", "cache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _main(capsys, *args: str, root: Path) -> subprocess.CompletedProcess:
    """The same, in this process (quicker: the command's imports are done)."""
    code = main(["cache", *args, "--dir", str(root)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_cache_command_lists_sizes_and_clears(http_server, tmp_path, capsys):
    root = tmp_path / "root"
    cats = [
        runbroker.open(_url(http_server), api_key=http_server.api_key, cache=root) for _ in range(2)
    ]
    uids = []
    for cat in cats:
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(cat.insert)
        uids.append(RE(scan([det], motor, -1, 1, 3))[0])
        cat.flush()
        cat[uids[-1]].primary.read()
    assert len(server_caches(root)) == 2

    listed = _cli("ls", root=root)
    assert listed.returncode == 0, listed.stderr
    for cat, uid in zip(cats, uids, strict=True):
        assert cat.store.uri in listed.stdout
        assert uid in listed.stdout
    size = _main(capsys, "size", root=root)
    assert size.returncode == 0, size.stderr
    total = sum(s.size() for s in server_caches(root))
    assert size.stdout.split()[0] == str(total)

    one = _main(capsys, "clear", cats[0].store.uri, root=root)
    assert one.returncode == 0, one.stderr
    after = _main(capsys, "ls", root=root).stdout
    assert uids[0] not in after and uids[1] in after
    unknown = _main(capsys, "clear", "http://nowhere:1", root=root)
    assert unknown.returncode == 1 and "http://nowhere:1" in unknown.stderr
    everything = _main(capsys, "clear", root=root)
    assert everything.returncode == 0, everything.stderr
    assert uids[1] not in _main(capsys, "ls", root=root).stdout
    # Cleared while open: the catalogs still read, from the server.
    for cat, uid in zip(cats, uids, strict=True):
        assert cat[uid].primary.read().sizes["time"] == 3
        cat.close()


def test_no_cache_and_a_bad_size_are_said_plainly(http_server, tmp_path):
    plain = runbroker.open(_url(http_server), api_key=http_server.api_key, cache=False)
    assert isinstance(plain.store, HTTPStore)
    plain.close()
    with pytest.raises(ValueError, match="cache size 'big'"):
        runbroker.open(_url(http_server), cache=tmp_path, cache_size="big")
    with pytest.raises(ValueError, match="cache, cache_size apply to catalogs on a server"):
        runbroker.open(tmp_path / "runs.db", cache=tmp_path, cache_size="1GB")


def test_a_warning_is_not_given_while_the_server_answers(remote):
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(remote.insert)
    RE(count([det], 1))
    remote.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(remote) == 1 and remote[-1].stop is not None
