"""Shared fixtures. Every API test takes ``catalog``, which is parametrised over the stores.

Adding a store (the HTTP client) means adding it to ``STORES``
(``runbroker.testing.stores``); the whole API suite then runs against it. A test about one
kind of store is kept off the others with ``stores_except(..., reason=...)``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runbroker
from runbroker.store import registry
from runbroker.testing.stores import EXCLUDED, STORES

_schemas = itertools.count()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if EXCLUDED:
        terminalreporter.section("tests kept off some stores")
        for test, (kinds, reason) in sorted(EXCLUDED.items()):
            terminalreporter.write_line(f"{test}: not on {', '.join(kinds)}: {reason}")


@pytest.fixture(autouse=True)
def _store_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemes a test (or a docs example) registers are forgotten after it, so an error that
    lists the known schemes reads the same in every later test."""
    monkeypatch.setattr(registry, "_openers", dict(registry._openers))


@pytest.fixture(scope="session", autouse=True)
def _client_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What the remote client caches goes to a folder of the test run (and the commands the
    tests start), never to the user's cache folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RUNBROKER_CACHE_DIR", str(tmp_path_factory.mktemp("client-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database: the test cluster (started once) or $RUNBROKER_TEST_POSTGRES."""
    from runbroker.testing.postgres import ENV, Cluster

    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    cluster = Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The test server: real uvicorn on loopback in its own process, a catalog per prefix
    (:mod:`runbroker.testing.server`)."""
    from runbroker.testing.server import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("served")).start()
    # Tests reopen a catalog by its URL (catalog.store.uri) as they would a local one.
    previous = os.environ.get("RUNBROKER_API_KEY")
    os.environ["RUNBROKER_API_KEY"] = server.api_key
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("RUNBROKER_API_KEY", None)
        else:
            os.environ["RUNBROKER_API_KEY"] = previous


@pytest.fixture(scope="session")
def http_server_pg(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Any]:
    """A test server whose ``pg-NAME`` catalogs are schemas of the test PostgreSQL cluster."""
    from runbroker.testing.server import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("served-pg"), postgres=postgres_url).start()
    try:
        yield server
    finally:
        server.stop()


def _open(
    kind: str, folder: Path, request: pytest.FixtureRequest, **options: Any
) -> runbroker.Catalog:
    if kind == "sqlite":
        return runbroker.open(folder / "runs.db", **options)
    if kind == "postgresql":
        from runbroker.testing.postgres import new_schema

        base = request.getfixturevalue("postgres_url")
        return runbroker.open(new_schema(base, f"t{os.getpid()}_{next(_schemas)}"), **options)
    if kind == "http":
        # A fresh SQLite catalog on the test server (one uvicorn process per test run).
        server = request.getfixturevalue("http_server")
        name = f"t{os.getpid()}-{next(_schemas)}"
        return runbroker.open(server.catalog_url(name), api_key=server.api_key, **options)
    if kind == "folder":
        # An empty folder becomes a catalog only when asked (runbroker.open's rule).
        return runbroker.open(folder, **{"create": True, **options})
    raise ValueError(kind)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_catalog(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., runbroker.Catalog]]:
    """Factory for fresh, empty catalogs of the parametrised store kind (options go to
    ``runbroker.open``)."""
    made: list[runbroker.Catalog] = []

    def make(**options: Any) -> runbroker.Catalog:
        folder = tmp_path / f"cat{len(made)}"
        folder.mkdir()
        cat = _open(store_kind, folder, request, **options)
        made.append(cat)
        return cat

    yield make
    for cat in made:
        cat.close()


@pytest.fixture
def catalog(make_catalog: Callable[[], runbroker.Catalog]) -> runbroker.Catalog:
    """A fresh, empty catalog of the parametrised store kind."""
    return make_catalog()


@pytest.fixture
def RE(catalog: runbroker.Catalog):
    """A real bluesky RunEngine whose documents go into ``catalog``."""
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(catalog.insert)
    return engine


# -- runs for the export tests -------------------------------------------------------------


def _two_descriptor_documents() -> list[tuple[str, dict]]:
    """One ``primary`` stream declared twice (configuration changed mid-run), as documents:
    a modern RunEngine cannot emit this, older data has it."""
    from event_model import compose_run

    bundle = compose_run(metadata={"scan_id": 901, "plan_name": "reconfigured", "sample": "Si"})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    keys = {
        "x": {"source": "sim", "dtype": "number", "shape": []},
        "I0": {"source": "sim", "dtype": "integer", "shape": []},
    }
    seq = 0
    for gain in (1, 10):
        desc = bundle.compose_descriptor(
            name="primary",
            data_keys=keys,
            configuration={"I0": {"data": {"I0_gain": gain}, "timestamps": {"I0_gain": 0.0}}},
            object_keys={"x": ["x"], "I0": ["I0"]},
        )
        docs.append(("descriptor", desc.descriptor_doc))
        for _ in range(3):
            seq += 1
            ev = desc.compose_event(
                data={"x": 0.5 * seq, "I0": 100 * gain + seq},
                timestamps={"x": 1.0 + seq, "I0": 1.0 + seq},
                seq_num=seq,
            )
            docs.append(("event", ev))
    docs.append(("stop", bundle.compose_stop()))
    return docs


@pytest.fixture(scope="session")
def export_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SQLite catalog of runs that exercise every exporter (built once, never modified).

    Keys: ``scalar`` (a scan of two detectors over a motor, with a baseline), ``grid`` (a 3x4
    grid scan), ``inline_image`` (2-D images kept in the events), ``file_image`` (an area
    detector writing HDF5 files), ``tomo`` (dark, flat and projection streams over ``theta``
    from an HDF5 area detector) and ``two_descriptors`` (one stream, two descriptors); plus
    ``catalog`` and ``folder`` (where the catalog and the detector files live).
    """
    import numpy as np
    from bluesky import RunEngine
    from bluesky.plans import count, grid_scan, scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import SynAxis, SynSignal, det1, det2, det4, motor, motor1, motor2

    from runbroker.testing.detectors import ADHDF5Detector, tomo_plan

    folder = tmp_path_factory.mktemp("export_runs")
    cat = runbroker.open(folder / "runs.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    runs: dict[str, Any] = {"catalog": cat, "folder": folder}

    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    RE(scan([det1, det2], motor, -1, 1, 7), sample="Fe foil", proposal_id="p-1234")
    runs["scalar"] = cat[-1]
    RE.preprocessors.clear()

    RE(grid_scan([det4], motor1, -1, 1, 3, motor2, -2, 2, 4), sample="grid")
    runs["grid"] = cat[-1]

    frames = iter(range(1_000_000))
    cam = SynSignal(
        name="inline_cam",
        func=lambda: np.arange(20, dtype="uint16").reshape(4, 5) * next(frames),
    )
    RE(count([cam, det1], 3), sample="inline")
    runs["inline_image"] = cat[-1]

    adet = ADHDF5Detector("adet", folder / "detector", shape=(6, 8))
    RE(scan([adet], motor, 0, 1, 4), sample="files")
    runs["file_image"] = cat[-1]

    tomo_cam = ADHDF5Detector("tomocam", folder / "tomo", shape=(5, 7))
    theta = SynAxis(name="theta")
    RE(tomo_plan(tomo_cam, theta, [0.0, 45.0, 90.0, 135.0, 180.0]))
    runs["tomo"] = cat[-1]

    cat.ingest(_two_descriptor_documents())
    runs["two_descriptors"] = cat[-1]
    yield runs
    cat.close()
