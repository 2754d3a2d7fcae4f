"""Notes through the service: a real uvicorn server on loopback, its Python client, and the
access rules (who writes, who sees, who may change what), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from event_model import compose_run

import runbroker
from runbroker.auth.access import AccessControl
from runbroker.notes import new_note
from runbroker.queries import Annotation, Key, Tag
from runbroker.server import Settings, build_app
from runbroker.testing.serving import ThreadServer

pytestmark = pytest.mark.slow

SCOPES = "read:metadata,read:data,write:runs,write:annotations"
# name -> (groups, admin)
PEOPLE = {
    "alice": ([("proposal", "p1")], False),
    "bob": ([("proposal", "p1")], False),
    "carol": ([("proposal", "p2")], False),
    "reader": ([("proposal", "p1")], False),  # given a key without write:annotations
    "root": ([], True),
}


def _run(catalog: runbroker.Catalog, **md: Any) -> str:
    run = compose_run(metadata=md)
    catalog.insert("start", run.start_doc)
    catalog.insert("stop", run.compose_stop())
    return run.start_doc["uid"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("notes-service")
    if request.param == "sqlite":
        catalog = runbroker.open(root / "runs.db", create=True)
        directory_url = f"sqlite:///{root / 'auth.db'}"
    else:
        from runbroker.testing.postgres import new_schema

        directory_url = new_schema(request.getfixturevalue("postgres_url"), f"notes_{os.getpid()}")
        catalog = runbroker.open(directory_url)
    runs = {
        "p1": _run(catalog, proposal_id="p1", sample="Nl"),
        "p2": _run(catalog, proposal_id="p2", sample="Cu"),
        "public": _run(catalog, proposal_id="p2", public=True, sample="Au"),
    }
    catalog.flush()
    access = AccessControl.from_config(
        {"directory": directory_url, "anonymous": True}, catalog.store.uri
    )
    keys = {}
    for name, (groups, admin) in PEOPLE.items():
        access.directory.add_principal(name, admin=admin)
        for kind, group in groups:
            access.directory.add_member(name, kind, group)
        scopes = "read:metadata,read:data" if name == "reader" else SCOPES
        keys[name] = access.directory.create_key(name, scopes)[1]
    with ThreadServer(build_app(catalog, Settings(), access)) as server:
        yield {"catalog": catalog, "runs": runs, "keys": keys, "url": server.url}
    catalog.close()


def _as(world: dict, name: str) -> runbroker.Catalog:
    return runbroker.open(world["url"], api_key=world["keys"][name], cache=False)


def _http(world: dict, name: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {world['keys'][name]}"} if name else {}
    return httpx.Client(base_url=world["url"] + "/api/v1", headers=headers, timeout=30)


def test_the_author_is_the_caller_and_group_notes_reach_the_group_only(world: dict) -> None:
    uid = world["runs"]["p1"]
    alice, bob = _as(world, "alice")[uid], _as(world, "bob")[uid]
    note = alice.annotate("sample burned", tags=["bad"], visibility="group")
    mine = alice.annotate("my own reminder", visibility="private")
    assert note["author"] == "alice" and note["groups"] == ["proposal:p1"]
    seen_by_bob = {n["id"] for n in bob.annotations}
    assert note["id"] in seen_by_bob and mine["id"] not in seen_by_bob
    assert mine["id"] in {n["id"] for n in alice.annotations}
    # carol cannot see the run at all: its notes are as absent as the run
    assert _http(world, "carol").get(f"/runs/{uid}/notes").status_code == 404
    # searches answer for the caller
    assert uid in list(_as(world, "bob").search(Tag("bad")).keys())
    assert uid in list(_as(world, "alice").search(Annotation.contains("reminder")).keys())
    assert uid not in list(_as(world, "bob").search(Annotation.contains("reminder")).keys())


def test_a_forged_author_is_replaced_by_the_caller(world: dict) -> None:
    uid = world["runs"]["p1"]
    forged = new_note(uid, "annotation", author="root", text="looks official")
    answer = _http(world, "bob").post(f"/runs/{uid}/notes", json=[forged])
    assert answer.status_code == 200, answer.text
    stored = [n for n in _as(world, "alice")[uid].annotations if n["id"] == forged["id"]]
    assert stored and stored[0]["author"] == "bob" and stored[0]["by"] == "bob"


def test_only_the_author_changes_an_annotation_but_anyone_may_untag(world: dict) -> None:
    uid = world["runs"]["p1"]
    note = _as(world, "alice")[uid].annotate("check alignment")
    with pytest.raises(PermissionError, match="alice"):
        _as(world, "bob")[uid].edit_note(note["id"], text="bob was here")
    assert _as(world, "alice")[uid].edit_note(note["id"], text="alignment checked")["revision"] == 2
    _as(world, "alice")[uid].tag("calibration")
    bob = _as(world, "bob")[uid]
    bob.untag("calibration")
    assert "calibration" not in _as(world, "alice")[uid].tags
    # an admin may change anyone's annotation; the history says who did what
    _as(world, "root")[uid].edit_note(note["id"], text="alignment checked twice")
    history = [n for n in _as(world, "alice")[uid].note_history() if n["id"] == note["id"]]
    assert [(n["revision"], n["by"], n["text"]) for n in history] == [
        (1, "alice", "check alignment"),
        (2, "alice", "alignment checked"),
        (3, "root", "alignment checked twice"),
    ]
    assert {n["author"] for n in history} == {"alice"}


def test_a_key_without_the_annotation_scope_reads_notes_but_writes_none(world: dict) -> None:
    uid = world["runs"]["p1"]
    client = _http(world, "reader")
    assert client.get(f"/runs/{uid}/notes").status_code == 200
    refused = client.post(f"/runs/{uid}/notes", json=[new_note(uid, "tag", author="x", tags=["t"])])
    assert refused.status_code == 403 and "write:annotations" in refused.text


def test_group_notes_of_a_public_run_stay_with_its_group(world: dict) -> None:
    uid = world["runs"]["public"]
    carol, alice = _as(world, "carol")[uid], _as(world, "alice")[uid]
    group = carol.annotate("for our proposal only")
    public = carol.annotate("anyone may read this", visibility="public")
    seen = {n["id"] for n in alice.annotations}
    assert public["id"] in seen and group["id"] not in seen
    anonymous = _http(world, None).get(f"/runs/{uid}/notes").json()
    assert {n["id"] for n in anonymous} >= {public["id"]}
    assert group["id"] not in {n["id"] for n in anonymous}
    # alice may read the public run, and may not note on it: it is not her group's
    with pytest.raises(PermissionError):
        alice.tag("mine")


def test_corrections_are_seen_by_reads_and_searches_and_access_keys_are_an_admins(
    world: dict,
) -> None:
    uid = world["runs"]["p1"]
    alice = _as(world, "alice")
    alice[uid].correct(start={"sample": "Ni"}, reason="typed Nl at the beamline")
    run = _as(world, "bob")[uid]
    assert run.start["sample"] == "Ni"
    assert run.metadata["start_original"]["sample"] == "Nl"
    assert uid in list(_as(world, "bob").search(Key("sample") == "Ni").keys())
    assert uid not in list(_as(world, "bob").search(Key("sample") == "Nl").keys())
    with pytest.raises(PermissionError, match="proposal_id"):
        alice[uid].correct(start={"proposal_id": "p2"}, reason="move it")
    assert _as(world, "alice")[uid].start["proposal_id"] == "p1"
    # the replay keeps the stored start; the correction travels as a note
    pairs = list(_as(world, "alice")[uid].documents(notes=True))
    assert pairs[0][1]["sample"] == "Nl"
    assert any(name == "note" and doc["kind"] == "correction" for name, doc in pairs)


def test_a_server_of_one_key_takes_each_clients_user(tmp_path: Path) -> None:
    catalog = runbroker.open(tmp_path / "runs.db", create=True)
    uid = _run(catalog, sample="Ni")
    with ThreadServer(build_app(catalog, Settings(api_key="k"))) as server:
        mine = runbroker.open(server.url, api_key="k", cache=False)
        note = mine[uid].annotate("private to me", visibility="private")
        assert note["author"] == mine.viewer.name
        other = httpx.get(
            f"{server.url}/api/v1/runs/{uid}/notes",
            headers={"authorization": "Bearer k", "x-runbroker-user": "someone-else"},
        ).json()
        assert note["id"] not in {n["id"] for n in other}
        assert uid in list(mine.search(Annotation.contains("private")).keys())
    catalog.close()
