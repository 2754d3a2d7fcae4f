"""The smallest :class:`~runbroker.store.intake.Sink`: documents kept in dicts.

It shows what a writable store has to do for the ingest rules (answer what it holds, store
what it is handed), and lets tests drive :mod:`runbroker.store.intake` without a database.
"""

from __future__ import annotations

from typing import Any

from event_model import unpack_datum_page, unpack_event_page

from ..store.events import Batch, DescriptorState, canonical

__all__ = ["MemorySink"]


class MemorySink:
    """Runs in memory: run handles are run uids.

    Example:
        >>> from runbroker.store import intake
        >>> sink = MemorySink()
        >>> intake.take(sink, "start", {"uid": "r1", "time": 0.0})
        >>> sorted(sink.runs)
        ['r1']
    """

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}  # uid -> {"start", "stop"}
        self.docs: dict[str, tuple[str, str, dict]] = {}  # uid -> (kind, run uid, doc)
        self.datums: dict[str, dict] = {}
        self.states: dict[str, DescriptorState] = {}
        self.events: dict[tuple[str, int], dict] = {}  # (descriptor, seq_num) -> event

    def same(self, name: str, stored: dict, doc: dict) -> bool:
        return canonical(stored) == canonical(doc)

    def run(self, uid: str) -> str | None:
        return uid if uid in self.runs else None

    def add(self, name: str, run: Any, doc: dict) -> dict | None:
        if name == "start":
            found = self.runs.get(doc["uid"])
            if found is None:
                self.runs[doc["uid"]] = {"start": doc, "stop": None}
            return found and found["start"]
        if name == "stop":
            stored = self.runs[run]["stop"]
            if stored is None:
                self.runs[run]["stop"] = doc
            return stored
        found = self.docs.get(doc["uid"])
        if found is not None:
            return found[2]
        self.docs[doc["uid"]] = (name, run, doc)
        if name == "descriptor":
            self.states[doc["uid"]] = DescriptorState.from_descriptor(0, 0, run, doc, 0)
        return None

    def parent(self, uid: str, kind: str) -> str | None:
        found = self.docs.get(uid)
        return found[1] if found and found[0] == kind else None

    def stored_datums(self, run: Any, ids: list[str]) -> dict[str, dict]:
        return {i: self.datums[i] for i in ids if i in self.datums}

    def add_datums(self, run: Any, name: str, doc: dict) -> None:
        for datum in unpack_datum_page(doc) if name == "datum_page" else [doc]:
            self.datums[datum["datum_id"]] = datum

    def descriptor(self, uid: str) -> DescriptorState | None:
        return self.states.get(uid)

    def stored_event(self, state: DescriptorState, seq_num: int) -> dict | None:
        return self.events.get((state.uid, seq_num))

    def add_event(self, state: DescriptorState, doc: dict) -> None:
        self.events[state.uid, doc["seq_num"]] = doc
        state.seq_max = max(state.seq_max, doc["seq_num"])

    def add_page(self, state: DescriptorState, doc: dict, batch: Batch) -> None:
        for event in unpack_event_page(doc):
            self.add_event(state, event)
