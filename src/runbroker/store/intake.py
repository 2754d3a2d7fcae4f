"""The ingest rules, written once: what a writable store accepts, ignores and refuses.

Every document goes through :func:`take` (or :func:`apply` once validated), which decides,
from what the store answers about what it holds, whether the document is new (then hands it
to the store), repeats a stored one (then ignores it) or contradicts one (then refuses it):

* a document names a known parent: a run for its stop, descriptors, resources and
  stream_resources; a descriptor for events (and stream_datums that name one); a resource
  for datums; a stream_resource for stream_datums -- else :class:`UnknownParentError`;
* a document whose uid is stored (for a stop: a run that has its stop) is ignored if it is
  the same document, and refused with :class:`ConflictError` if it differs;
* an event whose (descriptor, seq_num) is stored is ignored if the same and refused if it
  differs; an event uid is used by one event of a descriptor only;
* a datum whose datum_id is stored likewise; of a page, only the new ones are stored.

Stores implement :class:`Sink`: answering questions and storing what they are handed. How
they batch, queue and commit is theirs; which errors are raised, and their messages, are
here, so that rules added later (access control) have one place to go.
"""

from __future__ import annotations

from typing import Any, Protocol

from event_model import pack_datum_page, pack_event_page, unpack_datum_page, unpack_event_page

from ..documents import ConflictError, DocumentError, UnknownParentError, validate
from .events import Batch, DescriptorState, check_datum_ids, event_is_new

__all__ = ["Sink", "apply", "take"]


class Sink(Protocol):
    """What a writable store does for :func:`apply`.

    A *run handle* is whatever the store uses to name a stored run (a row id, a writer
    object); intake only passes it back. Methods that store never check the rules: intake
    has, and calls them only with what is new.
    """

    def same(self, name: str, stored: dict, doc: dict) -> bool:
        """Whether ``doc`` repeats ``stored`` (as this store returned it: stores that encode
        documents lossily compare them as encoded)."""

    def run(self, uid: str) -> Any | None:
        """The handle of stored run ``uid`` (of its start document), or None."""

    def add(self, name: str, run: Any, doc: dict) -> dict | None:
        """Store ``doc`` (a start, stop, descriptor, resource, stream_resource or
        stream_datum) in ``run`` (None for a start) unless a document with its uid is
        stored -- for a stop: unless the run has a stop. Return that stored document then,
        storing nothing, else None."""

    def parent(self, uid: str, kind: str) -> Any | None:
        """The handle of the run holding stored document ``uid`` of ``kind`` ("resource" or
        "stream_resource"), or None."""

    def stored_datums(self, run: Any, ids: list[str]) -> dict[str, dict]:
        """The stored datums among ``ids``, by datum_id, as single datum documents."""

    def add_datums(self, run: Any, name: str, doc: dict) -> None:
        """Store a datum or datum_page whose datums are all new."""

    def descriptor(self, uid: str) -> DescriptorState | None:
        """The writing state of stored descriptor ``uid`` (of any run), or None. Its
        ``seq_max`` covers every event stored or queued; intake keeps its ``uids``."""

    def stored_event(self, state: DescriptorState, seq_num: int) -> dict | None:
        """The event stored (or queued) at ``seq_num`` of the descriptor, or None."""

    def add_event(self, state: DescriptorState, doc: dict) -> None:
        """Store a new event (its seq_num is not stored) and raise ``state.seq_max`` to it."""

    def add_page(self, state: DescriptorState, doc: dict, batch: Batch) -> None:
        """Store an event_page of new events (``batch``: its columns), raising
        ``state.seq_max`` to the page's."""


def take(sink: Sink, name: str, doc: Any) -> None:
    """Validate one document and apply the ingest rules to it, storing it into ``sink`` if
    it is new.

    Example:
        >>> from runbroker.testing.memorysink import MemorySink
        >>> sink = MemorySink()
        >>> take(sink, "start", {"uid": "r1", "time": 0.0})
        >>> take(sink, "start", {"uid": "r1", "time": 0.0})  # a repeat: ignored
        >>> take(sink, "start", {"uid": "r1", "time": 1.0})
        Traceback (most recent call last):
        ...
        runbroker.errors.ConflictError: ...a different document with this uid is already stored
    """
    apply(sink, name, validate(name, doc))


def apply(sink: Sink, name: str, doc: dict) -> None:
    """:func:`take` for a document already validated (stores validate outside their lock).

    Example:
        >>> from runbroker.testing.memorysink import MemorySink
        >>> apply(MemorySink(), "stop", {"uid": "s1", "run_start": "r9", "time": 0.0})
        Traceback (most recent call last):
        ...
        runbroker.errors.UnknownParentError: ...refers to run 'r9', which is not in this...
    """
    _RULES[name](sink, name, doc)


