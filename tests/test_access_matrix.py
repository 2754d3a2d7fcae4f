"""Who sees what, through every route of a real server: a matrix of callers and runs.

Runs are taken by a real RunEngine with ophyd's simulated devices, tagged with proposals,
beamtimes, a data session, beamlines, public and untagged. The callers are three users with
different groups, a beamline's staff, an admin and an anonymous caller, each with an API key
of the identity directory (anonymous: none). For each caller, each run and EVERY route of the
app that names a run (enumerated from the app: a new route without an example request here
fails the test), a visible run answers and a hidden one is 404 -- never 403. Searches, counts
and distinct values hold exactly the visible runs. The expected visibility is computed here
from the tags, independently of the server's policy code.

Then the credential failures: a revoked key, an expired key, a key without the scope a route
needs, an unknown key timed against a known one; and the write rules over HTTP.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import runbroker
from runbroker.auth.access import AccessControl
from runbroker.auth.principal import GROUP_KEYS, READ_SCOPES
from runbroker.cli import main as cli
from runbroker.queries import Key
from runbroker.server import Settings, build_app
from runbroker.server.context import api_routes, route_scopes
from runbroker.testing.serving import ThreadServer

pytestmark = pytest.mark.slow

TAGSETS: list[dict[str, Any]] = [
    {"proposal_id": "p1"},
    {"proposal_id": "p2"},
    {"proposal_id": "p3"},
    {"proposal_id": "p1", "beamtime_id": "b1"},
    {"proposal_id": "p2", "beamtime_id": "b3"},
    {"beamtime_id": "b2"},  # a beamtime of p1, named alone
    {"proposal_id": "p4", "beamline_id": "bl1"},
    {"proposal_id": "p5", "beamline_id": "bl2"},
    {"data_session": "ds1"},
    {"proposal_id": 31234},  # a number, as many facilities' start documents carry it
    {"public": True},
    {"proposal_id": "p3", "public": True},
    {},  # untagged: admins only
]
RUNS_PER_TAGSET = 3  # 39 runs

# name -> (groups as (kind, name), admin)
PRINCIPALS: dict[str, tuple[list[tuple[str, str]], bool]] = {
    "alice": ([("proposal", "p1")], False),  # and, through p1, beamtimes b1 and b2
    "bob": ([("proposal", "p2"), ("data_session", "ds1")], False),
    "carol": ([("beamtime", "b3"), ("proposal", "31234")], False),
    "staff": ([("beamline", "bl1")], False),
    "root": ([], True),
}
BEAMTIMES = {"b1": "p1", "b2": "p1", "b3": "p2"}


def expected_to_see(name: str, tags: dict[str, Any]) -> bool:
    """Visibility from first principles: an admin sees all; anyone sees public runs; a member
    sees a run one of whose tags names a group of theirs (a proposal's member holds its
    beamtimes too)."""
    if name == "anonymous":
        return tags.get("public") is True
    groups, admin = PRINCIPALS[name]
    if admin:
        return True
    if tags.get("public") is True:
        return True
    held = set(groups) | {
        ("beamtime", b) for b, p in BEAMTIMES.items() if ("proposal", p) in groups
    }
    return any((kind, str(tags[key])) in held for kind, key in GROUP_KEYS.items() if key in tags)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from ophyd.sim import det, motor

    root = tmp_path_factory.mktemp("access")
    if request.param == "sqlite":
        catalog = runbroker.open(root / "runs.db", create=True)
    else:
        from runbroker.testing.postgres import new_schema

        url = new_schema(request.getfixturevalue("postgres_url"), f"access_{os.getpid()}")
        catalog = runbroker.open(url)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.insert)
    tags_of: dict[str, dict[str, Any]] = {}
    for i in range(RUNS_PER_TAGSET):
        for tags in TAGSETS:
            plan = count([det], num=2) if i % 2 else scan([det], motor, -1, 1, 3)
            (uid,) = RE(plan, **tags)
            tags_of[uid] = tags
    catalog.flush()

    # SQLite: a directory file of its own; PostgreSQL: the catalog's own database holds it
    directory_url = f"sqlite:///{root / 'auth.db'}" if request.param == "sqlite" else url
    access = AccessControl.from_config(
        {"directory": directory_url, "anonymous": True}, catalog.store.uri
    )
    directory = access.directory
    for beamtime, proposal in BEAMTIMES.items():
        directory.add_group("proposal", proposal) if not any(
            g.name == proposal for g in directory.groups("proposal")
        ) else None
        directory.add_group("beamtime", beamtime, proposal=proposal)
    keys = {}
    for name, (groups, admin) in PRINCIPALS.items():
        directory.add_principal(name, admin=admin)
        for kind, group in groups:
            directory.add_member(name, kind, group)
        keys[name] = directory.create_key(name, "read:metadata,read:data,write:runs", defaults={})[
            1
        ]
    # A key per test of credential failures.
    settings = Settings(auth_failures=100_000)  # the timing test fails many times on purpose
    app = build_app(catalog, settings, access)
    with ThreadServer(app) as server:
        yield {
            "catalog": catalog,
            "tags": tags_of,
            "keys": keys,
            "url": server.url,
            "app": app,
            "access": access,
            "auth_url": directory_url,
        }
    catalog.close()


def _client(world: dict, name: str) -> httpx.Client:
    headers = {} if name == "anonymous" else {"authorization": f"Bearer {world['keys'][name]}"}
    return httpx.Client(base_url=world["url"] + "/api/v1", headers=headers, timeout=60)


CALLERS = [*PRINCIPALS, "anonymous"]


# -- searches, counts, distinct values -------------------------------------------------------


@pytest.mark.parametrize("name", CALLERS)
def test_search_count_and_distinct_hold_exactly_the_visible_runs(world: dict, name: str) -> None:
    visible = {u for u, t in world["tags"].items() if expected_to_see(name, t)}
    with _client(world, name) as http:
        found = {r["uid"] for r in http.post("/search", json={}).json()}
        assert found == visible
        assert http.post("/count", json={}).json() == len(visible)
        # a query of the caller's own, ANDed with what it may see
        query = (Key("plan_name") == "count").to_dict()
        runs = http.post("/search", json={"query": query}).json()
        counted = {
            u for u in visible if world["catalog"][u].metadata["start"]["plan_name"] == "count"
        }
        assert {r["uid"] for r in runs} == counted
        distinct = dict(
            (v, n) for v, n in http.post("/distinct", json={"key": "proposal_id"}).json()
        )
        tagged = [
            str(world["tags"][u]["proposal_id"])
            for u in visible
            if "proposal_id" in world["tags"][u]
        ]
        assert {str(v): n for v, n in distinct.items()} == {p: tagged.count(p) for p in set(tagged)}


def test_the_python_client_sees_the_same(world: dict) -> None:
    cat = runbroker.open(world["url"], api_key=world["keys"]["alice"], cache=False)
    visible = {u for u, t in world["tags"].items() if expected_to_see("alice", t)}
    assert set(cat.keys()) == visible and len(cat) == len(visible)
    hidden = next(u for u in world["tags"] if u not in visible)
    with pytest.raises(KeyError):
        cat[hidden]
    shown = next(iter(visible))
    assert cat[shown].primary.read()["det"].size > 0


# -- every route that names a run ------------------------------------------------------------


def _examples(world: dict, uid: str) -> dict[tuple[str, str], dict[str, Any]]:
    """An example request for each route that names a run: the run's own descriptor, pages
    and fields, so that for a visible run each answers without error."""
    store = world["catalog"].store
    run = world["catalog"][uid]
    descriptor = run.primary.descriptors[0]
    pages = [p.id for p in store.pages(uid, [descriptor["uid"]])]
    fill = {
        "op": "cuts",
        "descriptors": [descriptor["uid"]],
        "field": "det",
        "data_key": descriptor["data_keys"]["det"],
        "refs": None,
        "seq_nums": [1],
    }
    return {
        ("GET", "/runs/{uid}"): {},
        ("GET", "/runs/{uid}/descriptors"): {},
        ("POST", "/runs/{uid}/pages"): {"json": {"descriptors": [descriptor["uid"]]}},
        ("POST", "/runs/{uid}/read"): {"json": {"pages": pages}},
        ("GET", "/runs/{uid}/documents"): {},
        ("GET", "/runs/{uid}/assets"): {},
        ("POST", "/runs/{uid}/datums"): {"json": {"ids": []}},
        ("POST", "/runs/{uid}/fill"): {"json": fill},
        ("GET", "/runs/{uid}/export/{format}"): {"path": {"format": "csv"}},
        ("GET", "/runs/{uid}/summary"): {},
        ("GET", "/runs/{uid}/streams"): {},
        ("GET", "/runs/{uid}/streams/{stream}"): {},
        ("GET", "/runs/{uid}/streams/{stream}/descriptors"): {},
        ("GET", "/runs/{uid}/streams/{stream}/config"): {},
        ("GET", "/runs/{uid}/streams/{stream}/data"): {"params": {"format": "csv"}},
        ("GET", "/runs/{uid}/documents.{kind}"): {"path": {"kind": "json-seq"}},
        ("GET", "/runs/{uid}/streams/{stream}/events"): {},
        ("GET", "/runs/{uid}/feed"): {},
        ("GET", "/runs/{uid}/notes"): {},
        ("GET", "/runs/{uid}/stats"): {},
    }


def _run_routes(app: Any) -> list[tuple[str, str]]:
    """The reading routes that name a run (writing ones are tested with their rules:
    test_access_writes, test_notes_service)."""
    found = []
    for path, route in api_routes(app):
        scopes = route_scopes(route)
        if "{uid}" in path and scopes is not None and set(scopes) <= READ_SCOPES:
            for method in route.methods:
                found.append((method, path.removeprefix("/api/v1")))
    return sorted(found)


def test_every_route_that_names_a_run_has_an_example_here(world: dict) -> None:
    """A route added later is covered by the matrix only once it has an example request."""
    any_uid = next(iter(world["tags"]))
    missing = set(_run_routes(world["app"])) - set(_examples(world, any_uid))
    assert not missing, f"add an example request for {sorted(missing)} to _examples"
    assert len(_run_routes(world["app"])) >= 18


@pytest.mark.parametrize("name", CALLERS)
def test_every_run_route_answers_for_visible_runs_and_is_404_for_hidden_ones(
    world: dict, name: str
) -> None:
    routes = _run_routes(world["app"])
    wrong = []
    with _client(world, name) as http:
        for uid, tags in world["tags"].items():
            examples = _examples(world, uid)
            visible = expected_to_see(name, tags)
            for method, template in routes:
                example = examples[(method, template)]
                path = template.format(uid=uid, stream="primary", **example.get("path", {}))
                response = http.request(
                    method, path, json=example.get("json"), params=example.get("params")
                )
                status = response.status_code
                if (visible and status != 200) or (not visible and status != 404):
                    wrong.append((method, path, tags, status, response.text[:200]))
                if not visible and status == 404:
                    # absent, not forbidden: the answer says nothing about the run
                    assert "not in" in response.text or "no run" in response.text.lower(), (
                        response.text
                    )
    assert not wrong, f"{len(wrong)} wrong answers for {name}, e.g. {wrong[:3]}"


# -- credentials -----------------------------------------------------------------------------


def _key(world: dict, name: str, scopes: str, **options: Any) -> str:
    return world["access"].directory.create_key(name, scopes, **options)[1]


def _count(world: dict, key: str) -> httpx.Response:
    return httpx.post(
        world["url"] + "/api/v1/count", json={}, headers={"authorization": f"Bearer {key}"}
    )


def test_a_revoked_key_is_refused(world: dict) -> None:
    key = _key(world, "bob", "read:metadata")
    assert _count(world, key).status_code == 200
    key_id = key.split("_")[1]
    world["access"].directory.revoke_key(key_id, by="root")
    refused = _count(world, key)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert key not in refused.text


def test_an_expired_key_is_refused(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key(world, "bob", "read:metadata", expires=timedelta(minutes=1))
    assert _count(world, key).status_code == 200
    # A 1 s lifetime can end before the first request under load; the server sees this clock
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 61)
    refused = _count(world, key)
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]


def test_a_key_without_a_routes_scope_is_403_naming_the_scope(world: dict) -> None:
    key = _key(world, "alice", "read:metadata")
    headers = {"authorization": f"Bearer {key}"}
    uid = next(u for u, t in world["tags"].items() if expected_to_see("alice", t))
    assert _count(world, key).status_code == 200
    data = httpx.get(
        f"{world['url']}/api/v1/runs/{uid}/streams/primary/data",
        params={"format": "csv"},
        headers=headers,
    )
    assert data.status_code == 403
    assert data.json()["error"]["code"] == "access_denied"
    assert "read:data" in data.json()["error"]["message"]
    write = httpx.post(f"{world['url']}/api/v1/documents", json=[], headers=headers)
    assert write.status_code == 403 and "write:runs" in write.text
    admin = httpx.get(f"{world['url']}/api/v1/auth/audit", headers=headers)
    assert admin.status_code == 403 and "admin:principals" in admin.text


def test_an_unknown_key_costs_what_a_known_one_with_a_wrong_secret_does(world: dict) -> None:
    """Timing must not tell whether a key id exists: both are refused after the same work."""
    known_id = _key(world, "alice", "read:metadata").split("_")[1]
    unknown = lambda: f"rbk_{secrets.token_urlsafe(9)[:12]}_{secrets.token_urlsafe(32)}"  # noqa: E731
    wrong = lambda: f"rbk_{known_id}_{secrets.token_urlsafe(32)}"  # noqa: E731
    with httpx.Client(base_url=world["url"] + "/api/v1") as http:
        for _ in range(3):  # a busy machine can skew one round: up to three
            times: dict[str, list[float]] = {"unknown": [], "known": []}
            for _ in range(150):
                for kind, make in (("unknown", unknown), ("known", wrong)):
                    started = time.perf_counter()
                    headers = {"authorization": f"Bearer {make()}"}
                    answer = http.post("/count", json={}, headers=headers)
                    times[kind].append(time.perf_counter() - started)
                    assert answer.status_code == 401
                    assert answer.json()["error"]["message"] == "unknown API key"
            a, b = statistics.median(times["unknown"]), statistics.median(times["known"])
            if abs(a - b) / min(a, b) < 0.25:
                break
    assert abs(a - b) / min(a, b) < 0.25, (a, b)


def test_no_credentials_on_a_server_without_anonymous_reading_is_401(
    world: dict, tmp_path: Path
) -> None:
    access = AccessControl.from_config({"directory": f"sqlite:///{tmp_path / 'a.db'}"})
    with ThreadServer(build_app(world["catalog"], Settings(), access)) as server:
        answer = httpx.post(server.url + "/api/v1/count", json={})
        assert answer.status_code == 401 and "needs credentials" in answer.text


# -- writes over HTTP ------------------------------------------------------------------------


def _remote(world: dict, name: str) -> runbroker.Catalog:
    return runbroker.open(world["url"], api_key=world["keys"][name], cache=False)


def test_a_user_writes_its_own_runs_from_a_runengine_and_the_write_is_audited(
    world: dict, capsys: pytest.CaptureFixture
) -> None:
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    remote = _remote(world, "alice")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(remote.insert)
    (uid,) = RE(count([det], num=3), proposal_id="p1")
    remote.flush()
    assert remote[uid].primary.read()["det"].size == 3
    assert world["catalog"][uid].metadata["start"]["proposal_id"] == "p1"
    # the run is bob's to see only if he holds p1: he does not
    with pytest.raises(KeyError):
        _remote(world, "bob")[uid]
    assert cli(["audit", "--auth", world["auth_url"], "--principal", "alice", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    flat = json.dumps(entries)
    assert "runs.insert" in flat and uid in flat and "127.0.0.1" in flat


def test_a_start_tagged_with_another_groups_proposal_is_refused(world: dict) -> None:
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    remote = _remote(world, "alice")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(remote.insert)
    before = len(world["catalog"])
    with pytest.raises(runbroker.errors.AccessDeniedError, match="proposal_id 'p2'"):
        RE(count([det], num=1), proposal_id="p2")
        remote.flush()
    world["catalog"].flush()
    assert len(world["catalog"]) == before


def test_documents_into_another_groups_run_and_uid_reuse_are_refused(world: dict) -> None:
    bobs = next(u for u, t in world["tags"].items() if t == {"proposal_id": "p2"})
    run = world["catalog"][bobs]
    before = list(run.documents(fill=False))
    descriptor = run.primary.descriptors[0]
    event = {
        "uid": "e-" + secrets.token_hex(8),
        "descriptor": descriptor["uid"],
        "seq_num": 999,
        "time": time.time(),
        "data": {"det": 1.0, "motor": 0.0, "motor_setpoint": 0.0},
        "timestamps": {"det": 0.0, "motor": 0.0, "motor_setpoint": 0.0},
    }
    headers = {"authorization": f"Bearer {world['keys']['alice']}"}
    answer = httpx.post(
        world["url"] + "/api/v1/documents", json=[["event", event]], headers=headers
    )
    assert answer.status_code in (400, 404, 409, 422) and "not in this catalog" in answer.text
    start = {**run.metadata["start"], "proposal_id": "p1"}
    answer = httpx.post(
        world["url"] + "/api/v1/documents", json=[["start", start]], headers=headers
    )
    assert answer.status_code == 403 and "a new run needs a new uid" in answer.text
    assert list(world["catalog"][bobs].documents(fill=False)) == before
    # the refusals are audited too
    log = world["access"].directory.audit_log(principal="alice", limit=5)
    assert any(e.action == "runs.insert.refused" for e in log)
