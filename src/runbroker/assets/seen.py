"""The detector-file documents of a run as they stream past, for filling without a store.

``LocalFiller`` asks a store for a run's resources and datums; an exporter subscribed to a
RunEngine has no store, only the documents it was sent. ``SeenAssets`` keeps those documents
and answers the same two questions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from event_model import unpack_datum_page

from .filling import spans_of

__all__ = ["SeenAssets"]

_KINDS = ("resource", "stream_resource", "stream_datum")


class SeenAssets:
    """Remembers one run's resource, stream_resource, stream_datum and datum documents.

    Example:
        >>> seen = SeenAssets()
        >>> seen.add("resource", {"uid": "r1", "spec": "NPY", "root": "/", "resource_path": "a"})
        >>> seen.add("datum", {"datum_id": "r1/0", "resource": "r1", "datum_kwargs": {}})
        >>> seen.datums("run", ["r1/0"])
        {'r1/0': ('r1', {})}
    """

    def __init__(self) -> None:
        self._docs: list[tuple[str, dict]] = []
        self._datums: dict[str, tuple[str, dict]] = {}
        # Datum pages are unpacked when a datum is first asked for: most runs streaming past
        # an exporter are never filled, and unpacking costs a dict per datum.
        self._pages: list[dict] = []
        self._data_keys: dict[str, str] = {}  # stream_resource uid -> its data_key
        #: (descriptor uid, data_key) -> (seq_num start, stop) of its stream_datums, in the
        #: order they came, and the same as arrays sorted as ``LocalFiller`` sorts them
        self._spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._sorted: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, name: str, doc: dict) -> None:
        """Remember ``doc`` if it is a detector-file document; ignore anything else."""
        if name in _KINDS:
            self._docs.append((name, doc))
            if name == "stream_resource":
                self._data_keys[doc["uid"]] = doc.get("data_key", "")
            elif name == "stream_datum":
                key = self._data_keys.get(doc.get("stream_resource", ""))
                seq = doc.get("seq_nums") or {}
                if key is not None and "start" in seq and "stop" in seq:
                    where = (doc.get("descriptor", ""), key)
                    self._spans.setdefault(where, []).append((seq["start"], seq["stop"]))
                    self._sorted.pop(where, None)
        elif name == "datum":
            self._datums[doc["datum_id"]] = (doc["resource"], doc.get("datum_kwargs") or {})
        elif name == "datum_page":
            self._pages.append(doc)

    def covers(self, descriptor: str, data_key: str, seq_nums: Iterable[int]) -> bool:
        """Whether the stream_datum documents seen give the rows of events ``seq_nums`` of
        ``descriptor`` for field ``data_key``.

        Example:
            >>> seen = SeenAssets()
            >>> seen.add("stream_resource", {"uid": "s1", "data_key": "img"})
            >>> seen.covers("d1", "img", [1])
            False
            >>> seen.add("stream_datum", {"stream_resource": "s1", "descriptor": "d1",
            ...     "seq_nums": {"start": 1, "stop": 3}, "indices": {"start": 0, "stop": 2}})
            >>> seen.covers("d1", "img", [1, 2]), seen.covers("d1", "img", [3])
            (True, False)
        """
        where = (descriptor, data_key)
        found = self._sorted.get(where)
        if found is None:
            # Sorted by start alone, ties in the order they came: the span LocalFiller picks
            # for an event is the one judged here.
            spans = sorted(self._spans.get(where, []), key=lambda span: span[0])
            found = self._sorted[where] = (
                np.array([start for start, _ in spans], dtype=np.int64),
                np.array([stop for _, stop in spans], dtype=np.int64),
            )
        starts, stops = found
        seq = np.asarray(seq_nums, dtype=np.int64)
        if not len(starts):
            return not len(seq)
        return not bool(spans_of(starts, stops, seq)[1].any())

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The resource, stream_resource and stream_datum documents seen, in order."""
        return list(self._docs)

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, Any]]:
        """datum_id -> (resource uid, datum_kwargs), for the ids seen."""
        pages, self._pages = self._pages, []
        for page in pages:
            for datum in unpack_datum_page(page):
                self._datums[datum["datum_id"]] = (datum["resource"], datum["datum_kwargs"])
        return {i: self._datums[i] for i in datum_ids if i in self._datums}
