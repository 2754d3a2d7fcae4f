"""Group sources: the directory, a YAML file (re-read on change, errors naming file and entry),
a real entry point, token claims, a cache with a TTL, and their union."""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from runbroker.auth.directory import Directory
from runbroker.auth.groups import (
    CachedGroups,
    ClaimGroups,
    CombinedGroups,
    DirectoryGroups,
    EntryPointGroups,
    GroupSource,
    YAMLGroups,
    group_source,
)
from runbroker.errors import CatalogConfigError

GROUPS_YAML = """\
proposals:
  p1: {members: [alice, bob], beamtimes: [b1, b2]}
  p3: {members: [dave]}
beamtimes:
  b9: {proposal: p3, members: [carol]}
beamlines:
  bl1: {members: [staff1]}
data_sessions:
  ds-7: {members: [alice]}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_groups_expand_proposals(tmp_path: Path) -> None:
    source = YAMLGroups(_write(tmp_path / "groups.yaml", GROUPS_YAML))
    assert isinstance(source, GroupSource)
    assert source.groups_of("alice", None) == {
        ("proposal", "p1"),
        ("beamtime", "b1"),
        ("beamtime", "b2"),
        ("data_session", "ds-7"),
    }
    assert source.groups_of("carol", None) == {("beamtime", "b9")}
    # A beamtime named under beamtimes: with its proposal is held by that proposal's members.
    assert source.groups_of("dave", None) == {("proposal", "p3"), ("beamtime", "b9")}
    assert source.groups_of("staff1", None) == {("beamline", "bl1")}
    assert source.groups_of("nobody", None) == frozenset()


def test_yaml_groups_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = _write(tmp_path / "groups.yaml", "proposals:\n  p1: {members: [alice]}\n")
    source = YAMLGroups(path)
    assert source.groups_of("alice", None) == {("proposal", "p1")}
    _write(path, "proposals:\n  p2: {members: [alice, bob]}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a later mtime
    assert source.groups_of("alice", None) == {("proposal", "p2")}
    assert source.groups_of("bob", None) == {("proposal", "p2")}
    # A mistake made while the server runs is reported, not taken as "no groups".
    _write(path, "proposals:\n  p2: {members: alice}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    with pytest.raises(CatalogConfigError, match=r"proposals\.p2\.members"):
        source.groups_of("alice", None)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("proposals:\n  p1: {members: alice}\n", "proposals.p1.members", "a list of names"),
        ("proposals:\n  p1: {member: [alice]}\n", "proposals.p1", "unknown field 'member'"),
        ("beamtimes:\n  b1: {members: [a]}\n", "beamtimes.b1", "names its proposal"),
        ("beamlines:\n  bl1: {members: [a], beamtimes: [b]}\n", "beamlines.bl1", "unknown field"),
        ("projects:\n  x: {members: [a]}\n", "projects", "unknown section"),
        ("proposals: [p1, p2]\n", "proposals", "a mapping of names"),
        ("proposals:\n  p1: [alice]\n", "proposals.p1", "expected a mapping"),
        (
            "proposals:\n  p1: {beamtimes: [b1]}\n  p2: {beamtimes: [b1]}\n",
            "proposals.p2",
            "beamtime 'b1' is of proposal 'p1' already",
        ),
        ("proposals:\n  p1: {members: [alice\n", "line 3", "not valid YAML"),
        ("- a\n- b\n", "top level", "expected sections"),
    ],
)
def test_yaml_errors_name_the_file_and_the_entry(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    path = _write(tmp_path / "facility-groups.yaml", text)
    with pytest.raises(CatalogConfigError) as err:
        YAMLGroups(path)
    message = str(err.value)
    assert str(path) in message and where in message and what in message, message


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogConfigError, match=r"group file .*nope\.yaml: No such file"):
        YAMLGroups(tmp_path / "nope.yaml")


@pytest.fixture
def facility_hook(tmp_path: Path) -> Iterator[list[tuple[str, Mapping | None]]]:
    """A real entry point: a module and a dist-info naming it, on sys.path for this test."""
    calls: list[tuple[str, Mapping | None]] = []
    site = tmp_path / "site"
    (site / "facility_hook-1.0.dist-info").mkdir(parents=True)
    (site / "facility_hook-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: facility-hook\nVersion: 1.0\n"
    )
    (site / "facility_hook-1.0.dist-info" / "entry_points.txt").write_text(
        "[runbroker.groups]\nproposals = facility_hook:groups_of\nbroken = facility_hook:bad\n"
    )
    (site / "facility_hook.py").write_text(
        textwrap.dedent(
            """
            CALLS = []

            def groups_of(principal, claims):
                CALLS.append((principal, claims))
                if principal == "alice":
                    return [("proposal", "p1"), ["beamline", "bl1"]]
                return ()

            def bad(principal, claims):
                return [("project", "x")]
            """
        )
    )
    sys.path.insert(0, str(site))
    try:
        import facility_hook  # type: ignore[import-not-found]

        facility_hook.CALLS = calls
        yield calls
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("facility_hook", None)


def test_entry_point_groups(facility_hook: list) -> None:
    source = EntryPointGroups("proposals")
    claims = {"sub": "alice"}
    assert source.groups_of("alice", claims) == {("proposal", "p1"), ("beamline", "bl1")}
    assert source.groups_of("bob", None) == frozenset()
    assert facility_hook == [("alice", claims), ("bob", None)]
    with pytest.raises(CatalogConfigError, match=r"entry point 'broken'.*\('project', 'x'\)"):
        EntryPointGroups("broken").groups_of("alice", None)
    with pytest.raises(CatalogConfigError, match=r"no entry point 'nope'.*broken, proposals"):
        EntryPointGroups("nope")


def test_entry_point_through_configuration_is_cached(facility_hook: list) -> None:
    source = group_source({"source": "entrypoint", "name": "proposals", "ttl": 60}, None)
    assert isinstance(source, CachedGroups)
    for _ in range(3):
        assert ("proposal", "p1") in source.groups_of("alice", None)
    assert len(facility_hook) == 1


def test_claim_groups(caplog: pytest.LogCaptureFixture) -> None:
    source = ClaimGroups("groups")
    claims = {"groups": ["proposal:p1", "beamtime:b1", "p2", "project:x", "beamline:", 7]}
    with caplog.at_level(logging.WARNING, logger="runbroker.auth.groups"):
        assert source.groups_of("alice", claims) == {("proposal", "p1"), ("beamtime", "b1")}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 4 and all("ignored" in w for w in warned)
    assert any("'project:x'" in w for w in warned)
    assert source.groups_of("alice", None) == frozenset()
    assert source.groups_of("alice", {"groups": "proposal:p1"}) == {("proposal", "p1")}
    with caplog.at_level(logging.WARNING, logger="runbroker.auth.groups"):
        assert source.groups_of("alice", {"groups": {"p": 1}}) == frozenset()
    assert "not a list" in caplog.records[-1].getMessage()
    assert ClaimGroups("roles").groups_of("a", {"roles": ["beamline:bl1"]}) == {("beamline", "bl1")}


class Counting:
    """A source that counts its calls and answers after a pause (a slow proposal system)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.calls: list[str] = []
        self.pause = pause
        self._lock = threading.Lock()

    def groups_of(self, principal: str, claims: Mapping | None) -> frozenset[tuple[str, str]]:
        time.sleep(self.pause)
        with self._lock:
            self.calls.append(principal)
            n = len(self.calls)
        return frozenset({("proposal", f"{principal}-{n}")})


