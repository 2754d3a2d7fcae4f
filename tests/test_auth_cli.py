"""``runbroker keys | principals | groups | audit`` through ``runbroker.cli.main`` and once as a
real process; where ``--auth`` points (a catalog's own file, a folder catalog, PostgreSQL)."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

import runbroker
from runbroker.auth.directory import Directory
from runbroker.cli import main
from runbroker.auth.directory import directory_for

ME = f"local:{getpass.getuser()}"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory in a new SQLite file, named by $RUNBROKER_AUTH."""
    path = tmp_path / "auth.db"
    monkeypatch.setenv("RUNBROKER_AUTH", str(path))
    return path


def test_keys_create_list_revoke(capsys: pytest.CaptureFixture, auth: Path) -> None:
    assert run(capsys, "principals", "add", "alice", "--group", "proposal:p1")[0] == 0
    code, out, err = run(
        capsys,
        "keys", "create", "--principal", "alice", "--scopes", "read:metadata,read:data",
        "--expires", "30d", "--default", "proposal_id=p1", "--note", "beamline PC",
    )  # fmt: skip
    assert code == 0
    secret = out.strip()
    assert out.count("\n") == 1 and secret.startswith("rbk_")  # the secret alone on stdout
    assert "will not be shown again" in err and "alice" in err and "expires" in err
    d = Directory(f"sqlite:///{auth}")
    key = d.verify_key(secret)
    assert key.scopes == {"read:metadata", "read:data"} and key.defaults == {"proposal_id": "p1"}
    assert key.note == "beamline PC" and key.expires is not None
    d.close()

    code, out, _ = run(capsys, "keys", "list")
    header, row = out.splitlines()
    assert header.split() == [
        *("id", "principal", "scopes", "created", "expires", "revoked", "last", "used")
    ]
    assert row.startswith(key.id) and "alice" in row and "read:data,read:metadata" in row
    assert secret not in out
    assert run(capsys, "keys", "list", "--principal", "bob")[1] == "no API keys\n"

    code, out, _ = run(capsys, "keys", "revoke", key.id)
    assert (code, out) == (0, f"revoked key {key.id} of alice\n")
    d = Directory(f"sqlite:///{auth}")
    assert d.key(key.id).revoked_by == ME
    d.close()

    log = json.loads(run(capsys, "audit", "--json", "--limit", "1")[1])
    assert (log["principal"], log["action"], log["target"], log["client"]) == (
        ME,
        "keys.revoke",
        key.id,
        "cli",
    )


def test_principals_and_groups(capsys: pytest.CaptureFixture, auth: Path) -> None:
    assert run(capsys, "groups", "add", "beamtime:b1", "--proposal", "p1")[0] == 0
    assert run(capsys, "principals", "add", "alice", "--group", "proposal:p1")[0] == 0
    assert run(capsys, "principals", "add", "re45", "--service", "--scopes", "write:runs")[0] == 0
    assert run(capsys, "principals", "add", "root", "--admin")[1] == "added user root (admin)\n"
    out = run(capsys, "principals", "list")[1]
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "beamtime:b1 proposal:p1" in lines["alice"]
    assert lines["re45"].split()[1:4] == ["service", "no", "write:runs"]
    assert "admin:keys" in lines["root"] and " yes " in lines["root"]
    out = run(capsys, "groups", "list")[1]
    assert [line.split() for line in out.splitlines()] == [
        ["kind", "name", "proposal", "members"],
        ["beamtime", "b1", "p1", "0"],
        ["proposal", "p1", "-", "1"],
    ]
    assert run(capsys, "groups", "members", "proposal:p1", "--add", "re45")[1] == "alice\nre45\n"
    assert run(capsys, "groups", "members", "proposal:p1", "--remove", "alice")[1] == "re45\n"
    assert run(capsys, "principals", "remove", "re45")[0] == 0
    assert run(capsys, "groups", "members", "proposal:p1")[1] == ""
    actions = [e["action"] for e in map(json.loads, run(capsys, "audit", "--json")[1].splitlines())]
    assert actions[:3] == ["groups.members", "principals.remove", "groups.members"]
    assert actions[-1] == "groups.add"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["principals", "add", "bob", "--group", "p1"], "group 'p1': write KIND:NAME"),
        (["principals", "add", "bob", "--group", "beamtime:b5"], "no beamtime named 'b5'"),
        (["principals", "add", "bob", "--scopes", "read:all"], "unknown scope 'read:all'"),
        (["principals", "add", "alice"], "principal 'alice' exists already"),
        (["principals", "remove", "carol"], "no principal named 'carol'"),
        (["keys", "create", "--principal", "carol", "--scopes", "read:data"], "no principal"),
        (["keys", "create", "--principal", "alice", "--scopes", "admin:keys"], "does not hold"),
        (
            ["keys", "create", "--principal", "alice", "--scopes", "read:data", "--expires", "1y"],
            "duration '1y'",
        ),
        (
            ["keys", "create", "--principal", "alice", "--scopes", "read:data", "--default", "x"],
            "--default 'x': write KEY=VALUE",
        ),
        (["keys", "revoke", "nope"], "no API key with id 'nope'"),
        (["groups", "add", "beamtime:b2"], "name its proposal"),
        (["groups", "add", "team:x"], "group 'team:x'"),
        (["groups", "members", "proposal:zz"], "no proposal named 'zz'"),
        (["audit", "--since", "yesterday"], "--since 'yesterday'"),
        (["audit", "--limit", "0"], "limit 0"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture, auth: Path, argv: list[str], message: str
) -> None:
    run(capsys, "principals", "add", "alice")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("runbroker ") and message in err, err
    # A refused command is not recorded as done, and left nothing half made.
    d = Directory(f"sqlite:///{auth}")
    assert [e.action for e in d.audit_log()] == ["principals.add"]
    assert [p.name for p in d.principals()] == ["alice"]
    d.close()


