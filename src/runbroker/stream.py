"""A stream of a run (``primary``, ``baseline`` ...) read as xarray, pandas, numpy or dask.

Reading plans pages, not events: the store says which pages hold the stream, one query fetches
their blobs, and each field is one ``np.concatenate``. Events that arrived out of seq_num order
are put back in order; several descriptors in one stream (configuration changed mid-run) are
joined in the order they were declared.
"""

from __future__ import annotations

import html
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from .assets import external_kind, fill_flag
from .columns import DTYPES as _DTYPES
from .columns import as_column, concat_columns
from .display import plural
from .filler import FieldEvents, Filler
from .follow import Cursor, Polling
from .standard_names import Aliases, check_naming
from .store.base import Follows, PageGone, PageInfo, Store

__all__ = ["Stream"]

# Longest single wait of a follow without a timeout (it then waits again).
_FOLLOW_WAIT = 600.0
# Size of one lazy piece of detector data: big enough to amortise a task, small enough to fit.
_DASK_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class _Chunk:
    """Pages read together: consecutive pages of one descriptor whose seq ranges overlap."""

    pages: tuple[PageInfo, ...]
    start: int  # position of the chunk's first event in the stream
    n: int


def _plan(infos: list[PageInfo]) -> list[_Chunk]:
    chunks: list[list[PageInfo]] = []
    top = 0  # highest seq_num in the current chunk
    for p in infos:
        if chunks and chunks[-1][-1].descriptor == p.descriptor and p.seq_min <= top:
            chunks[-1].append(p)  # out-of-order arrival: sort these events together
            top = max(top, p.seq_max)
        else:
            chunks.append([p])
            top = p.seq_max
    out, pos = [], 0
    for pages in chunks:
        n = sum(p.n for p in pages)
        out.append(_Chunk(tuple(pages), pos, n))
        pos += n
    return out


def _variable(
    name: str, arr: np.ndarray, data_key: Mapping[str, Any], attrs: dict[str, Any]
) -> xr.Variable:
    """A variable over ``time`` plus the per-event dims the descriptor names (or made up)."""
    dims = list(data_key.get("dims") or [])
    if len(dims) != arr.ndim - 1:
        dims = [f"{name}_dim_{i}" for i in range(arr.ndim - 1)]
    return xr.Variable(
        ("time", *dims), arr, attrs={k: v for k, v in attrs.items() if v is not None}
    )


def _empty(data_key: Mapping[str, Any]) -> np.ndarray:
    shape = [s for s in (data_key.get("shape") or []) if s is not None]
    if len(shape) != len(data_key.get("shape") or []):
        return np.empty(0, dtype=object)
    declared = data_key.get("dtype_numpy")
    dtype = declared or _DTYPES.get(data_key.get("dtype", ""), "float64")
    if data_key.get("dtype") == "string" and not declared:
        dtype = "<U1"
    return np.empty((0, *shape), dtype=dtype)


