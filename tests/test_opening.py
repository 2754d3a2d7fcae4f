"""What runbroker.open creates, refuses and says: catalogs are made only when plainly asked
for, read-only opens write nothing beside the catalog, the database layer's errors come back
in the user's terms, and passwords are never shown."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

import runbroker
from runbroker.cli import main
from runbroker.store.urls import redact
from runbroker.testing.readonly import run_read_only


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _record(cat: runbroker.Catalog) -> str:
    """A real RunEngine count into ``cat``; its uid."""
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    (uid,) = RE(count([det], 3))
    return uid


def test_a_new_file_with_a_catalog_suffix_in_an_existing_folder_is_created(tmp_path):
    for name in ("runs.db", "runs.sqlite", "runs.sqlite3"):
        cat = runbroker.open(tmp_path / name)
        assert len(cat) == 0 and (tmp_path / name).is_file()
        cat.close()


def test_a_new_name_one_slip_from_a_catalog_beside_it_is_refused_as_a_typo(tmp_path):
    runbroker.open(tmp_path / "api.db").close()
    with pytest.raises(runbroker.CatalogNotFoundError) as info:
        runbroker.open(tmp_path / "apii.db")
    assert "'api.db'" in str(info.value) and "create=True" in str(info.value)
    assert _files(tmp_path) == ["api.db"]
    runbroker.open(tmp_path / "apii.db", create=True).close()  # asked for: made
    runbroker.open(tmp_path / "api2.db").close()  # a numbered series is no typo
    assert _files(tmp_path) == ["api.db", "api2.db", "apii.db"]


def test_a_new_name_without_a_catalog_suffix_is_refused_and_nothing_is_made(tmp_path):
    with pytest.raises(runbroker.CatalogNotFoundError) as info:
        runbroker.open(tmp_path / "runs")
    message = str(info.value)
    assert "runs" in message and ".db" in message and "create=True" in message
    assert _files(tmp_path) == []
    cat = runbroker.open(tmp_path / "runs", create=True)
    _record(cat)
    cat.close()  # committed now, not within the group commit's 100 ms
    assert len(runbroker.open(tmp_path / "runs")) == 1


def test_a_missing_parent_folder_is_refused_and_nothing_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(runbroker.CatalogNotFoundError) as info:
        runbroker.open("no/such/dir")
    message = str(info.value)
    assert str(tmp_path / "no" / "such") in message and "create=True" in message
    with pytest.raises(runbroker.CatalogNotFoundError):
        runbroker.open("no/such/runs.db")
    with pytest.raises(runbroker.CatalogNotFoundError):
        runbroker.open("no/such/folder/")
    assert _files(tmp_path) == []
    cat = runbroker.open("no/such/runs.db", create=True)
    assert len(cat) == 0 and (tmp_path / "no" / "such" / "runs.db").is_file()


def test_an_existing_folder_without_run_files_is_refused_and_left_untouched(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "code.py").write_text("print('hello')\n")
    with pytest.raises(runbroker.NotACatalogError) as info:
        runbroker.open(source)
    assert str(source) in str(info.value) and "create=True" in str(info.value)
    assert _files(source) == ["code.py"]
    # Asked for, it becomes a folder catalog, and opens again without asking.
    cat = runbroker.open(source, create=True)
    uid = _record(cat)
    cat.close()
    assert uid in runbroker.open(source)


def test_a_new_folder_catalog_is_made_for_a_path_ending_in_a_slash(tmp_path):
    cat = runbroker.open(f"{tmp_path / 'packed'}/")
    assert len(cat) == 0 and (tmp_path / "packed").is_dir()


def test_opening_a_folder_read_only_writes_nothing_in_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    source = runbroker.temp()
    uid = _record(source)
    folder = tmp_path / "runs"
    source[uid].export("jsonl", folder)
    before = _files(folder)
    cat = runbroker.open(folder, readonly=True)
    assert list(cat) == [uid] and float(cat[uid].primary.read()["det"].sum()) > 0
    assert _files(folder) == before
    assert cat.store.index_path.is_relative_to(cache)


_READ = """
import json, sys, runbroker
cat = runbroker.open(sys.argv[1], readonly=True)
run = cat[-1]
print(json.dumps({"uids": list(cat), "sum": float(run.primary.read()["det"].sum())}))
"""


def test_an_sqlite_catalog_on_read_only_media_opens_read_only(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    cat = runbroker.open(folder / "runs.db")
    uid = _record(cat)
    total = float(cat[uid].primary.read()["det"].sum())
    cat.close()
    before = _files(folder)
    result = run_read_only(folder, [sys.executable, "-c", _READ, str(folder / "runs.db")])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"uids": [uid], "sum": total}
    assert _files(folder) == before


def test_run_files_and_other_files_are_named_as_not_catalogs(tmp_path):
    source = runbroker.temp()
    uid = _record(source)
    (exported,) = source[uid].export("jsonl", tmp_path / "out")
    with pytest.raises(runbroker.NotACatalogError) as info:
        runbroker.open(exported)
    assert f"runbroker ingest runs.db {exported}" in str(info.value)
    junk = tmp_path / "notes.db"
    junk.write_text("shopping list: flour, eggs\n" * 100)
    with pytest.raises(runbroker.NotACatalogError) as info:
        runbroker.open(junk)
    assert str(junk) in str(info.value) and "sqlalche.me" not in str(info.value)
    assert junk.read_text().startswith("shopping list")


def test_an_sqlite_database_of_another_program_is_refused_and_left_as_it_was(tmp_path):
    other = tmp_path / "inventory.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE items (name TEXT)")
    db.execute("INSERT INTO items VALUES ('lens')")
    db.commit()
    db.close()
    with pytest.raises(runbroker.NotACatalogError) as info:
        runbroker.open(other)
    assert str(other) in str(info.value)
    db = sqlite3.connect(other)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    db.close()
    assert tables == ["items"]


def _damage(path: Path) -> None:
    """Overwrite a stretch in the middle of ``path`` (past its header) with garbage."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 20000)


