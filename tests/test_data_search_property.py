"""Data-aware search checked against brute force on generated runs (property-based).

Runs are generated with a seeded generator (random numeric data: NaN, negative values, an
integer field, an array field, empty streams, runs without a stop) and stored with one
``ingest`` call. Queries are drawn by hypothesis: ``Field`` comparisons of every statistic
and operator composed with metadata queries by ``&``, ``|``, ``~``. Each search must return
exactly the runs that ``Query.matches`` accepts on records whose ``"stats"`` are computed by
brute force (numpy over every value) from the raw data read back from the catalog.

Sizes: 10,000 runs on SQLite (the issue's figure; their data is checked read back for a
sample of runs, and the brute force runs over the generated values, which equal it), 300 on
PostgreSQL and the folder store (every run's data read back), to keep the file under a
minute on a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runbroker
from runbroker.queries import STATS, Field, FieldStat, Key, Query

SAMPLES = ["Ni", "Cu", "Si"]
FIELDS = {"x": "number", "y": "number", "n": "integer", "img": "array"}
VALUES = [-20, -10, -2.5, -1, 0, 0.5, 1, 2, 3.5, 5, 10, 20, 40]
SIZES = {"sqlite": 10_000, "postgresql": 300, "folder": 300}


def _values(rng: np.random.Generator, field: str, k: int) -> list:
    if field == "img":
        return (rng.integers(-4, 9, size=(k, 2, 2))).tolist()
    if field == "n":
        return rng.integers(-20, 21, size=k).tolist()
    values = (rng.integers(-40, 41, size=k) / 2).tolist()
    if field == "y":  # NaN now and then, sometimes all of them
        nan = rng.random(k) < (0.9 if rng.random() < 0.2 else 0.3)
        values = [float("nan") if m else v for v, m in zip(values, nan, strict=True)]
    return values


def _generate(n: int, seed: int) -> tuple[list[tuple[str, dict]], dict[str, dict]]:
    """Documents of ``n`` runs (hand-made: compose_run's checks would take most of the
    time), and per run its start, stop and generated data."""
    rng = np.random.default_rng(seed)
    ids = iter(range(10**9))
    docs: list[tuple[str, dict]] = []
    runs: dict[str, dict] = {}
    for i in range(n):
        uid = f"run-{seed}-{i:06d}"
        start = {
            "uid": uid,
            "time": 1.7e9 + i,
            "scan_id": i,
            "sample": SAMPLES[int(rng.integers(3))],
            "temp": int(rng.integers(0, 400)),
        }
        docs.append(("start", start))
        data: dict[str, dict[str, list]] = {}
        for stream in ("primary", "baseline") if rng.random() < 0.5 else ("primary",):
            fields = [f for f in FIELDS if rng.random() < 0.8]
            keys = {
                f: {"source": "gen", "dtype": FIELDS[f], "shape": [2, 2] if f == "img" else []}
                for f in fields
            }
            desc = f"{uid}-{stream}"
            descriptor = {"uid": desc, "run_start": uid, "time": start["time"], "name": stream}
            docs.append(("descriptor", {**descriptor, "data_keys": keys}))
            k = int(rng.integers(0, 6))
            data[stream] = {f: _values(rng, f, k) for f in fields}
            if k:
                page = {
                    "descriptor": desc,
                    "uid": [f"e{next(ids)}" for _ in range(k)],
                    "time": [start["time"] + j for j in range(k)],
                    "seq_num": list(range(1, k + 1)),
                    "data": data[stream],
                    "timestamps": {f: [0.0] * k for f in fields},
                }
                docs.append(("event_page", page))
        stop = None
        if rng.random() < 0.9:
            stop = {"uid": f"{uid}-stop", "run_start": uid, "time": start["time"] + 9,
                    "exit_status": "success"}  # fmt: skip
            docs.append(("stop", stop))
        runs[uid] = {"start": start, "stop": stop, "data": data}
    return docs, runs


def _brute(values: Any, array: bool) -> dict[str, Any]:
    """The statistics of one field's values, by brute force over all of them."""
    a = np.asarray(values, dtype=np.float64)
    if array:
        a = a.reshape(len(a), -1).sum(axis=1) if len(a) else np.zeros(0)
    ok = a[~np.isnan(a)]
    total = float(ok.sum())
    return {
        "count": len(a),
        "nan": int(np.isnan(a).sum()),
        "sum": total,
        "min": float(ok.min()) if len(ok) else None,
        "max": float(ok.max()) if len(ok) else None,
        "mean": total / len(ok) if len(ok) else None,
    }


