"""Filling: turn the references events hold (datum ids, stream_datum rows) into arrays.

One :class:`Assets` object per catalog holds what finding and opening files needs -- the
handler registry, the ``root_map``, the catalog's folder for relative roots -- and a bounded
cache of open handlers, so a file is opened once per read (not once per frame) and no more than
``max_open`` stay open. :class:`LocalFiller` is the catalog's filler over them
(:mod:`runbroker.filler`): it plans which file each event reads and reads each file's share.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ExternalDataError
from ..filler import FieldEvents
from ..store.base import Store
from .handlers import Handler
from .paths import Location, UnsafePathError, check_inside, locate_resource, locate_uri
from .readers import Reader
from .registry import HandlerNotFoundError, Registry

__all__ = ["Assets", "ExternalDataError", "LocalFiller", "external_kind", "fill_flag"]

#: ``get_file_list`` of handlers and readers that read only the resource's own file.
_OWN_FILE_ONLY = (Handler.get_file_list, Reader.get_file_list)


def fill_flag(fill: Any) -> bool:
    """The meaning of a ``fill`` argument: a bool, or databroker's ``"yes"`` / ``"no"``.

    databroker's ``"delayed"`` (lazy arrays) is refused with what to use instead, and so is
    anything else: a string such as ``"no"`` must never be taken as true.

    Example:
        >>> fill_flag(True), fill_flag("no"), fill_flag("yes")
        (True, False, True)
        >>> fill_flag("delayed")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: fill='delayed' is not supported: for lazy arrays read with stream.to_dask()...
    """
    if isinstance(fill, (bool, np.bool_)):
        return bool(fill)
    if fill in ("yes", "no"):
        return fill == "yes"
    if fill == "delayed":
        raise ValueError(
            "fill='delayed' is not supported: for lazy arrays read with stream.to_dask() "
            "(nothing is read until .compute()); fill=True loads the detector data, "
            "fill=False gives the references"
        )
    raise ValueError(
        f"fill={fill!r} is not understood: give True (load the detector data from its files) "
        "or False (keep the references); databroker's 'yes' and 'no' mean the same"
    )


def external_kind(data_key: Mapping[str, Any]) -> str | None:
    """``"datum"`` for legacy resource/datum fields, ``"stream"`` for stream_resource fields.

    Example:
        >>> external_kind({"external": "FILESTORE:"}), external_kind({"external": "STREAM:"})
        ('datum', 'stream')
        >>> external_kind({"dtype": "number"}) is None
        True
    """
    ext = data_key.get("external")
    if not ext:
        return None
    return "stream" if str(ext).upper().startswith("STREAM") else "datum"


@dataclass(frozen=True)
class _Source:
    """One resource (or stream_resource) as opened: its document, location and class."""

    uid: str
    kind: str  # "resource" | "stream_resource"
    doc: Mapping[str, Any]
    location: Location
    cls: type

    @property
    def name(self) -> str:
        what = self.doc.get("spec") if self.kind == "resource" else self.doc.get("mimetype")
        return f"{what} ({self.cls.__module__}.{self.cls.__qualname__})"


@dataclass
class Assets:
    """How a catalog finds and reads detector files.

    ``root_map`` maps the roots written in resource documents to where the files are now;
    ``base`` is the folder relative roots are taken from (the catalog's own folder);
    ``max_open`` bounds the handlers (open files) kept between reads.

    Example:
        >>> a = Assets(root_map={"/nsls2/data": "/mnt/copy"})
        >>> a.root_map
        {'/nsls2/data': '/mnt/copy'}
    """

    registry: Registry = field(default_factory=Registry)
    root_map: dict[str, str] = field(default_factory=dict)
    base: str | None = None
    max_open: int = 32

    def __post_init__(self) -> None:
        self._open: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.RLock()

    def __reduce__(self) -> tuple:
        # Workers (dask) get the configuration and open their own files.
        return (Assets, (self.registry, self.root_map, self.base, self.max_open))

    def close(self) -> None:
        """Close every cached handler."""
        with self._lock:
            while self._open:
                _, handler = self._open.popitem(last=False)
                _close(handler)

    # -- resolving ------------------------------------------------------------------------

    def _resolve(self, where: str, kind: str, doc: Mapping[str, Any]) -> _Source:
        try:
            if kind == "resource":
                location = locate_resource(doc, self.root_map, self.base)
                cls = self.registry.handler(doc["spec"])
            else:
                location = locate_uri(doc["uri"], self.root_map, self.base)
                cls = self.registry.reader(doc["mimetype"])
        except HandlerNotFoundError as exc:
            raise HandlerNotFoundError(f"{where} needs a handler: {exc}") from None
        except UnsafePathError as exc:
            raise UnsafePathError(f"{where}, {kind} {doc['uid']}: {exc}") from None
        return _Source(doc["uid"], kind, doc, location, cls)

    def _handler(self, source: _Source) -> Any:
        key = (source.uid, source.location.path)
        with self._lock:
            handler = self._open.get(key)
            if handler is not None:
                self._open.move_to_end(key)
                return handler
        if source.kind == "resource":
            handler = source.cls(source.location.path, **(source.doc.get("resource_kwargs") or {}))
        else:
            handler = source.cls(source.location.path, **(source.doc.get("parameters") or {}))
        with self._lock:
            self._open[key] = handler
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                _close(old)
        return handler

    def _forget(self, source: _Source) -> None:
        with self._lock:
            handler = self._open.pop((source.uid, source.location.path), None)
        if handler is not None:
            _close(handler)

    def locate(self, kind: str, doc: Mapping[str, Any]) -> Location:
        """Where a ``resource`` / ``stream_resource`` is on this machine (after ``root_map``).

        Example:
            >>> doc = {"uid": "r1", "spec": "AD_HDF5", "root": "/data", "resource_path": "a.h5"}
            >>> Assets(root_map={"/data": "/mnt"}).locate("resource", doc).path
            '/mnt/a.h5'
        """
        return self._resolve(f"{kind} {doc.get('uid')!r}", kind, doc).location

    def files(
        self, kind: str, doc: Mapping[str, Any], datum_kwargs: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[Location, list[str]]:
        """Where a ``resource`` / ``stream_resource`` is, and the files behind it (for a
        legacy resource, those ``datum_kwargs`` read), as its handler lists them.

        Raises :class:`ExternalDataError` naming the file when it cannot be opened.

        Example:
            >>> import tempfile, os
            >>> folder = tempfile.mkdtemp()
            >>> np.save(os.path.join(folder, "a.npy"), np.zeros(3))
            >>> doc = {"uid": "r1", "uri": "a.npy", "mimetype": "application/x-npy"}
            >>> location, names = Assets(base=folder).files("stream_resource", doc)
            >>> [os.path.basename(n) for n in names]
            ['a.npy']
        """
        where = f"{kind} {doc.get('uid')!r}"
        source = self._resolve(where, kind, doc)
        loc = source.location
        try:
            if getattr(source.cls, "get_file_list", None) in _OWN_FILE_ONLY:
                return loc, [loc.path]  # the handler would list its own file: don't open it
            handler = self._handler(source)
            lister = getattr(handler, "get_file_list", None)
            if lister is None:
                names = [loc.path]
            else:
                names = list(lister(list(datum_kwargs)) if kind == "resource" else lister())
        except (OSError, KeyError, ValueError) as exc:
            self._forget(source)
            raise ExternalDataError(
                f"{where}: cannot open {loc.describe()} with handler {source.name}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return loc, [check_inside(str(n), loc.root, f"a file of {where}") for n in names]

    def _read_source(self, where: str, source: _Source, args: list[Any], n: int) -> np.ndarray:
        """Read ``args`` (datum kwargs, or dataset rows) from one file, for ``n`` events."""
        loc = source.location
        context = f"{where}: cannot read {loc.describe()} with handler {source.name}"
        try:
            handler = self._handler(source)
            lister = getattr(handler, "get_file_list", None)
            if source.kind == "resource" and lister is not None:
                for f in lister(args):
                    check_inside(str(f), loc.root, f"a file of {source.kind} {source.uid}")
            if source.kind == "stream_resource":
                data = handler.read_rows(np.asarray(args, dtype=np.int64))
                per = len(args) // max(n, 1)
                return data.reshape(n, per, *data.shape[1:]) if per != 1 else data
            if hasattr(handler, "read_many"):
                return np.asarray(handler.read_many(args))
            return np.stack([np.asarray(handler(**kw)) for kw in args])
        except UnsafePathError as exc:
            raise UnsafePathError(f"{where}: {exc}") from None
        except FileNotFoundError as exc:
            self._forget(source)
            missing = getattr(exc, "filename", None) or loc.path
            raise ExternalDataError(
                f"{context}: file not found ({missing}). If the data moved, map its old root "
                "to the new place with runbroker.open(uri, root_map={old: new})"
            ) from exc
        except (OSError, KeyError, IndexError, ValueError, TypeError) as exc:
            self._forget(source)
            raise ExternalDataError(f"{context}: {type(exc).__name__}: {exc}") from exc


#: Events grouped by the file they read: ``((kind, document), positions, arguments)``, with
#: no document for values that were stored already filled.
_Plan = list[tuple[tuple[str, Mapping[str, Any]] | None, np.ndarray, list[Any]]]


@dataclass(frozen=True, eq=False)
class LocalFiller:
    """The :class:`~runbroker.filler.Filler` that reads detector files on this machine.

    ``documents`` answers for a run's resource and datum documents (the store, or what an
    exporter has seen, :class:`~runbroker.assets.seen.SeenAssets`); ``assets`` finds and opens
    the files. It pickles as both do, so that a dask worker opens files of its own.

    Example:
        >>> import os, tempfile
        >>> from runbroker.assets.seen import SeenAssets
        >>> from runbroker.filler import FieldEvents
        >>> folder = tempfile.mkdtemp()
        >>> np.save(os.path.join(folder, "img.npy"), np.arange(6.0).reshape(3, 2))
        >>> seen = SeenAssets()
        >>> seen.add("stream_resource", {"uid": "s1", "data_key": "img", "uri": "img.npy",
        ...                              "mimetype": "application/x-npy"})
        >>> seen.add("stream_datum", {"uid": "s1/0", "stream_resource": "s1", "descriptor": "d1",
        ...     "seq_nums": {"start": 1, "stop": 4}, "indices": {"start": 0, "stop": 3}})
        >>> filler = LocalFiller(seen, Assets(base=folder))
        >>> events = FieldEvents("r1", ("d1",), "img", {"external": "STREAM:", "shape": [2]},
        ...                      None, np.array([2, 3]))
        >>> filler.fill(events).tolist()
        [[2.0, 3.0], [4.0, 5.0]]
        >>> filler.references(events).tolist(), filler.cuts(events)
        (['s1/1', 's1/2'], [0, 2])
    """

    documents: Store
    assets: Assets = field(default_factory=Assets)

    def fill(self, events: FieldEvents) -> np.ndarray:
        """The arrays behind the events' references, stacked along the events."""
        return self._read(events, self._plan(events))

    def references(self, events: FieldEvents) -> np.ndarray:
        """Datum ids as stored, ``<stream_resource>/<row>`` for stream fields."""
        plan = self._plan(events)  # even for datum ids: they must lead somewhere
        out = np.empty(len(events), dtype=object)
        if external_kind(events.data_key) != "stream":
            out[:] = events.refs if events.refs is not None else [None] * len(events)
            return out
        for doc, positions, args in plan:
            if doc is not None:
                per = len(args) // max(len(positions), 1)
                out[positions] = [f"{doc[1]['uid']}/{r}" for r in args[::per]]
        return out

    def cuts(self, events: FieldEvents) -> list[int]:
        """Where the file read changes along the events (the references tell; no pixels)."""
        owner = np.full(len(events), -1, dtype=np.int64)
        for i, (_, positions, _) in enumerate(self._plan(events)):
            owner[positions] = i
        return [0, *(np.flatnonzero(np.diff(owner)) + 1).tolist(), len(events)]

    def _plan(self, events: FieldEvents) -> _Plan:
        """Group the events by the file they read; arguments are datum kwargs (legacy
        resources), dataset rows (stream resources) or values stored already filled."""
        where = _where(events)
        docs = {d["uid"]: (k, d) for k, d in self.documents.assets(events.run_uid)}
        if external_kind(events.data_key) == "stream":
            groups = _stream_groups(where, events, docs)
        else:
            groups = self._datum_groups(where, events.run_uid, events.refs or [])
        for res_uid, _, _ in groups:
            if res_uid is not None and res_uid not in docs:
                raise ExternalDataError(f"{where}: resource {res_uid!r} is not in this run")
        return [
            (docs[res] if res is not None else None, positions, args)
            for res, positions, args in groups
        ]

    def _datum_groups(
        self, where: str, run_uid: str, refs: Sequence[Any]
    ) -> list[tuple[str | None, np.ndarray, list[Any]]]:
        ids = [r for r in refs if isinstance(r, str)]
        datums = self.documents.datums(run_uid, list(dict.fromkeys(ids))) if ids else {}
        missing = [i for i in ids if i not in datums]
        if missing:
            raise ExternalDataError(
                f"{where}: datum {missing[0]!r} is not in this catalog "
                f"({len(missing)} datum(s) missing); the events point at data never recorded"
            )
        groups: dict[str | None, tuple[list[int], list[Any]]] = {}
        for pos, ref in enumerate(refs):
            if isinstance(ref, str):
                res, kwargs = datums[ref]
                for value in kwargs.values():
                    if isinstance(value, str) and ".." in value.replace("\\", "/").split("/"):
                        raise UnsafePathError(
                            f"{where}: datum {ref!r} has datum_kwargs value {value!r} "
                            "that climbs out of its root with '..'; refused"
                        )
                g = groups.setdefault(res, ([], []))
                g[0].append(pos)
                g[1].append(kwargs)
            else:
                g = groups.setdefault(None, ([], []))
                g[0].append(pos)
                g[1].append(ref)
        return [(res, np.asarray(p, dtype=np.int64), a) for res, (p, a) in groups.items()]

    def _read(self, events: FieldEvents, plan: _Plan) -> np.ndarray:
        """Read each file's share of the events and put it in place."""
        where = _where(events)
        n = len(events)
        shape = events.data_key.get("shape") or []
        parts = []
        for doc, positions, args in plan:
            source = None
            if doc is None:
                data = np.asarray(args)
            else:
                source = self.assets._resolve(where, *doc)
                data = self.assets._read_source(where, source, args, len(positions))
            parts.append((positions, _conform(where, source, data, shape, len(positions))))
        if len(parts) == 1 and len(parts[0][0]) == n and _in_order(parts[0][0]):
            return parts[0][1]
        if not parts:
            return _empty(events.data_key)
        first = parts[0][1]
        out = np.empty((n, *first.shape[1:]), dtype=np.result_type(*(p for _, p in parts)))
        for positions, data in parts:
            if len(positions) and positions[-1] - positions[0] == len(positions) - 1:
                out[positions[0] : positions[-1] + 1] = data  # a slice copies far faster
            else:
                out[positions] = data
        return out