def test_check_reports_a_damaged_catalog_naming_the_file(tmp_path):
    path = tmp_path / "runs.db"
    cat = runbroker.open(path)
    for _ in range(20):
        _record(cat)
    cat.close()
    assert len(runbroker.open(path, check=True)) == 20  # a sound catalog passes
    _damage(path)
    with pytest.raises(runbroker.CorruptCatalogError) as info:
        runbroker.open(path, readonly=True, check=True)
    assert str(path) in str(info.value) and "integrity check" in str(info.value)


def test_an_unreachable_postgresql_server_is_named_without_its_password():
    url = "postgresql://beamline:hunter2secret@127.0.0.1:1/runs"
    with pytest.raises(runbroker.CatalogUnavailableError) as info:
        runbroker.open(url)
    message = str(info.value)
    assert "host 127.0.0.1, port 1" in message and "runs" in message
    assert "hunter2secret" not in message and "sqlalche.me" not in message
    assert "beamline:***@127.0.0.1" in message


def test_an_unknown_scheme_lists_the_ones_that_exist():
    with pytest.raises(runbroker.UnknownSchemeError) as info:
        runbroker.open("mongodb://admin:topsecret@host/db")
    message = str(info.value)
    assert "sqlite://" in message and "postgresql://" in message
    assert "runbroker import" in message and "topsecret" not in message


def test_passwords_are_shown_nowhere(postgres_url, capsys):
    url = postgres_url.replace("runbroker@", "runbroker:hunter2secret@", 1)
    assert "hunter2secret" in url
    cat = runbroker.open(url)
    try:
        _record(cat)
        shown = [repr(cat), cat._repr_html_(), repr(cat.store), cat.store.uri]
        assert all("***" in s and "hunter2secret" not in s for s in shown)
        assert len(runbroker.open(url)) == 1  # the real URL still opens the catalog
        assert main(["ls", url]) == 0
        assert main(["ls", url.replace("/runbroker_test", "/no_such_db", 1)]) == 1
        out = capsys.readouterr()
        assert "hunter2secret" not in out.out + out.err and "***" in out.out
    finally:
        cat.close()


