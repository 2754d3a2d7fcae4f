"""The access guard: a Store wrapper that shows the runs of a scope and hides the others as
absent, on every store."""

from __future__ import annotations

from pathlib import Path

import pytest
from event_model import compose_run

import runbroker
from runbroker.auth import GuardedStore, WriteRules, scope_for
from runbroker.errors import RunNotFoundError
from runbroker.queries import Key, KeyPresent, Not
from runbroker.store.base import Store
from runbroker.store.sql import SQLStore
from runbroker.testing.conformance import StoreContract

# Write rules that admit everything: the contract's writes, through the guard's own checks.
ANY_WRITE = WriteRules(None, lambda doc: doc)


class TestGuardedSQLite(StoreContract):
    """The guard passes the Store contract; its scope hides nothing the contract writes."""

    def make_store(self, path: Path, request: pytest.FixtureRequest) -> Store:
        return GuardedStore(
            SQLStore(f"sqlite:///{path / 'runs.db'}"), Not(KeyPresent("secret")), ANY_WRITE
        )

    def reopen(self, store: Store) -> Store:
        return GuardedStore(SQLStore(store.uri, readonly=True), Not(KeyPresent("secret")))


TAGS = [
    {"proposal_id": "p1"},
    {"proposal_id": "p2"},
    {"proposal_id": "p1", "beamtime_id": "b7"},
    {"beamtime_id": "b7"},
    {"public": True},
    {},  # untagged: admins only
]


@pytest.fixture
def tagged(catalog):
    uids = []
    for i, tags in enumerate(TAGS):
        run = compose_run(metadata={"scan_id": i + 1, **tags})
        catalog.insert("start", run.start_doc)
        desc = run.compose_descriptor(
            name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
        )
        catalog.insert("descriptor", desc.descriptor_doc)
        catalog.insert("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}))
        catalog.insert("stop", run.compose_stop())
        uids.append(run.start_doc["uid"])
    catalog.flush()
    return catalog, uids


@pytest.mark.parametrize(
    ("groups", "seen"),
    [
        ({"proposal_id": ["p1"]}, [0, 2, 4]),
        ({"beamtime_id": ["b7"]}, [2, 3, 4]),
        ({"proposal_id": ["p2"], "beamtime_id": ["b7"]}, [1, 2, 3, 4]),
        ({}, [4]),
    ],
)
def test_a_caller_sees_its_runs_and_public_ones_and_the_rest_is_absent(tagged, groups, seen):
    catalog, uids = tagged
    guarded = runbroker.Catalog(GuardedStore(catalog.store, scope_for(groups)))
    visible = {uids[i] for i in seen}
    assert set(guarded.keys()) == visible
    assert len(guarded) == len(visible)
    assert len(guarded.search(Key("scan_id") > 0)) == len(visible)
    assert sum(n for _, n in guarded.distinct("scan_id")) == len(visible)
    for i, uid in enumerate(uids):
        if uid in visible:
            assert guarded[uid].primary.read()["x"].values.tolist() == [1.0]
            continue
        with pytest.raises(KeyError):
            guarded[uid]
        with pytest.raises(KeyError):
            guarded[i + 1]  # by scan_id
        with pytest.raises(KeyError):
            guarded[uid[:8]]  # by prefix
        _absent(guarded.store, uid)


def _absent(store: GuardedStore, uid: str) -> None:
    """Every per-run call answers as for a run that does not exist."""
    assert store.get_run(uid) is None
    calls = {
        "descriptors": lambda: store.descriptors(uid),
        "assets": lambda: store.assets(uid),
        "pages": lambda: store.pages(uid, []),
        "read_pages": lambda: store.read_pages(uid, [], None),
        "datums": lambda: store.datums(uid, ["d/0"]),
        "documents": lambda: next(iter(store.documents(uid))),
    }
    for method, call in calls.items():
        with pytest.raises(RunNotFoundError) as err:
            call()
        assert str(err.value) == f"no run {uid!r} in {store.uri}", method


def test_the_untagged_run_is_seen_only_without_a_scope(tagged):
    catalog, uids = tagged
    assert uids[5] in catalog
    everyone = scope_for({"proposal_id": ["p1", "p2"], "beamtime_id": ["b7"]})
    assert uids[5] not in runbroker.Catalog(GuardedStore(catalog.store, everyone))