def _where(events: FieldEvents) -> str:
    return f"field {events.field!r} of run {events.run_uid[:8]}"


def _stream_groups(
    where: str, events: FieldEvents, docs: Mapping[str, tuple[str, Mapping[str, Any]]]
) -> list[tuple[str | None, np.ndarray, list[Any]]]:
    wanted = set(events.descriptors)
    datums = sorted(
        (
            d
            for k, d in docs.values()
            if k == "stream_datum"
            and d.get("descriptor") in wanted
            and docs.get(d["stream_resource"], ("", {}))[1].get("data_key") == events.field
        ),
        key=lambda d: d["seq_nums"]["start"],
    )
    seq = np.asarray(events.seq_nums, dtype=np.int64)
    if not datums:
        if len(seq):
            raise ExternalDataError(
                f"{where}: no stream_datum document covers its events (seq_num "
                f"{int(seq[0])} ...); the detector's data was never announced"
            )
        return []
    starts = np.array([d["seq_nums"]["start"] for d in datums], dtype=np.int64)
    stops = np.array([d["seq_nums"]["stop"] for d in datums], dtype=np.int64)
    which, bad = spans_of(starts, stops, seq)
    if bad.any():
        raise ExternalDataError(
            f"{where}: no stream_datum covers seq_num {int(seq[np.argmax(bad)])}"
        )
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for pos, (w, s) in enumerate(zip(which.tolist(), seq.tolist(), strict=True)):
        d = datums[w]
        per = (d["indices"]["stop"] - d["indices"]["start"]) // max(
            1, d["seq_nums"]["stop"] - d["seq_nums"]["start"]
        )
        first = d["indices"]["start"] + (s - d["seq_nums"]["start"]) * per
        g = groups.setdefault(d["stream_resource"], ([], []))
        g[0].append(pos)
        g[1].extend(range(first, first + per))
    return [(res, np.asarray(p, dtype=np.int64), rows) for res, (p, rows) in groups.items()]


