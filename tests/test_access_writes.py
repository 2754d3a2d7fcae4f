"""Write rules of the access guard, on every local store: a principal adds documents only to
its groups' runs, cannot take over another group's run by reusing its uid, and starts runs
only with tags it holds (or its key's defaults). Nothing already stored changes."""

from __future__ import annotations

import pytest
from event_model import compose_resource, compose_run

from runbroker.auth import AccessPolicy, Principal, restrict
from runbroker.errors import AccessDeniedError, UnknownParentError
from runbroker.testing.stores import stores_except

local = stores_except("http", reason="the guard wraps the store a server holds")

ALICE = Principal("alice", groups=frozenset({("proposal", "p1")}))
BOB = Principal("bob", groups=frozenset({("proposal", "p2")}), defaults={"proposal_id": "p2"})
STAFF = Principal("staff", groups=frozenset({("beamline", "bl1")}))
READER = Principal(
    "reader", groups=frozenset({("proposal", "p1")}), scopes=frozenset({"read:data"})
)


def _run(catalog, tags, uid=None):
    run = compose_run(uid=uid, metadata={"scan_id": 1, **tags})
    catalog.insert("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    catalog.insert("descriptor", desc.descriptor_doc)
    catalog.insert("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}))
    return run, desc


@local
def test_a_principal_writes_a_run_of_its_own_group_and_reads_it_back(catalog):
    mine = restrict(catalog, ALICE)
    run, _ = _run(mine, {"proposal_id": "p1"})
    mine.insert("stop", run.compose_stop())
    mine.flush()
    assert list(mine.keys()) == [run.start_doc["uid"]]
    assert catalog[run.start_doc["uid"]].primary.read()["x"].values.tolist() == [1.0]


@local
def test_a_start_with_a_tag_not_held_is_refused_naming_the_tag(catalog):
    mine = restrict(catalog, ALICE)
    with pytest.raises(AccessDeniedError, match=r"proposal_id 'p2' is not one of yours.*'p1'"):
        _run(mine, {"proposal_id": "p2"})
    # a tag held beside one not held is still refused: the run would show in p2's view
    with pytest.raises(AccessDeniedError, match="beamtime_id 'b9'"):
        _run(mine, {"proposal_id": "p1", "beamtime_id": "b9"})
    catalog.flush()
    assert len(catalog) == 0


@local
def test_an_untagged_start_gets_the_key_defaults_or_is_refused(catalog):
    run, _ = _run(restrict(catalog, BOB), {})
    catalog.flush()
    assert catalog[run.start_doc["uid"]].metadata["start"]["proposal_id"] == "p2"
    with pytest.raises(AccessDeniedError, match=r"names none of the access keys.*proposal_id=p1"):
        _run(restrict(catalog, ALICE), {})


@local
def test_beamline_staff_write_any_proposal_at_their_beamline(catalog):
    staff = restrict(catalog, STAFF)
    run, _ = _run(staff, {"proposal_id": "p7", "beamline_id": "bl1"})
    staff.insert("stop", run.compose_stop())
    with pytest.raises(AccessDeniedError, match="beamline_id 'bl2'"):
        _run(staff, {"proposal_id": "p7", "beamline_id": "bl2"})


@local
def test_documents_for_another_groups_run_are_refused_and_it_is_unchanged(catalog):
    run, desc = _run(catalog, {"proposal_id": "p2"})  # written by an admin
    catalog.flush()
    before = list(catalog[run.start_doc["uid"]].documents())
    mine = restrict(catalog, ALICE)
    # the run is hidden from alice: its descriptor is an unknown parent, as for no run at all
    with pytest.raises(UnknownParentError, match="descriptor"):
        mine.insert("event", desc.compose_event(data={"x": 2.0}, timestamps={"x": 0.0}))
    with pytest.raises(UnknownParentError, match="run_start"):
        mine.insert("stop", run.compose_stop())
    res = compose_resource(
        spec="AD_HDF5", root="/", resource_path="f.h5", resource_kwargs={}, start=run.start_doc
    )
    with pytest.raises(UnknownParentError):
        mine.insert("resource", res.resource_doc)
    catalog.flush()
    assert list(catalog[run.start_doc["uid"]].documents()) == before


@local
def test_a_public_run_of_another_group_is_read_not_written(catalog):
    run, desc = _run(catalog, {"proposal_id": "p2", "public": True})
    catalog.flush()
    mine = restrict(catalog, ALICE)
    assert run.start_doc["uid"] in mine
    with pytest.raises(AccessDeniedError, match="you may read it, not add to it"):
        mine.insert("event", desc.compose_event(data={"x": 2.0}, timestamps={"x": 0.0}))


@local
def test_reusing_another_groups_uid_cannot_reopen_its_run(catalog):
    run, _ = _run(catalog, {"proposal_id": "p2"})
    catalog.flush()
    uid = run.start_doc["uid"]
    mine = restrict(catalog, ALICE)
    with pytest.raises(AccessDeniedError, match="a new run needs a new uid"):
        _run(mine, {"proposal_id": "p1"}, uid=uid)
    # even the very same start document, which the store would take as a repeat
    with pytest.raises(AccessDeniedError):
        restrict(catalog, BOB.__class__("eve", groups=ALICE.groups)).insert(
            "start", {**run.start_doc, "proposal_id": "p1"}
        )
    catalog.flush()
    assert catalog[uid].metadata["start"]["proposal_id"] == "p2"


@local
def test_a_batch_is_admitted_document_by_document(catalog):
    mine = restrict(catalog, ALICE)
    run = compose_run(metadata={"proposal_id": "p1"})
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
    )
    event = desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})
    pairs = [
        ("start", run.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event", event),
        ("stop", run.compose_stop()),
    ]
    assert mine.store.ingest(pairs) == 4
    catalog.flush()
    assert catalog[run.start_doc["uid"]].metadata["stop"] is not None


@local
def test_a_principal_without_the_write_scope_cannot_write(catalog):
    with pytest.raises(AccessDeniedError, match="read-only"):
        _run(restrict(catalog, READER), {"proposal_id": "p1"})


@local
def test_numeric_tags_match_groups_named_by_digits(catalog):
    run, _ = _run(catalog, {"proposal_id": 31234})
    catalog.flush()
    member = Principal("m", groups=frozenset({("proposal", "31234")}))
    assert list(restrict(catalog, member).keys()) == [run.start_doc["uid"]]
    # and such a member writes runs tagged with the number
    _run(restrict(catalog, member), {"proposal_id": 31234})


def test_the_access_keys_are_configurable():
    policy = AccessPolicy(keys={"proposal": "proposal"})
    alice = Principal("alice", groups=frozenset({("proposal", "p1"), ("beamline", "bl1")}))
    assert policy.tags({"proposal": "p1", "proposal_id": "p9"}) == {"proposal": "p1"}
    assert policy.start_for(alice, {"uid": "u", "proposal": "p1"})["proposal"] == "p1"
    with pytest.raises(ValueError, match=r"unknown group kinds.*sample"):
        AccessPolicy(keys={"sample": "sample"})
