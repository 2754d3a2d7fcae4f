"""One error hierarchy: every error of runbroker is a RunbrokerError with a status and a code,
and survives the trip to JSON and back (what a server sends and a client rebuilds)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest
from event_model import compose_run

import runbroker
from runbroker import errors
from runbroker.errors import RunbrokerError, from_dict
from runbroker.pack.manifest import VerifyReport


def _defined_in_runbroker() -> set[type[BaseException]]:
    """Every exception class (warnings aside) a module of the package defines."""
    found = set()
    for info in pkgutil.walk_packages(runbroker.__path__, "runbroker."):
        if ".migrations." in info.name:  # scripts alembic runs, not modules to import
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and not issubclass(obj, Warning)
                and obj.__module__.startswith("runbroker")
            ):
                found.add(obj)
    return found


ALL = _defined_in_runbroker()
PUBLIC = sorted((c for c in ALL if not c.__name__.startswith("_")), key=lambda c: c.__name__)


def test_the_walk_finds_the_errors_of_every_module():
    names = {c.__name__ for c in ALL}
    assert {"ConflictError", "PageGone", "PackCorruptError", "NoStreamError", "_TwoRuns"} <= names
    assert len(PUBLIC) >= 29


@pytest.mark.parametrize("cls", sorted(ALL, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_error_is_a_runbroker_error(cls):
    assert issubclass(cls, RunbrokerError)


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_public_errors_live_in_errors_and_are_exported(cls):
    assert cls.__module__ == "runbroker.errors"
    assert cls.__name__ in errors.__all__


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_each_class_has_its_own_code_and_an_http_status(cls):
    assert "code" in vars(cls), f"{cls.__name__} inherits its code"
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code)
    assert errors._BY_CODE[cls.code] is cls
    assert isinstance(cls.status, int) and 400 <= cls.status <= 599


def test_codes_are_unique_and_a_taken_code_is_refused():
    codes = [c.code for c in PUBLIC if c is not RunbrokerError]
    assert len(codes) == len(set(codes))
    with pytest.raises(TypeError, match="'conflict' is taken by ConflictError"):

        class Again(RunbrokerError):
            code = "conflict"

    assert errors._BY_CODE["conflict"] is errors.ConflictError


# Classes whose constructors take facts rather than a message.
_ARGS = {
    errors.AmbiguousUIDError: ("ab", ["ab12", "ab34"]),
    errors.DocumentError: ("event", ["e1", "e2"], "data", "expected a number"),
    errors.UnknownParentError: ("stop", "s1", "run_start", "refers to run 'r1'"),
    errors.ConflictError: ("start", "r1", None, "differs from the stored start"),
    errors.PackCorruptError: (
        "p failed verification",
        VerifyReport(missing=["a.jsonl"], corrupt=[("b.jsonl", "SHA-256 differs")]),
    ),
}


def _sample(cls):
    return cls(*_ARGS.get(cls, (f"what went wrong, said by {cls.__name__}",)))


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_to_dict_and_from_dict_round_trip(cls):
    err = _sample(cls)
    data = err.to_dict()
    assert set(data) == {"code", "message", "detail"}
    assert set(data["detail"]) == set(cls.detail)
    wire = json.loads(json.dumps(data))  # JSON-safe, as a server sends it
    again = from_dict(wire)
    assert type(again) is cls
    assert str(again) == str(err) and again.args == err.args
    for name in cls.detail:
        assert getattr(again, name) == getattr(err, name)
    assert again.to_dict() == data


def test_detail_carries_the_facts_of_each_error():
    assert _sample(errors.AmbiguousUIDError).to_dict()["detail"] == {
        "prefix": "ab",
        "candidates": ["ab12", "ab34"],
    }
    assert _sample(errors.DocumentError).to_dict()["detail"] == {
        "name": "event",
        "uid": ["e1", "e2"],
        "key": "data",
        "reason": "expected a number",
    }
    packed = _sample(errors.PackCorruptError)
    assert (packed.missing, packed.corrupt) == (["a.jsonl"], {"b.jsonl": "SHA-256 differs"})


def test_an_unknown_code_gives_a_plain_runbroker_error():
    err = from_dict({"code": "from_a_newer_server", "message": "something new", "detail": {}})
    assert type(err) is RunbrokerError and str(err) == "something new"
    assert type(from_dict({"message": "no code"})) is RunbrokerError


@pytest.mark.parametrize(
    ("cls", "builtins"),
    [
        (errors.NotFoundError, (KeyError,)),
        (errors.RunNotFoundError, (KeyError,)),
        (errors.NoStreamError, (KeyError, AttributeError)),
        (errors.AmbiguousUIDError, (KeyError,)),
        (errors.PageGone, (LookupError,)),
        (errors.QueryError, (ValueError,)),
        (errors.DocumentError, (ValueError,)),
        (errors.UnknownParentError, (ValueError,)),
        (errors.ConflictError, (ValueError,)),
        (errors.ProvenanceError, (ValueError,)),
        (errors.ReadOnlyError, (PermissionError,)),
        (errors.UnsafePathError, (ValueError,)),
        (errors.ExportError, (ValueError,)),
        (errors.TemplateError, (ValueError,)),
        (errors.BadRunFile, (ValueError,)),
        (errors.PackError, (ValueError,)),
        (errors.PackCorruptError, (ValueError,)),
        (errors.ExternalDataError, (OSError,)),
        (errors.HandlerNotFoundError, (LookupError,)),
        (errors.MissingDependencyError, (ImportError,)),
        (errors.CatalogConfigError, (ValueError,)),
        (errors.CatalogNotFoundError, (FileNotFoundError,)),
        (errors.NotACatalogError, (ValueError,)),
        (errors.CorruptCatalogError, (ValueError,)),
        (errors.UnknownSchemeError, (ValueError,)),
        (errors.SchemaVersionError, (RuntimeError,)),
        (errors.ReadOnlyMediumError, (PermissionError,)),
        (errors.CatalogUnavailableError, (ConnectionError,)),
    ],
)
def test_each_error_keeps_the_builtin_base_code_written_before_it_catches(cls, builtins):
    assert all(issubclass(cls, b) for b in builtins)
    assert all(isinstance(from_dict(_sample(cls).to_dict()), b) for b in builtins)


def test_the_old_places_still_export_their_errors():
    from runbroker.assets import ExternalDataError, HandlerNotFoundError, UnsafePathError
    from runbroker.catalog import AmbiguousUIDError
    from runbroker.derived import ProvenanceError
    from runbroker.documents import ConflictError, DocumentError, UnknownParentError
    from runbroker.export import ExportError
    from runbroker.pack import PackCorruptError, PackError
    from runbroker.queries import QueryError
    from runbroker.store.base import PageGone
    from runbroker.store.sql import SchemaVersionError

    moved = [ExternalDataError, HandlerNotFoundError, UnsafePathError, AmbiguousUIDError]
    moved += [ProvenanceError, ConflictError, DocumentError, UnknownParentError, ExportError]
    moved += [PackCorruptError, PackError, QueryError, PageGone, SchemaVersionError]
    assert all(getattr(errors, c.__name__) is c for c in moved)
    assert runbroker.AmbiguousUIDError is errors.AmbiguousUIDError


def test_a_missing_run_or_stream_is_the_not_found_family():
    cat = runbroker.temp()
    bundle = compose_run(uid="abcd-1111", time=1.0, metadata={"scan_id": 7})
    cat.insert("start", bundle.start_doc)
    cat.insert("stop", bundle.compose_stop())
    said = {}
    for key in ["zzzz", 8, -2, ""]:
        with pytest.raises(errors.RunNotFoundError) as info:
            cat[key]
        assert isinstance(info.value, KeyError) and info.value.status == 404
        said[key] = str(info.value)
    assert said[8].startswith("no run with scan_id 8")  # a sentence, not a quoted repr
    assert said["zzzz"].startswith("no run whose uid is or starts with 'zzzz'")
    with pytest.raises(errors.NoStreamError, match="has no stream 'baseline'"):
        cat[7]["baseline"]
    assert getattr(cat[7], "baseline", None) is None


def test_errors_imports_nothing_from_runbroker():
    """Every module may import errors (and the pack's copier loads it alone, as a script)."""
    tree = ast.parse(Path(errors.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("runbroker")
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("runbroker") for alias in node.names)


@pytest.mark.parametrize("name", ["runs.db", "runs/"])
def test_a_write_to_a_read_only_catalog_is_a_read_only_error(tmp_path, name):
    runbroker.open(tmp_path / name, create=True).close()
    cat = runbroker.open(tmp_path / name, readonly=True)
    with pytest.raises(errors.ReadOnlyError, match="read-only") as info:
        cat.insert("start", compose_run(uid="r1", time=1.0).start_doc)
        cat.store.flush()
    assert isinstance(info.value, PermissionError) and info.value.status == 403