def test_runbroker_imports_and_serves_sqlite_and_folders_without_psycopg(tmp_path):
    """The real test is scripts/check-extras.sh (a fresh environment without the extra);
    here psycopg is hidden from the interpreter, the way a missing package looks."""
    code = """
import sys
sys.modules["psycopg"] = None  # import psycopg now fails as if it were not installed
import runbroker
cat = runbroker.open(sys.argv[1] + "/runs.db")
folder = runbroker.open(sys.argv[1] + "/runs/")
print(len(cat), len(folder))
try:
    runbroker.open("postgresql://host/db")
except runbroker.MissingDependencyError as err:
    print(err)
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0 0" and "pip install 'runbroker[postgres]'" in lines[1]


def test_a_named_catalog_shows_no_password(tmp_path):
    from runbroker.config import NamedCatalogs

    entry = NamedCatalogs().add(
        "facility", "postgresql://beamline:hunter2secret@db.example.org/runs", folder=tmp_path
    )
    assert "hunter2secret" not in repr(entry) and "beamline:***@db.example.org" in repr(entry)


def test_a_catalog_whose_log_cannot_be_read_on_read_only_media_says_why(tmp_path):
    """Copied while its writer was still open, a catalog's last commits are in its -wal file
    only; SQLite reads them only by writing a -shm file beside it, which read-only media
    forbid: the error says so instead of showing an older catalog without them."""
    import shutil

    writer = runbroker.open(tmp_path / "runs.db")
    _record(writer)
    writer.store.flush()
    media = tmp_path / "media"
    media.mkdir()
    for name in ("runs.db", "runs.db-wal"):
        shutil.copyfile(tmp_path / name, media / name)
    writer.close()
    assert (media / "runs.db-wal").stat().st_size > 0
    result = run_read_only(media, [sys.executable, "-c", _READ, str(media / "runs.db")])
    assert result.returncode == 1
    assert "ReadOnlyMediumError" in result.stderr and "runs.db-wal" in result.stderr
    assert sorted(os.listdir(media)) == ["runs.db", "runs.db-wal"]


def test_a_damaged_catalog_opened_by_its_path_is_named_as_damaged(tmp_path):
    path = tmp_path / "runs.db"
    cat = runbroker.open(path)
    _record(cat)
    cat.close()
    data = bytearray(path.read_bytes())
    data[1024:] = b"\xff" * (len(data) - 1024)  # the header survives, the pages do not
    path.write_bytes(bytes(data))
    with pytest.raises(runbroker.errors.CorruptCatalogError) as info:
        runbroker.open(path)
    assert str(path) in str(info.value) and "sqlalche.me" not in str(info.value)


def test_sqlite_urls_keep_their_query_and_scheme_case(tmp_path):
    runbroker.open(tmp_path / "runs.db").close()
    for url in (
        f"sqlite:///{tmp_path}/runs.db?timeout=30",
        f"SQLITE:///{tmp_path}/runs.db",
    ):
        assert len(runbroker.open(url, readonly=True)) == 0, url
    assert len(runbroker.open(f"sqlite:///file:{tmp_path}/runs.db?uri=true")) == 0
    for url in ("sqlite:///:memory:", "sqlite://"):  # in memory, for tests
        cat = runbroker.open(url)
        _record(cat)
        assert len(cat) == 1


def test_read_only_refusals_give_no_advice_to_create(tmp_path):
    runbroker.open(tmp_path / "api.db").close()
    with pytest.raises(runbroker.CatalogNotFoundError, match=r"did you mean 'api\.db'") as info:
        runbroker.open(tmp_path / "apii.db", readonly=True)
    assert "create=True" not in str(info.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(runbroker.NotACatalogError) as info:
        runbroker.open(tmp_path / "plain", readonly=True)
    assert "create=True" not in str(info.value) and not list((tmp_path / "plain").iterdir())


@pytest.mark.parametrize("name", ["runs.db", "runs/"])
def test_a_catalog_dropped_without_close_frees_its_files(tmp_path, name):
    """Its committer thread once kept it alive through a connection's listener, so every
    catalog opened and dropped without close() kept its files open until the process ended
    (over a thousand in one test run)."""
    import gc
    import weakref

    cat = runbroker.open(f"{tmp_path}/{name}")
    _record(cat)
    store = weakref.ref(cat.store)
    del cat
    # Load can stretch the committer's round past any fixed pause; a leaked store never goes
    deadline = time.monotonic() + 20
    while store() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)  # the committer lets go of it between rounds
    assert store() is None


_EXIT_AFTER_REMOVING = """
import shutil, sys, runbroker
from event_model import compose_run
folder = sys.argv[1]
cat = runbroker.open(folder + "/runs.db")
run = compose_run()
cat.insert("start", run.start_doc)
cat.insert("stop", run.compose_stop())
cat.flush()
cat.store._engine.dispose()  # no pooled connection left: closing must open a new one
shutil.rmtree(folder)  # a temporary folder removed before the interpreter exits
"""


def test_a_catalog_whose_folder_is_gone_closes_quietly_at_exit(tmp_path):
    """The interpreter closes every open catalog at exit; one whose file was removed (with
    its temporary folder) used to print a traceback from the closing checkpoint, which
    reopened the missing file."""
    folder = tmp_path / "gone"
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_AFTER_REMOVING, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert not folder.exists()


def test_closing_a_catalog_whose_file_was_removed_creates_no_file(tmp_path):
    cat = runbroker.open(tmp_path / "runs.db")
    _record(cat)
    cat.flush()
    cat.store._engine.dispose()  # no pooled connection left: closing must open a new one
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path}/runs.db{suffix}").unlink(missing_ok=True)
    cat.close()
    assert not (tmp_path / "runs.db").exists()


def test_redact_changes_the_password_and_nothing_else():
    """Only where a password stands (user:PASSWORD@, password=PASSWORD) is it replaced: a
    host, port or database name that holds the same characters is shown as it is."""
    assert (
        redact("postgresql://postgres:postgres@db.host:5432/postgres")
        == "postgresql://postgres:***@db.host:5432/postgres"
    )
    url = "postgresql://u:5@db5.host:5432/runs5"
    assert redact(url) == "postgresql://u:***@db5.host:5432/runs5"
    message = f"cannot connect to {url} (host db5.host, port 5432, database runs5)"
    assert redact(message, url) == message.replace("u:5@", "u:***@")
    assert redact("mongodb://u:pw@h1:1,h2:2/db") == "mongodb://u:***@h1:1,h2:2/db"
    assert redact("postgresql://u@h/db?password=pw&sslmode=require", None).count("pw") == 0
    assert redact("dsn: host=h password=pa/ss port=1", "postgresql://u:pa%2Fss@h/db") == (
        "dsn: host=h password=*** port=1"
    )


def test_import_runbroker_loads_no_database_driver_nor_migrations():
    """psycopg is imported when a PostgreSQL catalog is opened and alembic when a catalog is
    created or upgraded, not by `import runbroker` (which every CLI command pays for)."""
    code = "import sys, runbroker; print(sorted({'psycopg', 'alembic'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_db_upgrade_of_what_is_no_catalog_shows_no_password(postgres_url, capsys):
    from runbroker.testing.postgres import new_schema

    url = new_schema(postgres_url, f"nocat{os.getpid()}")
    url = url.replace("runbroker@", "runbroker:hunter2secret@", 1)
    assert "hunter2secret" in url
    assert main(["db", "upgrade", url]) == 1
    err = capsys.readouterr().err
    assert "is not a runbroker catalog" in err and "runbroker:***@" in err
    assert "hunter2secret" not in err
