"""The browser login (authorization code + PKCE) end to end: a small app with the login routes
served by uvicorn on loopback, the test identity provider on a server of its own, and httpx
following the browser's redirects one at a time."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from runbroker.auth.oidc import OIDCVerifier
from runbroker.errors import RunbrokerError
from runbroker.server.login import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    _Signer,
    login_router,
    safe_next,
    session_token,
)
from runbroker.testing.idp import IdentityProvider
from runbroker.testing.serving import ThreadServer

SECRET = b"a secret of the server's, 32 bytes"


def make_app(idp: IdentityProvider, **config) -> FastAPI:
    config = idp.config(**config)
    verifier = OIDCVerifier(config)
    app = FastAPI()
    app.include_router(login_router(config, verifier, SECRET))

    @app.api_route("/whoami", methods=["GET", "POST"])
    def whoami(request: Request) -> dict:
        token = session_token(request)
        name = verifier.identity(verifier.verify(token))[0] if token else None
        return {"token": token, "name": name}

    @app.exception_handler(RunbrokerError)
    async def error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RunbrokerError)
        return JSONResponse({"error": err.to_dict()}, err.status)

    return app


@pytest.fixture
def idp():
    with IdentityProvider() as provider:
        provider.login_as("alice", groups=["proposal:p1"])
        yield provider


@pytest.fixture
def site(idp):
    with ThreadServer(make_app(idp)) as server:
        yield server


def step(browser: httpx.Client, url: str, status: int = 302, **kw) -> httpx.Response:
    response = browser.get(url, **kw)
    assert response.status_code == status, response.text
    return response


def to_provider(browser: httpx.Client, site_url: str, next: str = "/whoami") -> str:
    """Start a login; the provider's answer: the address it sends the browser back to."""
    authorize = step(browser, site_url + "/auth/login", params={"next": next})
    return step(browser, authorize.headers["location"]).headers["location"]


def test_the_full_login(idp, site):
    with httpx.Client() as browser:
        leave = step(browser, site.url + "/auth/login", params={"next": "/whoami"})
        where = urlsplit(leave.headers["location"])
        assert f"{where.scheme}://{where.netloc}{where.path}" == idp.url + "/authorize"
        params = {k: v[0] for k, v in parse_qs(where.query).items()}
        assert params["response_type"] == "code" and params["client_id"] == "runbroker"
        assert params["redirect_uri"] == site.url + "/auth/callback"
        assert params["scope"] == "openid profile"
        assert params["code_challenge_method"] == "S256"
        assert len(params["code_challenge"]) == 43 and len(params["state"]) >= 32
        cookie = leave.headers["set-cookie"].lower()
        assert cookie.startswith(LOGIN_COOKIE + "=")
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/auth/callback" in cookie
        assert "secure" not in cookie  # plain http on loopback

        back = step(browser, leave.headers["location"]).headers["location"]
        assert back.startswith(site.url + "/auth/callback?")
        assert parse_qs(urlsplit(back).query)["state"] == [params["state"]]

        done = step(browser, back, 303)
        assert done.headers["location"] == "/whoami"
        session = [c for c in done.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]
        attrs = session[0].lower()
        assert "httponly" in attrs and "samesite=lax" in attrs and "path=/" in attrs
        max_age = int(attrs.split("max-age=")[1].split(";")[0])
        assert 250 < max_age <= 300  # until the token expires

        me = browser.get(site.url + "/whoami").json()
        assert me["name"] == "alice"
        assert OIDCVerifier(idp.config()).verify(me["token"])["groups"] == ["proposal:p1"]
        # the cookie does not authenticate a write (cross-site request forgery)
        assert browser.post(site.url + "/whoami").json() == {"token": None, "name": None}


