"""The registry of stores by URI scheme: a store of another package opens with runbroker.open,
whether registered in code or named by an entry point; unknown schemes are refused as ever."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import runbroker
from runbroker.opening import open_sql
from runbroker.store import registry
from runbroker.store.sql import SQLStore

OPTIONS = {"create", "check", "readonly", "durability", "flush_interval", "pool_size"}


def test_a_registered_scheme_opens(tmp_path):
    calls = []

    def open_mem(url, **options):
        calls.append((url, options))
        return open_sql("sqlite://")

    registry.register("MEM", open_mem)  # schemes are matched in lower case, as URLs are
    cat = runbroker.open("Mem://scratch", readonly=False, indexes=["sample"])
    assert isinstance(cat.store, SQLStore) and len(cat) == 0
    ((url, options),) = calls
    assert url == "mem://scratch" and options.keys() >= OPTIONS
    assert "mem" in registry.schemes()
    with pytest.raises(runbroker.UnknownSchemeError, match="mem://"):
        runbroker.open("gopher://host/runs")


def test_an_entry_point_names_a_store(tmp_path, monkeypatch):
    # A real distribution on sys.path (a dist-info folder with entry_points.txt), not a patched
    # importlib.metadata: what is tested is then what pip install of a plugin gives.
    (tmp_path / "teststore_plugin.py").write_text(
        textwrap.dedent(
            """
            from runbroker.opening import open_sql

            opened = []

            def open_store(url, **options):
                opened.append(url)
                return open_sql("sqlite://")
            """
        )
    )
    info = tmp_path / "teststore_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: teststore-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[runbroker.stores]\nteststore = teststore_plugin:open_store\n"
        "broken = teststore_plugin:no_such_function\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert {"teststore", "broken"} <= set(registry.schemes())
        cat = runbroker.open("teststore://bucket/runs")
        assert len(cat) == 0
        assert sys.modules["teststore_plugin"].opened == ["teststore://bucket/runs"]
        with pytest.raises(ImportError, match=r"broken://.*runbroker\.stores"):
            runbroker.open("broken://x")
    finally:
        sys.modules.pop("teststore_plugin", None)


def test_unknown_schemes_are_refused_naming_those_known():
    with pytest.raises(runbroker.UnknownSchemeError) as info:
        runbroker.open("gopher://host/runs")
    assert str(info.value) == (
        "cannot open 'gopher://host/runs': unknown scheme 'gopher'. runbroker opens sqlite://, "
        "postgresql://, file://, http://, https:// URLs, file paths and folders"
    )


def test_file_urls_open_as_paths(tmp_path):
    cat = runbroker.open((tmp_path / "runs.db").as_uri())
    assert cat.store.uri == f"sqlite:///{tmp_path / 'runs.db'}"
    folder = runbroker.open((tmp_path / "folder").as_uri() + "/")
    assert (tmp_path / "folder").is_dir() and len(folder) == 0
    with pytest.raises(ValueError, match="local"):
        runbroker.open("file://elsewhere/runs.db")
