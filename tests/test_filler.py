"""The seam between reading runs and reading detector data, and the catalog's view of runs.

A catalog given a filler that is not the local one -- here one serving arrays from a dict, as
a server's client would serve them from responses -- reads, replays and lazily loads file-backed
fields through it alone. And every path that reaches a run (lookups, ``run.parents``,
``run.derived``, ``run.v1``) goes through the catalog's scope: a run the scope hides is never
shown, while the user's search never hides a run's relatives.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from event_model import compose_run

import runbroker
from runbroker.assets import LocalFiller
from runbroker.catalog import Catalog
from runbroker.filler import FieldEvents, Filler, Fills
from runbroker.queries import Key

N = 5
SHAPE = (2, 3)


class DictFiller:
    """Serves each event's array from a dict keyed by (run uid, field, seq_num); every two
    events are one "file"."""

    def __init__(self, arrays: dict[tuple[str, str, int], np.ndarray]) -> None:
        self.arrays = arrays
        self.asked: list[FieldEvents] = []

    def fill(self, events: FieldEvents) -> np.ndarray:
        self.asked.append(events)
        seq = events.seq_nums.tolist()
        return np.stack([self.arrays[events.run_uid, events.field, s] for s in seq])

    def references(self, events: FieldEvents) -> np.ndarray:
        out = np.empty(len(events), dtype=object)
        out[:] = [f"dict:{events.field}/{s}" for s in events.seq_nums.tolist()]
        return out

    def cuts(self, events: FieldEvents) -> list[int]:
        return sorted({0, len(events), *range(2, len(events), 2)})


class FillingStore:
    """A store that fills by itself (as the HTTP client will): the catalog must use its filler."""

    def __init__(self, inner: object, filler: Filler) -> None:
        self.inner, self._filler = inner, filler

    def filler(self) -> Filler:
        return self._filler

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _image_run(**metadata: object) -> tuple[str, list[tuple[str, dict]]]:
    """A run whose ``img`` is a STREAM: field: its data is in no event, only in "files"."""
    run = compose_run(metadata=metadata)
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "motor": {"source": "sim", "dtype": "number", "shape": []},
            "img": {
                "source": "sim",
                "dtype": "array",
                "shape": list(SHAPE),
                "dtype_numpy": "<f8",
                "external": "STREAM:",
            },
        },
    )
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs.append(
        (
            "event_page",
            desc.compose_event_page(
                data={"motor": [float(i) for i in range(N)]},
                timestamps={"motor": [0.0] * N},
                seq_num=list(range(1, N + 1)),
                time=[1.0 + i for i in range(N)],
            ),
        )
    )
    docs.append(("stop", run.compose_stop()))
    return run.start_doc["uid"], docs


@pytest.fixture
def served() -> tuple[Catalog, DictFiller, str]:
    local = runbroker.temp()
    uid, docs = _image_run(plan_name="count")
    local.ingest(docs)
    arrays = {(uid, "img", s): np.full(SHAPE, float(s)) for s in range(1, N + 1)}
    filler = DictFiller(arrays)
    return Catalog(FillingStore(local.store, filler)), filler, uid  # type: ignore[arg-type]


def test_a_store_that_fills_gives_the_catalog_its_filler(served):
    cat, filler, _ = served
    assert isinstance(cat.store, Fills) and isinstance(filler, Filler)
    assert cat.filler is filler and cat.search(Key("plan_name") == "count").filler is filler
    assert isinstance(runbroker.temp().filler, LocalFiller)


def test_read_and_references_come_from_the_filler(served):
    cat, filler, uid = served
    stream = cat[uid].primary
    img = stream.read()["img"].values
    assert img.shape == (N, *SHAPE)
    assert img[:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    (asked,) = filler.asked
    assert (asked.run_uid, asked.field, asked.refs) == (uid, "img", None)
    assert asked.descriptors == tuple(d["uid"] for d in stream.descriptors)
    assert stream.read(events=slice(1, 3))["img"].values[:, 0, 0].tolist() == [2.0, 3.0]
    refs = stream.read(fill=False)["img"].values.tolist()
    assert refs == [f"dict:img/{s}" for s in range(1, N + 1)]


def test_to_dask_makes_one_chunk_per_stretch_the_filler_cuts(served):
    cat, filler, uid = served
    lazy = cat[uid].primary.to_dask()
    assert filler.asked == []  # planning reads no pixels
    assert lazy["img"].data.chunks[0] == (2, 2, 1)
    computed = lazy["img"].compute().values
    assert sorted(e.seq_nums.tolist() for e in filler.asked) == [[1, 2], [3, 4], [5]]
    assert (computed == cat[uid].primary.read()["img"].values).all()


def test_replay_with_fill_puts_the_fillers_arrays_in_the_events(served):
    cat, _, uid = served
    (page,) = [d for n, d in cat[uid].documents(fill=True) if n == "event_page"]
    assert page["data"]["img"][:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert page["filled"]["img"] == [True] * N


def test_the_local_filler_pickles_for_dask_workers():
    cat = runbroker.temp(root_map={"/old": "/new"})
    copy = pickle.loads(pickle.dumps(cat.filler))
    assert isinstance(copy, LocalFiller) and copy.assets.root_map == {"/old": "/new"}
    assert copy.documents.uri == cat.store.uri


# -- the catalog's view -------------------------------------------------------------------


@pytest.fixture
def family() -> dict[str, object]:
    """Two raw runs (one secret), a derived run of both, and a secret derived run."""
    cat = runbroker.temp()
    uids: dict[str, object] = {"catalog": cat}  # kept open: a temp catalog goes with it
    for name in ("raw", "secret_raw"):
        uid, docs = _image_run(plan_name="count", sample="secret" if "secret" in name else "Ni")
        cat.ingest(docs)
        uids[name] = uid
    code = {"name": "reduce", "version": "1"}
    data = {"primary": {"I": np.arange(3.0)}}
    uids["derived"] = cat.save_derived(
        data, metadata={"sample": "Ni"}, parents=[uids["raw"], uids["secret_raw"]], code=code
    ).uid
    uids["secret_derived"] = cat.save_derived(
        data, metadata={"sample": "secret"}, parents=[uids["raw"]], code=code
    ).uid
    return uids


def _scoped(family: dict[str, object]) -> Catalog:
    opened = family["catalog"]
    return Catalog(opened.store, scope=Key("sample") == "Ni", assets=opened.assets)


def test_a_scope_hides_runs_from_every_lookup(family):
    cat = _scoped(family)
    assert sorted(cat) == sorted([family["raw"], family["derived"]])
    assert len(cat) == 2 and family["secret_raw"] not in cat
    for key in (family["secret_raw"], family["secret_raw"][:8]):
        with pytest.raises(KeyError):
            cat[key]
    assert [r.uid for r in cat[-3:]] == [family["derived"], family["raw"]]
    assert len(cat.search(Key("plan_name") == "derived")) == 1


def test_parents_and_derived_stay_in_the_scope(family):
    cat = _scoped(family)
    assert [p.uid for p in cat[family["derived"]].parents] == [family["raw"]]
    assert list(cat[family["raw"]].derived) == [family["derived"]]
    # Unscoped, the same catalog shows them all.
    whole = Catalog(cat.store)
    assert len(whole[family["derived"]].parents) == 2
    assert sorted(whole[family["raw"]].derived) == sorted(
        [family["derived"], family["secret_derived"]]
    )


def test_a_search_does_not_hide_relatives_but_keeps_the_scope(family):
    cat = _scoped(family)
    analysis = cat.search(Key("plan_name") == "derived")
    (derived,) = analysis.values()
    assert derived.catalog is analysis
    assert [p.uid for p in derived.parents] == [family["raw"]]  # not a derived run: shown
    assert derived.parents[0].catalog.scope == cat.scope
    assert sorted(analysis.whole) == sorted(cat)
    assert list(cat.search(Key("plan_name") == "count")[-1].derived) == [family["derived"]]
    assert sorted(derived.v1.db.catalog) == sorted(cat)


def test_saving_derived_data_from_a_search_looks_parents_up_in_the_scope(family):
    analysis = _scoped(family).search(Key("plan_name") == "derived")
    code = {"name": "fit", "version": "1"}
    data = {"primary": {"I": np.arange(3.0)}}
    fit = analysis.save_derived(
        data, metadata={"sample": "Ni", "plan_name": "fit"}, parents=[family["raw"][:8]], code=code
    )
    assert [p.uid for p in fit.parents] == [family["raw"]]  # the new run, outside the search
    with pytest.raises(KeyError):
        analysis.save_derived(data, parents=[family["secret_raw"]], code=code)
