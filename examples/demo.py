"""runbroker demo: real bluesky plans with ophyd's simulated devices into an embedded catalog.

Run with ``make demo``. It writes ``demo-output/runs.db`` and ``demo-output/scan.png``, then
serves the catalog on loopback and reads it back through the remote client and its cache.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed

import matplotlib.pyplot as plt
from bluesky import RunEngine
from bluesky.plans import count, grid_scan, rel_scan, scan
from bluesky.preprocessors import SupplementalData
from ophyd.sim import det, det4, motor, motor1, motor2, noisy_det

import runbroker
from runbroker.pack import pack, verify
from runbroker.queries import FullText, Key, TimeRange
from runbroker.testing.detectors import ADHDF5Detector

OUT = Path("demo-output")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    cat = runbroker.open(OUT / "runs.db")

    RE = RunEngine({})
    RE.subscribe(cat.insert)  # live ingest: every document goes into the catalog
    RE.preprocessors.append(SupplementalData(baseline=[motor1, motor2]))

    print("Running plans with simulated devices ...")
    RE(count([det, noisy_det], num=5), sample="Ni foil", operator="demo")
    RE(scan([det], motor, -3, 3, 31), sample={"name": "Cu", "temp": 300}, purpose="peak")
    RE(rel_scan([noisy_det], motor, -1, 1, 11), sample={"name": "Cu", "temp": 350})
    RE(grid_scan([det4], motor1, -1.5, 1.5, 7, motor2, -0.1, 0.1, 5), sample="Fe")

    print(f"\n{cat}")
    print("\nLookups:")
    print("  cat[-1]           ->", cat[-1].uid, cat[-1].start["plan_name"])
    print("  cat[2]  (scan_id) ->", cat[2].uid, cat[2].start["plan_name"])
    print("  cat[uid[:6]]      ->", cat[cat[-1].uid[:6]].uid)
    print("  cat[-2:]          ->", [r.start["scan_id"] for r in cat[-2:]])

    hits = cat.search(Key("sample.name") == "Cu").search(Key("sample.temp") >= 300)
    print(f"\nSearch Key('sample.name') == 'Cu' & temp >= 300: {len(hits)} runs")
    print("  scan_ids:", [run.start["scan_id"] for run in hits.values()])
    today = cat.search(TimeRange(since=time.strftime("%Y-%m-%d")))
    print(
        f"  TimeRange(since=today): {len(today)} runs;",
        f"FullText('foil'): {len(cat.search(FullText('foil')))} run",
    )

    run = cat[2]
    print(f"\n{run!r}")
    ds = run.primary.read()
    print(ds)
    print("\nBaseline readings:\n", run.baseline.to_pandas())

    ds.plot.scatter(x="motor", y="det")
    plt.title(f"scan {run.start['scan_id']} ({run.uid[:8]})")
    plt.savefig(OUT / "scan.png", dpi=100)
    print(f"\nSaved the plot to {OUT / 'scan.png'} and the catalog to {OUT / 'runs.db'}")

    print("\nDetector images kept in files (the area-detector HDF5 layout):")
    camera = ADHDF5Detector("cam", OUT / "data", shape=(64, 64))
    RE(count([camera], num=3), sample="Ni foil")
    raw = cat[-1]
    images = raw.primary.read()["cam_image"]
    print(f"  {dict(images.sizes)} {images.dtype}, read from {camera.files_written[0]}")
    corrected = raw.primary.to_dask()["cam_image"].data.astype("float32") - 100.0
    derived = cat.save_derived(
        {"primary": {"corrected": corrected.compute()}},
        metadata={"sample": "Ni foil"},
        parents=[raw],
        code={"name": "demo-dark-subtraction", "version": runbroker.__version__},
    )
    print(
        f"  derived run {derived.uid[:8]} (files under {OUT / 'derived'}) from "
        f"{[p.uid[:8] for p in derived.parents]}; runs derived from the raw run: "
        f"{[uid[:8] for uid in raw.derived]}"
    )

    print("\nExported for other programs (NeXus for NeXpy/silx, SPEC for PyMca, CSV):")
    for fmt in ("nexus", "spec", "csv"):
        files = run.export(fmt, OUT / "export", template="{plan_name}-{scan_id}", overwrite=True)
        print(f"  {fmt}: {', '.join(p.name for p in files)}")

    print("\nPacked to take home (documents + detector files + SHA-256 manifest):")
    report = pack(cat, OUT / "pack", progress=False)
    print(f"  {report}")
    print(f"  verify: {verify(OUT / 'pack')}")
    home = runbroker.open(OUT / "pack", readonly=True)  # a folder of run files is a catalog
    again = home[raw.uid].primary.read()["cam_image"]
    print(
        f"  opened the pack: {len(home)} runs; images read from the pack's copies equal: "
        f"{bool((again == images).all())}"
    )
    home.close()
    served(cat, raw.uid)
    cat.close()


def served(cat: runbroker.Catalog, uid: str) -> None:
    """The same catalog through a server on this machine (what `runbroker serve` runs): the
    same API, the images filled on the server, a second read answered by the local cache."""
    import threading

    import uvicorn

    from runbroker.server import Settings, build_app
    from runbroker.testing.server import free_port

    port = free_port()
    app = build_app(cat, Settings(api_key="demo-key"))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    print(f"\nServed at http://127.0.0.1:{port} (an API key is required):")
    remote = runbroker.open(
        f"http://127.0.0.1:{port}", api_key="demo-key", cache=OUT / "client-cache"
    )
    images = remote[uid].primary.read()["cam_image"]
    before = remote.store.transport.requests
    remote[uid].primary.read()
    asked = remote.store.transport.requests - before
    print(
        f"  runbroker.open(url): {len(remote)} runs; images "
        f"{dict(images.sizes)} read through the server; a second read sent "
        f"{asked} requests (the local cache)"
    )
    remote.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
