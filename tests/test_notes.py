"""Annotations, tags and corrections (runbroker.notes, runbroker.run_notes) on every store:
the API, history, visibility, searches checked against ``matches``, corrections, bad input,
conflicts, a second catalog on the same data, and the migration that adds notes."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from event_model import compose_run
from sqlalchemy import create_engine, text

import runbroker
from runbroker.catalog import Catalog
from runbroker.errors import (
    ConflictError,
    DocumentError,
    NotesUnsupportedError,
    NotTheAuthorError,
    SchemaVersionError,
)
from runbroker.notes import Viewer, current, revise
from runbroker.queries import Annotation, Key, Query, Tag, bind
from runbroker.store.migrations import downgrade, upgrade
from runbroker.testing.stores import stores_except

ADA = Viewer("ada")
BOB = Viewer("bob", frozenset({"p1"}))
EVE = Viewer("eve", frozenset({"p2"}))


@pytest.fixture
def cat(catalog, store_kind):
    return catalog


def _runs(cat, samples):
    """One hand-made run per sample (scan_id 1, 2, ...), oldest first; their uids."""
    uids = []
    for i, sample in enumerate(samples, 1):
        made = compose_run(metadata={"sample": sample, "scan_id": i}, time=1000.0 + i)
        cat.ingest([("start", made.start_doc), ("stop", made.compose_stop())])
        uids.append(made.start_doc["uid"])
    return uids


def _as(cat, viewer):
    return Catalog(cat.store, viewer=viewer)


def test_annotate_tag_edit_delete_with_history(cat):
    (uid,) = _runs(cat, ["Ni"])
    run = _as(cat, ADA)[uid]
    note = run.annotate("smple burned", tags=["bad"], visibility="public")
    assert note["author"] == "ada" and note["revision"] == 1
    run.tag("calibration", "good")
    assert run.tags == ["bad", "calibration", "good"]
    assert [n["text"] for n in run.annotations] == ["smple burned"]

    edited = run.edit_note(note["id"], text="sample burned", tags=["bad", "paper"])
    assert edited["revision"] == 2 and edited["by"] == "ada"
    history = run.note_history(note["id"])
    assert [(r["revision"], r["text"], r["tags"]) for r in history] == [
        (1, "smple burned", ["bad"]),
        (2, "sample burned", ["bad", "paper"]),
    ]
    assert history[0]["time"] <= history[1]["time"]

    run.untag("good")
    assert run.tags == ["bad", "calibration", "paper"]
    run.untag("calibration")  # the tag note is left with none: deleted
    assert run.tags == ["bad", "paper"]
    run.delete_note(note["id"])
    assert run.annotations == [] and run.tags == []
    assert [r["revision"] for r in run.note_history(note["id"])] == [1, 2, 3]
    assert run.note_history(note["id"])[-1]["deleted"] is True
    # the run's documents are untouched
    assert [name for name, _ in run.documents()] == ["start", "stop"]


@stores_except(
    "http",
    reason="readers made here stand for other users; over HTTP the server says who reads "
    "(test_notes_service.py tests that)",
)
def test_visibility_for_two_readers(cat):
    (uid,) = _runs(cat, ["Ni"])
    ada = _as(cat, ADA)[uid]
    ada.annotate("private thought", tags=["mine"], visibility="private")
    ada.annotate("for the group", tags=["grp"], visibility="group")
    ada.annotate("for all", tags=["all"], visibility="public")
    bob_run = _as(cat, BOB)[uid]
    assert ada.tags == ["all", "grp", "mine"]
    # ada's notes name no group (a local reader): every reader sees group ones
    assert bob_run.tags == ["all", "grp"]
    assert [n["text"] for n in bob_run.annotations] == ["for the group", "for all"]

    # bob's group note is for p1: eve (p2) does not see it, ada (no groups limit) does
    bob_run.tag("p1-only")
    assert "p1-only" not in _as(cat, EVE)[uid].tags
    assert "p1-only" in ada.tags

    for viewer, tag, seen in [
        (ADA, "mine", 1),
        (BOB, "mine", 0),
        (BOB, "p1-only", 1),
        (EVE, "p1-only", 0),
        (EVE, "all", 1),
    ]:
        assert len(_as(cat, viewer).search(Tag(tag))) == seen, (viewer, tag)
    # an unbound query (no catalog around it) sees no private note
    assert cat.store.count(Tag("mine")) == 0 and cat.store.count(Tag("grp")) == 1
    # bob may not change ada's annotation, and is told whose it is
    note = ada.annotations[1]
    with pytest.raises(NotTheAuthorError, match="'ada'"):
        bob_run.edit_note(note["id"], text="mine now")
    with pytest.raises(NotTheAuthorError, match="'ada'"):
        bob_run.delete_note(note["id"])
    # ... but may take a tag off that he sees
    bob_run.untag("grp")
    assert "grp" not in ada.tags


@stores_except(
    "http",
    reason="readers made here stand for other users; over HTTP the server says who reads "
    "(test_notes_service.py tests that)",
)
def test_note_queries_compose_and_agree_with_matches(cat):
    rng = random.Random(18)
    uids = _runs(cat, ["Ni", "Cu", "Fe", "Ni", "Cu", "Fe", "Ni", "Au"])
    writers = [_as(cat, v) for v in (ADA, BOB, EVE)]
    for uid in uids:
        for _ in range(rng.randint(0, 3)):
            run = rng.choice(writers)[uid]
            vis = rng.choice(["private", "group", "public"])
            tags = rng.sample(["calibration", "bad", "paper"], rng.randint(0, 2))
            if rng.random() < 0.5:
                run.annotate(rng.choice(["Sample BURNED", "fine", "50% burned"]), tags, vis)
            elif tags:
                run.tag(*tags, visibility=vis)
    queries = [
        Tag("calibration"),
        Annotation.contains("burned"),
        Annotation.contains("50%"),
        Annotation.contains("5_%"),
        Tag("calibration") & (Key("sample") == "Ni"),
        Tag("bad") | Annotation.contains("sample b"),
        ~Tag("paper") & (Key("sample") != "Au"),
        Tag("paper") | (Key("sample") == "Fe"),
        ~(Tag("bad") & Annotation.contains("fine")),
    ]
    for viewer in (ADA, BOB, EVE, None):
        reader = _as(cat, viewer) if viewer else cat
        records = {}
        for uid in uids:
            run = cat.store.get_run(uid)
            records[uid] = {
                "start": run.start,
                "stop": run.stop,
                "notes": current(cat.store.notes(uid)),
            }
        for query in queries:
            bound = bind(query, viewer) if viewer else query
            expected = {u for u, rec in records.items() if bound.matches(rec)}
            found = (
                set(reader.search(query)) if viewer else {r.uid for r in cat.store.search(query)}
            )
            assert found == expected, (viewer, query)
            # the JSON form keeps no reader, and one sent is dropped
            assert Query.from_json(bound.to_json()) == query
    sent = {"type": "tag", "tag": "x", "viewer": {"name": "root", "groups": None}}
    assert Query.from_dict(sent) == Tag("x")


def test_corrections_change_reads_and_searches_not_documents(cat):
    uid, other = _runs(cat, ["Nl", "Cu"])
    run = cat[uid]
    note = run.correct(start={"sample": "Ni", "operator": "ada"}, reason="typo at the beamline")
    assert run.start["sample"] == "Ni" and run.metadata["start_original"]["sample"] == "Nl"
    fresh = cat[uid]
    assert fresh.start["sample"] == "Ni" and fresh.start["operator"] == "ada"
    assert fresh.metadata["start_original"]["sample"] == "Nl"
    assert "operator" not in fresh.metadata["start_original"]
    assert next(iter(fresh.documents()))[1]["sample"] == "Nl"  # stored documents unchanged
    assert list(cat.search(Key("sample") == "Ni")) == [uid]
    assert list(cat.search(Key("sample") == "Nl")) == []
    assert list(cat.search(Key("operator") == "ada")) == [uid]
    assert [r.uid for r in cat.store.search(Key("sample") == "Ni", limit=1)] == [uid]
    assert fresh.corrections[0]["reason"] == "typo at the beamline"
    assert cat.store.get_run(other).original is None

    second = fresh.correct(start={"sample": "Ni3"}, reason="stoichiometry")
    assert cat[uid].start["sample"] == "Ni3"
    fresh.edit_note(second["id"], start={"sample": "Ni2"}, reason="stoichiometry, again")
    assert cat[uid].start["sample"] == "Ni2"
    assert [r["revision"] for r in fresh.note_history(second["id"])] == [1, 2]
    fresh.delete_note(second["id"])
    fresh.delete_note(note["id"])  # no correction left: the original view again
    back = cat[uid]
    assert back.start["sample"] == "Nl" and "start_original" not in back.metadata
    assert list(cat.search(Key("sample") == "Nl")) == [uid]
    assert list(cat.search(Key("operator") == "ada")) == []
    assert len(back.note_history()) == 5


def test_bad_input_is_refused_and_nothing_changes(cat):
    (uid,) = _runs(cat, ["Ni"])
    run = _as(cat, ADA)[uid]
    with pytest.raises(DocumentError, match="visibility"):
        run.annotate("x", visibility="secret")
    with pytest.raises(DocumentError, match="tags"):
        run.tag("")
    with pytest.raises(DocumentError, match="'uid'"):
        run.correct(start={"uid": "other"}, reason="no")
    with pytest.raises(DocumentError, match="reason"):
        run.correct(start={"sample": "Cu"}, reason="")
    assert cat.store.notes(uid) == []
    with pytest.raises(KeyError, match="no-such-run"):
        cat.store.notes("no-such-run")

    # two writers edit the same note: the second is refused, naming it
    note = run.annotate("first")
    mine, theirs = revise(note, text="mine"), revise(note, text="theirs")
    cat.store.add_notes(uid, [mine])
    other = runbroker.open(cat.store.uri) if cat.store.uri.startswith("postgresql") else cat
    with pytest.raises(ConflictError, match=note["id"]):
        other.store.add_notes(uid, [theirs])
    cat.store.add_notes(uid, [mine])  # a repeat: nothing new
    assert [r["text"] for r in cat.store.notes(uid, history=True)] == ["first", "mine"]
    with pytest.raises(ConflictError, match=note["id"]):
        cat.store.add_notes(uid, [revise(mine, text="a"), revise(mine, text="b")])
    assert [r["text"] for r in cat.store.notes(uid, history=True)] == ["first", "mine"]
    with pytest.raises(DocumentError, match="names run"):
        cat.store.add_notes(uid, [dict(revise(mine, text="c"), run="elsewhere")])


def test_a_second_catalog_sees_notes(cat):
    (uid,) = _runs(cat, ["Nl"])
    cat[uid].tag("calibration", visibility="public")
    cat[uid].correct(start={"sample": "Ni"}, reason="typo")
    cat.flush()
    again = runbroker.open(cat.store.uri)
    try:
        assert list(again.search(Tag("calibration"))) == [uid]
        assert again[uid].start["sample"] == "Ni" and again[uid].tags == ["calibration"]
        again[uid].annotate("seen from the other side", visibility="public")
    finally:
        again.close()
    if hasattr(cat.store, "refresh"):
        cat.store.refresh()
    assert list(cat.search(Annotation.contains("other side"))) == [uid]


def test_a_store_without_notes_is_named():
    class Plain:
        uri = "plain://x"

        def get_run(self, uid):
            from runbroker.store.base import RunRecord

            return RunRecord(uid, {"uid": uid, "time": 0.0}, None)

    from runbroker.catalog import Run

    plain = Plain()
    run = Run(Catalog(plain, viewer=ADA), plain.get_run("r"))  # type: ignore[arg-type]
    with pytest.raises(NotesUnsupportedError, match="Plain"):
        run.tag("x")


@stores_except("folder", "http", reason="SQL schema migrations (alembic) of a catalog")
def test_migration_0005_adds_notes_to_an_older_catalog(catalog):
    (uid,) = _runs(catalog, ["Nl"])
    catalog[uid].correct(start={"sample": "Ni"}, reason="typo")
    uri = catalog.store.uri
    catalog.close()
    assert downgrade(uri, "0004") == "0004"
    with runbroker.open(uri) as old:  # 0004: reads as stored, no notes
        assert old[uid].start["sample"] == "Nl"
        assert list(old.search(Key("sample") == "Nl")) == [uid]
        with pytest.raises(SchemaVersionError, match="runbroker db upgrade"):
            old[uid].tag("x")
    done = subprocess.run(
        [sys.executable, "-m", "runbroker.cli", "db", "upgrade", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert upgrade(uri) == "0007"  # the head revision
    with runbroker.open(uri) as new:
        new[uid].tag("calibration", visibility="public")
        assert list(new.search(Tag("calibration"))) == [uid]
    engine = create_engine(uri)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 1
    engine.dispose()