def test_cache_keeps_answers_for_its_ttl() -> None:
    inner = Counting()
    ttl = 1.0  # a loaded machine can pause the checks below for a good part of a second
    cached = CachedGroups(inner, ttl=ttl)
    first = cached.groups_of("alice", None)
    asked = time.monotonic()
    assert cached.groups_of("alice", None) == first
    assert cached.groups_of("bob", None) != first  # per principal
    assert inner.calls == ["alice", "bob"]
    time.sleep(max(0.0, asked + ttl - time.monotonic()) + 0.05)
    assert cached.groups_of("alice", None) != first  # expired: asked again
    assert inner.calls == ["alice", "bob", "alice"]
    cached.forget("alice")
    cached.groups_of("alice", None)
    assert inner.calls.count("alice") == 3
    with pytest.raises(ValueError, match="ttl -1"):
        CachedGroups(inner, ttl=-1)


def test_cache_is_thread_safe() -> None:
    inner = Counting()
    cached = CachedGroups(inner, ttl=60)
    names = [f"user{i}" for i in range(8)]
    cached_first = {n: cached.groups_of(n, None) for n in names}
    results: list[bool] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(200):
                for n in names:
                    results.append(cached.groups_of(n, None) == cached_first[n])
        except BaseException as err:  # a thread's failure must fail the test
            errors.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results) and len(results) == 8 * 200 * 8
    assert len(inner.calls) == len(names)


def test_directory_and_combined_sources(tmp_path: Path) -> None:
    d = Directory(f"sqlite:///{tmp_path / 'auth.db'}")
    d.add_principal("alice")
    d.add_group("beamtime", "b7", proposal="p7")
    d.add_member("alice", "proposal", "p7")
    yaml_source = YAMLGroups(_write(tmp_path / "g.yaml", GROUPS_YAML))
    both = CombinedGroups(DirectoryGroups(d), yaml_source, ClaimGroups())
    assert isinstance(both, GroupSource)
    assert both.groups_of("alice", {"groups": ["beamline:bl2"]}) == {
        ("proposal", "p7"),
        ("beamtime", "b7"),
        ("proposal", "p1"),
        ("beamtime", "b1"),
        ("beamtime", "b2"),
        ("data_session", "ds-7"),
        ("beamline", "bl2"),
    }
    d.close()


def test_group_source_from_configuration(tmp_path: Path) -> None:
    d = Directory("sqlite://")
    path = _write(tmp_path / "g.yaml", GROUPS_YAML)
    assert isinstance(group_source({"source": "directory"}, d), DirectoryGroups)
    cached = group_source({"source": "yaml", "file": str(path)}, d)
    assert isinstance(cached, CachedGroups) and cached.ttl == 300
    assert isinstance(cached.source, YAMLGroups)
    assert isinstance(group_source({"source": "yaml", "file": str(path), "ttl": 0}, d), YAMLGroups)
    claims = group_source({"source": "claims", "claim": "roles"}, d)
    assert isinstance(claims, ClaimGroups) and claims.claim == "roles"
    for spec, message in [
        ({"source": "ldap"}, "the sources are directory, yaml, entrypoint, claims"),
        ({}, "group source None"),
        ({"source": "yaml"}, "give its 'file' setting"),
        ({"source": "yaml", "file": str(path), "ttl": "soon"}, "ttl 'soon'"),
        ({"source": "yaml", "file": str(path), "ttl": -5}, "ttl -5"),
        ({"source": "claims", "file": "x"}, "unknown setting(s) file"),
        ({"source": "entrypoint"}, "give its 'name' setting"),
    ]:
        with pytest.raises(CatalogConfigError, match=re.escape(message)):
            group_source(spec, d)
    with pytest.raises(CatalogConfigError, match="has no directory"):
        group_source({"source": "directory"}, None)
