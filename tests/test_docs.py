"""Every example in the README and in ``docs/`` runs as printed, so a wrong one cannot stay.

A page's fenced blocks are read in order. ```` ```python ```` blocks run in one namespace per
page, like a notebook's cells; ```` ```bash ```` (or ``shell``/``sh``) blocks run with bash
(``set -euo pipefail``, the ``runbroker`` script of this Python on PATH) and must exit 0. Blocks
labelled ``text``, ``console``, ``yaml``, ``toml`` or ``json`` are shown, not run (output, a
configuration file, a command synopsis); a block with no label or another label is an error.
docs/development.md states the convention for writers.

Each page runs in a folder of its own that holds what its examples name (``NEEDS``): SQLite
catalogs of real RunEngine runs (``runs.db``, ``facility.db``), a folder catalog
(``beamtime/``). Its Python blocks start with ``RE`` (a RunEngine subscribed to nothing), and
with ``cat`` (``runs.db`` opened) and ``run`` (``cat[-1]``) when the folder has ``runs.db``.
Where an example names what this machine cannot give (a PostgreSQL server at a made-up host, a
MongoDB server, a runbroker server, a uid of the reader's own), ``SUBSTITUTIONS`` replaces
that text before the block runs: the PostgreSQL cluster of the tests, a fresh catalog of the
test server (``{server}``; its API key is in ``$RUNBROKER_API_KEY``), a mongomock client
holding real runs (``MONGO_PAGES``), the uids of ``runs.db``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runbroker
from runbroker.export import FORMATS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

RUN = {"python": "python", "bash": "bash", "shell": "bash", "sh": "bash"}
SHOWN = {"text", "console", "yaml", "toml", "json"}

# What each page's folder is given (default: runs.db; tomo.db is given as runs.db). ``_record``
# says what they hold.
NEEDS: dict[str, tuple[str, ...]] = {
    "README.md": (),
    "docs/index.md": (),
    "docs/development.md": (),
    "docs/catalog.md": ("runs.db", "beamtime/"),
    "docs/folder-store.md": ("beamtime/",),
    "docs/federation.md": ("runs.db", "beamtime/"),
    "docs/named-catalogs.md": ("runs.db", "facility.db"),
    "docs/pack.md": ("runs.db", "facility.db"),
    "docs/ingest.md": ("runs.db", "facility.db"),
    "docs/formats/dx.md": ("tomo.db",),
}

# Text of a page replaced before its blocks run, because this machine cannot give what it
# names. Values are formatted with the page's ``Material`` (quoted for the shell in bash).
SUBSTITUTIONS: dict[str, dict[str, str]] = {
    "docs/catalog.md": {
        "/abs/path": "{folder}",
        "postgresql://user@host/dbname": "{postgres}",
        "postgresql://host/runs": "{postgres}",
    },
    "docs/postgresql.md": {"postgresql://user@host/dbname": "{postgres}"},
    "docs/import.md": {"postgresql://db.example.org/runs": "{postgres}"},
    "docs/named-catalogs.md": {
        "postgresql://reader@db.example/runs": "{postgres}",
        "/data/45id/runs.db": "{folder}/runs.db",
        "3f2a9c1e-...": "{uids[0]}",
        "77b0c1d2-...": "{uids[1]}",
    },
    "docs/export.md": {"3f2a9c1e-...": "{uids[0]}"},
    "docs/http-api.md": {"http://127.0.0.1:8000": "{url}", "3f2a9c1e-...": "{uids[0]}"},
    "docs/live.md": {"http://localhost:8000": "{server}"},
    "docs/federation.md": {"http://localhost:8000": "{server}"},
    "docs/remote.md": {"http://127.0.0.1:8000": "{url}"},
    "docs/server.md": {"8000": "{port}"},
    "README.md": {"8000": "{port}"},
    "docs/access.md": {"8000": "{port}"},
}
# Pages whose examples talk to ``runbroker serve runs.db --api-key KEY`` (page -> KEY): the
# page's runs.db is served by uvicorn in a thread, on a free port, at ``{url}``.
SERVED = {"docs/http-api.md": "s3cret", "docs/remote.md": "s3cret"}
# Pages whose ``pymongo.MongoClient`` is a mongomock client holding runs of a real RunEngine.
MONGO_PAGES = {"docs/import.md"}
# Pages whose PostgreSQL catalog starts with the runs of runs.db.
FILLED_POSTGRES = {"docs/named-catalogs.md"}

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<label>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)


@dataclass
class Block:
    page: str
    line: int  # of the block's first line of code
    label: str
    code: str


def blocks(page: Path, name: str | None = None) -> list[Block]:
    """The fenced blocks of ``page``, in order.

    Example:
        >>> [b.label for b in blocks(ROOT / "docs" / "index.md")]
        []
    """
    text = page.read_text()
    name = name or page.relative_to(ROOT).as_posix()
    return [
        Block(
            name,
            text.count("\n", 0, m.start("body")) + 1,
            m["label"].strip(),
            textwrap.dedent(m["body"]),
        )
        for m in FENCE.finditer(text)
    ]


@dataclass
class Material:
    folder: Path
    postgres: str
    uids: list[str]
    url: str = ""
    server: str = ""
    port: int = 0  # a free port, for a page that starts a server


def _ids(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _record(folder: Path) -> None:
    """runs.db, tomo.db (its newest run a tomography scan), facility.db (a copy of runs.db)
    and beamtime/ (runs.db's runs as a folder of run files), all of real RunEngine runs."""
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import SynAxis, det, det1, det2, motor, motor1, motor2

    from runbroker.testing.detectors import ADHDF5Detector, tomo_plan
    from runbroker.transfer import copy_catalog

    runs = runbroker.open(folder / "runs.db")
    tomo = runbroker.open(folder / "tomo.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(runs.insert)
    RE(count([det], 3))  # no sample: templates naming it must cope
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    RE(scan([det1, det2], motor1, -1, 1, 7), sample="Fe", proposal_id="p-1234")
    to_tomo = RE.subscribe(tomo.insert)
    pco = ADHDF5Detector("pco", folder / "pco", shape=(6, 8))
    RE.preprocessors.clear()
    RE(tomo_plan(pco, SynAxis(name="rot_angle"), [0.0, 60.0, 120.0, 180.0]))
    RE.unsubscribe(to_tomo)  # tomo.db ends here; runs.db gets the newest run below
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))
    RE.md["scan_id"] = 11
    RE(scan([det, det1, pco], motor, -1, 1, 10), sample="Ni", proposal_id="p-1234")
    beamtime = runbroker.open(f"{folder}/beamtime/")
    copy_catalog(runs, beamtime, progress=False)
    for cat in (runs, tomo, beamtime):
        cat.close()
    shutil.copy(folder / "runs.db", folder / "facility.db")


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs-material")
    _record(folder)
    return folder


