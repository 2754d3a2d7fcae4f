"""The runbroker command, run as a real subprocess against a catalog a RunEngine filled."""

from __future__ import annotations

import shlex
import subprocess
import sys

from bluesky.plans import count, scan
from ophyd.sim import det, motor

import runbroker
from runbroker.queries import Key


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runbroker.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_ls_lists_runs_newest_first_and_filters(catalog, RE, tmp_path):
    RE(count([det], 2), sample="Ni")
    RE(scan([det], motor, -1, 1, 3), sample="Cu")
    catalog.flush()
    path = catalog.store.uri.removeprefix("sqlite:///")
    out = _run("ls", path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"2 runs in {path}"
    assert lines[1].split() == ["scan_id", "uid", "start", "plan", "status"]
    assert "scan" in lines[2] and "count" in lines[3]
    assert catalog[-1].uid[:8] in lines[2]
    # Each column starts under its header.
    assert lines[2].index(catalog[-1].uid[:8]) == lines[1].index("uid")
    assert lines[2].index("scan ") == lines[1].index("plan")
    filtered = _run("ls", path, "--query", (Key("sample") == "Ni").to_json())
    assert filtered.stdout.splitlines()[0] == f"1 run in {path}"
    assert "count" in filtered.stdout and " scan " not in filtered.stdout


def test_show_prints_metadata_and_data(catalog, RE):
    RE(scan([det], motor, -1, 1, 3), sample="Cu")
    catalog.flush()
    path = catalog.store.uri.removeprefix("sqlite:///")
    out = _run("show", path, "-1")
    assert out.returncode == 0, out.stderr
    assert catalog[-1].uid in out.stdout
    assert '"sample": "Cu"' in out.stdout
    assert "motor" in out.stdout and "time: 3" in out.stdout


def test_errors_are_one_readable_line(catalog, RE, tmp_path):
    RE(count([det], 1))
    catalog.flush()
    path = catalog.store.uri.removeprefix("sqlite:///")
    missing = _run("show", path, "999")
    assert missing.returncode == 1
    assert "no run with scan_id 999" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = _run("ls", str(tmp_path / "absent.db"))
    assert nothing.returncode == 1 and "no catalog at" in nothing.stderr
    assert not (tmp_path / "absent.db").exists()
    bad = _run("ls", path, "--query", '{"type": "and", "queries": [{"type": "nonsense"}]}')
    assert bad.returncode == 1 and "nonsense" in bad.stderr
    unsupported = _run("ls", path, "--query", '{"sample": {"$size": 1}}')
    assert unsupported.returncode == 1 and "Traceback" not in unsupported.stderr
    assert "--query" in unsupported.stderr and "'$size'" in unsupported.stderr


def test_query_option_takes_dict_queries_and_the_query_json_form(catalog, RE, tmp_path):
    RE(count([det], 2), sample="Ni")
    RE(scan([det], motor, -1, 1, 30), sample="Cu")
    RE(scan([det], motor, -1, 1, 3), sample="Cu")
    catalog.flush()
    path = catalog.store.uri.removeprefix("sqlite:///")
    dict_query = '{"plan_name": "scan", "num_points": {"$gt": 20}, "sample": {"$in": ["Cu"]}}'
    for query in [dict_query, ((Key("num_points") > 20) & (Key("sample") == "Cu")).to_json()]:
        out = _run("ls", path, "--query", query)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"1 run in {path}", query
        assert catalog.search({"num_points": 30}).keys().__next__()[:8] in out.stdout
    exported = _run("export", path, str(tmp_path / "out"), "-f", "jsonl", "--query", dict_query)
    assert exported.returncode == 0, exported.stderr
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_version():
    out = _run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"runbroker {runbroker.__version__}"


def test_ls_piped_into_head_stops_quietly(tmp_path):
    from event_model import compose_run

    # More output than a pipe holds (64 KiB), so writing meets the closed pipe for sure.
    # The runs come from event-model's compose_run, as a RunEngine's do, in one ingest: a
    # RunEngine takes minutes for 1,500 runs.
    docs = []
    for scan_id in range(1500):
        bundle = compose_run(metadata={"scan_id": scan_id, "plan_name": "count"})
        docs += [("start", bundle.start_doc), ("stop", bundle.compose_stop())]
    with runbroker.open(tmp_path / "many.db") as cat:
        cat.ingest(docs)
    command = (
        f"{shlex.quote(sys.executable)} -m runbroker.cli ls "
        f"{shlex.quote(str(tmp_path / 'many.db'))} -n 1500 | head -1"
    )
    out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert out.stdout == f"1500 runs in {tmp_path / 'many.db'}\n"
    assert out.stderr == ""


def test_warnings_are_printed_as_the_commands_own_lines(catalog, RE):
    """A warning (here: a query key no run has) is one `runbroker: warning:` line, not
    Python's file:line and source line; -W error (here for the warnings runbroker gives)
    leaves it a warning, not a failure."""
    RE(count([det], 1), sample="Ni")
    catalog.flush()
    path = catalog.store.uri.removeprefix("sqlite:///")
    command = ["-m", "runbroker.cli", "ls", path, "--query", '{"sampel": "Ni"}']
    for python_options in ([], ["-W", "error::UserWarning"]):
        out = subprocess.run(
            [sys.executable, *python_options, *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("0 runs in ")
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("runbroker: warning: "), out.stderr
        assert "sampel" in lines[0] and "sample" in lines[0]
        assert "EmptySearchWarning" not in out.stderr and ".py:" not in out.stderr
