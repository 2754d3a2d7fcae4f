"""The server's keys, limits, errors, metrics, logs, probes and ``runbroker serve``, over real
uvicorn servers on loopback (in a thread, or ``runbroker serve`` in a process of its own)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, motor

import runbroker
from runbroker import wire
from runbroker.errors import QueryError
from runbroker.queries import Query
from runbroker.server import Settings, build_app
from runbroker.testing.serving import ServeCommand, ThreadServer

KEY = "test-server-key"
LIMITS = {"max_page": 50, "max_body": 4096, "max_query_depth": 4}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runbroker.Catalog]:
    """Two real RunEngine runs in an SQLite catalog."""
    cat = runbroker.open(tmp_path_factory.mktemp("served") / "runs.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(count([det], 3), sample="Ni")
    RE(scan([det], motor, -1, 1, 5), sample="Cu")
    yield cat
    cat.close()


@pytest.fixture(scope="module")
def server(runs: runbroker.Catalog) -> Iterator[ThreadServer]:
    with ThreadServer(build_app(runs, Settings(api_key=KEY, **LIMITS))) as running:
        yield running


@pytest.fixture(scope="module")
def public(runs: runbroker.Catalog) -> Iterator[ThreadServer]:
    with ThreadServer(build_app(runs, Settings(api_key=KEY, public=True))) as running:
        yield running


def client(server: ThreadServer, key: str | None = KEY, **headers: str) -> httpx.Client:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=30)


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- keys ------------------------------------------------------------------------------------


def test_no_key_is_401_with_www_authenticate(server: ThreadServer) -> None:
    response = client(server, key=None).post("/count", json={})
    assert error(response, 401)["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["error"]["message"]


def test_a_wrong_key_is_401(server: ThreadServer) -> None:
    response = client(server, key="not-the-key").post("/count", json={})
    assert "not this server's" in error(response, 401)["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_header_that_is_no_bearer_token_is_401(server: ThreadServer) -> None:
    response = client(server, key=None, authorization=f"Basic {KEY}").post("/count", json={})
    assert "Bearer" in error(response, 401)["message"]


def test_a_key_in_the_url_is_not_taken(server: ThreadServer) -> None:
    # URLs end up in logs, histories and Referer headers: keys travel in headers only
    # (a browser link uses a short-lived download token instead)
    response = httpx.post(f"{server.url}/api/v1/count?api_key={KEY}", json={})
    assert response.status_code == 401


def test_public_reads_without_a_key_but_writes_need_it(
    public: ThreadServer, runs: runbroker.Catalog
) -> None:
    anonymous = client(public, key=None)
    assert anonymous.post("/count", json={}).json() == 2
    assert anonymous.get("/info").json()["writable"] is False
    run = runs[-1]
    docs = [[name, doc] for name, doc in run.documents(fill=False)]
    response = anonymous.post("/documents", json=docs)
    assert "needs credentials with the write:runs scope" in error(response, 401)["message"]
    # the key still writes (the run is there already: storing it again changes nothing)
    assert client(public).post("/documents", json=docs).status_code == 200
    assert client(public, key="wrong").post("/count", json={}).status_code == 401


def test_a_server_needs_a_key_or_public() -> None:
    with pytest.raises(ValueError, match="needs an API key"):
        build_app(runbroker.temp(), Settings())


# -- errors: 4xx naming what was wrong ---------------------------------------------------------


def test_malformed_json_is_400(server: ThreadServer) -> None:
    response = client(server).post(
        "/search", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    message = error(response, 400)["message"]
    assert "not valid JSON" in message and "character" in message


def test_a_body_without_its_content_type_is_400_saying_so(server: ThreadServer) -> None:
    response = client(server).post("/count", content=b"{}")
    assert "Content-Type: application/json" in error(response, 400)["message"]


@pytest.mark.parametrize(
    "query",
    [
        {"type": "no_such_query"},
        {"type": "comparison", "key": 5, "op": "eq", "value": 1},
        {"type": "comparison", "key": "a", "op": "about", "value": 1},
        {"type": "comparison", "key": "a", "op": "eq", "value": 1, "extra": 2},
        {"type": "scan_id", "scan_ids": "12"},
        ["not", "a", "map"],
    ],
)
def test_a_bad_query_is_400_with_the_local_message(server: ThreadServer, query: Any) -> None:
    with pytest.raises(QueryError) as local:
        Query.from_dict(query)
    for route in ("/search", "/count"):
        body = error(client(server).post(route, json={"query": query}), 400)
        if isinstance(query, dict):
            assert body == {"code": "bad_query", "message": str(local.value), "detail": {}}
        else:  # a list is refused by the body's schema, naming where
            assert body["code"] == "bad_request" and "body.query" in body["message"]


def test_the_python_client_raises_the_local_exception(server: ThreadServer) -> None:
    cat = runbroker.open(server.url, api_key=KEY, cache=False)
    with pytest.raises(QueryError, match="unknown op 'about'") as local:
        Query.from_dict({"type": "comparison", "key": "a", "op": "about", "value": 1})
    with pytest.raises(QueryError, match=re.escape(str(local.value))):
        cat.store.count(_Raw({"type": "comparison", "key": "a", "op": "about", "value": 1}))


class _Raw:
    """A query as it arrives from a client that builds them by hand."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def to_dict(self) -> dict:
        return self.data


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"offset": "first"}, "body.offset"),
        ({"offset": -1}, "body.offset"),
        ({"limit": 2.5}, "body.limit"),
        ({"keys": "sample"}, "body.keys"),
        ({"before": [1.0]}, "body.before"),
    ],
)
def test_a_bad_value_type_is_400_naming_where(server: ThreadServer, body: dict, where: str) -> None:
    assert where in error(client(server).post("/search", json=body), 400)["message"]


