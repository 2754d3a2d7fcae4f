"""The detector-file documents of a run as they stream past, for filling without a store.

``Assets.fill`` asks a store for a run's resources and datums; an exporter subscribed to a
RunEngine has no store, only the documents it was sent. ``SeenAssets`` keeps those documents
and answers the same two questions.
"""

from __future__ import annotations

from typing import Any

from event_model import unpack_datum_page

__all__ = ["SeenAssets"]

_KINDS = ("resource", "stream_resource", "stream_datum")


class SeenAssets:
    """Remembers one run's resource, stream_resource, stream_datum and datum documents.

    Example:
        >>> seen = SeenAssets()
        >>> seen.add("resource", {"uid": "r1", "spec": "NPY", "root": "/", "resource_path": "a"})
        >>> seen.add("datum", {"datum_id": "r1/0", "resource": "r1", "datum_kwargs": {}})
        >>> seen.datums(["r1/0"])
        {'r1/0': ('r1', {})}
    """

    def __init__(self) -> None:
        self._docs: list[tuple[str, dict]] = []
        self._datums: dict[str, tuple[str, dict]] = {}
        # Datum pages are unpacked when a datum is first asked for: most runs streaming past
        # an exporter are never filled, and unpacking costs a dict per datum.
        self._pages: list[dict] = []

    def add(self, name: str, doc: dict) -> None:
        """Remember ``doc`` if it is a detector-file document; ignore anything else."""
        if name in _KINDS:
            self._docs.append((name, doc))
        elif name == "datum":
            self._datums[doc["datum_id"]] = (doc["resource"], doc.get("datum_kwargs") or {})
        elif name == "datum_page":
            self._pages.append(doc)

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        """The resource, stream_resource and stream_datum documents seen, in order."""
        return list(self._docs)

    def datums(self, datum_ids: list[str]) -> dict[str, tuple[str, Any]]:
        """datum_id -> (resource uid, datum_kwargs), for the ids seen."""
        pages, self._pages = self._pages, []
        for page in pages:
            for datum in unpack_datum_page(page):
                self._datums[datum["datum_id"]] = (datum["resource"], datum["datum_kwargs"])
        return {i: self._datums[i] for i in datum_ids if i in self._datums}
