"""Federated catalogs (``runbroker.merge``) over an SQLite, a folder and a remote catalog served
by real uvicorn on loopback, checked against the union of the separate searches; a source shut
down mid-test; duplicates; writes refused; configuration by name."""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, motor

import runbroker
from runbroker.config import CatalogConfigError, read_file
from runbroker.errors import ReadOnlyError, RunNotFoundError, ServerUnreachableError
from runbroker.federation import FederatedStore, FederationWarning, merge
from runbroker.queries import Key
from runbroker.server import Settings, build_app
from runbroker.testing.serving import ThreadServer

KEY = "federation-key"
SAMPLES = ["Ni", "Cu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Nine RunEngine runs dealt round-robin to an SQLite catalog, a folder catalog and the
    SQLite catalog a server will serve (so the sources interleave in time), plus a copy of
    the SQLite catalog's newest run in the folder: a duplicate."""
    folder = tmp_path_factory.mktemp("federation")
    cats = {
        "sqlite": runbroker.open(folder / "a.db"),
        "folder": runbroker.open(f"{folder}/b/"),
        "served": runbroker.open(folder / "c.db"),
    }
    RE = RunEngine({}, call_returns_result=False)
    kinds = list(cats)
    for i in range(9):
        token = RE.subscribe(cats[kinds[i % 3]].insert)
        plan = scan([det], motor, -1, 1, 3 + i) if i % 2 else count([det], 2 + i)
        RE(plan, sample=SAMPLES[i % 2])
        RE.unsubscribe(token)
        time.sleep(0.01)  # distinct start times across sources
    duplicate = cats["sqlite"][-1]
    cats["folder"].ingest(duplicate.documents())
    for cat in cats.values():
        cat.flush()
    yield {**cats, "duplicate": duplicate.uid}
    for cat in cats.values():
        cat.close()


@pytest.fixture
def remote(world: dict[str, Any]) -> Iterator[tuple[ThreadServer, runbroker.Catalog]]:
    """The served catalog behind a server of this test's own (so a test may stop it)."""
    server = ThreadServer(build_app(world["served"], Settings(api_key=KEY))).start()
    cat = runbroker.open(server.url, api_key=KEY, cache=False, timeout=5)
    try:
        yield server, cat
    finally:
        server.stop()
        cat.close()


@pytest.fixture
def sources(world: dict[str, Any], remote: tuple[ThreadServer, runbroker.Catalog]) -> list:
    return [world["sqlite"], world["folder"], remote[1]]


def union(catalogs: list[runbroker.Catalog], query: Any = None) -> list[tuple[str, int]]:
    """(uid, index of the source read) of each run, newest first: separate searches, each uid
    once, the first source winning."""
    found: dict[str, tuple[float, int]] = {}
    for i, cat in enumerate(catalogs):
        hits = cat if query is None else cat.search(query)
        for run in hits.values():
            found.setdefault(run.uid, (run.start["time"], i))
    ranked = sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]), reverse=True)
    return [(uid, i) for uid, (_, i) in ranked]


def quietly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FederationWarning)
        return fn(*args, **kwargs)


def test_search_is_the_union_of_the_separate_searches(sources: list) -> None:
    both = quietly(merge, *sources)
    expected = union(sources)
    assert len(expected) == 9  # ten runs stored, one of them twice
    assert [uid for uid, _ in expected][:1] != [None]
    assert quietly(list, both) == [uid for uid, _ in expected]
    assert quietly(len, both) == 9
    for query in (Key("sample") == "Ni", Key("plan_name") == "scan", Key("sample") == "none"):
        hits = both.search(query)
        assert quietly(list, hits) == [uid for uid, _ in union(sources, query)]
        assert quietly(len, hits) == len(union(sources, query))


def test_offset_limit_before_and_oldest_first_cut_the_one_order(sources: list) -> None:
    store = quietly(merge, *sources).store
    uids = [uid for uid, _ in union(sources)]
    search = lambda **kw: [r.uid for r in quietly(store.search, None, **kw)]  # noqa: E731
    assert search(offset=2, limit=3) == uids[2:5]
    assert search(offset=7, limit=10) == uids[7:]
    assert search(limit=0) == []
    records = quietly(store.search, None)
    cursor = (records[3].start["time"], records[3].uid)
    assert search(before=cursor, limit=2) == uids[4:6]
    assert search(before=cursor, offset=1) == uids[5:]
    assert search(oldest_first=True) == uids[::-1]
    assert search(oldest_first=True, offset=1, limit=2) == uids[::-1][1:3]
    oldest = records[-1]
    assert search(oldest_first=True, before=(oldest.start["time"], oldest.uid)) == uids[::-1][1:]