def _stored(sink: Sink, name: str, doc: dict, stored: dict | None) -> None:
    if stored is not None and not sink.same(name, stored, doc):
        raise ConflictError(
            name, doc["uid"], "uid", "a different document with this uid is already stored"
        )


def _start(sink: Sink, name: str, doc: dict) -> None:
    _stored(sink, name, doc, sink.add(name, None, doc))


def _child_of_run(sink: Sink, name: str, doc: dict) -> None:
    """stop, descriptor, resource, stream_resource."""
    if "run_start" not in doc:
        raise DocumentError(name, doc["uid"], "run_start", "is required to attach it to a run")
    run = sink.run(doc["run_start"])
    if run is None:
        raise UnknownParentError.missing(name, doc["uid"], "run_start", doc["run_start"])
    _stored(sink, name, doc, sink.add(name, run, doc))


def _stream_datum(sink: Sink, name: str, doc: dict) -> None:
    run = sink.parent(doc["stream_resource"], "stream_resource")
    if run is None:
        raise UnknownParentError.missing(
            name, doc["uid"], "stream_resource", doc["stream_resource"]
        )
    if doc.get("descriptor") and sink.descriptor(doc["descriptor"]) is None:
        raise UnknownParentError.missing(name, doc["uid"], "descriptor", doc["descriptor"])
    _stored(sink, name, doc, sink.add(name, run, doc))


def _datums(sink: Sink, name: str, doc: dict) -> None:
    page = doc if name == "datum_page" else pack_datum_page(doc)
    run = sink.parent(page["resource"], "resource")
    if run is None:
        raise UnknownParentError.missing(name, doc["datum_id"], "resource", page["resource"])
    ids = page["datum_id"]
    check_datum_ids(name, ids)
    stored = sink.stored_datums(run, ids)
    if stored:
        singles = list(unpack_datum_page(page))
        for datum in singles:
            old = stored.get(datum["datum_id"])
            if old is not None and not sink.same("datum", old, datum):
                raise ConflictError(
                    name, datum["datum_id"], "datum_id", "a different datum is stored"
                )
        fresh = [d for d in singles if d["datum_id"] not in stored]
        if not fresh:
            return
        name, doc = "datum_page", pack_datum_page(*fresh)
    sink.add_datums(run, name, doc)


def _state(sink: Sink, name: str, doc: dict) -> DescriptorState:
    state = sink.descriptor(doc["descriptor"])
    if state is None:
        raise UnknownParentError.missing(name, doc["uid"], "descriptor", doc["descriptor"])
    state.check_keys(name, doc["uid"], doc)
    return state


def _event(sink: Sink, name: str, doc: dict) -> None:
    # The hot path of live ingest (one call per event): _state written out, no extra calls.
    uid, seq = doc["uid"], doc["seq_num"]
    state = sink.descriptor(doc["descriptor"])
    if state is None:
        raise UnknownParentError.missing(name, uid, "descriptor", doc["descriptor"])
    state.check_keys(name, uid, doc)
    if seq <= state.seq_max and not event_is_new(
        state.uid, sink.stored_event(state, seq), doc, None
    ):
        return
    if uid in state.uids:
        raise ConflictError(
            name,
            uid,
            "uid",
            f"this uid was already used by another event of descriptor {state.uid!r} "
            f"(seq_num {seq} is new)",
        )
    sink.add_event(state, doc)
    state.uids.add(uid)  # once stored: a refused event leaves nothing behind


def _event_page(sink: Sink, name: str, doc: dict) -> None:
    state = _state(sink, name, doc)
    batch = state.page_batch(doc)
    if batch is None:
        return  # an empty page: nothing to store
    if batch.seq_min <= state.seq_max:
        # The page overlaps events seen before: keep the new ones, refuse changed ones.
        # (Pages are keyed by seq_num only: checking every uid of every page would cost a
        # third of a page's ingest time.)
        events = list(unpack_event_page(doc))
        stored = sink.stored_event
        fresh = [e for e in events if event_is_new(state.uid, stored(state, e["seq_num"]), e, doc)]
        if not fresh:
            return
        if len(fresh) < len(events):
            uids = [e["uid"] for e in fresh]
            reused = [u for u in uids if u in state.uids]
            if reused or len(set(uids)) != len(uids):
                raise ConflictError(
                    name,
                    doc["uid"],
                    "uid",
                    f"event uid {(reused or uids)[0]!r} was already used by another event of "
                    f"descriptor {state.uid!r}",
                )
            doc = pack_event_page(*fresh)
            batch = state.page_batch(doc)
            sink.add_page(state, doc, batch)
            state.uids.update(uids)
            return
    sink.add_page(state, doc, batch)


_RULES = {
    "start": _start,
    "stop": _child_of_run,
    "descriptor": _child_of_run,
    "resource": _child_of_run,
    "stream_resource": _child_of_run,
    "stream_datum": _stream_datum,
    "datum": _datums,
    "datum_page": _datums,
    "event": _event,
    "event_page": _event_page,
}
