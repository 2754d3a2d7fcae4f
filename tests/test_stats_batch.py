"""The statistics of runs stopped in one transaction, computed together at its commit
(``runbroker.store.statsbatch``), equal those computed run by run (``summary_rows``).

Runs are drawn by hypothesis: streams of one or more descriptors, pages of floats with NaN
and infinities, integers, per-event arrays, strings, empty pages, declared fields no event
held, several pages of one descriptor. Each batch mixes runs that take the joined path with
runs that do not.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runbroker.store.stats import Accumulator, summary_rows
from runbroker.store.statsbatch import stop_rows

NUM = {"dtype": "number", "shape": []}
FLOATS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308]),
)


@st.composite
def columns(draw: st.DrawFn, n: int) -> object:
    kind = draw(st.sampled_from(["float", "float", "int", "uint", "image", "text", "list"]))
    if kind == "float":
        return np.array(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
    if kind == "int":
        return np.array(draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)))
    if kind == "uint":
        return np.arange(n, dtype=np.uint16)
    if kind == "image":
        return np.full((n, 2, 2), draw(FLOATS))
    if kind == "text":
        return ["a"] * n
    return [[1.0, 2.0]] * n  # ragged arrays stay lists


@st.composite
def runs(draw: st.DrawFn) -> list:
    parts = []
    for d in range(draw(st.integers(1, 3))):
        # Mostly one descriptor per stream; sometimes two of one stream.
        name = draw(st.sampled_from(["primary", "baseline", "primary"])) if d else "primary"
        fields = draw(st.lists(st.sampled_from(["x", "y", "z", "w"]), unique=True, max_size=4))
        declared = draw(st.lists(st.sampled_from(["x", "y", "z", "v"]), unique=True))
        descriptor = {
            "name": name,
            "data_keys": {f: {"dtype": "number", "shape": []} for f in declared},
        }
        acc = Accumulator()
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            n = draw(st.integers(0, 6))
            page = {"time": np.zeros(n), "seq_num": np.arange(n)}
            for f in fields:
                page["d:" + f] = draw(columns(n))
            acc.add(page)
        parts.append((descriptor, acc))
    return parts


def _same(a: list[tuple], b: list[tuple]) -> bool:
    def key(row: tuple) -> tuple:
        return row[:3]

    a, b = sorted(a, key=key), sorted(b, key=key)
    if [key(r) for r in a] != [key(r) for r in b]:
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x[3:], y[3:], strict=True):
            if (u is None) != (v is None):
                return False
            if u is not None and not math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9):
                return False
            if u is not None and type(u) is not type(v):
                return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(runs(), min_size=1, max_size=8))
def test_a_commits_statistics_equal_each_runs_own(batch):
    # The run-by-run rows first, from copies: summarising settles an accumulator.
    expected = []
    copies = []
    for run_id, parts in enumerate(batch, start=1):
        copy = [(d, _copy(acc)) for d, acc in parts]
        copies.append((run_id, copy))
        expected += [(run_id, *row) for row in summary_rows(parts)]
    got = stop_rows(copies)
    assert _same(got, expected), (got, expected)


def _copy(acc: Accumulator) -> Accumulator:
    out = Accumulator()
    page = acc.lone_page()
    if page:
        out.add(page)
    elif page is None:
        out._fields = {k: list(v) for k, v in acc.fields.items()}
        out._other = set(acc.other)
    return out


def test_the_joined_path_is_taken_for_one_small_page_per_stream():
    """The common small run: one page of floats per stream, summarised with the others."""
    rows = []
    for run_id in (1, 2):
        acc = Accumulator()
        acc.add({"d:x": np.array([1.0, 2.0 * run_id]), "d:s": ["a", "b"]})
        assert acc.lone_page() is not None  # nothing summarised yet
        rows.append((run_id, [({"name": "primary", "data_keys": {"x": NUM, "e": NUM}}, acc)]))
    got = {(r[0], r[2]): r[3:] for r in stop_rows(rows)}
    assert got[1, '["primary","x"]'] == (2, 0, 3.0, 1.0, 2.0, 1.5)
    assert got[2, '["primary","x"]'] == (2, 0, 5.0, 1.0, 4.0, 2.5)
    assert got[1, '["primary","e"]'] == (0, 0, 0.0, None, None, None)  # declared, no event
    assert (1, '["primary","s"]') not in got  # text: no statistics
