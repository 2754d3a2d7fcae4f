"""The Python API opened as a principal (a notebook service acting for its user): the same
runs and write rules as over HTTP, with membership from a YAML file or the directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from event_model import compose_run

import runbroker
from runbroker.auth import open_as
from runbroker.errors import AccessDeniedError, CatalogConfigError


def _start(catalog: runbroker.Catalog, **tags: object) -> str:
    run = compose_run(metadata=tags)
    catalog.insert("start", run.start_doc)
    catalog.insert("stop", run.compose_stop())
    return run.start_doc["uid"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    catalog = runbroker.open(tmp_path / "runs.db", create=True)
    uids = {
        "p1": _start(catalog, proposal_id="p1"),
        "p2": _start(catalog, proposal_id="p2"),
        "b9": _start(catalog, beamtime_id="b9"),
        "public": _start(catalog, proposal_id="p3", public=True),
        "untagged": _start(catalog),
    }
    catalog.close()
    groups = tmp_path / "groups.yaml"
    groups.write_text(
        yaml.safe_dump(
            {"proposals": {"p1": {"members": ["alice"], "beamtimes": ["b9"]}}, "beamlines": {}}
        )
    )
    access = tmp_path / "access.yaml"
    access.write_text(
        yaml.safe_dump(
            {
                "directory": f"sqlite:///{tmp_path / 'auth.db'}",
                "groups": [{"source": "yaml", "file": str(groups), "ttl": 0}],
                "admins": ["root"],
            }
        )
    )
    return tmp_path / "runs.db", access, uids


def test_a_principal_sees_its_groups_runs_and_public_ones(setup) -> None:
    db, access, uids = setup
    alice = open_as(db, "alice", access)
    assert set(alice.keys()) == {uids["p1"], uids["b9"], uids["public"]}
    assert len(alice) == 3
    with pytest.raises(KeyError):
        alice[uids["p2"]]
    assert set(open_as(db, "root", access).keys()) == set(uids.values())
    # someone in no group sees public runs only
    assert list(open_as(db, "nobody", access).keys()) == [uids["public"]]


def test_writes_as_a_principal_follow_the_rules(setup) -> None:
    db, access, _ = setup
    alice = open_as(db, "alice", access)
    mine = _start(alice, proposal_id="p1")
    assert mine in alice
    with pytest.raises(AccessDeniedError, match="proposal_id 'p2'"):
        _start(alice, proposal_id="p2")


def test_a_bad_access_file_names_the_setting(setup, tmp_path: Path) -> None:
    db, _, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("directory: sqlite://\nadmin: [root]\n")
    with pytest.raises(CatalogConfigError, match=r"bad.yaml: unknown setting\(s\) admin"):
        open_as(db, "alice", bad)
    bad.write_text("directory: sqlite://\naccess_keys: {sample: sample}\n")
    with pytest.raises(CatalogConfigError, match="access_keys: unknown group kinds"):
        open_as(db, "alice", bad)