def _environment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The page's own home and configuration folders (a named catalog registered by an
    example stays in the page), this Python's scripts on PATH, this checkout's code."""
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_DIRS"):
        path = folder / ".home" / name.lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("RUNBROKER_CATALOGS", raising=False)
    monkeypatch.delenv("RUNBROKER_CACHE_DIR", raising=False)  # the page's own cache folder
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    src = str(ROOT / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(folder)
    return dict(os.environ)


def _mongo(monkeypatch: pytest.MonkeyPatch, material: Path) -> None:
    """``pymongo.MongoClient(...)`` gives a mongomock client holding runs.db's runs, one Mongo
    document per event-model document as databroker wrote them (no MongoDB server here)."""
    import mongomock
    import pymongo

    from runbroker.importers.mongo import COLLECTIONS

    collection = dict(
        zip(("start", "stop", "descriptor", "event", "resource", "datum"), COLLECTIONS, strict=True)
    )
    store = mongomock.store.ServerStore()  # one server for every client, as a real one is
    client = mongomock.MongoClient(_store=store)
    with runbroker.open(material / "runs.db", readonly=True) as cat:
        for run in cat.values():
            for doc_name, doc in run.documents(pages=False):
                if doc_name in collection:
                    client["metadatastore"][collection[doc_name]].insert_one(dict(doc))
    monkeypatch.setattr(
        pymongo, "MongoClient", lambda host=None, **_: mongomock.MongoClient(host, _store=store)
    )


def _substitute(block: Block, material: Material) -> str:
    code = block.code
    for old, new in SUBSTITUTIONS.get(block.page, {}).items():
        value = new.format(**vars(material))
        code = code.replace(old, shlex.quote(value) if RUN[block.label] == "bash" else value)
    return code


def _run_python(block: Block, code: str, names: dict[str, Any]) -> None:
    # Leading newlines make a traceback name the line of the page.
    exec(compile("\n" * (block.line - 1) + code, str(ROOT / block.page), "exec"), names)


def _run_shell(block: Block, code: str, env: dict[str, str], folder: Path) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode:
        pytest.fail(
            f"{block.page}:{block.line}: the bash block exited with {done.returncode}\n{code}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )


@pytest.fixture
def page_folder(
    request: pytest.FixtureRequest,
    recorded: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str], tuple[Material, dict[str, str]]]]:
    def prepare(page: str) -> tuple[Material, dict[str, str]]:
        for item in NEEDS.get(page, ("runs.db",)):
            source = recorded / item.rstrip("/")
            target = tmp_path / ("runs.db" if item == "tomo.db" else item.rstrip("/"))
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        values = str(SUBSTITUTIONS.get(page, {}).values())
        postgres = ""
        if "{postgres}" in values:
            from runbroker.testing.postgres import new_schema

            name = "docs_" + re.sub(r"\W", "_", page.removesuffix(".md")).lower()
            postgres = new_schema(request.getfixturevalue("postgres_url"), name)
            if page in FILLED_POSTGRES:
                from runbroker.transfer import copy_catalog

                with runbroker.open(recorded / "runs.db") as src, runbroker.open(postgres) as to:
                    copy_catalog(src, to, progress=False)
        server = ""
        if "{server}" in values:
            name = "docs-" + re.sub(r"\W", "-", page.removesuffix(".md")).lower()
            server = request.getfixturevalue("http_server").catalog_url(name)
        with runbroker.open(recorded / "runs.db", readonly=True) as cat:
            uids = list(cat.keys())
        if page in MONGO_PAGES:
            _mongo(monkeypatch, recorded)
        url = _serve(tmp_path / "runs.db", SERVED[page], servers) if page in SERVED else ""
        from runbroker.testing.server import free_port

        material = Material(tmp_path, postgres, uids, url, server, free_port())
        return material, _environment(tmp_path, monkeypatch)

    servers: list[Any] = []
    yield prepare
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def _serve(path: Path, key: str, servers: list[Any]) -> str:
    """Serve the catalog at ``path`` with ``key`` (uvicorn in a thread); its URL."""
    import threading

    import uvicorn

    from runbroker.server import Settings, build_app
    from runbroker.testing.server import free_port, wait_until_up

    port = free_port()
    app = build_app(runbroker.open(path), Settings(api_key=key))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    servers.append((server, thread))
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url)
    return url


def _starting_names(folder: Path) -> dict[str, Any]:
    from bluesky import RunEngine

    names: dict[str, Any] = {"__name__": "__docs__"}
    names["RE"] = RunEngine({}, call_returns_result=False)
    if (folder / "runs.db").exists():
        names["cat"] = runbroker.open(folder / "runs.db")
        names["run"] = names["cat"][-1]
    return names


def _close(names: dict[str, Any]) -> None:
    for value in names.values():
        if isinstance(value, runbroker.Catalog):
            value.close()


def _check_labels(found: list[Block]) -> None:
    unlabelled = [
        f"{b.page}:{b.line} ```{b.label}" for b in found if b.label not in RUN.keys() | SHOWN
    ]
    assert not unlabelled, (
        "label every fenced block: python or bash (run by the tests), or text, console, yaml, "
        f"toml, json (shown only; see docs/development.md): {unlabelled}"
    )


def run_blocks(found: list[Block], material: Material, env: dict[str, str]) -> None:
    """Run a page's python and bash blocks in order, in ``material.folder``."""
    names = _starting_names(material.folder)
    formats = dict(FORMATS)  # a page may register an exporter of its own
    try:
        for block in found:
            if block.label not in RUN:
                continue
            code = _substitute(block, material)
            if RUN[block.label] == "python":
                _run_python(block, code, names)
            else:
                _run_shell(block, code, env, material.folder)
    finally:
        _close(names)
        FORMATS.clear()
        FORMATS.update(formats)


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_examples_run(page: Path, page_folder: Callable) -> None:
    found = blocks(page)
    name = _ids(page)
    _check_labels(found)
    for old in SUBSTITUTIONS.get(name, {}):
        assert old in page.read_text(), f"{name} no longer says {old!r}: drop its substitution"
    if any(b.label in RUN for b in found):
        run_blocks(found, *page_folder(name))


def test_every_page_is_collected() -> None:
    """A docs page the glob misses would go untested."""
    assert ROOT / "docs" / "catalog.md" in PAGES and ROOT / "README.md" in PAGES
    assert sum(len(blocks(p)) for p in PAGES) > 50


WRONG = """\
# A page with mistakes the harness must catch

```python
files = run.export("csv", "out/")
```

```bash
runbroker ingest out/
```

```python
print(undefined_name)
```

```
a block without a label
```
"""


def test_a_wrong_example_fails(page_folder: Callable) -> None:
    """The mistakes the docs once had fail the test: a command missing an argument (the
    catalog of `runbroker ingest`), a Python name used without being defined, a fence with
    no label."""
    material, env = page_folder("docs/reading.md")
    page = material.folder / "wrong.md"
    page.write_text(WRONG)
    found = blocks(page, "wrong.md")
    with pytest.raises(AssertionError, match=r"wrong.md:16 ```"):
        _check_labels(found)
    with pytest.raises(pytest.fail.Exception, match=r"wrong.md:8: the bash block exited with 2"):
        run_blocks(found[:2], material, env)
    with pytest.raises(NameError, match="undefined_name"):
        run_blocks(found[2:3], material, env)
