"""The access guard: a Store that shows only the runs of a scope, and hides the others as absent.

:class:`GuardedStore` wraps any store. Searches, counts and distinct values AND the scope into
the query, so the database filters (the access keys are ``meta`` rows with an index, never a
scan of JSON); ``get_run`` of a run outside the scope is None; every per-run call on such a
run raises :class:`~runbroker.errors.RunNotFoundError` exactly as for a run that does not exist
(a hidden run is absent: 404, never 403). Detector data is read through the guard too: a
catalog over it fills with a local filler that asks the guard for the run's assets and datums,
and following a run polls the guard's page list. A catalog over it (``Catalog(GuardedStore(store,
scope))``), and a server route reaching runs through it, cannot see past the scope.

That a run is visible is decided once per run and remembered for the life of the guard (a
guard is made per request, or per principal's session): the run is fetched by its uid and
tested against the scope in Python (``Query.matches``), so a lookup costs what it costs
without a scope.

Writing goes through the guard only with :class:`WriteRules` (the access policy's for one
principal, :meth:`runbroker.auth.AccessPolicy.rules`): a start document is checked (and
given default tags) by them, and a document added to a run -- a stop, a descriptor, events
through their descriptor, datums through their resource -- only reaches a run in their write
scope. A document for a run the caller cannot see is refused as naming an unknown parent;
one it sees but may not write, with :class:`~runbroker.errors.AccessDeniedError`. Without
rules the guard is read-only.

Example:
    >>> from runbroker.store.sql import SQLStore
    >>> from runbroker.queries import Key
    >>> store = SQLStore("sqlite://")
    >>> guard = GuardedStore(store, Key("proposal_id") == "p1")
    >>> guard.count(None), guard.get_run("anything")
    (0, None)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import AccessDeniedError, UnknownParentError
from ..notes import Viewer, visible
from ..queries import And, Key, Query, bind
from ..store.base import (
    Columns,
    Locates,
    PageInfo,
    RunRecord,
    Store,
    Summarises,
    annotating,
    distinct_values,
    run_not_found,
)

__all__ = ["GuardedStore", "WriteRules"]

# The key of each document that names its parent, and the kind of that parent ("run" for
# the run itself). Events reach their run through their descriptor, datums through theirs.
_PARENT_KEY = {
    "stop": ("run_start", "run"),
    "descriptor": ("run_start", "run"),
    "resource": ("run_start", "run"),
    "stream_resource": ("run_start", "run"),
    "event": ("descriptor", "descriptor"),
    "event_page": ("descriptor", "descriptor"),
    "datum": ("resource", "resource"),
    "datum_page": ("resource", "resource"),
    "stream_datum": ("stream_resource", "stream_resource"),
}


@dataclasses.dataclass(frozen=True)
class WriteRules:
    """What one caller may write: ``scope``, the query of the runs it may add documents to
    (None: every run), and ``start``, which checks a start document it sends and returns the
    one to store (raising :class:`~runbroker.errors.AccessDeniedError`)."""

    scope: Query | None
    start: Callable[[dict], dict]


#: The reader of notes a guard made without one is: no name, no group (public notes only).
NOBODY = Viewer("", frozenset())


class GuardedStore:
    """``inner`` as a caller whose runs are those matching ``scope`` sees it.

    ``viewer`` is who reads notes through it (:mod:`runbroker.notes`; by default nobody: public
    notes only), and ``notes`` the rules its note writes are admitted by
    (:class:`~runbroker.auth.noterules.NoteRules`; without them it writes none).
    """

    def __init__(
        self,
        inner: Store,
        scope: Query | None,
        rules: WriteRules | None = None,
        *,
        viewer: Viewer | None = None,
        notes: Any = None,
    ) -> None:
        self.inner = inner
        self.scope = scope
        self.rules = rules
        self._viewer = viewer if viewer is not None else NOBODY
        self.note_rules = notes
        self.uri = inner.uri
        self._seen: set[str] = set()
        self._mine: set[str] = set()  # runs found writable
        self._owners: dict[str, str] = {}  # descriptors, resources written through this guard
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GuardedStore({self.inner!r}, {self.scope!r})"

    def __reduce__(self) -> tuple:
        # a dask worker gets the inner store's reader under the same scope
        return (_reader, (self.inner, self.scope, self._viewer))

    def _within(self, query: Query | None) -> Query | None:
        # Note queries answer for this guard's reader, whoever the query says it is.
        query = bind(query, self._viewer) if query is not None else None
        if self.scope is None:
            return query
        return self.scope if query is None else And(self.scope, query)

    def _found(self, run_uid: str, scope: Query | None, known: set[str]) -> bool:
        # Only "found" is remembered: a run not there yet may be written any moment.
        with self._lock:
            if run_uid in known:
                return True
        return self._admits(self.inner.get_run(run_uid), scope, known)

    def _admits(self, record: RunRecord | None, scope: Query | None, known: set[str]) -> bool:
        """Whether ``record`` (a run, or None) is within ``scope``; remembered if so. The
        run is tested in Python (``Query.matches``, the reference the SQL compiler is tested
        against): a lookup costs the one statement that fetched the run, as without a
        scope."""
        if record is None:
            return False
        if scope is not None:
            try:
                inside = scope.matches({"start": record.start, "stop": record.stop})
            except NotImplementedError:  # a query only the database evaluates
                inside = bool(self.inner.search(And(scope, Key("uid") == record.uid), limit=1))
            if not inside:
                return False
        with self._lock:
            known.add(record.uid)
        return True

    def _visible(self, run_uid: str) -> bool:
        return self._found(run_uid, self.scope, self._seen)

    def _check(self, run_uid: str) -> None:
        if not self._visible(run_uid):
            raise run_not_found(self, run_uid)

    # -- writing: each document admitted by the write rules first

    def insert(self, name: str, doc: dict) -> None:
        self.inner.insert(name, self._admit(name, doc))

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        # All admitted before the store starts (it holds its write transaction while it
        # iterates, and admitting reads the store); a descriptor earlier in the batch vouches
        # for its events later in it.
        return self.inner.ingest([(name, self._admit(name, doc)) for name, doc in pairs])

    def _admit(self, name: str, doc: dict) -> dict:
        rules = self.rules
        if rules is None:
            raise AccessDeniedError("this view of the catalog is read-only for its caller")
        if not isinstance(doc, dict):
            return doc  # the store names what is wrong with it
        if name == "start":
            return self._admit_start(rules, doc)
        key, kind = _PARENT_KEY.get(name, (None, None))
        parent = doc.get(key) if key is not None else None
        if not isinstance(parent, str):
            return doc  # malformed, or not a document kind: the store refuses it
        run = parent if kind == "run" else self._run_of(kind, parent)
        if run is None:
            return doc  # an unknown parent: the store says so
        if not self._found(run, rules.scope, self._mine):
            ident = doc.get("uid", doc.get("datum_id", "?"))
            if not self._visible(run):
                raise UnknownParentError.missing(name, ident, key, parent)
            raise AccessDeniedError(
                f"{name} document {ident!r}: run {run!r} is not one of your groups' runs "
                "(you may read it, not add to it)"
            )
        if name in ("descriptor", "resource", "stream_resource") and isinstance(
            doc.get("uid"), str
        ):
            with self._lock:
                self._owners[doc["uid"]] = run
        return doc

    def _admit_start(self, rules: WriteRules, doc: dict) -> dict:
        doc = rules.start(doc)
        uid = doc.get("uid")
        if not isinstance(uid, str):
            return doc
        with self._lock:
            mine = uid in self._mine
        record = None if mine else self.inner.get_run(uid)
        if record is not None and not self._admits(record, rules.scope, self._mine):
            raise AccessDeniedError(
                f"start document {uid!r}: a run with this uid exists and is not one of "
                "your groups' runs; a new run needs a new uid"
            )
        with self._lock:
            self._mine.add(uid)
        return doc

    def _run_of(self, kind: str, uid: str) -> str | None:
        with self._lock:
            run = self._owners.get(uid)
        if run is not None:
            return run
        if not isinstance(self.inner, Locates):
            raise AccessDeniedError(
                f"{self.inner.uri} cannot say which run holds {kind} {uid!r}, so a write "
                "through the access guard cannot be checked"
            )
        return self.inner.run_of(kind, uid)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    # -- finding: the scope goes into the database's query

    def search(
        self,
        query: Query | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        found = self.inner.search(
            self._within(query),
            offset=offset,
            limit=limit,
            before=before,
            oldest_first=oldest_first,
        )
        with self._lock:
            self._seen.update(r.uid for r in found)
        return found

    def count(self, query: Query | None) -> int:
        return self.inner.count(self._within(query))  # type: ignore[arg-type]

    def distinct(self, key: str, query: Query | None, limit: int) -> list[tuple[Any, int]]:
        return distinct_values(self.inner, key, self._within(query), limit)

    def get_run(self, uid: str) -> RunRecord | None:
        record = self.inner.get_run(uid)
        with self._lock:
            known = uid in self._seen
        if known or self._admits(record, self.scope, self._seen):
            return record
        return None

    # -- one run: absent unless visible

    def descriptors(self, run_uid: str) -> list[dict]:
        self._check(run_uid)
        return self.inner.descriptors(run_uid)

    def pages(self, run_uid: str, descriptor_uids: list[str]) -> list[PageInfo]:
        self._check(run_uid)
        return self.inner.pages(run_uid, descriptor_uids)

    def read_pages(
        self, run_uid: str, page_ids: list[int], columns: list[str] | None
    ) -> list[Columns]:
        self._check(run_uid)
        return self.inner.read_pages(run_uid, page_ids, columns)

    def documents(
        self, run_uid: str, arrays: bool = False, uids: bool | str = True
    ) -> Iterator[tuple[str, Any]]:
        self._check(run_uid)
        yield from self.inner.documents(run_uid, arrays=arrays, uids=uids)

    def assets(self, run_uid: str) -> list[tuple[str, dict]]:
        self._check(run_uid)
        return self.inner.assets(run_uid)

    def datums(self, run_uid: str, datum_ids: list[str]) -> dict[str, tuple[str, dict]]:
        self._check(run_uid)
        return self.inner.datums(run_uid, datum_ids)

    def stats(self, run_uid: str) -> dict[str, dict[str, dict[str, Any]]] | None:
        self._check(run_uid)
        if not isinstance(self.inner, Summarises):
            raise TypeError(f"{self.inner!r} keeps no statistics of its runs")
        return self.inner.stats(run_uid)

    # -- notes: the caller's view of them, and its writes admitted by the note rules

    def viewer(self) -> Viewer:
        """Who reads notes through this guard."""
        return self._viewer

    def notes(self, run_uid: str, history: bool = False) -> list[dict]:
        self._check(run_uid)
        found = annotating(self.inner).notes(run_uid, history)
        return [n for n in found if visible(n, self._viewer)]

    def add_notes(self, run_uid: str, notes: list[dict]) -> None:
        if self.note_rules is None:
            raise AccessDeniedError(
                "this view of the catalog cannot annotate, tag or correct runs (its caller "
                "lacks the write:annotations scope)"
            )
        record = self.get_run(run_uid)
        if record is None:
            raise run_not_found(self, run_uid)
        store = annotating(self.inner)
        admitted = self.note_rules.admit(record, store.notes(run_uid), list(notes))
        store.add_notes(run_uid, admitted)


def _reader(inner: Store, scope: Query | None, viewer: Viewer) -> GuardedStore:
    return GuardedStore(inner, scope, viewer=viewer)