def _in_order(positions: np.ndarray) -> bool:
    return bool(len(positions) == 0 or ((np.diff(positions) == 1).all() and positions[0] == 0))


def _conform(
    where: str, source: _Source | None, data: np.ndarray, shape: Sequence[Any], n: int
) -> np.ndarray:
    """Give each event's value the shape its descriptor declares, or say why it cannot be.

    A handler may return a leading length-1 axis (one frame per point) that the descriptor
    leaves out; sizes that truly differ are an error, never padded or cut.
    """
    if not shape or any(s is None for s in shape):
        return data
    target = (n, *(int(s) for s in shape))
    if data.shape == target:
        return data
    if data.size == int(np.prod(target)):
        return data.reshape(target)
    origin = f" from {source.location.path}" if source is not None else ""
    raise ExternalDataError(
        f"{where}: the data{origin} has shape {tuple(data.shape[1:])} per event but the "
        f"descriptor declares {tuple(shape)}; refusing to pad or cut it"
    )


def _empty(data_key: Mapping[str, Any]) -> np.ndarray:
    shape = [s for s in data_key.get("shape") or [] if s is not None]
    return np.empty((0, *shape), dtype=data_key.get("dtype_numpy") or "float64")


def _close(handler: Any) -> None:
    close = getattr(handler, "close", None)
    if close is not None:
        # A file already gone cannot be closed twice; there is nothing to lose.
        with contextlib.suppress(Exception):
            close()


def spans_of(
    starts: np.ndarray, stops: np.ndarray, seq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each event ``seq``, the index of the stream_datum span (``starts`` sorted, the
    ``[start, stop)`` of each) it falls in, and whether none holds it.

    Example:
        >>> which, missing = spans_of(np.array([1, 3]), np.array([3, 5]), np.array([2, 4, 5]))
        >>> which.tolist(), missing.tolist()
        ([0, 1, 1], [False, False, True])
    """
    which = np.searchsorted(starts, seq, side="right") - 1
    return which, (which < 0) | (seq >= stops[np.clip(which, 0, None)])