def _record(run: dict) -> dict:
    record = {"start": run["start"], "stop": run["stop"]}
    if run["stop"] is not None:
        record["stats"] = {
            stream: {f: _brute(v, f == "img") for f, v in fields.items()}
            for stream, fields in run["data"].items()
        }
    return record


def _read_back(catalog: runbroker.Catalog, uid: str, run: dict) -> dict[str, dict[str, list]]:
    """The run's data as the catalog gives it back (checked against what was generated)."""
    out = {}
    for stream, fields in run["data"].items():
        ds = catalog[uid][stream].read()
        out[stream] = {f: ds[f].values.tolist() for f in fields}
        for f, values in fields.items():
            np.testing.assert_array_equal(np.asarray(values, float), np.asarray(out[stream][f]))
    return out


def _open(kind: str, folder: Path, request: pytest.FixtureRequest) -> runbroker.Catalog:
    if kind == "sqlite":
        return runbroker.open(folder / "runs.db")
    if kind == "folder":
        return runbroker.open(folder / "runs", create=True)
    from runbroker.testing.postgres import new_schema

    base = request.getfixturevalue("postgres_url")
    return runbroker.open(new_schema(base, f"prop{os.getpid()}"))


@pytest.fixture(scope="module", params=list(SIZES))
def generated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[runbroker.Catalog, dict[str, dict]]]:
    kind = request.param
    catalog = _open(kind, tmp_path_factory.mktemp(kind), request)
    docs, runs = _generate(SIZES[kind], seed=18)
    catalog.ingest(docs)
    rng = np.random.default_rng(1)
    uids = list(runs)
    sample = uids if kind != "sqlite" else [uids[i] for i in rng.choice(len(uids), 40)]
    for uid in sample:  # brute force over the data the catalog gives back
        runs[uid]["data"] = _read_back(catalog, uid, runs[uid])
    records = {uid: _record(run) for uid, run in runs.items()}
    yield catalog, records
    catalog.close()


def _field_stats() -> st.SearchStrategy[Query]:
    return st.builds(
        FieldStat,
        stream=st.sampled_from(["primary", "baseline"]),
        field=st.sampled_from([*FIELDS, "absent"]),
        stat=st.sampled_from(STATS),
        op=st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]),
        value=st.sampled_from(VALUES) | st.integers(-30, 30).map(lambda v: v / 2),
    )


def _metadata() -> st.SearchStrategy[Query]:
    return st.one_of(
        st.sampled_from(SAMPLES).map(lambda s: Key("sample") == s),
        st.integers(0, 400).map(lambda t: Key("temp") > t),
    )


def _between() -> st.SearchStrategy[Query]:
    return st.builds(
        lambda s, f, lo, span: Field(s, f).between(lo, lo + span),
        st.sampled_from(["primary", "baseline"]),
        st.sampled_from(list(FIELDS)),
        st.sampled_from(VALUES),
        st.sampled_from([0, 1, 5, 20, 60]),
    )


QUERIES = st.recursive(
    st.one_of(_field_stats(), _between(), _metadata()),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda p: p[0] & p[1]),
        st.tuples(inner, inner).map(lambda p: p[0] | p[1]),
        inner.map(lambda q: ~q),
    ),
    max_leaves=4,
)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=QUERIES)
def test_field_search_equals_brute_force(generated, query):
    catalog, records = generated
    expected = {uid for uid, record in records.items() if query.matches(record)}
    found = {record.uid for record in catalog.store.search(query)}
    assert found == expected, query


def test_generated_runs_have_their_stats(generated):
    catalog, records = generated
    stopped = [uid for uid, r in records.items() if r["stop"] is not None][:50]
    for uid in stopped:
        assert catalog[uid].stats == records[uid]["stats"], uid
