"""The identity directory on real SQLite files and PostgreSQL: principals, groups (expanded),
the audit log, and its tables living beside a catalog's."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

import runbroker
from runbroker.auth.directory import Directory
from runbroker.errors import NotAuthenticatedError, NotFoundError, RequestError

_schemas = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Directory]:
    if request.param == "sqlite":
        d = Directory(f"sqlite:///{tmp_path / 'auth.db'}")
    else:
        from runbroker.testing.postgres import new_schema

        base = request.getfixturevalue("postgres_url")
        d = Directory(new_schema(base, f"auth{os.getpid()}_{next(_schemas)}"))
    yield d
    d.close()


def test_principals_are_added_listed_and_removed(directory: Directory) -> None:
    alice = directory.add_principal("alice")
    directory.add_principal("re-45id", kind="service", scopes="write:runs")
    directory.add_principal("root", admin=True)
    assert alice.kind == "user" and not alice.admin and "read:data" in alice.scopes
    assert "admin:keys" not in alice.scopes
    assert directory.principal("root").scopes >= {"admin:keys", "admin:principals"}
    assert directory.principal("re-45id").scopes == frozenset({"write:runs"})
    assert [p.name for p in directory.principals()] == ["alice", "re-45id", "root"]
    assert directory.principal("nobody") is None
    with pytest.raises(RequestError, match="'alice' exists already"):
        directory.add_principal("alice")
    directory.remove_principal("alice")
    assert directory.principal("alice") is None
    with pytest.raises(NotFoundError, match="no principal named 'alice'"):
        directory.remove_principal("alice")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must be a non-empty text"),
        ("   ", "must be a non-empty text"),
        ("a\x00b", "must be printable"),
        ("tab\there", "must be printable"),
        ("x" * 129, "longer than 128 characters"),
    ],
)
def test_bad_principal_names_are_refused_saying_why(
    directory: Directory, name: str, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        directory.add_principal(name)
    assert directory.principals() == []


def test_bad_kind_and_scopes_are_refused(directory: Directory) -> None:
    with pytest.raises(RequestError, match="neither user nor service"):
        directory.add_principal("x", kind="robot")
    with pytest.raises(ValueError, match="unknown scope 'read:all'"):
        directory.add_principal("x", scopes="read:all")
    assert directory.add_principal("x" * 128).name == "x" * 128  # the longest allowed


def test_groups_expand_a_proposal_to_its_beamtimes(directory: Directory) -> None:
    for name in ("alice", "bob", "staff1"):
        directory.add_principal(name)
    directory.add_group("proposal", "p1")
    directory.add_group("beamtime", "b1", proposal="p1")
    directory.add_group("beamtime", "b2", proposal="p1")
    directory.add_group("beamtime", "b9", proposal="p3")  # p3 is added with it
    directory.add_member("alice", "proposal", "p1")
    directory.add_member("alice", "data_session", "ds-7")
    directory.add_member("bob", "beamtime", "b9")
    directory.add_member("staff1", "beamline", "bl1")
    assert directory.groups_of("alice") == {
        ("proposal", "p1"),
        ("beamtime", "b1"),
        ("beamtime", "b2"),
        ("data_session", "ds-7"),
    }
    # A beamtime's member holds that beamtime only, not its proposal nor its siblings.
    assert directory.groups_of("bob") == {("beamtime", "b9")}
    assert directory.groups_of("staff1") == {("beamline", "bl1")}
    assert directory.groups_of("nobody") == frozenset()
    # A beamtime added later is held at once by the proposal's members.
    directory.add_group("beamtime", "b3", proposal="p1")
    assert ("beamtime", "b3") in directory.groups_of("alice")
    assert [(g.kind, g.name, g.proposal) for g in directory.groups("beamtime")] == [
        ("beamtime", "b1", "p1"),
        ("beamtime", "b2", "p1"),
        ("beamtime", "b3", "p1"),
        ("beamtime", "b9", "p3"),
    ]
    assert directory.members("proposal", "p1") == ["alice"]
    directory.remove_member("alice", "proposal", "p1")
    assert directory.groups_of("alice") == {("data_session", "ds-7")}
    with pytest.raises(NotFoundError, match="not a member of proposal 'p1'"):
        directory.remove_member("alice", "proposal", "p1")


def test_group_rules(directory: Directory) -> None:
    directory.add_principal("alice")
    with pytest.raises(RequestError, match="name its proposal"):
        directory.add_group("beamtime", "b1")
    with pytest.raises(RequestError, match="only a beamtime belongs to a proposal"):
        directory.add_group("beamline", "bl1", proposal="p1")
    with pytest.raises(RequestError, match="unknown group kind 'project'"):
        directory.add_group("project", "x")
    with pytest.raises(RequestError, match="unknown group kind 'project'"):
        directory.add_member("alice", "project", "x")
    directory.add_group("beamtime", "b1", proposal="p1")
    directory.add_group("beamtime", "b1", proposal="p1")  # the same again: nothing changes
    with pytest.raises(RequestError, match="belongs to proposal 'p1' already"):
        directory.add_group("beamtime", "b1", proposal="p2")
    with pytest.raises(
        NotFoundError, match=r"no beamtime named 'b5' \(add it with its proposal first\)"
    ):
        directory.add_member("alice", "beamtime", "b5")
    with pytest.raises(NotFoundError, match="no principal named 'carol'"):
        directory.add_member("carol", "proposal", "p1")
    directory.add_member("alice", "proposal", "p1")
    directory.add_member("alice", "proposal", "p1")  # twice is once
    assert directory.members("proposal", "p1") == ["alice"]
    directory.remove_group("proposal", "p1")  # its beamtimes and memberships go with it
    assert directory.groups() == [] and directory.groups_of("alice") == frozenset()


def test_removing_a_principal_revokes_its_keys(directory: Directory) -> None:
    directory.add_principal("alice")
    directory.add_member("alice", "proposal", "p1")
    info, secret = directory.create_key("alice", "read:metadata")
    assert directory.authenticate(secret).groups == {("proposal", "p1")}
    directory.remove_principal("alice", by="local:root")
    assert directory.key(info.id).revoked_by == "local:root"
    with pytest.raises(NotAuthenticatedError, match="revoked"):
        directory.verify_key(secret)
    directory.add_principal("alice")  # the name again: a new principal, no old groups
    assert directory.groups_of("alice") == frozenset()


def test_a_key_acts_as_its_principal_narrowed_to_its_scopes(directory: Directory) -> None:
    directory.add_principal("re", kind="service", scopes="read:metadata,write:runs")
    directory.add_member("re", "beamline", "bl1")
    _, secret = directory.create_key("re", "write:runs", defaults={"beamline_id": "bl1"})
    caller = directory.authenticate(secret)
    assert (caller.name, caller.kind, caller.via) == ("re", "service", "api-key")
    assert caller.scopes == {"write:runs"} and caller.groups == {("beamline", "bl1")}
    assert caller.defaults == {"beamline_id": "bl1"}
    with pytest.raises(RequestError, match="does not hold read:data"):
        directory.create_key("re", "read:data")


def test_audit_log_newest_first_with_filters(directory: Directory) -> None:
    directory.record("local:root", "principals.add", "alice", {"admin": False}, client="cli")
    directory.record("alice", "runs.write", "uid-1", client="10.0.0.7")
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    directory.record("alice", "keys.create", "k1", {"scopes": ["read:data"]}, client="10.0.0.7")
    log = directory.audit_log()
    assert [e.action for e in log] == ["keys.create", "runs.write", "principals.add"]
    first = log[-1]
    assert (first.principal, first.target, first.detail, first.client) == (
        "local:root",
        "alice",
        {"admin": False},
        "cli",
    )
    assert first.time.tzinfo is not None
    assert abs(first.time - datetime.now(UTC)) < timedelta(minutes=1)
    assert [e.action for e in directory.audit_log(principal="alice")] == [
        "keys.create",
        "runs.write",
    ]
    assert [e.action for e in directory.audit_log(since=middle)] == ["keys.create"]
    assert [e.action for e in directory.audit_log(limit=1)] == ["keys.create"]
    with pytest.raises(RequestError, match="limit 0"):
        directory.audit_log(limit=0)


def _runs(cat: runbroker.Catalog, n: int) -> None:
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    for i in range(n):
        RE(count([det], num=2), proposal_id=f"p{i}")


def test_directory_lives_in_a_sqlite_catalogs_own_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    cat = runbroker.open(path, create=True)
    _runs(cat, 2)
    d = Directory(f"sqlite:///{path}")
    d.add_principal("alice")
    _, secret = d.create_key("alice", "read:metadata")
    _runs(cat, 1)  # the catalog writes on, beside the directory's tables
    assert len(cat) == 3
    cat.close()
    again = runbroker.open(path)  # still a catalog: the auth_ tables do not make it "other"
    assert len(again) == 3 and again[-1].start["proposal_id"] == "p0"
    assert len(list(again.search({"proposal_id": "p1"}))) == 1
    again.close()
    d.close()
    reopened = Directory(f"sqlite:///{path}")  # tables found, not made again
    assert reopened.verify_key(secret).principal == "alice"
    reopened.close()


def test_directory_lives_in_a_postgresql_catalogs_schema(postgres_url: str) -> None:
    from runbroker.testing.postgres import new_schema

    url = new_schema(postgres_url, f"authcat{os.getpid()}")
    cat = runbroker.open(url)
    _runs(cat, 2)
    d = Directory(url)
    d.add_principal("alice")
    d.record("alice", "test")
    _runs(cat, 1)
    cat.close()
    again = runbroker.open(url)
    assert len(again) == 3
    again.close()
    assert Directory(url).principal("alice") is not None
    d.close()
