"""Hardening of the server, over real uvicorn servers on loopback: the limit on failed
authentication, secure headers (and the /docs page under its policy), CORS closed unless
origins are named, signed download links, and no secret in any log line or error body."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Request
from fastapi.responses import HTMLResponse

import runbroker
from runbroker.errors import NotAuthenticatedError, TooManyRequestsError, from_dict
from runbroker.server import Settings, build_app
from runbroker.server.accounts import issue_download_token
from runbroker.server.security import (
    MAX_TTL,
    FailedAuthLimiter,
    check_download_token,
    counting_failures,
    download_principal,
    download_token,
)
from runbroker.server.settings import ENV_SESSION_SECRET
from runbroker.testing.server import free_port
from runbroker.testing.serving import ServeCommand, ThreadServer

KEY = "the-right-key-0123456789"
SRC = str(Path(__file__).resolve().parents[1] / "src")
EVERY_ANSWER = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}
DOWNLOAD = "/api/v1/test-download/{name}"


def _who(request: Request) -> dict[str, Any]:
    """A route standing for the context dependency: a credential is checked under the
    limiter, a download token is taken for what it says."""
    secret = request.app.state.service.settings.secret
    principal = download_principal(request, secret)
    if principal is None:
        with counting_failures(request):
            if request.headers.get("authorization") != f"Bearer {KEY}":
                raise NotAuthenticatedError("the API key given is not this server's")
        principal = "api-key"
    return {"principal": principal}


def _page() -> HTMLResponse:
    return HTMLResponse("<!doctype html><p>a page of our own</p>")


def _framed() -> HTMLResponse:
    return HTMLResponse("<p>x</p>", headers={"Content-Security-Policy": "default-src 'none'"})


def _app(**settings: Any) -> Any:
    """A server's app as ``build_app`` makes it, plus the routes the tests need mounted the
    way the context's author will mount them."""
    app = build_app(runbroker.temp(), Settings(api_key=KEY, **settings))
    app.add_api_route("/api/v1/download-token", issue_download_token, methods=["POST"])
    app.add_api_route(DOWNLOAD, _who, methods=["GET"])
    app.add_api_route(DOWNLOAD, _who, methods=["POST"], name="who_posting")
    app.add_api_route("/probe", _who, methods=["GET"])
    app.add_api_route("/page", _page, methods=["GET"])
    app.add_api_route("/framed", _framed, methods=["GET"])
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    with ThreadServer(_app(max_body=1024, session_secret="module-secret")) as running:
        yield running


def _bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- failed authentication ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail_admitted(
    gate: FailedAuthLimiter, clock: Clock, client: str, times: int, every: float
) -> None:
    """``client`` is admitted and fails ``times`` times, ``every`` seconds."""
    for _ in range(times):
        gate.check(client)
        gate.failed(client)
        clock.now += every


def test_an_address_is_refused_after_its_limit_of_failures_until_the_window_slides() -> None:
    gate = FailedAuthLimiter(limit=3, window=60, clock=(clock := Clock()))
    _fail_admitted(gate, clock, "10.0.0.1", times=3, every=10)
    # failures at 1000, 1010, 1020; now 1030: the first leaves the window at 1060
    with pytest.raises(TooManyRequestsError) as refused:
        gate.check("10.0.0.1")
    assert refused.value.retry_after == 30 and refused.value.headers == {"Retry-After": "30"}
    gate.check("10.0.0.2")  # another address is not affected
    clock.now = 1059.5
    with pytest.raises(TooManyRequestsError, match="try again in 1 s"):
        gate.check("10.0.0.1")
    clock.now = 1060.0
    gate.check("10.0.0.1")  # two failures left in the window
    gate.failed("10.0.0.1")
    with pytest.raises(TooManyRequestsError, match="try again in 10 s"):
        gate.check("10.0.0.1")  # 1010, 1020, 1060: 1010 leaves at 1070


def test_failures_spread_wider_than_the_window_never_block_and_a_success_forgets() -> None:
    gate = FailedAuthLimiter(limit=2, window=5, clock=(clock := Clock()))
    _fail_admitted(gate, clock, "a", times=20, every=5.01)
    gate.failed("a")
    gate.failed("a")  # two within the window
    with pytest.raises(TooManyRequestsError):
        gate.check("a")
    gate.succeeded("a")
    gate.check("a")