def test_no_directory_named(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNBROKER_AUTH", raising=False)
    code, _, err = run(capsys, "keys", "list")
    assert code == 2 and "--auth URL or $RUNBROKER_AUTH" in err


def _catalog_with_runs(path: Path) -> runbroker.Catalog:
    cat = runbroker.open(path, create=True)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(count([det], num=3), proposal_id="p1")
    return cat


def test_auth_in_a_sqlite_catalogs_own_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    _catalog_with_runs(path).close()
    assert run(capsys, "principals", "add", "alice", "--auth", str(path))[0] == 0
    cat = runbroker.open(path)
    assert len(cat) == 1 and cat[-1].primary.read()["det"].shape == (3,)
    cat.close()
    assert directory_for(str(path)).principal("alice") is not None
    assert directory_for(f"sqlite:///{path}").principal("alice") is not None
    assert directory_for(path.as_uri()).principal("alice") is not None


def test_auth_of_a_folder_catalog(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = tmp_path / "beamtime"
    folder.mkdir()  # an empty folder opened with create=True becomes a folder catalog
    _catalog_with_runs(folder).close()
    assert not folder.joinpath("runs.db").exists() and list(folder.rglob("*.jsonl"))
    assert run(capsys, "principals", "add", "alice", "--auth", str(folder))[0] == 0
    assert (folder / ".runbroker" / "auth.db").is_file()
    cat = runbroker.open(folder)
    assert len(cat) == 1
    cat.close()


def test_auth_on_postgresql(capsys: pytest.CaptureFixture, postgres_url: str) -> None:
    from runbroker.testing.postgres import new_schema

    url = new_schema(postgres_url, f"authcli{os.getpid()}")
    assert run(capsys, "principals", "add", "alice", "--auth", url)[0] == 0
    code, out, _ = run(capsys, "principals", "list", "--auth", url)
    assert code == 0 and "alice" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://host:8000", "not a server's URL"),
        ("{tmp}/no/such/auth.db", "does not exist"),
        ("{tmp}/text.db", "is not an SQLite database"),
    ],
)
def test_directory_for_refuses(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "text.db").write_text("not a database")
    with pytest.raises(ValueError, match=message):
        directory_for(target.format(tmp=tmp_path))


def test_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "RUNBROKER_AUTH": str(tmp_path / "auth.db")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(runbroker.__file__).parents[1]), *sys.path])

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runbroker.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("principals", "add", "alice")
    assert done.returncode == 0, done.stderr
    done = cli("keys", "create", "--principal", "alice", "--scopes", "read:data")
    assert done.returncode == 0 and "will not be shown again" in done.stderr
    secret = done.stdout.strip()
    assert Directory(f"sqlite:///{tmp_path / 'auth.db'}").authenticate(secret).name == "alice"
    done = cli("keys", "revoke", "nope")
    assert done.returncode == 2
    assert done.stderr == "runbroker keys revoke: no API key with id 'nope'\n"
