"""Access control through the whole server, end to end: the test identity provider signs real
tokens, the full app (build_app with an access configuration) is served by uvicorn on
loopback, and callers reach it with httpx and with ``runbroker.open(URL, api_key=token)``.

The catalog holds real RunEngine runs: two of proposal p1, one of p2, a public one of p3 and
one with no access tag. A token whose group claim says ``proposal:p1`` must see exactly the p1
runs and the public one, whichever way it is presented.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import runbroker
from runbroker.auth.access import AccessControl
from runbroker.errors import RunNotFoundError
from runbroker.server import Settings, build_app
from runbroker.testing.idp import IdentityProvider
from runbroker.testing.serving import ThreadServer

P1 = ["proposal:p1"]


@dataclasses.dataclass
class Runs:
    path: Path
    p1: list[str]
    p2: str
    public: str
    untagged: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from ophyd.sim import det, motor

    path = tmp_path_factory.mktemp("oidc") / "runs.db"
    cat = runbroker.open(path, create=True)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    p1 = [
        *RE(count([det], 3), proposal_id="p1"),
        *RE(scan([det], motor, -1, 1, 5), proposal_id="p1"),
    ]
    (p2,) = RE(count([det], 2), proposal_id="p2")
    (public,) = RE(count([det], 2), proposal_id="p3", public=True)
    (untagged,) = RE(count([det], 1))
    cat.close()
    return Runs(path, p1, p2, public, untagged)


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


@pytest.fixture
def access(idp: IdentityProvider, tmp_path: Path) -> AccessControl:
    return AccessControl.from_config(
        {
            "directory": str(tmp_path / "auth.db"),
            "oidc": dataclasses.asdict(idp.config()),
            "groups": [{"source": "directory"}, {"source": "claims"}],
        }
    )


@pytest.fixture
def server(runs: Runs, access: AccessControl) -> Iterator[ThreadServer]:
    catalog = runbroker.open(runs.path)
    with ThreadServer(build_app(catalog, Settings(), access)) as s:
        yield s
    catalog.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def searched(url: str, headers: dict[str, str] | None = None, **kw) -> set[str]:
    response = httpx.post(url + "/api/v1/search", json={}, headers=headers, **kw)
    assert response.status_code == 200, response.text
    return {r["uid"] if "uid" in r else r["start"]["uid"] for r in response.json()}


def refused(response: httpx.Response, status: int, code: str, reason: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and reason in error["message"], error
    return error["message"]


# -- bearer tokens


def test_a_p1_token_sees_its_runs_and_the_public_one(runs, idp, server):
    token = idp.token("alice", groups=P1)
    mine = {*runs.p1, runs.public}
    assert searched(server.url, bearer(token)) == mine
    count = httpx.post(server.url + "/api/v1/count", json={}, headers=bearer(token))
    assert count.json() == len(mine)
    for hidden in (runs.p2, runs.untagged):
        got = httpx.get(f"{server.url}/api/v1/runs/{hidden}", headers=bearer(token))
        refused(got, 404, "run_not_found", hidden)
    me = httpx.get(server.url + "/api/v1/auth/whoami", headers=bearer(token)).json()
    assert me["name"] == "alice" and me["via"] == "oidc" and not me["admin"]
    assert me["groups"] == [["proposal", "p1"]]
    assert "read:data" in me["scopes"] and "admin:keys" not in me["scopes"]

    # the Python client sends api_key as the bearer: a token works there as a key does
    cat = runbroker.open(server.url, api_key=token, cache=False)
    assert set(cat.keys()) == mine and len(cat) == len(mine)
    assert set(cat.search({"proposal_id": "p1"}).keys()) == set(runs.p1)
    assert cat[runs.p1[0]].primary.read()["det"].shape == (3,)
    for hidden in (runs.p2, runs.untagged):
        with pytest.raises(RunNotFoundError):
            cat[hidden]
        with pytest.raises(KeyError):
            cat[hidden]


def test_groups_of_other_kinds_come_from_the_claim_too(runs, idp, server):
    assert searched(server.url, bearer(idp.token("bob", groups=["proposal:p2"]))) == {
        runs.p2,
        runs.public,
    }
    # a group string that is not KIND:NAME gives nothing; public runs stay visible
    assert searched(server.url, bearer(idp.token("eve", groups=["p1", "admins"]))) == {runs.public}


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda idp: idp.token("alice", groups=P1, expires_in=-3600), "has expired"),
        (lambda idp: idp.token("alice", groups=P1, not_before=3600), "not valid yet"),
        (lambda idp: idp.forge("alice", groups=P1), "signature does not verify"),
        (
            lambda idp: idp.token("alice", groups=P1, issuer="https://other.example/realm"),
            "issued by 'https://other.example/realm'",
        ),
        (lambda idp: idp.token("alice", groups=P1, audience="grafana"), "audience 'grafana'"),
    ],
    ids=["expired", "not-yet-valid", "bad-signature", "wrong-issuer", "wrong-audience"],
)
def test_a_bad_token_is_401_naming_why_and_never_repeating_it(idp, server, make, reason):
    token = make(idp)
    for send in (
        lambda: httpx.post(server.url + "/api/v1/search", json={}, headers=bearer(token)),
        lambda: httpx.get(server.url + "/api/v1/auth/whoami", headers=bearer(token)),
    ):
        response = send()
        message = refused(response, 401, "not_authenticated", reason)
        assert token not in response.text and token.split(".")[2] not in message
    with pytest.raises(PermissionError, match=reason):
        len(runbroker.open(server.url, api_key=token, cache=False))


def test_key_rotation_takes_the_new_key_and_drops_the_old(runs, idp, server):
    before = idp.token("alice", groups=P1)
    assert len(searched(server.url, bearer(before))) == 3
    fetched = idp.jwks_fetches
    idp.rotate()  # the old key leaves the provider's JWKS
    after = idp.token("alice", groups=P1)
    # a kid the server has not seen makes it fetch the keys again at once
    assert searched(server.url, bearer(after)) == {*runs.p1, runs.public}
    assert idp.jwks_fetches == fetched + 1
    dropped = httpx.post(server.url + "/api/v1/search", json={}, headers=bearer(before))
    refused(dropped, 401, "not_authenticated", "a key the identity provider does not publish")


def test_the_scope_claim_narrows_what_a_token_may_do(runs, idp, server):
    token = idp.token("alice", groups=P1, scope="openid profile read:metadata")
    assert searched(server.url, bearer(token)) == {*runs.p1, runs.public}
    data = f"{server.url}/api/v1/runs/{runs.p1[0]}/streams/primary/data"
    got = httpx.get(data, params={"format": "csv"}, headers=bearer(token))
    refused(got, 403, "access_denied", "needs the read:data scope")
    me = httpx.get(server.url + "/api/v1/auth/whoami", headers=bearer(token)).json()
    assert me["scopes"] == ["read:metadata"]
    # a token with no runbroker scope in its claim gets a user's
    full = idp.token("alice", groups=P1, scope="openid profile")
    assert httpx.get(data, params={"format": "csv"}, headers=bearer(full)).status_code == 200


# -- the browser login


def test_the_browser_login_reads_with_the_cookie_and_cannot_write(runs, idp, server):
    idp.login_as("alice", groups=P1)
    with httpx.Client(base_url=server.url) as browser:
        leave = browser.get("/auth/login", params={"next": "/api/v1/auth/whoami"})
        assert leave.status_code == 302, leave.text
        assert leave.headers["location"].startswith(idp.url + "/authorize?")
        # the provider approves and sends the browser back; the callback sets the session
        # cookie and sends it on to `next`, which it then reads as alice
        me = browser.get(leave.headers["location"], follow_redirects=True)
        assert me.status_code == 200, me.text
        assert urlsplit(str(me.url)).path == "/api/v1/auth/whoami"
        assert me.json()["name"] == "alice" and me.json()["groups"] == [["proposal", "p1"]]
        assert "runbroker_session" in browser.cookies

        data = browser.get(f"/api/v1/runs/{runs.p1[0]}/streams/primary/data?format=csv")
        assert data.status_code == 200 and data.text.count("\n") >= 4
        hidden = browser.get(f"/api/v1/runs/{runs.p2}")
        refused(hidden, 404, "run_not_found", runs.p2)
        # a cookie authenticates reads only: a write must carry its token itself
        write = browser.post("/api/v1/documents", json=["start", {"uid": "x", "time": 0}])
        refused(write, 401, "not_authenticated", "")
        search = browser.post("/api/v1/search", json={})
        assert search.status_code == 401

        browser.post("/auth/logout")
        assert browser.get("/api/v1/auth/whoami").status_code == 401


# -- download links


def download(server: ThreadServer, token: str, path: str, **params) -> httpx.Response:
    return httpx.post(
        server.url + "/api/v1/auth/download-token",
        params={"path": path, **params},
        headers=bearer(token),
    )


def test_a_download_link_works_without_headers_for_its_path_only(runs, idp, server):
    token = idp.token("alice", groups=P1)
    path = f"/api/v1/runs/{runs.p1[0]}/streams/primary/data"
    issued = download(server, token, path)
    assert issued.status_code == 200, issued.text
    link = issued.json()["url"]
    assert link.startswith(path + "?token=")
    got = httpx.get(server.url + link + "&format=csv")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv") and got.text.count("\n") >= 4
    # the same token on another path is refused, not followed
    other = f"/api/v1/runs/{runs.p1[1]}/streams/primary/data"
    moved = httpx.get(server.url + other + "?" + link.split("?", 1)[1])
    refused(moved, 401, "not_authenticated", "")
    # a link is a reading: it cannot write
    post = httpx.post(server.url + "/api/v1/documents?" + link.split("?", 1)[1], json=[])
    assert post.status_code == 401


def test_a_download_link_to_a_hidden_run_is_404(runs, idp, server):
    token = idp.token("alice", groups=P1)
    for hidden in (runs.p2, runs.untagged):
        issued = download(server, token, f"/api/v1/runs/{hidden}/streams/primary/data")
        assert issued.status_code == 200, issued.text  # a link says nothing of what exists
        got = httpx.get(server.url + issued.json()["url"] + "&format=csv")
        refused(got, 404, "run_not_found", hidden)


def test_an_expired_download_link_is_401(runs, idp, server):
    import time

    token = idp.token("alice", groups=P1)
    issued = download(server, token, f"/api/v1/runs/{runs.public}/streams/primary/data", ttl=1)
    time.sleep(2.1)
    got = httpx.get(server.url + issued.json()["url"] + "&format=csv")
    refused(got, 401, "not_authenticated", "expired")


# -- API keys of a user known only from its tokens


def test_a_token_user_creates_uses_lists_and_revokes_its_own_key(runs, idp, server, access):
    token = idp.token("alice", groups=P1)
    made = httpx.post(
        server.url + "/api/v1/auth/keys",
        json={"scopes": ["read:metadata"], "expires": "1d", "note": "laptop"},
        headers=bearer(token),
    )
    assert made.status_code == 201, made.text
    key, secret = made.json()["key"], made.json()["secret"]
    assert secret.startswith("rbk_") and key["scopes"] == ["read:metadata"]

    # the token's group claim is not in the key: alice's groups are nowhere else yet, so the
    # key sees the public runs only
    assert searched(server.url, bearer(secret)) == {runs.public}
    me = httpx.get(server.url + "/api/v1/auth/whoami", headers=bearer(secret)).json()
    assert me["via"] == "api-key" and me["groups"] == [] and me["scopes"] == ["read:metadata"]

    # once the directory holds her groups, the key sees what her token sees
    access.directory.add_member("alice", "proposal", "p1")
    assert searched(server.url, bearer(secret)) == searched(server.url, bearer(token))
    cat = runbroker.open(server.url, api_key=secret, cache=False)
    assert set(cat.keys()) == {*runs.p1, runs.public}
    with pytest.raises(KeyError):
        cat[runs.p2]
    # the key's scope is read:metadata: no data
    data = f"{server.url}/api/v1/runs/{runs.p1[0]}/streams/primary/data?format=csv"
    refused(httpx.get(data, headers=bearer(secret)), 403, "access_denied", "read:data")

    listed = httpx.get(server.url + "/api/v1/auth/keys", headers=bearer(token)).json()
    assert [k["id"] for k in listed] == [key["id"]] and listed[0]["note"] == "laptop"
    gone = httpx.delete(f"{server.url}/api/v1/auth/keys/{key['id']}", headers=bearer(secret))
    assert gone.status_code == 200 and gone.json()["revoked"]
    after = httpx.post(server.url + "/api/v1/search", json={}, headers=bearer(secret))
    refused(after, 401, "not_authenticated", "revoked")
    actions = [e.action for e in access.directory.audit_log(principal="alice")]
    assert actions == ["keys.revoke", "keys.create"]


def test_a_key_cannot_give_more_than_the_token_holds(idp, server):
    token = idp.token("alice", groups=P1, scope="read:metadata")
    made = httpx.post(
        server.url + "/api/v1/auth/keys",
        json={"scopes": ["read:metadata", "write:runs"]},
        headers=bearer(token),
    )
    refused(made, 403, "access_denied", "not write:runs")
    other = httpx.post(
        server.url + "/api/v1/auth/keys",
        json={"scopes": ["read:metadata"], "principal": "bob"},
        headers=bearer(token),
    )
    refused(other, 403, "access_denied", "admin:keys")


def test_a_download_link_reads_with_no_more_than_its_maker_may(runs, idp, server, access):
    data = f"/api/v1/runs/{runs.p1[0]}/streams/primary/data"
    # a token, or an API key, that may search but not read data cannot get the data through
    # a link (the link once read as the principal, with all the principal's scopes)
    access.directory.add_principal("carol")
    access.directory.add_member("carol", "proposal", "p1")
    _, key = access.directory.create_key("carol", "read:metadata")
    for credential in (idp.token("alice", groups=P1, scope="read:metadata"), key):
        issued = download(server, credential, data)
        got = httpx.get(server.url + issued.json()["url"] + "&format=csv")
        refused(got, 403, "access_denied", "needs the read:data scope")
        # the same link's maker may read the metadata: the link does that
        link = download(server, credential, f"/api/v1/runs/{runs.p1[0]}").json()["url"]
        assert httpx.get(server.url + link).status_code == 200


# -- docs/access.md's table of routes


def test_the_docs_table_of_routes_and_scopes_is_the_apps(idp, access):
    from runbroker.server.context import api_routes, route_scopes

    app = build_app(runbroker.temp(), Settings(), access)  # oidc with a client_id: the login too
    expected = {}
    for path, route in api_routes(app):
        scopes = route_scopes(route)
        need = "none" if scopes is None else " and ".join(f"`{s}`" for s in scopes) or "any"
        for method in route.methods:
            expected[f"{method} {path}"] = need
    page = (Path(__file__).parents[1] / "docs" / "access.md").read_text()
    rows = re.findall(r"^\| `([A-Z]+ /[^`]*)` \| ([^|]*?) \|$", page, re.M)
    # "any (another principal's: `admin:keys`)": the route checks that itself
    documented = {route: need.split(" (")[0] for route, need in rows}
    table = "\n".join(f"| `{r}` | {n} |" for r, n in sorted(expected.items()))
    assert documented == expected, f"docs/access.md's table should list:\n{table}"