def test_memory_is_bounded_and_quiet_addresses_are_forgotten() -> None:
    clock = Clock()
    gate = FailedAuthLimiter(limit=5, window=60, max_clients=100, clock=clock)
    for n in range(1000):
        for _ in range(8):
            gate.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(gate) == 100
    assert max(len(times) for times in gate._failures.values()) == 5
    with pytest.raises(TooManyRequestsError):
        gate.check("10.1.3.231")  # the newest stays
    gate.check("10.1.0.0")  # the oldest was let go
    clock.now += 61
    gate.failed("10.9.9.9")  # a failure after a quiet window forgets the quiet addresses
    assert len(gate) == 1


def test_counting_is_exact_under_threads() -> None:
    gates = [FailedAuthLimiter(limit=16000, window=600), FailedAuthLimiter(16001, window=600)]
    barrier = threading.Barrier(8)

    def fail_2000() -> None:
        barrier.wait()
        for _ in range(2000):
            for gate in gates:
                gate.failed("10.0.0.9")

    threads = [threading.Thread(target=fail_2000) for _ in range(8)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: a race shows in every run
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
    with pytest.raises(TooManyRequestsError):
        gates[0].check("10.0.0.9")
    gates[1].check("10.0.0.9")  # 16000 failures counted, not one more


@pytest.mark.parametrize("bad", [{"limit": 0}, {"window": 0}, {"max_clients": 0}])
def test_a_limiter_that_could_never_admit_anyone_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="each must be more than 0"):
        FailedAuthLimiter(**{"limit": 1, "window": 1.0, **bad})


def test_over_http_the_limit_answers_429_with_retry_after_and_a_success_resets() -> None:
    with ThreadServer(_app(auth_failures=3, auth_window=2.0)) as running:
        url = running.url + "/probe"
        assert httpx.get(url, headers=_bearer()).status_code == 200
        answers = [httpx.get(url, headers=_bearer("wrong")) for _ in range(3)]
        assert [a.status_code for a in answers] == [401, 401, 401]
        assert answers[0].headers["www-authenticate"] == "Bearer"
        refused = httpx.get(url, headers=_bearer())  # even the right key, while refused
        assert refused.status_code == 429
        assert refused.headers["retry-after"] in ("1", "2")
        err = from_dict(refused.json()["error"])
        assert isinstance(err, TooManyRequestsError)
        assert err.retry_after == int(refused.headers["retry-after"])
        assert "try again in" in str(err)
        time.sleep(int(refused.headers["retry-after"]) + 0.1)
        assert httpx.get(url, headers=_bearer()).status_code == 200  # and forgets
        assert [httpx.get(url, headers=_bearer("x")).status_code for _ in range(3)] == [401] * 3


def test_the_limit_comes_from_settings_and_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="auth_failures=0"):
        Settings(api_key=KEY, auth_failures=0)
    app = build_app(runbroker.temp(), Settings(api_key=KEY, auth_failures=4, auth_window=9))
    assert (app.state.auth_limiter.limit, app.state.auth_limiter.window) == (4, 9)


# -- secure headers -------------------------------------------------------------------------


def _has_every_answer_header(response: httpx.Response) -> None:
    for name, value in EVERY_ANSWER.items():
        assert response.headers.get(name) == value, (response.url, name)


def test_every_answer_has_the_secure_headers(server: ThreadServer) -> None:
    answers = {
        200: httpx.post(server.url + "/api/v1/count", json={}, headers=_bearer()),
        401: httpx.post(server.url + "/api/v1/count", json={}),
        404: httpx.get(server.url + "/no/such/route", headers=_bearer()),
        413: httpx.post(server.url + "/api/v1/search", content=b"x" * 2000, headers=_bearer()),
        "metrics": httpx.get(server.url + "/metrics"),
        "openapi": httpx.get(server.url + "/openapi.json"),
    }
    assert [a.status_code for a in list(answers.values())[:4]] == [200, 401, 404, 413]
    for response in answers.values():
        _has_every_answer_header(response)
        # not HTML, and not https: neither policy applies
        assert "content-security-policy" not in response.headers
        assert "strict-transport-security" not in response.headers
        assert not any(h.startswith("access-control-") for h in response.headers)


def test_pages_of_our_own_get_a_strict_policy_and_a_route_own_policy_is_kept(
    server: ThreadServer,
) -> None:
    page = httpx.get(server.url + "/page")
    _has_every_answer_header(page)
    policy = _directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert "script-src" not in policy  # only the server's own scripts, no inline one
    assert httpx.get(server.url + "/framed").headers["content-security-policy"] == (
        "default-src 'none'"
    )


def _directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