def test_lookups_by_uid_prefix_scan_id_and_recency(sources: list) -> None:
    both = quietly(merge, *sources)
    expected = union(sources)
    for k, (uid, i) in enumerate(expected):
        run = sources[i][uid]
        assert both[uid].uid == uid
        assert both[uid[:13]].uid == uid
        assert both[run.start["scan_id"]].uid == uid
        assert quietly(both.__getitem__, -(k + 1)).uid == uid
    assert [r.uid for r in quietly(both.__getitem__, slice(-3, None))] == [
        u for u, _ in expected[:3]
    ]
    with pytest.raises(RunNotFoundError, match="no run whose uid is or starts with 'zz'"):
        both["zz"]
    assert expected[0][0] in both and "zz" not in both


def test_reads_go_to_the_source_that_holds_the_run(sources: list) -> None:
    both = quietly(merge, *sources)
    for uid, i in union(sources):
        mine, theirs = both[uid], sources[i][uid]
        assert mine.primary.read().identical(theirs.primary.read())
        assert mine.metadata["stop"] == theirs.metadata["stop"]
        replay = [(name, doc.get("uid")) for name, doc in mine.documents(fill=False)]
        assert replay == [(name, doc.get("uid")) for name, doc in theirs.documents(fill=False)]
    lazy = both[union(sources)[0][0]].primary.to_dask().compute()
    assert lazy.identical(sources[union(sources)[0][1]][union(sources)[0][0]].primary.read())


def test_a_pickled_store_reads_the_same(world: dict[str, Any]) -> None:
    both = quietly(merge, world["sqlite"], world["folder"])
    again = pickle.loads(pickle.dumps(both.store))
    assert isinstance(again, FederatedStore)
    uid = world["folder"][-1].uid
    assert [r.uid for r in quietly(again.search, None)] == quietly(list, both)
    assert again.descriptors(uid) == both.store.descriptors(uid)


def test_duplicates_first_source_wins_and_are_reported(world: dict[str, Any]) -> None:
    dup = world["duplicate"]
    both = merge(world["sqlite"], world["folder"])
    with pytest.warns(FederationWarning, match=f"run '{dup}' is held by 2 sources") as caught:
        uids = list(both)
    assert uids.count(dup) == 1
    message = str(caught[0].message)
    assert world["sqlite"].store.uri in message and world["folder"].store.uri in message
    assert both.store.duplicates == {dup: [world["sqlite"].store.uri, world["folder"].store.uri]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FederationWarning)  # once per uid
        assert list(both) == uids
        assert len(both) == len(uids)
    # the copy read is the first source's: reversing the sources makes the folder's read
    flipped = merge(world["folder"], world["sqlite"])
    with pytest.warns(FederationWarning):
        assert flipped[dup].uid == dup
    assert flipped.store.duplicates[dup][0] == world["folder"].store.uri
    assert flipped.store._holder(dup) is world["folder"].store


def test_count_past_the_exact_limit_subtracts_the_duplicates_reported(
    world: dict[str, Any],
) -> None:
    both = merge(world["sqlite"], world["folder"], exact_count=0)
    separate = len(world["sqlite"]) + len(world["folder"])
    assert len(both) == separate  # the duplicate not seen yet: counted twice
    with pytest.warns(FederationWarning):
        listed = list(both)
    assert len(both) == len(listed) == separate - 1
    assert len(both.search(Key("sample") == "none")) == 0
    exact = merge(world["sqlite"], world["folder"])
    with pytest.warns(FederationWarning):
        assert len(exact) == len(listed)  # listing uids: exact at once


def test_a_source_shut_down_mid_test_is_named_and_the_others_answer(
    world: dict[str, Any], remote: tuple[ThreadServer, runbroker.Catalog]
) -> None:
    server, served = remote
    sources = [world["sqlite"], world["folder"], served]
    both = quietly(merge, *sources)
    remote_uids = list(served)
    assert set(remote_uids) <= set(quietly(list, both))
    assert both.store.unavailable == []
    quietly(both.__getitem__, remote_uids[0]).primary.read()  # routed to the server
    server.stop()
    others = union(sources[:2])
    with pytest.warns(FederationWarning, match=f"source {server.url}.* did not answer"):
        uids = list(both)
    assert uids == [uid for uid, _ in others]
    assert both.store.unavailable == [server.url]
    with pytest.warns(FederationWarning, match=server.url):
        assert both[others[0][0]].primary.read().sizes["time"] > 0
        assert len(both.search(Key("sample") == "Ni")) == len(
            union(sources[:2], Key("sample") == "Ni")
        )
    with pytest.raises(ServerUnreachableError, match=server.url):
        both[remote_uids[0]].primary.read()  # its only holder is down


