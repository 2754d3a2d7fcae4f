"""Derived data: save analysis results as runs, with the provenance that produced them.

A derived run is an ordinary run -- found by the same queries, read by the same API -- whose start
document carries ``provenance``: the parent runs, the input files, and the code (name, version,
url). Large arrays go to files through a writer (HDF5 by default), small values into the events.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from event_model import compose_run

from .assets.writers import WRITERS, Writer
from .errors import ProvenanceError
from .queries import Contains, Query

if TYPE_CHECKING:
    from .catalog import Catalog, Run

__all__ = ["ProvenanceError", "derived_from", "save_derived"]

# Per-event values with more elements than this go to files; fewer stay in the events.
INLINE_MAX = 64
_SUFFIX = {"HDF5": ".h5", "AD_HDF5": ".h5", "NPY": ".npy", "TIFF_SERIES": ".tiff"}


def derived_from(run: Run | str) -> Query:
    """The query for runs derived from ``run`` (a Run or a uid).

    Example:
        >>> derived_from("3c1d").to_dict()
        {'type': 'contains', 'key': 'provenance.parents', 'value': '3c1d'}
    """
    uid = run if isinstance(run, str) else run.uid
    return Contains("provenance.parents", uid)


def _columns(stream: str, fields: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """Each field as a column whose first axis is the events; all the same length."""
    if hasattr(fields, "data_vars"):  # an xarray.Dataset
        fields = {str(k): v.values for k, v in fields.data_vars.items()}
    columns = {}
    for key, value in fields.items():
        if "." in key or not key:
            raise ValueError(f"data[{stream!r}]: field name {key!r} may not be empty or hold '.'")
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"data[{stream!r}][{key!r}] is not a regular numeric/string array")
        columns[key] = arr[np.newaxis] if arr.ndim == 0 else arr
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"data[{stream!r}]: fields must share their first axis (the events); got {lengths}. "
            "Wrap a single image as image[np.newaxis] to store it as one event."
        )
    return columns, next(iter(lengths.values()), 0)


def _data_key(arr: np.ndarray, external: bool) -> dict[str, Any]:
    kind = arr.dtype.kind
    if arr.ndim > 1:
        dtype = "array"
    else:
        dtype = {"b": "boolean", "i": "integer", "u": "integer", "U": "string", "S": "string"}
        dtype = dtype.get(kind, "number")
    key: dict[str, Any] = {
        "source": "derived",
        "dtype": dtype,
        "shape": list(arr.shape[1:]),
        "dtype_numpy": arr.dtype.str,
    }
    if external:
        key["external"] = "FILESTORE:"
    return key


def _provenance(
    cat: Catalog,
    parents: Sequence[Run | str],
    inputs: Sequence[str | os.PathLike],
    code: Mapping[str, Any] | None,
    waive: str | None,
) -> dict[str, Any]:
    parent_uids = []
    for p in parents:
        if isinstance(p, str):
            # A full uid or a unique prefix, within the catalog's scope: a search for
            # analysis runs does not hide their raw parents. A missing one is a KeyError.
            p = cat.whole[p]
        parent_uids.append(p.uid)
    files = []
    for f in inputs:
        path = os.path.abspath(os.fspath(f))
        stat = os.stat(path)  # an input that does not exist is not provenance
        files.append({"path": path, "size": stat.st_size, "mtime": stat.st_mtime})
    missing = []
    if not parent_uids and not files:
        missing.append("parents=[run or uid, ...] and/or inputs=[file, ...]")
    if not code or not code.get("name") or not code.get("version"):
        missing.append('code={"name": ..., "version": ..., "url": ...}')
    if missing and not waive:
        raise ProvenanceError(
            "derived data needs its provenance: give "
            + " and ".join(missing)
            + '; or, if it truly has none, say why with waive_provenance="reason"'
        )
    out: dict[str, Any] = {
        "parents": parent_uids,
        "inputs": files,
        "code": dict(code or {}),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
    }
    if waive:
        out["waived"] = str(waive)
    return out


def save_derived(
    cat: Catalog,
    data: Mapping[str, Mapping[str, Any]],
    *,
    metadata: Mapping[str, Any] | None = None,
    parents: Iterable[Run | str] = (),
    inputs: Iterable[str | os.PathLike] = (),
    code: Mapping[str, Any] | None = None,
    waive_provenance: str | None = None,
    directory: str | os.PathLike | None = None,
    writer: str | type[Writer] = "HDF5",
) -> Run:
    """Store analysis results as a new run of ``cat`` and return it (see
    :meth:`runbroker.Catalog.save_derived`)."""
    provenance = _provenance(cat, list(parents), list(inputs), code, waive_provenance)
    streams = {name: _columns(name, fields) for name, fields in data.items()}
    if not streams:
        raise ValueError('data is empty: give {"stream": {"field": values, ...}}')
    writer_cls = WRITERS[writer] if isinstance(writer, str) else writer
    md = dict(metadata or {})
    for reserved in ("uid", "time", "provenance"):
        if reserved in md:
            raise ValueError(f"metadata may not set {reserved!r}; runbroker fills it in")
    md.setdefault("plan_name", "derived")
    run = compose_run(metadata={**md, "provenance": provenance})
    uid = run.start_doc["uid"]
    root, relative_root = _root(cat, directory)
    docs: list[tuple[str, dict]] = [("start", run.start_doc)]
    writers: list[Writer] = []
    try:
        for stream, (columns, n) in streams.items():
            docs.extend(
                _stream_docs(run, stream, columns, n, root, relative_root, writer_cls, writers)
            )
        docs.append(("stop", run.compose_stop(exit_status="success", reason="derived data")))
        for w in writers:
            w.close()
        cat.ingest(docs)
    except BaseException:
        # Nothing half-saved: the files of a run that was not stored are removed.
        for w in writers:
            with contextlib.suppress(Exception):  # already closed, or never opened a file
                w.close()
            for f in w.files:
                if os.path.isdir(f):
                    shutil.rmtree(f, ignore_errors=True)
                elif os.path.exists(f):
                    os.remove(f)
        raise
    return cat.whole[uid]  # the new run, even where cat is a search it does not match


def _root(cat: Catalog, directory: str | os.PathLike | None) -> tuple[str, str]:
    """Where the run's files go, and the root written in its resources.

    By default files go beside an SQLite catalog (``derived/...`` in its folder), recorded
    with a relative root so that the folder can move as a whole.
    """
    if directory is not None:
        root = os.path.abspath(os.fspath(directory))
        return root, root
    base = cat.assets.base
    if base is None:
        raise ValueError(
            "this catalog has no folder of its own (a server database): pass "
            "directory=... to say where derived files should be written"
        )
    return os.path.join(base, "derived"), "derived"


def _stream_docs(
    run: Any,
    stream: str,
    columns: dict[str, np.ndarray],
    n: int,
    root: str,
    relative_root: str,
    writer_cls: type[Writer],
    writers: list[Writer],
) -> list[tuple[str, dict]]:
    uid = run.start_doc["uid"]
    external = {k for k, v in columns.items() if n and v[0].size > INLINE_MAX}
    desc = run.compose_descriptor(
        name=stream,
        data_keys={k: _data_key(v, k in external) for k, v in columns.items()},
        object_keys={"derived": list(columns)},
    )
    docs: list[tuple[str, dict]] = [("descriptor", desc.descriptor_doc)]
    data: dict[str, list] = {k: list(v) if k not in external else [] for k, v in columns.items()}
    suffix = _SUFFIX.get(writer_cls.spec, "")
    for key in sorted(external):
        path = os.path.join(time.strftime("%Y"), uid, f"{stream}-{key}{suffix}")
        w = writer_cls(root, path)
        writers.append(w)
        resource = run.compose_resource(
            spec=w.spec, root=relative_root, resource_path=path, resource_kwargs=w.resource_kwargs
        )
        docs.append(("resource", resource.resource_doc))
        ids, kwargs = [], []
        for value in columns[key]:
            kw = w.write(value)
            datum = resource.compose_datum(datum_kwargs=kw)
            ids.append(datum["datum_id"])
            kwargs.append(datum)
        docs.extend(("datum", d) for d in kwargs)
        data[key] = ids
    now = time.time()
    page = desc.compose_event_page(
        data={k: [_plain(x) for x in v] for k, v in data.items()},
        timestamps={k: [now] * n for k in columns},
        seq_num=list(range(1, n + 1)),
        time=[now] * n,
        filled={k: [False] * n for k in external},
    )
    docs.append(("event_page", page))
    return docs


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value