def test_the_docs_page_renders_and_its_policy_allows_exactly_what_it_loads(
    server: ThreadServer,
) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle(" in html and "/openapi.json" in html
    _has_every_answer_header(page)
    policy = _directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    scripts = re.findall(r'<script src="([^"]+)"', html)
    inline = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert scripts and inline
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    ]
    # exactly the CDN script and the page's own start-up script: nothing inline else runs
    assert sorted(policy["script-src"]) == sorted(scripts + hashes)
    styles = re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', html)
    assert styles and set(styles) <= set(policy["style-src"])
    icons = re.findall(r'<link rel="shortcut icon" href="([^"]+)"', html)
    assert icons and set(icons) <= set(policy["img-src"])
    assert policy["connect-src"] == ["'self'"]  # it fetches /openapi.json, and tries routes
    # the spec it loads is served, and /redoc (a CDN page the policy does not allow) is not
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "runbroker"
    assert httpx.get(server.url + "/redoc").status_code == 404


def test_hsts_only_over_https_told_by_a_trusted_proxy(server: ThreadServer) -> None:
    plain = httpx.get(server.url + "/healthz")
    assert "strict-transport-security" not in plain.headers
    # uvicorn trusts X-Forwarded-Proto from loopback (its --forwarded-allow-ips default)
    proxied = httpx.get(server.url + "/healthz", headers={"X-Forwarded-Proto": "https"})
    assert proxied.headers["strict-transport-security"] == "max-age=31536000"