def test_a_page_past_max_page_is_400(server: ThreadServer) -> None:
    message = error(client(server).post("/search", json={"limit": 51}), 400)["message"]
    assert "limit=51" in message and "50" in message
    assert client(server).post("/search", json={"limit": 50}).status_code == 200


@pytest.mark.parametrize("combination", ["and", "not"])
def test_a_query_too_deep_is_400(server: ThreadServer, combination: str) -> None:
    def nested(levels: int) -> dict:
        query: dict = {"type": "key_present", "key": "sample"}
        for _ in range(levels - 1):
            if combination == "and":
                query = {"type": "and", "queries": [query]}
            else:
                query = {"type": "not", "query": query}
        return query

    deepest = LIMITS["max_query_depth"]
    assert client(server).post("/count", json={"query": nested(deepest)}).status_code == 200
    refused = client(server).post("/count", json={"query": nested(deepest + 1)})
    assert "nests deeper" in error(refused, 400)["message"]


def test_a_list_nested_without_end_is_400_not_a_crash(server: ThreadServer) -> None:
    values: list = [1]
    for _ in range(200):
        values = [values]
    query = {"type": "in", "key": "sample", "values": values}
    assert error(client(server).post("/count", json={"query": query}), 400)["code"]


def test_a_bad_sort_is_400_naming_it(server: ThreadServer) -> None:
    message = error(client(server).post("/search", json={"sort": "sample"}), 400)["message"]
    assert "sort" in message
    oldest = client(server).post("/search", json={"sort": "time"})
    newest = client(server).post("/search", json={"sort": "-time"})
    assert oldest.json() == newest.json()[::-1]


def test_a_body_past_max_body_is_413(server: ThreadServer) -> None:
    big = json.dumps({"query": None, "keys": ["k" * 100] * 50}).encode()
    assert len(big) > LIMITS["max_body"]
    declared = client(server).post(
        "/search", content=big, headers={"content-type": "application/json"}
    )
    assert "4096" in error(declared, 413)["message"]
    # sent in chunks, with no size declared: refused once past the limit
    chunked = client(server).post(
        "/search",
        content=iter([big[:3000], big[3000:]]),
        headers={"content-type": "application/json"},
    )
    assert error(chunked, 413)["code"] == "request_too_large"
    assert client(server).post("/search", json={"keys": ["sample"]}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/runs/no-such-run", None),
        ("GET", "/runs/no-such-run/descriptors", None),
        ("GET", "/runs/no-such-run/documents", None),
        ("GET", "/runs/no-such-run/assets", None),
        ("POST", "/runs/no-such-run/pages", {"descriptors": ["x"]}),
        ("POST", "/runs/no-such-run/read", {"pages": [1]}),
        ("POST", "/runs/no-such-run/datums", {"ids": ["x"]}),
    ],
)
def test_an_unknown_run_is_404(server: ThreadServer, method: str, path: str, body: Any) -> None:
    response = client(server).request(method, path, json=body)
    assert error(response, 404)["code"] == "run_not_found"
    assert "no-such-run" in response.json()["error"]["message"]


