"""Catalogs found by name: search order across files, broken files, the CLI, new processes.

The user and site folders are platformdirs' real ones, pointed into the test's folder through
the XDG variables platformdirs reads on Linux.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import runbroker
from runbroker.cli import main
from runbroker.config import CatalogConfigError, ConfigWarning, NamedCatalogs, read_file


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    user, site, extra = tmp_path / "user", tmp_path / "site", tmp_path / "extra.yml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(site))
    monkeypatch.setenv("RUNBROKER_CATALOGS", str(extra))
    folders = {
        "user": user / "runbroker" / "catalogs",
        "site": site / "runbroker" / "catalogs",
        "extra": extra,
    }
    for key in ("user", "site"):
        folders[key].mkdir(parents=True)
    return folders


def _catalog_with(path: Path, n: int) -> Path:
    cat = runbroker.open(path)
    for i in range(n):
        from event_model import compose_run

        bundle = compose_run(metadata={"scan_id": i + 1})
        cat.insert("start", bundle.start_doc)
        cat.insert("stop", bundle.compose_stop())
    cat.close()
    return path


def test_the_documented_search_order_decides(places, tmp_path):
    a = _catalog_with(tmp_path / "a.db", 1)
    b = _catalog_with(tmp_path / "b.db", 2)
    c = _catalog_with(tmp_path / "c.db", 3)
    (places["site"] / "beamlines.yml").write_text(f"45id: {c}\n11bm:\n  uri: {c}\n")
    (places["user"] / "mine.yml").write_text(f"45id:\n  uri: {b}\n")
    places["extra"].write_text(f"45id:\n  uri: {a}\n")
    named = NamedCatalogs()
    assert list(named) == ["11bm", "45id"]
    assert len(named["45id"]) == 1  # $RUNBROKER_CATALOGS first
    places["extra"].unlink()
    assert len(named["45id"]) == 2  # then the user's folder
    (places["user"] / "mine.yml").unlink()
    assert len(named["45id"]) == 3  # then the site's
    assert named.entries()["11bm"].source == places["site"] / "beamlines.yml"


def test_a_broken_file_is_named_with_its_line_and_the_others_still_load(places, tmp_path):
    good = _catalog_with(tmp_path / "good.db", 2)
    (places["user"] / "good.yml").write_text(f"good:\n  uri: {good}\n")
    (places["user"] / "broken.yml").write_text("ok:\n  uri: x.db\nbad: [unclosed\n")
    (places["site"] / "typo.yml").write_text("typo:\n  uri: x.db\n  root_mapp: {}\n")
    with pytest.warns(ConfigWarning) as caught:
        names = list(NamedCatalogs())
    assert names == ["good"]
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.yml, line 4" in messages and "not valid YAML" in messages
    assert "typo.yml, line 1" in messages and "root_mapp" in messages
    with pytest.warns(ConfigWarning):
        assert len(NamedCatalogs()["good"]) == 2


def test_relative_paths_are_taken_from_the_file_that_names_them(tmp_path):
    pack = tmp_path / "moved" / "pack"
    pack.mkdir(parents=True)
    _catalog_with(pack / "runs.db", 1)
    config = pack / "catalog.yml"
    config.write_text("portable:\n  uri: runs.db\n  root_map: {/beamline/data: files}\n")
    (entry,) = read_file(config)
    assert entry.uri == str(pack / "runs.db")
    assert entry.options["root_map"] == {"/beamline/data": str(pack / "files")}
    assert len(entry.open()) == 1


def test_unknown_name_says_how_to_add_one(places):
    with pytest.raises(KeyError, match="runbroker catalogs add nope URI"):
        NamedCatalogs()["nope"]


def test_entry_without_uri_is_refused_by_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("first:\n  uri: a.db\nsecond:\n  indexes: [sample]\n")
    with pytest.raises(CatalogConfigError, match=r"bad\.yml, line 3: catalog 'second' needs"):
        read_file(bad)


def test_cli_add_is_seen_at_once_by_a_new_process(places, tmp_path, capsys):
    db = _catalog_with(tmp_path / "runs.db", 2)
    assert main(["catalogs", "add", "45id", str(db), "--index", "sample"]) == 0
    assert (places["user"] / "45id.yml").exists()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runbroker; print(len(runbroker.catalog['45id']))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "2"
    assert main(["catalogs", "list", "-v"]) == 0
    listed = capsys.readouterr().out
    assert "45id" in listed and str(db) in listed
    assert main(["catalogs", "remove", "45id"]) == 0
    assert "45id" not in NamedCatalogs()


def test_remove_refuses_a_catalog_it_did_not_add(places, tmp_path, capsys):
    (places["site"] / "site.yml").write_text(f"shared: {tmp_path / 'x.db'}\n")
    assert main(["catalogs", "remove", "shared"]) == 1
    assert "site.yml" in capsys.readouterr().err


def test_runbroker_catalog_is_the_named_catalogs(places, tmp_path):
    db = _catalog_with(tmp_path / "runs.db", 3)
    places["extra"].write_text(f"45id: {db}\n")
    assert list(runbroker.catalog) == ["45id"]
    assert len(runbroker.catalog["45id"]) == 3
    from runbroker.catalog import Run  # the module is still importable by name

    assert isinstance(runbroker.catalog["45id"][-1], Run)


def test_commands_take_a_catalog_name(places, tmp_path, capsys):
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    cat = runbroker.open(tmp_path / "beamline.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(count([det], 2), sample="named")
    cat.close()
    assert main(["catalogs", "add", "bl", str(tmp_path / "beamline.db")]) == 0
    assert main(["ls", "bl"]) == 0
    assert "1 run in bl" in capsys.readouterr().out
    assert main(["copy", "bl", str(tmp_path / "laptop.db"), "-q"]) == 0
    assert len(runbroker.open(tmp_path / "laptop.db")) == 1
    assert main(["ls", "no-such-name"]) == 1  # not a file, not a name: the file error
    assert "no-such-name" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line(capsys):
    # Port 1 on loopback refuses connections: a real refusal, no server needed.
    assert main(["ls", "postgresql://nobody@127.0.0.1:1/runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runbroker: cannot connect to the PostgreSQL catalog")
    assert "host 127.0.0.1, port 1" in err and "Traceback" not in err and err.count("\n") == 1
