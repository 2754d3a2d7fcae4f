"""stream.to_dask() computed on a dask.distributed cluster of worker processes.

Each worker opens the catalog itself (the store pickles as its URL or folder) and reads its
own chunks; the test checks that the pages were read in the workers, not in this process.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster
from event_model import compose_run

from runbroker.store import files as folderstore
from runbroker.store import sql as sqlstore


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with Client(cluster) as c:
        yield c
    cluster.close()


def _pids_reading(client: Client) -> set[int]:
    def opened() -> list[int]:
        from runbroker.client import store as httpstore

        opened = sqlstore._readers or folderstore._readers or httpstore._readers
        return [os.getpid()] if opened else []

    return {pid for pids in client.run(opened).values() for pid in pids}


def test_to_dask_chunks_are_read_by_the_workers(catalog, client):
    run = compose_run()
    catalog.insert("start", run.start_doc)
    keys = {"x": {"dtype": "number", "shape": [], "source": "sim"}}
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    catalog.insert("descriptor", desc.descriptor_doc)
    n, per_page = 5000, 500
    x = np.random.default_rng(0).random(n)
    for lo in range(0, n, per_page):
        catalog.insert(
            "event_page",
            desc.compose_event_page(
                data={"x": x[lo : lo + per_page]},
                timestamps={"x": np.zeros(per_page)},
                seq_num=np.arange(lo + 1, lo + per_page + 1),
                time=np.arange(lo, lo + per_page, dtype=float),
                validate=False,
            ),
        )
        catalog.flush()  # one page per flush (SQL stores): several chunks for the workers
        # A folder store joins a stream's events up to the next other document into one
        # page (it reads the whole file anyway): a resource between pages keeps them apart.
        resource = run.compose_resource(
            spec="NPY", root="/", resource_path=f"unused{lo}.npy", resource_kwargs={}
        )
        catalog.insert("resource", resource.resource_doc)
    stream = catalog[-1].primary
    lazy = stream.to_dask()
    assert lazy["x"].data.npartitions > 2
    values = client.compute(lazy["x"].data).result()
    np.testing.assert_array_equal(values, x)
    assert _pids_reading(client) - {os.getpid()}, "no worker process opened the catalog"