def test_a_code_is_good_once(site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
        step(browser, back, 303)
        again = browser.get(back)
        # the login cookie was spent with the first use
        assert again.status_code == 401 and "no login is under way" in again.text


def test_a_wrong_state_is_refused(site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
        code = parse_qs(urlsplit(back).query)["code"][0]
        answer = browser.get(site.url + "/auth/callback", params={"code": code, "state": "x"})
        assert answer.status_code == 401
        assert answer.json()["error"]["message"].startswith(
            "the login's state does not match the one this browser started"
        )
        assert SESSION_COOKIE not in browser.cookies


def test_a_code_from_another_login_fails_its_verifier(site):
    """A code stolen from one login and slipped into another browser's callback: the
    provider refuses it, because that browser's PKCE verifier is not the code's."""
    with httpx.Client() as victim, httpx.Client() as attacker:
        victims = to_provider(victim, site.url)
        attackers = to_provider(attacker, site.url)
        victim_state = parse_qs(urlsplit(victims).query)["state"][0]
        stolen = parse_qs(urlsplit(attackers).query)["code"][0]
        answer = victim.get(
            site.url + "/auth/callback", params={"code": stolen, "state": victim_state}
        )
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == (
            "the identity provider refused the login code "
            "(invalid_grant: code_verifier does not match the code_challenge)"
        )


def test_the_provider_checks_the_verifier(idp, site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
    code = parse_qs(urlsplit(back).query)["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "runbroker",
        "redirect_uri": site.url + "/auth/callback",
        "code_verifier": "not-the-verifier-" * 4,
    }
    answer = httpx.post(idp.url + "/token", data=form)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "target", ["https://evil.example/x", "//evil.example", "/\\evil.example", "javascript:x"]
)
def test_next_never_leaves_the_site(site, target):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url, next=target)
        assert step(browser, back, 303).headers["location"] == "/"


def test_safe_next_keeps_paths_on_the_site():
    assert safe_next("/runs/abc?stream=primary#x") == "/runs/abc?stream=primary#x"
    for bad in (None, "", "runs", "/\r\nSet-Cookie: x", "/a b", "/" + "x" * 2001):
        assert safe_next(bad) == "/"


def test_a_tampered_login_cookie_is_refused(site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
        value = browser.cookies[LOGIN_COOKIE]
        body, signature = value.split(".")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        payload["next"] = "https://evil.example"
        forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        browser.cookies.set(LOGIN_COOKIE, forged + "." + signature, path="/auth/callback")
        answer = browser.get(back)
        assert answer.status_code == 401
        assert "the login cookie was altered" in answer.json()["error"]["message"]


def test_an_expired_login_cookie_is_refused(site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
        value = browser.cookies[LOGIN_COOKIE]
        body = value.split(".")[0]
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        # signed by the server's secret, but 11 minutes ago
        stale = _Signer(SECRET).sign({k: v for k, v in payload.items() if k != "exp"}, -60)
        browser.cookies.set(LOGIN_COOKIE, stale, path="/auth/callback")
        answer = browser.get(back)
        assert answer.status_code == 401 and "longer than 10 minutes" in answer.text


def test_logout_clears_the_session(site):
    with httpx.Client() as browser:
        step(browser, to_provider(browser, site.url), 303)
        assert browser.get(site.url + "/whoami").json()["name"] == "alice"
        out = browser.post(site.url + "/auth/logout")
        assert out.status_code == 303 and out.headers["location"] == "/"
        cleared = out.headers["set-cookie"].lower()
        assert cleared.startswith(SESSION_COOKIE + '=""') and "max-age=0" in cleared
        assert browser.get(site.url + "/whoami").json() == {"token": None, "name": None}


def test_a_login_the_provider_refuses(idp, site):
    idp.user = None  # no one logged in at the provider
    with httpx.Client() as browser:
        answer = browser.get(to_provider(browser, site.url))
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == (
            "the identity provider refused the login (login_required)"
        )


def test_https_cookies_are_secure(site):
    # uvicorn takes the scheme from a loopback proxy's X-Forwarded-Proto
    with httpx.Client(headers={"x-forwarded-proto": "https"}) as browser:
        leave = step(browser, site.url + "/auth/login")
        assert "; secure" in leave.headers["set-cookie"].lower()
        assert "redirect_uri=https%3A%2F%2F127.0.0.1" in leave.headers["location"]


def test_a_site_below_a_prefix(idp):
    outer = FastAPI()
    outer.mount("/c/beamline", make_app(idp))
    with ThreadServer(outer) as server, httpx.Client() as browser:
        site = server.url + "/c/beamline"
        leave = step(browser, site + "/auth/login", params={"next": "/c/beamline/whoami"})
        assert "path=/c/beamline/auth/callback" in leave.headers["set-cookie"].lower()
        asked = parse_qs(urlsplit(leave.headers["location"]).query)
        assert asked["redirect_uri"] == [site + "/auth/callback"]
        back = step(browser, leave.headers["location"]).headers["location"]
        done = step(browser, back, 303)
        assert done.headers["location"] == "/c/beamline/whoami"
        assert browser.get(server.url + done.headers["location"]).json()["name"] == "alice"


def test_a_provider_that_is_down(idp):
    with ThreadServer(make_app(idp, timeout=2)) as server:
        idp.stop()
        answer = httpx.get(server.url + "/auth/login")
        assert answer.status_code == 503
        assert answer.json()["error"]["message"].startswith(
            "the identity provider did not answer at " + idp.url
        )


def test_the_router_needs_a_client_and_a_secret(idp):
    config = idp.config()
    with pytest.raises(ValueError, match="needs 'client_id'"):
        login_router(idp.config(client_id=None), OIDCVerifier(config), SECRET)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        login_router(config, OIDCVerifier(config), b"short")


def test_the_provider_gives_a_code_once_to_its_client_at_its_redirect(idp, site):
    with httpx.Client() as browser:
        back = to_provider(browser, site.url)
        started = browser.cookies[LOGIN_COOKIE].split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(started + "=" * (-len(started) % 4)))
    form = {
        "grant_type": "authorization_code",
        "code": parse_qs(urlsplit(back).query)["code"][0],
        "client_id": "runbroker",
        "redirect_uri": site.url + "/auth/callback",
        "code_verifier": payload["pkce"],
    }
    for change, error in [
        ({"client_id": "grafana"}, "invalid_client"),
        ({"redirect_uri": "http://127.0.0.1:1/auth/callback"}, "invalid_grant"),
    ]:
        assert httpx.post(idp.url + "/token", data={**form, **change}).json()["error"] == error
    # the refused redirect spent the code: codes are good once
    assert httpx.post(idp.url + "/token", data=form).json()["error"] == "invalid_grant"


def test_a_confidential_client_sends_its_secret():
    with IdentityProvider(client_secret="client-s3cret") as idp:
        idp.login_as("bob")
        with ThreadServer(make_app(idp)) as good, httpx.Client() as browser:
            step(browser, to_provider(browser, good.url), 303)
            assert browser.get(good.url + "/whoami").json()["name"] == "bob"
        with ThreadServer(make_app(idp, client_secret="x-9f2c")) as bad, httpx.Client() as browser:
            answer = browser.get(to_provider(browser, bad.url))
            assert answer.status_code == 401
            assert "refused the login code (invalid_client" in answer.json()["error"]["message"]
            assert "x-9f2c" not in answer.text