def test_every_source_down_raises_the_first_error(
    remote: tuple[ThreadServer, runbroker.Catalog],
) -> None:
    server, served = remote
    alone = merge(served)
    server.stop()
    with pytest.raises(ServerUnreachableError, match=server.url):
        len(alone)


def test_writes_are_refused_naming_the_sources(world: dict[str, Any]) -> None:
    both = merge(world["sqlite"], world["folder"])
    with pytest.raises(ReadOnlyError, match="write to one of its sources") as err:
        both.insert("start", {"uid": "x", "time": 1.0})
    assert world["sqlite"].store.uri in str(err.value)
    with pytest.raises(ReadOnlyError):
        both.ingest(world["folder"][-1].documents())


def test_a_search_takes_part_with_its_runs_only(world: dict[str, Any]) -> None:
    ni = world["sqlite"].search(Key("sample") == "Ni")
    both = quietly(merge, ni, world["folder"])
    expected = union([ni, world["folder"]])
    assert quietly(list, both) == [uid for uid, _ in expected]
    hidden = next(r.uid for r in world["sqlite"].values() if r.start["sample"] != "Ni")
    assert hidden not in both
    with pytest.raises(RunNotFoundError):
        both[hidden]


def test_merge_refuses_what_is_not_a_catalog(world: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="argument 2 is a FolderStore"):
        merge(world["sqlite"], world["folder"].store)
    with pytest.raises(TypeError, match="at least one catalog"):
        merge()


# -- by name in the catalogs configuration


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: dict[str, Any]) -> Path:
    path = tmp_path / "catalogs.yml"
    monkeypatch.setenv("RUNBROKER_CATALOGS", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "site"))
    path.write_text(
        f"a: {world['sqlite'].store.uri.removeprefix('sqlite:///')}\n"
        f"b: {world['folder'].store.uri}\n"
        "both: {sources: [a, b]}\n"
        "nested: {sources: [both, gone, far]}\n"
        f"gone: {tmp_path}/no/such/runs.db\n"  # cannot be opened
        "far: http://127.0.0.1:9/nothing\n"  # opens, then does not answer
        "loop1: {sources: [a, loop2]}\n"
        "loop2: {sources: [loop1]}\n"
        "lost: {sources: [a, nowhere]}\n"
    )
    return path


def test_a_named_catalog_with_sources_opens_as_their_merge(world: dict[str, Any], config) -> None:
    both = runbroker.catalog["both"]
    assert isinstance(both.store, FederatedStore)
    assert both.store.uri == f"merge({world['sqlite'].store.uri}, {world['folder'].store.uri})"
    expected = union([world["sqlite"], world["folder"]])
    assert quietly(list, both) == [uid for uid, _ in expected]
    both.close()
    with pytest.warns(FederationWarning, match="source 'gone' .* cannot be opened"):
        nested = runbroker.catalog["nested"]
    with pytest.warns(FederationWarning, match="source http://127.0.0.1:9/nothing .*did not"):
        assert list(nested) == [uid for uid, _ in expected]
    assert nested.store.unavailable == ["http://127.0.0.1:9/nothing"]
    nested.close()


def test_cycles_and_unknown_sources_are_refused(config: Path) -> None:
    with pytest.raises(CatalogConfigError, match=r"lead back to 'loop1' \(loop1 -> loop2 -> loop1"):
        runbroker.catalog["loop1"]
    with pytest.raises(CatalogConfigError, match="merges 'nowhere', which no catalog"):
        runbroker.catalog["lost"]
    with pytest.raises(CatalogConfigError, match="opens in Python"):
        runbroker.config.resolve("both")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{sources: [a], uri: x.db}", "has sources, so it takes no uri"),
        ("{sources: []}", "sources must be a list of catalog names"),
        ("{sources: a}", "sources must be a list of catalog names"),
        ("{sources: [a, a]}", "names a source twice"),
    ],
)
def test_bad_sources_entries_name_the_file_and_line(tmp_path: Path, entry: str, problem: str):
    path = tmp_path / "bad.yml"
    path.write_text(f"a: runs.db\nfed: {entry}\n")
    with pytest.raises(CatalogConfigError, match=f"bad.yml, line 2: catalog 'fed'.*{problem}"):
        read_file(path)