class Stream:
    """One named stream of a run; ``filler`` reads the detector data of file-backed fields.

    Example:
        >>> ds = run.primary.read()
        >>> sorted(run.primary.read(["motor", "det"]).data_vars)
        ['det', 'motor']
        >>> run.primary.to_pandas().shape
        (5, 3)
    """

    def __init__(
        self,
        store: Store,
        run_uid: str,
        name: str,
        descriptors: list[dict] | None,
        filler: Filler,
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.aliases = Aliases.of(aliases)
        self.run_uid = run_uid
        self.name = name
        self.filler = filler
        if descriptors is not None:
            # The caller just read them: spare a query (a read is only a few of them).
            self.__dict__["_descriptors"] = descriptors

    @property
    def descriptors(self) -> list[dict]:
        """This stream's descriptor documents, oldest first."""
        return [
            d for d in self.store.descriptors(self.run_uid) if d.get("name", "primary") == self.name
        ]

    @cached_property
    def _descriptors(self) -> list[dict]:
        return self.descriptors

    @property
    def data_keys(self) -> dict[str, dict]:
        """Field name -> data key (dtype, shape, units, source ...), over all descriptors."""
        out: dict[str, dict] = {}
        for d in self._descriptors:
            for k, v in d["data_keys"].items():
                out.setdefault(k, v)
        return out

    @property
    def fields(self) -> list[str]:
        """Names of the stream's data fields."""
        return list(self.data_keys)

    def _chunks(self) -> list[_Chunk]:
        return _plan(self.store.pages(self.run_uid, [d["uid"] for d in self._descriptors]))

    def __len__(self) -> int:
        return sum(c.n for c in self._chunks())

    def _check_fields(self, fields: Sequence[str] | str | None) -> list[str]:
        known = self.data_keys
        if fields is None:
            return list(known)
        if isinstance(fields, str):
            fields = [fields]
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise KeyError(
                f"stream {self.name!r} has no field {unknown[0]!r}; its fields are {list(known)}"
            )
        return list(fields)

    def _columns(self, chunks: list[_Chunk], names: list[str]) -> dict[str, Any]:
        """Read columns of these chunks, each chunk in seq_num order, joined, with seq_num."""
        pages = [p for c in chunks for p in c.pages]
        # seq_num is only read when it cannot be known from the page list: events that
        # arrived out of order (to be sorted), or gaps in the numbering.
        unsorted = any(len(c.pages) > 1 or not c.pages[0].ordered for c in chunks)
        counted = all(p.seq_max - p.seq_min + 1 == p.n for p in pages)
        wanted = ["seq_num", *names] if unsorted or not counted else names
        ids = [p.id for p in pages]
        decoded = self.store.read_pages(self.run_uid, ids, wanted) if pages else []
        lengths = [p.n for p in pages]
        for page, columns in zip(pages, decoded, strict=True):
            if any(len(v) != page.n for v in columns.values()):
                # The id now names other events: never join them with the planned ones.
                raise PageGone(f"page {page.id} changed since it was listed; list pages again")
        cols = {n: concat_columns([d.get(n) for d in decoded], lengths) for n in wanted}
        if "seq_num" not in cols:
            cols["seq_num"] = (
                np.concatenate([np.arange(p.seq_min, p.seq_max + 1) for p in pages])
                if pages
                else np.empty(0, np.int64)
            )
        if not unsorted:
            return cols
        seq = np.asarray(cols["seq_num"], dtype=np.int64)
        starts = np.cumsum([0] + [c.n for c in chunks], dtype=np.int64)
        order = np.concatenate(
            [lo + np.argsort(seq[lo:hi], kind="stable") for lo, hi in itertools.pairwise(starts)]
        )
        return {
            n: v[order] if isinstance(v, np.ndarray) else [v[i] for i in order]
            for n, v in cols.items()
        }

    def _select(self, events: slice | None) -> tuple[list[_Chunk], slice]:
        chunks = self._chunks()
        if events is None:
            return chunks, slice(None)
        total = sum(c.n for c in chunks)
        lo, hi, step = events.indices(total)
        if step != 1:
            raise ValueError("events= takes a contiguous range, e.g. slice(100, 200)")
        hi = max(lo, hi)
        picked = [c for c in chunks if c.start < hi and c.start + c.n > lo]
        base = picked[0].start if picked else 0
        return picked, slice(lo - base, hi - base)

    def read(
        self,
        fields: Sequence[str] | str | None = None,
        *,
        events: slice | None = None,
        fill: bool | str = True,
        names: str = "beamline",
    ) -> xr.Dataset:
        """The stream as an ``xarray.Dataset`` with dimension ``time``.

        ``fields`` picks a subset; ``events=slice(a, b)`` reads only events a..b-1. Detector
        data kept in files is read from them; ``fill=False`` gives the references instead
        (datum ids, or ``<stream_resource uid>/<row>``). databroker's ``fill="yes"`` /
        ``"no"`` mean the same; for lazy arrays (its ``"delayed"``) use :meth:`to_dask`.
        ``names="standard"`` gives the fields the standard names of the catalog's alias
        table (``fields`` may then use them too); the default ``"beamline"`` keeps theirs.

        Example:
            >>> run.primary.read(["det"], events=slice(1, 3)).sizes["time"]
            2
        """
        fill = fill_flag(fill)
        renaming = self._renaming(names)
        if renaming is not None and fields is not None:
            back = {new: old for old, new in renaming.items()}
            fields = [back.get(f, f) for f in ([fields] if isinstance(fields, str) else fields)]
        wanted = self._check_fields(fields)
        for attempt in range(3):
            chunks, window = self._select(events)
            try:
                ds = self._read_chunks(chunks, wanted, window, fill)
                if renaming is None:
                    return ds
                return ds.rename_vars({k: v for k, v in renaming.items() if k in ds})
            except PageGone:
                # The writer merged pages meanwhile (a finished run being laid out): events
                # keep their positions, so plan again and read.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _renaming(self, names: str) -> dict[str, str] | None:
        """Field -> standard name for ``names="standard"`` (None for the fields' own names)."""
        if check_naming(names) == "beamline":
            return None
        where = f"run {self.run_uid[:8]}, stream {self.name!r}"
        return {k: v for k, v in self.aliases.renaming(self.fields, where).items() if k != v}

    def _read_chunks(
        self,
        chunks: list[_Chunk],
        names: list[str],
        window: slice = slice(None),
        fill: bool = True,
    ) -> xr.Dataset:
        cols = self._columns(chunks, ["time", *("d:" + f for f in names)])
        return self._dataset(cols, names, window, fill)

    def _dataset(
        self, cols: dict[str, Any], names: list[str], window: slice, fill: bool = True
    ) -> xr.Dataset:
        keys = self.data_keys
        n = len(cols["time"])
        time = np.asarray(cols["time"], dtype="float64") if n else np.empty(0)
        seq = np.asarray(cols["seq_num"], dtype=np.int64)
        variables = {}
        for f in names:
            dk = keys[f]
            values = cols.get("d:" + f)
            if external_kind(dk):
                arr = self._external(f, values, seq, window, fill)
            else:
                arr = as_column(values, dk) if n else _empty(dk)
                arr = arr[window]
            variables[f] = _variable(f, arr, dk, self._attrs(f))
        coords = {"time": time[window], "seq_num": ("time", seq[window])}
        return xr.Dataset(
            variables, coords=coords, attrs={"stream": self.name, "uid": self.run_uid}
        )

    def _external(
        self, field: str, values: Any, seq: np.ndarray, window: slice, fill: bool
    ) -> np.ndarray:
        """A field whose data lives in detector files: filled, or its references."""
        # Only the window's references are listed: a read of a few events of a long run.
        events = self._events(field, None if values is None else values[window], seq[window])
        return self.filler.fill(events) if fill else self.filler.references(events)

    def _events(self, field: str, values: Any, seq: np.ndarray) -> FieldEvents:
        """Events of a file-backed field as the filler is asked about them (the events of a
        ``STREAM:`` field hold no references)."""
        dk = self.data_keys[field]
        datum = values is not None and external_kind(dk) == "datum"
        refs = list(values) if datum else None
        descriptors = tuple(d["uid"] for d in self._descriptors)
        return FieldEvents(self.run_uid, descriptors, field, dk, refs, seq)

    def _attrs(self, field: str) -> dict[str, Any]:
        dk = self.data_keys[field]
        attrs = {"units": dk.get("units"), "source": dk.get("source")}
        for d in self._descriptors:
            for obj, obj_fields in (d.get("object_keys") or {}).items():
                if field in obj_fields:
                    attrs["object_name"] = obj
        return attrs

    def timestamps(self, fields: Sequence[str] | str | None = None) -> xr.Dataset:
        """Per-reading timestamps of each field (seconds since the epoch), dimension ``time``.

        Example:
            >>> run.primary.timestamps(["det"])["det"].dtype
            dtype('float64')
        """
        names = self._check_fields(fields)
        cols = self._columns(self._chunks(), ["time", *("t:" + f for f in names)])
        time = np.asarray(cols["time"], dtype="float64")
        return xr.Dataset(
            {f: ("time", as_column(cols.get("t:" + f, []), {"dtype": "number"})) for f in names},
            coords={"time": time},
        )

    def to_pandas(
        self,
        fields: Sequence[str] | str | None = None,
        *,
        index: Literal["time", "seq_num"] = "time",
    ) -> pd.DataFrame:
        """A ``DataFrame`` of the stream, one row per event; array fields become object columns.

        By default the index is the event time (seconds since the epoch). ``index="seq_num"``
        gives databroker v1's ``table()`` layout: indexed by ``seq_num``, with a ``time``
        column of timezone-aware UTC datetimes (``df.time.dt.tz_convert("Europe/Berlin")``
        shows them in another zone).

        Example:
            >>> run.primary.to_pandas()["motor"].tolist()
            [-1.0, -0.5, 0.0, 0.5, 1.0]
            >>> table = run.primary.to_pandas(index="seq_num")
            >>> table.index.name, table.index.tolist(), str(table["time"].dtype)[:10]
            ('seq_num', [1, 2, 3, 4, 5], 'datetime64')
        """
        if index not in ("time", "seq_num"):
            raise ValueError(
                f"to_pandas(index={index!r}): the index is 'time' (event time in seconds, the "
                "default) or 'seq_num' (with a datetime 'time' column, as databroker v1's table())"
            )
        ds = self.read(fields)
        data: dict[str, Any] = {}
        for name, var in ds.data_vars.items():
            data[str(name)] = var.values if var.ndim == 1 else list(var.values)
        if index == "time":
            return pd.DataFrame(data, index=pd.Index(ds["time"].values, name="time"))
        when = pd.to_datetime(ds["time"].values, unit="s", utc=True)
        return pd.DataFrame(
            {"time": when, **data}, index=pd.Index(ds["seq_num"].values, name="seq_num")
        )

    def to_dask(self, fields: Sequence[str] | str | None = None) -> xr.Dataset:
        """A lazy ``xarray.Dataset`` backed by dask arrays, one chunk per group of pages.

        Nothing is read until ``.compute()``; each chunk reads its own pages from the store.

        Example:
            >>> lazy = run.primary.to_dask()
            >>> bool((lazy["det"].compute() == run.primary.read()["det"]).all())
            True
        """
        import dask
        import dask.array as da

        names = self._check_fields(fields)
        chunks = self._chunks()
        if not chunks:
            return self.read(names)
        keys = self.data_keys
        specs = {f: _spec(keys[f]) for f in names}
        # Only the index (time, seq_num) is read now, and the small scalar columns whose dtype
        # depends on their values: integers/booleans (float if a reading is missing, as in
        # read()) and strings (their width), so that compute() gives what read() gives.
        external = [f for f in names if external_kind(keys[f])]
        probe = [
            f for f in names if specs[f][0].kind in "iubO" and not specs[f][1] and f not in external
        ]
        refs = [f for f in external if external_kind(keys[f]) == "datum"]
        index = self._columns(chunks, ["time", *("d:" + f for f in probe + refs)])
        for f in probe:
            specs[f] = (as_column(index["d:" + f], keys[f]).dtype, ())
        seq = np.asarray(index["seq_num"], dtype=np.int64)
        data_vars = {}
        for f in names:
            if f in external:
                parts = self._external_parts(f, index.get("d:" + f), seq, specs)
            else:
                dtype, shape = specs[f]
                parts = [
                    da.from_delayed(
                        dask.delayed(_read_field)(self, chunk, f, dtype),
                        shape=(chunk.n, *shape),
                        dtype=dtype,
                    )
                    for chunk in chunks
                ]
            dtype, shape = specs[f]
            template = _variable(f, np.empty((0, *shape), dtype), keys[f], self._attrs(f))
            data_vars[f] = (template.dims, da.concatenate(parts), template.attrs)
        coords = {
            "time": np.asarray(index["time"], dtype="float64"),
            "seq_num": ("time", np.asarray(index["seq_num"], dtype=np.int64)),
        }
        return xr.Dataset(
            data_vars, coords=coords, attrs={"stream": self.name, "uid": self.run_uid}
        )

    def _external_parts(
        self, field: str, refs: Any, seq: np.ndarray, specs: dict[str, tuple[np.dtype, tuple]]
    ) -> list:
        """Lazy pieces of a file-backed field: one per stretch of events in one file, cut to
        about ``_DASK_CHUNK_BYTES``; planning reads the references, never the pixels."""
        import dask
        import dask.array as da

        events = self._events(field, refs, seq)
        cuts = self.filler.cuts(events)
        dtype, shape = specs[field]
        dk = events.data_key
        if dtype.kind == "O" or not dk.get("dtype_numpy") or not shape:
            # The descriptor does not say: read the first event to learn dtype and shape.
            first = self.filler.fill(events[:1])
            dtype, shape = first.dtype, first.shape[1:]
            specs[field] = (dtype, shape)
        per_event = max(1, int(np.prod(shape)) * dtype.itemsize)
        step = max(1, _DASK_CHUNK_BYTES // per_event)
        parts = []
        for lo, hi in itertools.pairwise(cuts):
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                task = dask.delayed(_fill_field)(self.filler, events[a:b], dtype)
                parts.append(da.from_delayed(task, shape=(b - a, *shape), dtype=dtype))
        return parts

    def follow(
        self,
        fields: Sequence[str] | str | None = None,
        *,
        start: Literal["beginning", "new"] | int = "beginning",
        timeout: float | None = None,
        poll: float = 0.1,
        fill: bool | str = True,
    ) -> Iterator[xr.Dataset]:
        """Follow the stream while its run is written: yield each batch of new events as an
        ``xarray.Dataset`` (what :meth:`read` gives for those events) until the run stops.

        Every event comes once, in seq_num order; joined, the batches are the stream's
        ``read()``. ``start``: ``"beginning"`` (the events stored so far come first),
        ``"new"`` (only events stored from now on) or a seq_num to follow after.
        ``timeout``: seconds without a new event after which ``TimeoutError`` is raised
        (None: wait as long as the run goes on). ``poll``: how often a local store is
        looked at; a remote store instead waits on its server (one request per batch).

        Example:
            >>> [batch.sizes["time"] for batch in run.primary.follow(["det"])]
            [5]
        """
        fill = fill_flag(fill)
        wanted = None if fields is None else self._check_fields(fields)
        store = self.store
        waiter: Follows = store if isinstance(store, Follows) else Polling(store, poll)
        cursor = Cursor(self._follow_after(start))
        last = time.monotonic()
        while True:
            left = _FOLLOW_WAIT if timeout is None else timeout - (time.monotonic() - last)
            if left <= 0:
                raise TimeoutError(
                    f"no new event in stream {self.name!r} of run {self.run_uid[:8]} for "
                    f"{timeout} s (follow(timeout=...)), and the run has not stopped"
                )
            found = waiter.wait_events(self.run_uid, self.name, cursor.after, wanted, left)
            if found.descriptors != [d["uid"] for d in self._descriptors]:
                self.__dict__.pop("_descriptors", None)  # a new descriptor: new fields
            cols = cursor.take(found)
            if cols is not None:
                # (A descriptor stored since the look adds fields its events lack here.)
                names = wanted or [f for f in self.fields if "d:" + f in cols]
                yield self._dataset(cols, names, slice(None), fill)
                last = time.monotonic()
            if found.stopped:
                return
            if cols is None and cursor.waiting:
                time.sleep(poll)  # events after a gap: look again soon, not at once

    def _follow_after(self, start: str | int) -> int | None:
        """The seq_num a follow starts after (None: from the first event)."""
        if start == "beginning":
            return None
        if start == "new":
            pages = self.store.pages(self.run_uid, [d["uid"] for d in self._descriptors])
            return max((p.seq_max for p in pages), default=None)
        if isinstance(start, int) and not isinstance(start, bool):
            return start
        raise ValueError(
            f"follow(start={start!r}): start is 'beginning', 'new' or a seq_num to follow after"
        )

    def resample(
        self,
        period: float | str,
        how: Literal["mean", "last", "first", "min", "max", "sum", "count"] = "mean",
        origin: float | None = None,
        fields: Sequence[str] | str | None = None,
        lazy: bool = False,
    ) -> xr.Dataset:
        """The stream in bins of ``period`` seconds (or ``"1s"``, ``"500ms"``), one value per bin.

        Indexed by bin start (``time``), with ``count``, the events in each bin. Empty bins are
        kept, NaN with ``count`` 0. ``lazy=True`` reduces :meth:`to_dask`'s arrays lazily.
        :func:`runbroker.combine.resample` and docs/align.md state the rules.

        Example:
            >>> out = run.primary.resample(3600.0, how="max", fields=["det"])
            >>> out["count"].values.sum(), out.attrs["how"]
            (np.int64(5), 'max')
        """
        from .combine.resample import resample

        ds = self.to_dask(fields) if lazy else self.read(fields)
        return resample(ds, period, how, origin)

    def iter_chunks(
        self, fields: Sequence[str] | str | None = None, size: int = 100_000
    ) -> Iterator[xr.Dataset]:
        """Read the stream piece by piece, about ``size`` events at a time.

        Example:
            >>> [ds.sizes["time"] for ds in run.primary.iter_chunks(size=10_000)]
            [5]
        """
        names = self._check_fields(fields)
        group: list[_Chunk] = []
        for chunk in self._chunks():
            group.append(chunk)
            if sum(c.n for c in group) >= size:
                yield self._read_chunks(group, names)
                group = []
        if group:
            yield self._read_chunks(group, names)

    @property
    def config(self) -> Mapping[str, xr.Dataset]:
        """Configuration readings per device: ``stream.config["det"]`` is a Dataset over time.

        Each event gets the configuration of the descriptor it was recorded under.

        Example:
            >>> run.primary.config["det"]["det_sigma"].values.tolist()
            [1, 1, 1, 1, 1]
        """
        descs = self._descriptors
        counts: dict[str, int] = {}
        for chunk in self._chunks():
            for p in chunk.pages:
                counts[p.descriptor] = counts.get(p.descriptor, 0) + p.n
        times = self.read([]).time.values
        out: dict[str, xr.Dataset] = {}
        devices = dict.fromkeys(dev for d in descs for dev in d.get("configuration") or {})
        for dev in devices:
            fields: dict[str, list] = {}
            dks: dict[str, dict] = {}
            for d in descs:
                conf = (d.get("configuration") or {}).get(dev) or {}
                n = counts.get(d["uid"], 0)
                for k in conf.get("data") or {}:
                    fields.setdefault(k, [])
                    dks.setdefault(k, (conf.get("data_keys") or {}).get(k, {}))
                for k in fields:
                    fields[k].extend([(conf.get("data") or {}).get(k)] * n)
            out[dev] = xr.Dataset(
                {k: _variable(k, as_column(v, dks[k]), dks[k], {}) for k, v in fields.items()},
                coords={"time": times},
            )
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}{_shape(dk)}" for f, dk in self.data_keys.items()) or "none"
        return (
            f"<Stream {self.name!r} of run {self.run_uid[:8]}: {plural(len(self), 'event')}, "
            f"{plural(len(self.data_keys), 'field')}: {fields}>"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    f,
                    dk.get("dtype_numpy") or dk.get("dtype", ""),
                    _shape(dk) or "scalar",
                    dk.get("units") or "",
                    dk.get("source", ""),
                    "yes" if external_kind(dk) else "",
                )
            )
            + "</tr>"
            for f, dk in self.data_keys.items()
        )
        head = "".join(
            f"<th>{h}</th>" for h in ("field", "dtype", "shape", "units", "source", "in files")
        )
        title = html.escape(
            f"stream {self.name!r} of run {self.run_uid[:8]}: {plural(len(self), 'event')}, "
            f"{plural(len(self.data_keys), 'field')}"
        )
        return f"<p>{title}</p><table><tr>{head}</tr>{rows}</table>"


