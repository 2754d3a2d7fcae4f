"""Routing a RunEngine's documents to one exporter per run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Exporter

__all__ = ["LiveExport"]

log = logging.getLogger(__name__)


class LiveExport:
    """A RunEngine subscriber: each start document gets a new exporter from ``factory``.

    Documents are routed by what they point at (``run_start``, ``descriptor``, ``resource``),
    so interleaved runs stay apart. A run's exporter is closed at its stop document; ``close()``
    finishes the runs that never stopped, marking their files incomplete.

    An export that fails must not stop the experiment: unless ``strict``, the error is logged
    and kept in ``errors`` as ``(run uid, exception)``, that run's exporter is closed, and the
    RunEngine goes on. ``strict=True`` raises instead (into the RunEngine).

    Example:
        >>> from runbroker.export import live
        >>> export = live("spec", tmp_path)
        >>> export("start", {"uid": "u1", "time": 0, "scan_id": 1})
        >>> export.running
        ['u1']
    """

    def __init__(self, factory: Callable[[], Exporter], *, strict: bool = False) -> None:
        self._factory = factory
        self.strict = strict
        self.errors: list[tuple[str, Exception]] = []
        self._failed: set[str] = set()
        self._runs: dict[str, Exporter] = {}
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self.files: list[Path] = []

    @property
    def running(self) -> list[str]:
        """Uids of the runs started and not yet stopped."""
        return list(self._runs)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            run = doc["uid"]
        else:
            run = self._run_of(name, doc)
            if run is None:
                return  # a run started before this subscription, or failed: not exported
            if name in ("descriptor", "resource", "stream_resource"):
                self._owner[doc["uid"]] = run
        try:
            if name == "start":
                self._runs[run] = self._factory()
            self._runs[run](name, doc)
            if name == "stop":
                self._finished(run)
        except Exception as exc:
            if self.strict:
                raise
            log.error("export of run %s failed at its %s document: %s", run, name, exc)
            self.errors.append((run, exc))
            self._failed.add(run)
            exp = self._runs.pop(run, None)
            if exp is not None:
                try:
                    self.files.extend(exp.close())
                except Exception:  # the first error is the one to report
                    log.exception("closing the failed export of run %s", run)

    def _run_of(self, name: str, doc: dict[str, Any]) -> str | None:
        if name in ("descriptor", "resource", "stream_resource", "stop"):
            run = doc.get("run_start")
        elif name in ("event", "event_page", "stream_datum"):
            run = self._owner.get(doc["descriptor"])
        elif name in ("datum", "datum_page"):
            run = self._owner.get(doc["resource"])
        else:
            run = None
        if run in self._failed:
            return None
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