def test_an_unknown_route_is_404_with_an_error_body(server: ThreadServer) -> None:
    assert error(client(server).get("/no/such/route"), 404)["code"] == "http_404"


def test_errors_come_as_msgpack_to_who_asks(server: ThreadServer) -> None:
    response = client(server, accept=wire.MSGPACK).get("/runs/no-such-run")
    assert response.status_code == 404
    assert wire.unpack(response.content)["error"]["code"] == "run_not_found"


def test_a_refused_document_is_400_naming_the_key(server: ThreadServer) -> None:
    response = client(server).post("/documents", json=[["start", {"uid": "u1"}]])
    body = error(response, 400)
    assert body["code"] == "bad_document" and body["detail"]["key"] == "time"


# -- metrics and access logs -----------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_routes_statuses_and_bytes(
    server: ThreadServer, runs: runbroker.Catalog
) -> None:
    before = httpx.get(server.url + "/metrics").text
    uid = runs[-1].uid
    c = client(server)
    c.get(f"/runs/{uid}")
    c.get(f"/runs/{runs[-2].uid}")
    c.get("/runs/no-such-run")
    replay = c.get(f"/runs/{uid}/documents")  # a streamed answer: its bytes are counted too
    response = httpx.get(server.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert f"/runs/{uid}" not in after  # the route's template, never the raw path

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    route = "/api/v1/runs/{uid}"
    assert grew("runbroker_http_requests_total", route=route, status="200") == 2
    assert grew("runbroker_http_requests_total", route=route, status="404") == 1
    assert grew("runbroker_http_errors_total", route=route, status="404") == 1
    assert grew("runbroker_http_request_duration_seconds_count", route=route) == 3
    documents = route + "/documents"
    # the bytes sent: compressed, when the answer was
    sent = replay.num_bytes_downloaded
    assert grew("runbroker_http_response_bytes_total", route=documents) == sent


def test_one_json_access_log_line_per_request(
    server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="runbroker.server.access"):
        response = httpx.post(
            f"{server.url}/api/v1/search?unused={KEY}",
            json={"limit": 1},
            headers={"authorization": f"Bearer {KEY}"},
        )
        httpx.post(f"{server.url}/api/v1/count", json={})
        # the server logs a request after its answer has gone: wait for the second line
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [
                json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")
            ]
            if len(lines) >= 2:
                break
            time.sleep(0.02)
    assert len(lines) == 2
    first, second = lines
    assert first["method"] == "POST" and first["route"] == "/api/v1/search"
    assert first["status"] == 200 and first["bytes"] == response.num_bytes_downloaded
    assert first["caller"] == "server-key" and first["duration_ms"] > 0
    assert KEY not in json.dumps(lines)  # neither header nor query string is logged
    assert second["status"] == 401 and second["caller"] is None


# -- readiness ------------------------------------------------------------------------------


def test_readyz_is_503_while_the_database_is_down() -> None:
    from runbroker.testing.postgres import Cluster, _binary

    cluster = Cluster()
    try:
        cat = runbroker.open(cluster.start(), pool_size=1, max_overflow=0)
        data = str(cluster.folder / "data")
        with ThreadServer(build_app(cat, Settings(api_key=KEY))) as served:
            assert httpx.get(served.url + "/readyz").json() == {"status": "ready"}
            cluster._run(_binary("pg_ctl"), "-D", data, "-m", "fast", "stop")
            down = httpx.get(served.url + "/readyz", timeout=30)
            assert down.status_code == 503 and down.json()["status"] == "unavailable"
            assert httpx.get(served.url + "/healthz").status_code == 200
            cluster._run(_binary("pg_ctl"), "-D", data, "-l", str(cluster.folder / "log"), "-w",
                         "-o", f"-p {cluster.port} -k {cluster.socket_dir}", "start")  # fmt: skip
            # the pool drops the broken connections and connects again
            answers: list[str] = []

            def ready() -> bool:
                answers.append(httpx.get(served.url + "/readyz").text)
                return answers[-1] == '{"status":"ready"}'

            assert _eventually(ready), answers[-3:]
        cat.close()
    finally:
        cluster.stop()


def _eventually(check: Any, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- runbroker serve ------------------------------------------------------------------------


def _without_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RUNBROKER_API_KEY"}


def test_serve_prints_a_new_key_once_with_an_open_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNBROKER_API_KEY", raising=False)
    served = ServeCommand(tmp_path, "runs.db")
    try:
        printed = served.output()
        line = re.search(r'runbroker\.open\("(http://[^"]+)", api_key="([^"]+)"\)', printed)
        assert line is not None, printed
        url, key = line.groups()
        assert url == served.url and printed.count(key) == 1
        cat = runbroker.open(url, api_key=key, cache=False)
        assert len(cat) == 0
        assert httpx.post(served.url + "/api/v1/count", json={}).status_code == 401
    finally:
        served.stop()


def test_serve_a_named_catalog_public_with_a_key_from_the_environment(
    tmp_path: Path, runs: runbroker.Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cats.yml").write_text(f"beamline:\n  uri: {runs.store.uri}\n")
    env = {"RUNBROKER_CATALOGS": str(tmp_path / "cats.yml"), "RUNBROKER_API_KEY": "env-key"}
    served = ServeCommand(tmp_path, "beamline", "--public", env=env)
    try:
        assert "env-key" not in served.output()
        assert httpx.post(served.url + "/api/v1/count", json={}).json() == 2
        docs = [[n, d] for n, d in runs[-1].documents(fill=False)]
        assert httpx.post(served.url + "/api/v1/documents", json=docs).status_code == 401
        with_key = {"authorization": "Bearer env-key"}
        assert (
            httpx.post(served.url + "/api/v1/documents", json=docs, headers=with_key).status_code
            == 200
        )
    finally:
        served.stop()


def test_serve_with_two_workers_adds_up_their_metrics(
    tmp_path: Path, runs: runbroker.Catalog
) -> None:
    served = ServeCommand(tmp_path, str(runs.store.uri), "--workers", "2", "--api-key", KEY)
    try:
        # Up means one worker answers; the other can start seconds later on a loaded machine.
        deadline = time.monotonic() + 60
        while served.output().count("Application startup complete.") < 2:
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.05)
        cat = runbroker.open(served.url, api_key=KEY, cache=False)
        for _ in range(30):
            # a new connection each: the workers take turns accepting them
            httpx.post(served.url + "/api/v1/count", json={})
        assert len(cat) == 2  # the 31st request to /count
        # A worker writes a request's log line after its answer has gone: wait for the last.
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(x) for x in served.output().splitlines() if x.startswith("{")]
            counted = sum(1 for line in lines if line["route"] == "/api/v1/count")
            if counted >= 31 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert counted == 31
        assert len({line["pid"] for line in lines}) == 2
        text = httpx.get(served.url + "/metrics").text
        # every request counted once, whichever worker answered it
        assert _metric(text, "runbroker_http_requests_total", route="/api/v1/count") == 31
        assert _metric(text, "runbroker_http_requests_total", status="401") == 30
    finally:
        served.stop()


def test_serve_refuses_a_catalog_that_is_not_there(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runbroker.cli", "serve", "no/such/runs.db"],
        cwd=tmp_path,
        env={**_without_key(), "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no catalog at" in done.stderr


# -- named catalogs on a server ------------------------------------------------------------


def test_a_named_catalog_on_a_server(
    server: ThreadServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cats.yml"
    config.write_text(
        f"remote:\n  uri: {server.url}\n  api_key: {KEY}\n  timeout: 5\n  cache: false\n"
    )
    monkeypatch.setenv("RUNBROKER_CATALOGS", str(config))
    monkeypatch.delenv("RUNBROKER_API_KEY", raising=False)
    cat = runbroker.catalog["remote"]
    assert len(cat) == 2 and cat[-1].metadata["start"]["sample"] == "Cu"


def test_server_options_on_a_local_catalog_are_refused(tmp_path: Path) -> None:
    from runbroker.config import read_file

    config = tmp_path / "cats.yml"
    config.write_text("local:\n  uri: runs.db\n  api_key: k\n")
    with pytest.raises(runbroker.errors.CatalogConfigError, match="only a runbroker server"):
        read_file(config)
