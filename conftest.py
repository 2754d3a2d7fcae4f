"""Names the docstring examples in src/ use, so that every example really runs.

``cat`` holds two runs recorded by a real RunEngine with ophyd's simulated devices: a
``count`` of ``det`` (with a baseline) and a ``scan`` of ``det`` against ``motor``.
``new_run()`` gives a run of its own, for examples that change it.
"""

from __future__ import annotations

import numpy as np
import pytest
from _pytest.doctest import DoctestItem

import runbroker
from runbroker import queries

# Alembic's environment and revision scripts only run inside alembic.
collect_ignore_glob = ["src/runbroker/store/migrations/*"]


@pytest.fixture(scope="session")
def _doc_names() -> dict:
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from bluesky.preprocessors import SupplementalData
    from ophyd.sim import det, motor, motor1

    cat = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE.preprocessors.append(SupplementalData(baseline=[motor1]))
    RE(count([det], 3), sample="Ni")
    RE.preprocessors.clear()
    RE(scan([det], motor, -1, 1, 5), sample={"name": "Cu", "temp": 300})
    return dict(
        np=np,
        new_run=_new_run,
        runbroker=runbroker,
        cat=cat,
        RE=RunEngine({}, call_returns_result=False),
        run=cat[-1],
        other_run=cat[-2],
        **{name: getattr(queries, name) for name in queries.__all__},
    )


def _new_run() -> runbroker.Run:
    """A run of its own, in a catalog of its own, for examples that change it (notes)."""
    from event_model import compose_run

    made = compose_run(metadata={"sample": "Nl", "scan_id": 1})
    cat = runbroker.temp()
    cat.ingest([("start", made.start_doc), ("stop", made.compose_stop())])
    return cat[-1]


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, DoctestItem):
        names = request.getfixturevalue("doctest_namespace")
        names.update(request.getfixturevalue("_doc_names"))
        names["tmp_path"] = request.getfixturevalue("tmp_path")  # a fresh folder per example