def _shape(data_key: Mapping[str, Any]) -> str:
    """A field's per-event shape as the reprs show it: ``""`` for a scalar, else ``[512, 512]``."""
    shape = data_key.get("shape") or []
    return f"[{', '.join('?' if s is None else str(s) for s in shape)}]" if shape else ""


def _spec(data_key: Mapping[str, Any]) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and per-event shape a field will have, from its descriptor alone."""
    shape = data_key.get("shape") or []
    if any(s is None for s in shape):
        return np.dtype(object), ()
    declared = np.dtype(data_key["dtype_numpy"]) if data_key.get("dtype_numpy") else None
    if declared is not None and declared.kind not in "USO":
        return declared, tuple(shape)
    # Strings (whose width only the data tells) are objects, in every chunk alike.
    if data_key.get("dtype") == "string" or declared is not None:
        return np.dtype(object), tuple(shape)
    kind = data_key.get("dtype")
    return np.dtype(_DTYPES.get(kind, "float64")), tuple(shape)


def _fill_field(filler: Filler, events: FieldEvents, dtype: np.dtype) -> np.ndarray:
    return filler.fill(events).astype(dtype, copy=False)


def _read_field(stream: Stream, chunk: _Chunk, field: str, dtype: np.dtype) -> np.ndarray:
    try:
        values = stream._read_chunks([chunk], [field])[field].values
    except PageGone:  # pages merged since to_dask() planned: same events, same positions
        window = slice(chunk.start, chunk.start + chunk.n)
        values = stream.read([field], events=window)[field].values
    if dtype.kind in "OU":
        return values.astype(dtype)
    if dtype.kind in "iub" and values.dtype.kind == "f" and np.isnan(values).any():
        return values  # missing readings: NaN needs a float column, as read() gives
    return values.astype(dtype, copy=False)