def test_hsts_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    config = uvicorn.Config(
        build_app(runbroker.temp(), Settings(public=True)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    tls = uvicorn.Server(config)
    thread = threading.Thread(target=tls.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not tls.started and time.monotonic() < deadline:
            time.sleep(0.01)
        trusted = ssl.create_default_context(cafile=str(cert))
        answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted)
        assert answer.status_code == 200
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
        _has_every_answer_header(answer)
    finally:
        tls.should_exit = True
        thread.join(30)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# -- CORS -----------------------------------------------------------------------------------


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        url + "/api/v1/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_cors_is_closed_by_default(server: ThreadServer) -> None:
    preflight = _preflight(server.url, "https://app.example.org")
    assert preflight.status_code == 405
    simple = httpx.post(
        server.url + "/api/v1/count",
        json={},
        headers={"Origin": "https://app.example.org", **_bearer()},
    )
    assert simple.status_code == 200
    for response in (preflight, simple):
        assert not [h for h in response.headers if h.startswith("access-control-")]


def test_cors_opens_to_the_named_origins_only() -> None:
    app = _app(cors_origins=("https://app.example.org", "http://localhost:3000"))
    with ThreadServer(app) as running:
        allowed = _preflight(running.url, "https://app.example.org")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        allowed_headers = allowed.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
        assert "access-control-allow-credentials" not in allowed.headers
        _has_every_answer_header(allowed)
        other = _preflight(running.url, "https://evil.example.com")
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        call = httpx.post(
            running.url + "/api/v1/count",
            json={},
            headers={"Origin": "http://localhost:3000", **_bearer()},
        )
        assert call.status_code == 200
        assert call.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "Origin" in call.headers["vary"]
        assert "retry-after" in call.headers["access-control-expose-headers"].lower()
        stranger = httpx.post(
            running.url + "/api/v1/count",
            json={},
            headers={"Origin": "https://evil.example.com", **_bearer()},
        )
        assert "access-control-allow-origin" not in stranger.headers


def test_cors_star_never_with_credentials_and_credentials_with_named_origins() -> None:
    with ThreadServer(_app(cors_origins=("*",))) as running:
        star = _preflight(running.url, "https://anywhere.example")
        assert star.status_code == 200
        assert star.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in star.headers
    named = _app(cors_origins=("https://app.example.org",), cors_credentials=True)
    with ThreadServer(named) as running:
        with_cookies = _preflight(running.url, "https://app.example.org")
        assert with_cookies.headers["access-control-allow-origin"] == "https://app.example.org"
        assert with_cookies.headers["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize(
    ("origins", "credentials", "message"),
    [
        (("*",), True, r"cors_origins=\('\*',\) with cors_credentials=True would let every"),
        (("*", "https://a.example"), False, "'\\*' already allows every origin"),
        (("https://app.example.org/",), False, "'https://app.example.org/' is not a web origin"),
        (("app.example.org",), False, "'app.example.org' is not a web origin"),
        (("ftp://app.example.org",), False, "is not a web origin"),
        (("https://app.example.org:port",), False, "is not a web origin"),
    ],
)
def test_cors_settings_open_to_every_site_or_malformed_are_refused_at_start_up(
    origins: tuple[str, ...], credentials: bool, message: str
) -> None:
    settings = Settings(api_key=KEY, cors_origins=origins, cors_credentials=credentials)
    with pytest.raises(ValueError, match=message):
        build_app(runbroker.temp(), settings)


# -- download links -------------------------------------------------------------------------

SECRET = b"a secret of 32 bytes, or so ...."
FILE = "/api/v1/runs/ab12/export/csv"


def test_a_download_token_names_its_principal_for_its_path_only() -> None:
    token = download_token(SECRET, "alice", FILE)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    assert httpx.URL(f"http://h{FILE}?token={token}").params["token"] == token
    assert check_download_token(SECRET, token, FILE) == "alice"
    with pytest.raises(NotAuthenticatedError, match=r"^the download link is for another file$"):
        check_download_token(SECRET, token, "/api/v1/runs/cd34/export/csv")
    with pytest.raises(NotAuthenticatedError, match="not valid"):
        check_download_token(b"another server's secret", token, FILE)


def test_a_download_token_expires() -> None:
    token = download_token(SECRET, "alice", FILE, ttl=1)
    assert check_download_token(SECRET, token, FILE) == "alice"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            check_download_token(SECRET, token, FILE)
        except NotAuthenticatedError as err:
            assert str(err) == "the download link has expired: ask for a new one"
            break
        time.sleep(0.05)
    else:
        pytest.fail("a token of 1 s still worked after 3 s")


def _altered(token: str) -> str:
    """The token with its principal changed and its signature kept."""
    payload, mac = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields[0] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode())
    return forged.rstrip(b"=").decode() + "." + mac


@pytest.mark.parametrize(
    "token",
    ["", "abc", ".", "a.b", "!!!.???", "e30.e30", "bnVsbA.", "W10." + "A" * 43, "\u00e9.\u00e9"],
)
def test_a_forged_or_malformed_token_is_refused_as_not_valid(token: str) -> None:
    with pytest.raises(NotAuthenticatedError, match="the download link is not valid"):
        check_download_token(SECRET, token, FILE)


def test_an_altered_token_is_refused() -> None:
    token = download_token(SECRET, "alice", FILE)
    with pytest.raises(NotAuthenticatedError, match="not valid"):
        check_download_token(SECRET, _altered(token), FILE)


@pytest.mark.parametrize(("secret", "ttl"), [(b"", 60), (SECRET, 0), (SECRET, MAX_TTL + 1)])
def test_a_token_without_a_secret_or_of_a_long_life_is_not_made(secret: bytes, ttl: int) -> None:
    with pytest.raises(ValueError, match="download_token: "):
        download_token(secret, "alice", FILE, ttl=ttl)


def test_a_download_link_issued_over_http_works_for_get_of_its_path_only(
    server: ThreadServer,
) -> None:
    issue = server.url + "/api/v1/download-token"
    path = DOWNLOAD.format(name="a.csv")
    answer = httpx.post(issue, params={"path": path, "ttl": 30}, headers=_bearer())
    assert answer.status_code == 200, answer.text
    link = answer.json()
    assert link["url"] == f"{path}?token={link['token']}"
    left = datetime.datetime.fromisoformat(link["expires"]) - datetime.datetime.now(datetime.UTC)
    assert 29 <= left.total_seconds() <= 31
    secret = Settings(session_secret="module-secret").secret
    assert check_download_token(secret, link["token"], path) == "server-key"
    # followed as a browser does: no Authorization header
    assert httpx.get(server.url + link["url"]).json() == {"principal": "server-key"}
    other = httpx.get(server.url + DOWNLOAD.format(name="b.csv"), params={"token": link["token"]})
    assert other.status_code == 401 and "for another file" in other.text
    posted = httpx.post(server.url + link["url"])
    assert posted.status_code == 401 and "for GET requests, not POST" in posted.text
    assert httpx.post(issue, params={"path": path}).status_code == 401  # issuing needs a key


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nothing/here", "/api/v1/search", "https://elsewhere.example/api/v1/info", "/docs"],
)
def test_a_download_link_is_only_issued_for_a_get_route(server: ThreadServer, path: str) -> None:
    answer = httpx.post(
        server.url + "/api/v1/download-token", params={"path": path}, headers=_bearer()
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == (
        f"path: {path!r} is not a route of this server that GET answers"
    )


def test_the_signing_secret_reaches_worker_processes() -> None:
    for given in (Settings(api_key=KEY), Settings(api_key=KEY, session_secret="chosen")):
        env = {**given.to_env(), "PYTHONPATH": SRC}
        worker = subprocess.run(
            [sys.executable, "-c", _PRINT_SECRET], env=env, capture_output=True, text=True
        )
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout.strip() == given.secret.hex()
    assert Settings().secret == Settings().secret  # one made-up secret per process
    assert env[ENV_SESSION_SECRET] == "chosen"


_PRINT_SECRET = "from runbroker.server import Settings; print(Settings.from_env().secret.hex())"


def test_settings_do_not_show_their_secrets() -> None:
    shown = repr(Settings(api_key=KEY, session_secret="s3cret-session"))
    assert KEY not in shown and "s3cret-session" not in shown and "max_page" in shown


# -- secrets in logs and error bodies -------------------------------------------------------

WRONG = "wrong-key-5a5a5a5a"
COOKIE = "cookie-secret-7b7b7b"
QUERY_TOKEN = "query-token-9c9c9c"
BASIC = base64.b64encode(b"user:basic-password-1d1d").decode()
SECRETS = (KEY, WRONG, COOKIE, QUERY_TOKEN, BASIC, "basic-password-1d1d")


def _leaky_requests(url: str, link: str) -> list[httpx.Response]:
    """Requests carrying credentials every way a caller might: right and wrong, in headers,
    cookies and query strings, to routes that answer, refuse and fail."""
    sent = []
    with httpx.Client(base_url=url) as http:
        sent.append(http.post("/api/v1/count", json={}, headers=_bearer()))
        sent.append(http.post("/api/v1/count", json={}, headers=_bearer(WRONG)))
        sent.append(
            http.post("/api/v1/count", json={}, headers={"Authorization": f"Basic {BASIC}"})
        )
        sent.append(http.post("/api/v1/count?api_key=" + WRONG, json={}))
        sent.append(http.post("/api/v1/count?api_key=" + KEY, json={}))
        sent.append(http.get("/api/v1/runs/nope?token=" + QUERY_TOKEN, headers=_bearer()))
        sent.append(http.get(DOWNLOAD.format(name="x") + "?token=" + QUERY_TOKEN))
        sent.append(http.get(link.replace("x.csv", "y.csv")))  # a real token, another file
        sent.append(
            http.get("/no/route?token=" + QUERY_TOKEN, headers={"Cookie": f"session={COOKIE}"})
        )
        sent.append(http.post("/api/v1/search", content=b"{not json", headers={**_bearer(WRONG)}))
        sent.append(http.get("/probe", headers={**_bearer(WRONG), "Cookie": f"session={COOKIE}"}))
    return sent


def test_no_secret_in_any_log_line_or_error_body(caplog: pytest.LogCaptureFixture) -> None:
    records: list[logging.LogRecord] = []
    with (
        ThreadServer(_app(session_secret="log-test-secret")) as running,
        caplog.at_level(logging.DEBUG),
    ):
        issued = httpx.post(
            running.url + "/api/v1/download-token",
            params={"path": DOWNLOAD.format(name="x.csv")},
            headers=_bearer(),
        ).json()
        sent = _leaky_requests(running.url, issued["url"])
        # the access log line of a request is written after its answer: wait for them all
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            access = [r for r in caplog.records if r.name == "runbroker.server.access"]
            if len(access) >= len(sent) + 1:
                break
            time.sleep(0.02)
        # the server's records, not those of this test's own client (httpx logs its URLs)
        records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert len([r for r in records if r.name == "runbroker.server.access"]) == len(sent) + 1
    statuses = [r.status_code for r in sent]
    assert statuses[:3] + statuses[5:9] == [200, 401, 401, 404, 401, 401, 404], statuses
    assert set(statuses) <= {200, 400, 401, 404}  # the api_key parameter: whatever the context says
    logged = "\n".join(
        caplog.handler.format(r) + repr(r.args) + (r.exc_text or "") for r in records
    )
    secrets = (*SECRETS, issued["token"])
    for secret in secrets:
        assert secret not in logged
        for response in sent:
            assert secret not in response.text, (response.request.url, secret)
            assert secret not in str(response.headers.raw)
    # the log does name the requests, their paths and callers: the test looks at real lines
    assert '"path": "/api/v1/count"' in logged and '"caller": "server-key"' in logged


def test_runbroker_serve_logs_no_secret(tmp_path: Path) -> None:
    runbroker.open(tmp_path / "runs.db").close()
    served = ServeCommand(tmp_path, "runs.db", "--api-key", KEY)
    try:
        sent = _leaky_requests(served.url, DOWNLOAD.format(name="y.csv") + "?token=" + WRONG)
        assert {r.status_code for r in sent} <= {200, 400, 401, 404}
        deadline = time.monotonic() + 10
        while served.output().count('"route"') <= len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        served.stop()
    output = served.output()
    # one access line per request (and for the start-up probe): all were read
    assert output.count('"route"') == len(sent) + 1
    for secret in SECRETS:
        assert secret not in output
