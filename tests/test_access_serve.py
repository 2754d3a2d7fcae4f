"""`runbroker serve CATALOG --access FILE` as an admin runs it: principals and keys made with
the CLI, two worker processes sharing the directory, a browser origin allowed by flag."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from event_model import compose_run

import runbroker
from runbroker.cli import main as cli
from runbroker.testing.serving import ServeCommand

pytestmark = pytest.mark.slow


def _run(catalog: runbroker.Catalog, **tags: object) -> str:
    run = compose_run(metadata=tags)
    catalog.insert("start", run.start_doc)
    catalog.insert("stop", run.compose_stop())
    return run.start_doc["uid"]


def test_serve_with_access_control_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    catalog = runbroker.open(tmp_path / "runs.db", create=True)
    mine, theirs = _run(catalog, proposal_id="p1"), _run(catalog, proposal_id="p2")
    catalog.close()
    auth = str(tmp_path / "runs.db")  # the catalog's own file holds the directory
    assert cli(["principals", "add", "alice", "--group", "proposal:p1", "--auth", auth]) == 0
    assert cli(["keys", "create", "--principal", "alice", "--scopes", "read:metadata,read:data",
                "--expires", "30d", "--auth", auth]) == 0  # fmt: skip
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("rbk_")
    (tmp_path / "access.yaml").write_text(yaml.safe_dump({"anonymous": False}))
    origin = "https://app.example.org"
    served = ServeCommand(
        tmp_path, "runs.db", "--access", "access.yaml", "--workers", "2", "--cors-origin", origin
    )
    try:
        out = served.output()
        assert "access control from access.yaml" in out and "api_key=" not in out
        for _ in range(4):  # answered by either worker
            cat = runbroker.open(served.url, api_key=secret, cache=False)
            assert list(cat.keys()) == [mine]
            with pytest.raises(KeyError):
                cat[theirs]
        assert httpx.post(served.url + "/api/v1/count", json={}).status_code == 401
        preflight = {"origin": origin, "access-control-request-method": "POST"}
        allowed = httpx.options(served.url + "/api/v1/count", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == origin
        other = httpx.options(
            served.url + "/api/v1/count", headers={**preflight, "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        served.stop()
    assert secret not in served.output()  # the key never reaches the server's log
