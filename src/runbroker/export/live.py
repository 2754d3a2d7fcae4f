"""Routing a RunEngine's documents to one exporter per run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Exporter

__all__ = ["LiveExport"]


class LiveExport:
    """A RunEngine subscriber: each start document gets a new exporter from ``factory``.

    Documents are routed by what they point at (``run_start``, ``descriptor``, ``resource``),
    so interleaved runs stay apart. A run's exporter is closed at its stop document; ``close()``
    finishes the runs that never stopped, marking their files incomplete.

    Example:
        >>> from runbroker.export import live
        >>> export = live("spec", tmp_path)
        >>> export("start", {"uid": "u1", "time": 0, "scan_id": 1})
        >>> export.running
        ['u1']
    """

    def __init__(self, factory: Callable[[], Exporter]) -> None:
        self._factory = factory
        self._runs: dict[str, Exporter] = {}
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self.files: list[Path] = []

    @property
    def running(self) -> list[str]:
        """Uids of the runs started and not yet stopped."""
        return list(self._runs)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            exp = self._runs[doc["uid"]] = self._factory()
            exp(name, doc)
            return
        run = self._run_of(name, doc)
        if run is None:
            return  # a run that started before this subscription: not ours to export
        exp = self._runs[run]
        if name in ("descriptor", "resource", "stream_resource"):
            self._owner[doc["uid"]] = run
        exp(name, doc)
        if name == "stop":
            self._finished(run)

    def _run_of(self, name: str, doc: dict[str, Any]) -> str | None:
        if name in ("descriptor", "resource", "stream_resource", "stop"):
            run = doc.get("run_start")
        elif name in ("event", "event_page", "stream_datum"):
            run = self._owner.get(doc["descriptor"])
        elif name in ("datum", "datum_page"):
            run = self._owner.get(doc["resource"])
        else:
            run = None
        if run is None and name in ("resource", "stream_resource") and len(self._runs) == 1:
            run = next(iter(self._runs))  # old resources do not name their run
        return run if run in self._runs else None

    def _finished(self, run: str) -> None:
        exp = self._runs.pop(run)
        self.files.extend(exp.close())
        self._owner = {k: v for k, v in self._owner.items() if v != run}

    def close(self) -> list[Path]:
        """Finish every run still open (marked incomplete); return all files written."""
        for run in list(self._runs):
            self._finished(run)
        return list(self.files)
