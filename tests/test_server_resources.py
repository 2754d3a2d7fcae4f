"""The resource routes (a stream's data in a chosen format, documents, exports) and
compression, against a real uvicorn server on loopback, each answer read by an independent
reader (pyarrow, pandas, json, msgpack, numpy, zipfile, h5py) and compared with a local read.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import event_model
import h5py
import httpx
import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import uvicorn
import zstandard

import runbroker
from runbroker import wire
from runbroker.export import FORMATS
from runbroker.server import Settings, build_app
from runbroker.server import resources as resources_module
from runbroker.testing.server import free_port, wait_until_up

KEY = "resources-test-key"
BIG_EVENTS = 1200
BIG_SHAPE = (64, 64)  # float32: 16 KiB an event, so several blocks of BLOCK_BYTES


def _big_run() -> Iterator[tuple[str, dict]]:
    """A run of BIG_EVENTS images kept in the events, sent as event pages."""
    bundle = event_model.compose_run(metadata={"sample": "big"})
    yield "start", bundle.start_doc
    keys = {
        "img": {"source": "sim", "dtype": "array", "shape": list(BIG_SHAPE), "dtype_numpy": "<f4"},
        "x": {"source": "sim", "dtype": "number", "shape": []},
        "noise": {"source": "sim", "dtype": "number", "shape": []},
    }
    rng = np.random.default_rng(0)
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    yield "descriptor", desc.descriptor_doc
    for lo in range(0, BIG_EVENTS, 100):
        seq = list(range(lo + 1, lo + 101))
        imgs = [
            np.full(BIG_SHAPE, i, dtype="float32") + np.arange(64, dtype="float32") for i in seq
        ]
        yield (
            "event_page",
            desc.compose_event_page(
                data={"img": imgs, "x": [0.5 * i for i in seq], "noise": rng.random(100).tolist()},
                timestamps={k: [float(i) for i in seq] for k in keys},
                seq_num=seq,
                time=[1.7e9 + i for i in seq],
                uid=[f"big-{i}" for i in seq],
                validate=False,
            ),
        )
    yield "stop", bundle.compose_stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A catalog of real RunEngine runs (a scan of det over motor, an area detector writing
    HDF5 files, inline images) and a large run, served by uvicorn in a thread."""
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from ophyd.sim import SynSignal, det, motor

    from runbroker.testing.detectors import ADHDF5Detector

    folder = tmp_path_factory.mktemp("resources")
    cat = runbroker.open(folder / "runs.db")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(cat.insert)
    RE(scan([det], motor, -1, 1, 7), sample="Fe")
    runs = {"scan": cat[-1]}
    adet = ADHDF5Detector("adet", folder / "detector", shape=(6, 8))
    RE(scan([adet], motor, 0, 1, 4), sample="files")
    runs["files"] = cat[-1]
    frames = iter(range(1000))
    cam = SynSignal(
        name="cam", func=lambda: np.arange(20, dtype="uint16").reshape(4, 5) * next(frames)
    )
    RE(count([cam, det], 3), sample="inline")
    runs["inline"] = cat[-1]
    cat.ingest(_big_run())
    runs["big"] = cat[-1]

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(cat, Settings(api_key=KEY)), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url)
    client = httpx.Client(
        base_url=url + "/api/v1",
        headers={"authorization": f"Bearer {KEY}", "accept-encoding": "identity"},
        timeout=60,
    )
    yield {"url": url, "client": client, "catalog": cat, **runs}
    client.close()
    server.should_exit = True
    thread.join(10)
    cat.close()


def _get(served: dict, path: str, **kwargs: Any) -> httpx.Response:
    return served["client"].get(path, **kwargs)


def _ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code == 200, response.text
    return response


def _assert_same(columns: dict[str, np.ndarray], local: Any, fields: list[str]) -> None:
    """Columns read over HTTP equal a local ``read()`` of the same events."""
    np.testing.assert_array_equal(columns["time"], local["time"].values)
    np.testing.assert_array_equal(columns["seq_num"], local["seq_num"].values)
    for f in fields:
        np.testing.assert_array_equal(columns[f], local[f].values, err_msg=f)


# -- Arrow


