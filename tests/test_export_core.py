"""The exporter interface every format shares: routing, filling, names, errors, overwrite.

A small exporter defined here (``Probe``) records the pages it is given and writes one text
file, so these tests check the base class and the live router without depending on any format;
the formats have their own test files, read back by outside software.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from event_model import compose_run
from ophyd.sim import motor

import runbroker
from runbroker.export import (
    Exporter,
    ExportError,
    Page,
    TemplateError,
    exporter,
    live,
    register_exporter,
    render,
)
from runbroker.testing.detectors import ADHDF5Detector, StreamHDF5Detector, expected_frame


class Probe(Exporter):
    """Keeps every page; writes one line per page to a text file named by the template."""

    format = "probe"
    suffix = ".txt"

    def __init__(self, directory: Any, *, pixels: bool = False, **options: Any) -> None:
        super().__init__(directory, **options)
        self.needs_pixels = pixels
        self.pages: list[Page] = []
        self.completed: bool | None = None
        self._file: Any = None

    def start(self, doc: dict) -> None:
        self._file = open(self.new_path(), self.mode)  # noqa: SIM115 -- closed in finish

    def event_page(self, page: Page) -> None:
        self.pages.append(page)
        self._file.write(f"{page.stream} {len(page)}\n")

    def finish(self, complete: bool) -> None:
        self.completed = complete
        self._file.write("complete\n" if complete else "INCOMPLETE\n")
        self._file.close()


@pytest.fixture(autouse=True)
def _probe() -> None:
    register_exporter("probe", Probe)


def _column(pages: list[Page], stream: str, field: str) -> np.ndarray:
    return np.concatenate([p.data[field] for p in pages if p.stream == stream])


@pytest.mark.parametrize(
    "key", ["scalar", "grid", "inline_image", "file_image", "tomo", "two_descriptors"]
)
def test_pages_carry_the_values_read_gives(export_runs, tmp_path, key):
    run = export_runs[key]
    exp = exporter("probe", tmp_path, pixels=True, assets=run.catalog.assets)
    for name, doc in run.documents(arrays=True):
        exp(name, doc)
    assert exp.completed is True
    assert [p.name for p in exp.close()] == [p.name for p in exp.files]
    for stream in run:
        ds = run[stream].read()
        for field in ds.data_vars:
            got = _column(exp.pages, stream, field)
            np.testing.assert_array_equal(got, ds[field].values)
            assert got.dtype == ds[field].dtype, (stream, field)
        np.testing.assert_array_equal(
            np.concatenate([p.time for p in exp.pages if p.stream == stream]), ds["time"].values
        )


def test_without_pixels_file_fields_stay_references(export_runs, tmp_path):
    run = export_runs["file_image"]
    exp = exporter("probe", tmp_path)
    for name, doc in run.documents():
        exp(name, doc)
    refs = _column(exp.pages, "primary", "adet_image")
    assert refs.dtype.kind == "U"
    assert list(refs) == list(run.primary.read(fill=False)["adet_image"].values)


def test_live_export_fills_from_files_as_they_are_written(tmp_path):
    """Both kinds of detector file: datum (AD HDF5) and stream_resource (ophyd-async style)."""
    made: list[Probe] = []

    def factory() -> Probe:
        made.append(Probe(tmp_path / "out", pixels=True))
        return made[-1]

    from runbroker.export import LiveExport

    RE = RunEngine({}, call_returns_result=False)
    router = LiveExport(factory)
    RE.subscribe(router)
    shape = (4, 6)
    RE(count([ADHDF5Detector("ad", tmp_path / "ad", shape=shape)], 3))
    RE(scan([StreamHDF5Detector("sd", tmp_path / "sd", shape=shape)], motor, 0, 1, 3))
    expected = np.stack([expected_frame(k, shape) for k in range(3)])
    np.testing.assert_array_equal(_column(made[0].pages, "primary", "ad_image"), expected)
    np.testing.assert_array_equal(_column(made[1].pages, "primary", "sd_image"), expected)
    assert [m.completed for m in made] == [True, True]
    assert len(router.files) == 2 and router.running == []


def _stream_scan(tmp_path: Path, n: int) -> list[tuple[str, dict]]:
    """The documents of a real scan of a stream_resource detector (ophyd-async style)."""
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(scan([StreamHDF5Detector("sd", tmp_path / "sd", shape=(4, 6))], motor, 0, 1, n))
    return docs


def test_frames_announced_after_their_events_are_filled_in_order(tmp_path):
    """A detector may send a stream_datum after the events it covers: each event waits for
    it, and the events still come out in order, every frame filled."""
    docs = _stream_scan(tmp_path, 4)
    # Every stream_datum moved after the event it covers; the last two after both events.
    late = [d for d in docs if d[0] != "stream_datum"]
    datums = [d for d in docs if d[0] == "stream_datum"]
    events = [i for i, (name, _) in enumerate(late) if name == "event"]
    for event_at, datum in zip(reversed(events[:2]), reversed(datums[:2]), strict=True):
        late.insert(event_at + 1, datum)
    late[-1:-1] = datums[2:]
    assert [n for n, _ in late].index("stream_datum") > [n for n, _ in late].index("event")
    probe = Probe(tmp_path / "out", pixels=True)
    for name, doc in late:
        probe(name, doc)
    assert probe.completed is True
    frames = _column(probe.pages, "primary", "sd_image")
    np.testing.assert_array_equal(frames, np.stack([expected_frame(k, (4, 6)) for k in range(4)]))
    assert np.concatenate([p.seq_num for p in probe.pages]).tolist() == [1, 2, 3, 4]


def test_frames_never_announced_are_named_when_the_run_ends(tmp_path):
    docs = _stream_scan(tmp_path, 3)
    last = max(i for i, (name, _) in enumerate(docs) if name == "stream_datum")
    probe = Probe(tmp_path / "out", pixels=True)
    with pytest.raises(runbroker.assets.ExternalDataError, match=r"sd_image.*seq_num 3"):
        for name, doc in docs[:last] + docs[last + 1 :]:
            probe(name, doc)
    assert len(probe.pages) == 2  # the events announced were handed on
    assert probe.completed is False  # the file is closed, marked incomplete


def test_a_run_cut_short_keeps_the_events_whose_frames_were_announced(tmp_path):
    """No stop, and the last frame never announced: closing the live export writes the
    events it could fill into a file marked incomplete, and reports no error."""
    from runbroker.export import LiveExport

    docs = _stream_scan(tmp_path, 3)
    last = max(i for i, (name, _) in enumerate(docs) if name == "stream_datum")
    made: list[Probe] = []

    def factory() -> Probe:
        made.append(Probe(tmp_path / "out", pixels=True))
        return made[-1]

    router = LiveExport(factory)
    for i, (name, doc) in enumerate(docs):
        if i != last and name != "stop":
            router(name, doc)
    assert router.close() == made[0].files and router.errors == []
    assert made[0].completed is False
    assert np.concatenate([p.seq_num for p in made[0].pages]).tolist() == [1, 2]


def _documents(scan_id: int, n: int) -> list[tuple[str, dict]]:
    bundle = compose_run(metadata={"scan_id": scan_id, "sample": "Fe"})
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(n):
        docs.append(("event", desc.compose_event(data={"x": float(i)}, timestamps={"x": 0.0})))
    return [*docs, ("stop", bundle.compose_stop())]


def test_live_router_keeps_interleaved_runs_apart(tmp_path):
    made: list[Probe] = []

    def factory() -> Probe:
        made.append(Probe(tmp_path))
        return made[-1]

    from runbroker.export import LiveExport

    router = LiveExport(factory)
    a, b = _documents(1, 2), _documents(2, 5)
    for pair in zip(a, b[: len(a)], strict=True):
        for name, doc in pair:
            router(name, doc)
    for name, doc in b[len(a) :]:
        router(name, doc)
    assert [sum(len(p) for p in m.pages) for m in made] == [2, 5]
    assert [m.start_doc["scan_id"] for m in made] == [1, 2]


def test_documents_of_a_run_started_before_subscribing_are_ignored(tmp_path):
    router = live("probe", tmp_path)
    for name, doc in _documents(1, 2)[1:]:
        router(name, doc)
    assert router.files == []


def test_a_run_without_stop_is_finished_and_marked_on_close(tmp_path):
    router = live("probe", tmp_path)
    for name, doc in _documents(7, 3)[:-1]:
        router(name, doc)
    assert len(router.running) == 1
    (path,) = router.close()
    assert path.read_text().splitlines() == ["primary 1"] * 3 + ["INCOMPLETE"]
    assert router.running == []


def test_existing_files_are_never_overwritten_unless_asked(export_runs, tmp_path):
    run = export_runs["scalar"]
    (first,) = run.export("probe", tmp_path, template="same")
    first.write_text("precious")
    with pytest.raises(FileExistsError, match=r"same\.txt already exists.*overwrite=True"):
        run.export("probe", tmp_path, template="same")
    assert first.read_text() == "precious"
    run.export("probe", tmp_path, template="same", overwrite=True)
    assert first.read_text().endswith("complete\n")


def test_a_file_appearing_after_the_check_is_not_replaced(tmp_path):
    exp = Probe(tmp_path, template="race")
    (tmp_path / "race.txt").write_text("other")

    def exists(self: Path) -> bool:  # the check misses a file made a moment later
        return False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "exists", exists)
        with pytest.raises(FileExistsError):
            exp("start", _documents(1, 0)[0][1])
    assert (tmp_path / "race.txt").read_text() == "other"


def test_template_names_and_defaults():
    start = {"uid": "0123456789abcdef", "scan_id": 12, "time": 1_700_000_000.0, "sample": "Fe/Cu"}
    name = render("{start[scan_id]:05d}-{start[sample]}-{stream}", start, stream="primary")
    assert name == "00012-Fe_Cu-primary"
    assert render("{time:%Y}", start) == "2023"
    default = render(runbroker.export.DEFAULT_TEMPLATE, start)
    assert default.endswith("_scan12_01234567") and default[:8].isdigit()
    assert render("../{start[sample]}", start) == "Fe_Cu"


def test_template_naming_a_missing_key_says_which(tmp_path, export_runs):
    with pytest.raises(TemplateError, match=r"'temperature'.*has: .*sample"):
        export_runs["scalar"].export("probe", tmp_path, template="{start[temperature]}")
    with pytest.raises(TemplateError, match="template"):
        render("{start[", {"uid": "u"})


def test_two_files_of_one_name_are_refused(tmp_path):
    class TwoFiles(Probe):
        def start(self, doc: dict) -> None:
            self.new_path(stream="a")
            self.new_path(stream="a")

    with pytest.raises(ExportError, match="twice"):
        TwoFiles(tmp_path)("start", _documents(1, 0)[0][1])


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        (lambda d: [d[1]], "before any start"),
        (lambda d: [d[0], d[0]], "second start"),
        (lambda d: [d[0], d[2]], "never sent"),
        (lambda d: [d[0], ("bulk_events", {})], "unknown document type 'bulk_events'"),
        (
            lambda d: [d[0], d[1], ("event", {**d[2][1], "data": {"y": 1.0}})],
            "field 'y' is not declared",
        ),
    ],
)
def test_bad_documents_are_refused_by_name(tmp_path, docs, message):
    exp = Probe(tmp_path)
    with pytest.raises(ExportError, match=message):
        for name, doc in docs(_documents(3, 1)):
            exp(name, doc)


def test_unknown_format_lists_the_known_ones(tmp_path, export_runs):
    with pytest.raises(ExportError, match=r"no export format 'xls'; choose one of .*csv"):
        export_runs["scalar"].export("xls", tmp_path)


def test_catalog_export_writes_every_run_with_a_progress_bar(export_runs, tmp_path, capsys):
    cat = export_runs["catalog"]
    files = cat.export("probe", tmp_path, progress=True)
    assert len(files) == len(cat)
    assert "event" in capsys.readouterr().err


def test_a_failing_live_export_does_not_stop_the_run(tmp_path):
    """The experiment matters more than its export: the error is kept, the scan goes on."""
    from bluesky.plans import count
    from ophyd.sim import det

    catalog = runbroker.temp()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.insert)
    (tmp_path / "taken.txt").write_text("precious")
    router = live("probe", tmp_path, template="taken")
    RE.subscribe(router)
    RE(count([det], 3))
    RE(count([det], 2))
    assert len(catalog) == 2 and catalog[-1].primary.read().sizes["time"] == 2
    assert len(router.errors) == 2
    assert all(isinstance(e, FileExistsError) for _, e in router.errors)
    assert (tmp_path / "taken.txt").read_text() == "precious"
    strict = live("probe", tmp_path, template="taken", strict=True)
    RE.subscribe(strict)
    with pytest.raises(FileExistsError):
        RE(count([det], 1))