def _arrow(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if isinstance(col.type, pa.FixedShapeTensorType):
            out[name] = col.to_numpy_ndarray()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def test_arrow_is_the_default_and_equals_a_local_read(served: dict) -> None:
    run = served["scan"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data"))
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = _arrow(r.content)
    local = run.primary.read()
    assert table.column_names == ["time", "seq_num", *local.data_vars]
    _assert_same(_columns(table), local, list(local.data_vars))
    meta = json.loads(table.schema.field("det").metadata[b"runbroker.data_key"])
    assert meta["source"] == "SIM:det"


def test_arrow_fills_detector_files_on_the_server_and_keeps_shapes(served: dict) -> None:
    run = served["files"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data", params={"fields": "adet_image"}))
    table = _arrow(r.content)
    local = run.primary.read(["adet_image"])
    images = _columns(table)["adet_image"]
    assert images.shape == local["adet_image"].shape == (4, 6, 8)
    _assert_same(_columns(table), local, ["adet_image"])
    # pandas reads it too (an array per row, flattened: Arrow keeps the shape in the type).
    frame = table.to_pandas()
    np.testing.assert_array_equal(frame["adet_image"][2], local["adet_image"].values[2].ravel())


def test_arrow_of_a_large_stream_comes_in_several_record_batches(served: dict) -> None:
    run = served["big"]
    with served["client"].stream("GET", f"/runs/{run.uid}/streams/primary/data") as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers  # streamed (chunked), not built whole
        reader = pa.ipc.open_stream(io.BytesIO(r.read()))
        batches = list(reader)
    per_batch = resources_module.BLOCK_BYTES // (16 + 8 + 4 * 64 * 64)
    assert [b.num_rows for b in batches[:-1]] == [per_batch] * (len(batches) - 1)
    assert len(batches) == -(-BIG_EVENTS // per_batch) >= 3
    table = pa.Table.from_batches(batches)
    _assert_same(_columns(table), run.primary.read(), ["img", "x"])


def test_an_event_range_reads_only_those_events(served: dict) -> None:
    run = served["big"]
    params = {"start": 500, "stop": 1100, "fields": "x,img"}
    table = _arrow(
        _ok(_get(served, f"/runs/{run.uid}/streams/primary/data", params=params)).content
    )
    assert table.column_names == ["time", "seq_num", "x", "img"]
    local = run.primary.read(["x", "img"], events=slice(500, 1100))
    _assert_same(_columns(table), local, ["x", "img"])
    # Python's slice rules: negative counts from the end; an empty range is an empty table.
    tail = _arrow(_get(served, f"/runs/{run.uid}/streams/primary/data?start=-3&fields=x").content)
    assert tail["seq_num"].to_pylist() == [1198, 1199, 1200]
    empty = _arrow(_get(served, f"/runs/{run.uid}/streams/primary/data?start=5&stop=5").content)
    assert empty.num_rows == 0 and empty.column_names == ["time", "seq_num", "img", "x", "noise"]


# -- msgpack, JSON, CSV, raw


def test_msgpack_is_a_framed_stream_of_blocks(served: dict) -> None:
    run = served["big"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data?format=msgpack"))
    assert r.headers["content-type"] == wire.MSGPACK
    blocks = [payload for tag, payload in wire.records([r.content])]
    assert len(blocks) >= 3
    joined = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    _assert_same(joined, run.primary.read(), ["img", "x"])
    # A plain msgpack reader reads the records: [tag, payload] ... ["end", n].
    records = list(msgpack.Unpacker(io.BytesIO(r.content), raw=False, strict_map_key=False))
    assert records[-1] == ["end", len(blocks)]


def test_json_is_one_object_per_event(served: dict) -> None:
    run = served["inline"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data?format=json"))
    rows = json.loads(r.content)
    local = run.primary.read()
    assert [row["seq_num"] for row in rows] == [1, 2, 3]
    assert rows[2]["cam"] == local["cam"].values[2].tolist()
    assert [row["det"] for row in rows] == local["det"].values.tolist()
    assert (
        json.loads(_get(served, f"/runs/{run.uid}/streams/primary/data?format=json&stop=0").content)
        == []
    )


def test_csv_reads_back_with_pandas(served: dict) -> None:
    run = served["scan"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data?format=csv"))
    assert r.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.BytesIO(r.content))
    local = run.primary.read()
    _assert_same({c: frame[c].to_numpy() for c in frame}, local, list(local.data_vars))


def test_csv_refuses_an_array_field_naming_it(served: dict) -> None:
    run = served["inline"]
    r = _get(served, f"/runs/{run.uid}/streams/primary/data?format=csv")
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "'cam'" in message and "fields=det" in message
    ok = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data?format=csv&fields=det"))
    assert pd.read_csv(io.BytesIO(ok.content)).columns.tolist() == ["time", "seq_num", "det"]


def test_raw_sends_one_field_with_dtype_and_shape_in_headers(served: dict) -> None:
    run = served["files"]
    r = _ok(_get(served, f"/runs/{run.uid}/streams/primary/data?format=raw&fields=adet_image"))
    assert r.headers["content-type"] == "application/octet-stream"
    shape = tuple(int(n) for n in r.headers["x-runbroker-shape"].split(","))
    values = np.frombuffer(r.content, dtype=r.headers["x-runbroker-dtype"]).reshape(shape)
    np.testing.assert_array_equal(values, run.primary.read(["adet_image"])["adet_image"].values)

    big = served["big"]
    r = _ok(
        _get(
            served, f"/runs/{big.uid}/streams/primary/data?format=raw&fields=img&start=10&stop=1010"
        )
    )
    assert r.headers["x-runbroker-shape"] == "1000,64,64"
    assert int(r.headers["content-length"]) == len(r.content) == 1000 * 64 * 64 * 4
    values = np.frombuffer(r.content, dtype=r.headers["x-runbroker-dtype"]).reshape(1000, 64, 64)
    np.testing.assert_array_equal(
        values, big.primary.read(["img"], events=slice(10, 1010))["img"].values
    )


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("format=raw", ["exactly one field", "cam, det"]),
        ("format=raw&fields=cam,det", ["exactly one field"]),
    ],
)
def test_raw_refuses_other_than_one_field(served: dict, query: str, words: list[str]) -> None:
    r = _get(served, f"/runs/{served['inline'].uid}/streams/primary/data?{query}")
    assert r.status_code == 400
    assert all(w in r.json()["error"]["message"] for w in words), r.text


def test_the_format_may_be_chosen_by_accept(served: dict) -> None:
    run = served["scan"]
    path = f"/runs/{run.uid}/streams/primary/data"
    r = _ok(_get(served, path, headers={"accept": "text/csv"}))
    assert r.headers["content-type"].startswith("text/csv")
    r = _ok(_get(served, path, headers={"accept": "application/json"}))
    assert json.loads(r.content)[0]["seq_num"] == 1
    r = _ok(_get(served, path + "?format=arrow", headers={"accept": "text/csv"}))
    assert _arrow(r.content).num_rows == 7  # the parameter wins


# -- a run and its streams described


def test_summary_streams_descriptors_and_config(served: dict) -> None:
    run = served["scan"]
    summary = _ok(_get(served, f"/runs/{run.uid}/summary")).json()
    assert summary["start"] == json.loads(json.dumps(run.start))
    assert summary["stop"]["exit_status"] == "success"
    assert summary["scan_id"] == run.start["scan_id"] and summary["plan_name"] == "scan"
    assert summary["streams"]["primary"]["events"] == 7
    assert summary["streams"]["primary"]["fields"]["det"]["source"] == "SIM:det"

    assert _ok(_get(served, f"/runs/{run.uid}/streams")).json() == list(run)
    about = _ok(_get(served, f"/runs/{run.uid}/streams/primary")).json()
    assert about["events"] == 7 and list(about["fields"]) == run.primary.fields
    descriptors = _ok(_get(served, f"/runs/{run.uid}/streams/primary/descriptors")).json()
    assert [d["uid"] for d in descriptors] == [d["uid"] for d in run.primary.descriptors]
    config = _ok(_get(served, f"/runs/{run.uid}/streams/primary/config")).json()
    local = run.primary.config["det"]
    assert config["det"]["data_vars"]["det_sigma"]["data"] == local["det_sigma"].values.tolist()
    # A uid prefix finds the run, as cat["c6b4"] does.
    assert _ok(_get(served, f"/runs/{run.uid[:8]}/streams")).json() == list(run)


# -- documents


def _json_seq(data: bytes) -> list[Any]:
    assert data.startswith(b"\x1e") and data.endswith(b"\n")
    return [json.loads(text) for text in data.split(b"\x1e")[1:]]


def test_documents_as_a_json_text_sequence(served: dict) -> None:
    run = served["scan"]
    r = _ok(_get(served, f"/runs/{run.uid}/documents.json-seq"))
    assert r.headers["content-type"] == "application/json-seq"
    docs = _json_seq(r.content)
    local = list(run.documents())
    assert [name for name, _ in docs] == [name for name, _ in local]
    assert docs[0][1] == json.loads(json.dumps(local[0][1]))
    singles = _json_seq(_get(served, f"/runs/{run.uid}/documents.json-seq?pages=false").content)
    assert [n for n, _ in singles].count("event") == 7


def test_documents_filled_on_the_server(served: dict) -> None:
    run = served["files"]
    local = run.primary.read(["adet_image"])["adet_image"].values
    docs = _json_seq(_ok(_get(served, f"/runs/{run.uid}/documents.json-seq?fill=true")).content)
    pages = [doc for name, doc in docs if name == "event_page"]
    filled = np.concatenate([np.asarray(p["data"]["adet_image"]) for p in pages])
    np.testing.assert_array_equal(filled, local)
    unfilled = _json_seq(_get(served, f"/runs/{run.uid}/documents.json-seq").content)
    page = next(doc for name, doc in unfilled if name == "event_page")
    assert isinstance(page["data"]["adet_image"][0], str)  # datum ids

    r = _ok(_get(served, f"/runs/{run.uid}/documents.msgpack?fill=true"))
    assert r.headers["content-type"] == wire.MSGPACK
    records = [pair for _, pair in wire.records([r.content])]
    assert [n for n, _ in records] == [n for n, _ in docs]
    pages = [doc for name, doc in records if name == "event_page"]
    np.testing.assert_array_equal(np.concatenate([p["data"]["adet_image"] for p in pages]), local)


# -- exports


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("runbroker-export-*")}


def test_export_of_several_files_is_a_zip_of_what_run_export_writes(
    served: dict, tmp_path: Path
) -> None:
    run = served["scan"]
    before = _leftovers()
    r = _ok(_get(served, f"/runs/{run.uid}/export/csv"))
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="scan{run.start["scan_id"]}-{run.uid[:8]}-csv.zip"'
    )
    expected = run.export("csv", tmp_path)
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == sorted(p.name for p in expected)
        primary = next(p for p in expected if p.name.endswith("_primary.csv"))
        assert zf.read(primary.name) == primary.read_bytes()
    deadline = time.monotonic() + 5
    while _leftovers() - before and time.monotonic() < deadline:
        time.sleep(0.05)  # the folder is removed after the answer is sent
    assert not _leftovers() - before


def test_export_of_one_file_is_sent_as_it_is(served: dict) -> None:
    run = served["files"]
    r = _ok(_get(served, f"/runs/{run.uid}/export/nexus"))
    name = r.headers["content-disposition"].split('filename="')[1].rstrip('"')
    assert name.endswith(".nxs") or name.endswith(".h5"), name
    with h5py.File(io.BytesIO(r.content), "r") as f:
        images = f["entry/instrument/adet/data"][()]
    np.testing.assert_array_equal(images, run.primary.read(["adet_image"])["adet_image"].values)
    tar = _ok(_get(served, f"/runs/{run.uid}/export/nexus?archive=tar"))
    assert tar.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as tf:
        assert tf.getnames() == [name]


@pytest.mark.parametrize("format", sorted(FORMATS))
def test_every_export_format_downloads(served: dict, format: str) -> None:
    run = served["files"]
    r = _get(served, f"/runs/{run.uid}/export/{format}")
    assert r.status_code == 200, r.content[:300]
    assert r.headers["content-disposition"].startswith("attachment; filename=")
    assert len(r.content) > 0


# -- compression


def _raw(served: dict, path: str, coding: str) -> httpx.Response:
    with (
        httpx.Client(base_url=served["url"] + "/api/v1", timeout=60) as plain,
        plain.stream(
            "GET", path, headers={"authorization": f"Bearer {KEY}", "accept-encoding": coding}
        ) as r,
    ):
        r.raw_bytes = b"".join(r.iter_raw())  # type: ignore[attr-defined]
        return r


@pytest.mark.parametrize(
    ("coding", "decode"),
    [
        ("zstd", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
        ("gzip", gzip.decompress),
    ],
)
def test_compressed_answers_decode_to_the_same_bytes(
    served: dict, coding: str, decode: Any
) -> None:
    run = served["big"]
    path = f"/runs/{run.uid}/streams/primary/data?format=csv&fields=x"
    plain = _ok(_get(served, path)).content
    r = _raw(served, path, coding)
    assert r.headers["content-encoding"] == coding
    assert r.headers["vary"] == "Accept-Encoding"
    assert len(r.raw_bytes) < len(plain) / 2  # type: ignore[attr-defined]
    assert decode(r.raw_bytes) == plain  # type: ignore[attr-defined]
    # The Arrow stream of images, chunk by chunk, too.
    path = f"/runs/{run.uid}/streams/primary/data"
    r = _raw(served, path, coding)
    assert r.headers["content-encoding"] == coding
    assert decode(r.raw_bytes) == _get(served, path).content  # type: ignore[attr-defined]


def test_zstd_is_preferred_and_q_zero_refuses(served: dict) -> None:
    path = f"/runs/{served['big'].uid}/streams/primary/data?format=csv&fields=x"
    assert _raw(served, path, "gzip, deflate, zstd").headers["content-encoding"] == "zstd"
    assert _raw(served, path, "zstd;q=0, gzip").headers["content-encoding"] == "gzip"
    assert "content-encoding" not in _raw(served, path, "identity").headers


def test_no_compression_where_it_does_not_help(served: dict) -> None:
    run = served["scan"]
    tiny = _raw(served, f"/runs/{run.uid}/streams", "zstd")
    assert "content-encoding" not in tiny.headers and tiny.raw_bytes == b'["primary"]'  # type: ignore[attr-defined]
    archive = _raw(served, f"/runs/{run.uid}/export/csv", "zstd, gzip")
    assert "content-encoding" not in archive.headers
    assert zipfile.ZipFile(io.BytesIO(archive.raw_bytes)).namelist()  # type: ignore[attr-defined]
    # Random floats do not shrink: sent as they are.
    path = f"/runs/{served['big'].uid}/streams/primary/data?format=raw&fields=noise"
    noise = _raw(served, path, "zstd, gzip")
    assert "content-encoding" not in noise.headers
    assert len(noise.raw_bytes) == 8 * BIG_EVENTS  # type: ignore[attr-defined]


# -- errors


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/runs/nope/streams/primary/data", 404, ["nope"]),
        ("/runs/{uid}/streams/nope/data", 404, ["'nope'", "primary"]),
        ("/runs/{uid}/streams/primary/data?fields=det,nope", 400, ["'nope'", "det, motor"]),
        ("/runs/{uid}/streams/primary/data?format=xml", 400, ["format", "arrow", "csv"]),
        ("/runs/{uid}/streams/primary/data?start=abc", 400, ["start"]),
        ("/runs/{uid}/streams/primary/data?fill=maybe", 400, ["fill"]),
        ("/runs/{uid}/export/nope", 404, ["'nope'", "csv", "nexus"]),
        ("/runs/{uid}/export/csv?archive=rar", 400, ["archive", "zip"]),
        ("/runs/{uid}/documents.xml", 400, ["kind", "json-seq"]),
        ("/runs/nope/documents.json-seq", 404, ["nope"]),
        ("/runs/nope/summary", 404, ["nope"]),
        ("/runs/nope/export/csv", 404, ["nope"]),
        ("/runs/{uid}/streams/nope/config", 404, ["'nope'"]),
    ],
)
def test_errors_name_what_was_wrong(served: dict, path: str, status: int, words: list[str]) -> None:
    r = _get(served, path.format(uid=served["scan"].uid))
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


def test_a_key_is_needed(served: dict) -> None:
    path = f"{served['url']}/api/v1/runs/{served['scan'].uid}/streams/primary/data"
    assert httpx.get(path).status_code == 401
    # A key is never taken from the URL (a browser link carries a download token instead).
    assert httpx.get(path, params={"api_key": KEY, "format": "csv"}).status_code == 401
    headers = {"authorization": f"Bearer {KEY}"}
    assert httpx.get(path, params={"format": "csv"}, headers=headers).status_code == 200
