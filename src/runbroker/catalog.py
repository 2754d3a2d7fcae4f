"""The user API -- Catalog, Run and Stream -- written once over the Store protocol.

Nothing here knows which database (or folder, or server) holds the runs: every call goes through
the few methods of :class:`runbroker.store.base.Store`, and detector data through the catalog's
:class:`runbroker.filler.Filler`.

Every run is reached through a catalog's view. A catalog has a *scope*, the query every one of
its views ANDs (access control sets it when the catalog is opened; None shows every run), and
the user's search query on top. A run keeps the catalog it was reached through; its parents,
the runs derived from it and ``run.v1``'s Broker are looked up in that catalog's scope, never
in the bare store, and never only among the results of the user's search (a search for
analysis runs must not hide their raw parents).
"""

from __future__ import annotations

import html
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from event_model import unpack_datum_page, unpack_event_page

from . import run_notes as notes_api
from .assets import Assets, LocalFiller, external_kind, fill_flag
from .derived import derived_from, save_derived
from .display import duration, plural
from .emptysearch import warn_if_unknown
from .errors import AmbiguousUIDError, NoStreamError, RunNotFoundError
from .filler import FieldEvents, Filler, Fills
from .mongoquery import from_mongo
from .notes import Viewer, viewer_of
from .notestream import NOTE, replay_notes, store_notes, without_notes
from .queries import And, Key, PartialUID, Query, ScanID, bind
from .standard_names import Aliases, resolve_fields
from .store.base import LeavesOut, RunRecord, Store, Summarises, distinct_values
from .stream import Stream
from .v1 import Broker, Header

__all__ = ["AmbiguousUIDError", "Catalog", "Run"]

_FIRST_BATCH = 100
# Runs a catalog's HTML repr lists (the most recent ones).
_HTML_ROWS = 10
_MAX_BATCH = 10_000


def _when(t: float | None) -> str:
    return "?" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


class Catalog:
    """A searchable, ordered collection of runs (newest first).

    ``query`` is the user's search; ``scope`` the query every view of this catalog ANDs,
    searches or not (None: every run of the store). ``assets`` says how detector files are
    found on this machine (handlers, ``root_map``); the catalog reads them with ``filler``, by
    default the store's own if it fills by itself (:class:`runbroker.filler.Fills`), else a
    :class:`~runbroker.assets.LocalFiller` over ``assets``.

    Example:
        >>> import runbroker
        >>> cat = runbroker.temp()
        >>> len(cat)
        0
        >>> len(cat.search(Key("sample") == "Ni"))
        0
    """

    def __init__(
        self,
        store: Store,
        query: Query | None = None,
        *,
        scope: Query | None = None,
        assets: Assets | None = None,
        filler: Filler | None = None,
        viewer: Viewer | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        #: Beamline field name -> standard name (see runbroker.standard_names); may be empty.
        self.aliases = Aliases.of(aliases)
        self.query = query
        self.scope = scope
        self._viewer = viewer
        # What every store call asks: the scope and the user's search together, its note
        # queries (Tag, Annotation) answering for this catalog's reader.
        view = query if scope is None else scope if query is None else And(scope, query)
        self._view = bind(view, self.viewer) if view is not None else None
        # How detector files are found on this machine (pack, copy and derived data use it
        # too); shared by searches, as is the filler chosen once here.
        self.assets = assets if assets is not None else Assets()
        if filler is None:
            filler = store.filler() if isinstance(store, Fills) else LocalFiller(store, self.assets)
        self.filler = filler
        # The queries given to search(), looked into when nothing is found: not those that
        # runbroker makes itself (run.derived), where finding nothing is the usual answer.
        self._searched: tuple[Query, ...] = ()

    # -- writing
    def insert(self, name: str, doc: dict) -> None:
        """Store one document; use as ``RE.subscribe(cat.insert)``. A ``("note", revision)``
        pair is stored as a note of its run (:mod:`runbroker.notestream`).

        Example:
            >>> token = RE.subscribe(cat.insert)
        """
        if name == NOTE:
            self.ingest([(name, doc)])
        else:
            self.store.insert(name, doc)

    def ingest(self, pairs: Iterable[tuple[str, dict]]) -> int:
        """Store many ``(name, doc)`` pairs in one transaction (all or none). Notes among
        them (``run.documents(notes=True)``) are stored after the documents, run by run.

        Example:
            >>> copy = runbroker.temp()
            >>> copy.ingest(other_run.documents(notes=True)) > 0
            True
        """
        notes: dict[str, list[dict]] = {}
        n = self.store.ingest(without_notes(pairs, notes))
        return n + store_notes(self.store, notes) if notes else n

    def save_derived(
        self,
        data: Mapping[str, Mapping[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        parents: Iterable[Run | str] = (),
        inputs: Iterable[str | os.PathLike] = (),
        code: Mapping[str, Any] | None = None,
        waive_provenance: str | None = None,
        directory: str | os.PathLike | None = None,
        writer: str | type = "HDF5",
    ) -> Run:
        """Store analysis results as a new run, traceable to what produced it.

        ``data`` maps stream names to fields; each field's first axis is the events (a scalar
        is one event). Per-event values of more than 64 elements are written to files by
        ``writer`` (``"HDF5"``, ``"AD_HDF5"``, ``"AD_TIFF"``, ``"NPY"``, ``"NPY_SEQ"``,
        ``"TIFF_SERIES"``) in ``directory`` (default: ``derived/`` beside an SQLite
        catalog); smaller ones go into the events. Provenance is required: ``parents``
        (runs or uids) and/or ``inputs`` (files), and ``code`` with ``name`` and
        ``version``. ``waive_provenance="why"`` stores data without it, saying why.

        Example:
            >>> import numpy as np
            >>> results = runbroker.temp()
            >>> _ = results.ingest(run.documents())
            >>> parent = results[run.uid]
            >>> curve = results.save_derived(
            ...     {"primary": {"q": np.linspace(0.1, 1, 5), "I": np.arange(5.0)}},
            ...     metadata={"sample": "Ni"},
            ...     parents=[parent],
            ...     code={"name": "reduce", "version": "1.2", "url": "https://example.org"},
            ... )
            >>> curve.primary.read()["I"].values.tolist()
            [0.0, 1.0, 2.0, 3.0, 4.0]
            >>> curve.parents == [parent], list(parent.derived) == [curve.uid]
            (True, True)
        """
        return save_derived(
            self,
            data,
            metadata=metadata,
            parents=parents,
            inputs=inputs,
            code=code,
            waive_provenance=waive_provenance,
            directory=directory,
            writer=writer,
        )

    def export(
        self,
        format: str,
        directory: str | os.PathLike[str],
        *,
        progress: bool = False,
        **options: Any,
    ) -> list[Path]:
        """Export every run of this catalog (or of a search) into ``directory``.

        ``progress=True`` shows a bar counting events. Options as for ``Run.export``, plus
        ``strict=False`` (a run the format cannot hold is left out, the others written) and
        ``skip_existing=True`` (a run whose files exist is left as it is); see
        ``runbroker.export.export_runs``, which also reports what it left out.

        Example:
            >>> files = cat.search(Key("sample") == "Ni").export("jsonl", tmp_path)
            >>> len(files)
            1
        """
        from .export import export_runs

        return export_runs(self.values(), format, directory, progress=progress, **options).files

    def flush(self) -> None:
        """Make every inserted event visible to other processes now."""
        self.store.flush()

    def close(self) -> None:
        """Flush and close the underlying store."""
        self.store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- finding
    def search(self, query: Query | Mapping[str, Any]) -> Catalog:
        """A new catalog of the runs that also match ``query``; chainable.

        ``query`` is a query object or a MongoDB-style dict (see :mod:`runbroker.mongoquery`).

        Example:
            >>> hits = cat.search(Key("plan_name") == "scan").search(ScanIDRange(1, 9))
            >>> [run.start["plan_name"] for run in hits.values()]
            ['scan']
            >>> len(cat.search({"plan_name": "scan", "scan_id": {"$lt": 9}}))
            1
        """
        if isinstance(query, Mapping):
            query = from_mongo(query)
        if not isinstance(query, Query):
            raise TypeError(
                f"search() takes a runbroker query or a dict query, not {type(query).__name__}"
            )
        # Fields named by their standard names are looked up by the beamline names.
        resolved = resolve_fields(query, self.aliases)
        found = self._within(resolved if self.query is None else And(self.query, resolved))
        found._searched = (*self._searched, query)
        return found

    def distinct(self, key: str, limit: int = 100) -> list[tuple[Any, int]]:
        """The distinct values of metadata ``key`` among this catalog's runs, with how many
        runs hold each, most common first (for search forms: which samples, which plans).

        Lists and dicts are not values here; runs without the key are not counted.

        Example:
            >>> cat.distinct("plan_name")
            [('count', 1), ('scan', 1)]
        """
        return distinct_values(self.store, key, self._view, limit)

    @property
    def whole(self) -> Catalog:
        """This catalog before any search: every run its scope shows.

        Example:
            >>> hits = cat.search(Key("plan_name") == "no such plan")
            >>> len(hits), len(hits.whole) == len(cat)
            (0, True)
        """
        return self if self.query is None else self._within(None)

    @property
    def viewer(self) -> Viewer:
        """Who reads (and writes) notes through this catalog: the one it was opened for,
        else the store's reader (:class:`runbroker.notes.HasViewer`), else the local user.

        Example:
            >>> cat.viewer.groups is None
            True
        """
        return self._viewer if self._viewer is not None else viewer_of(self.store)

    def _within(self, query: Query | None) -> Catalog:
        """The runs of ``query`` within this catalog's scope, read as this catalog reads."""
        return Catalog(
            self.store,
            query,
            scope=self.scope,
            assets=self.assets,
            filler=self.filler,
            viewer=self._viewer,
            aliases=self.aliases,
        )

    def __len__(self) -> int:
        n = self.store.count(self._view)
        if not n:
            warn_if_unknown(self.store, self._searched)
        return n

    @property
    def v1(self) -> Broker:
        """This catalog through databroker's v1 API (``db[-1].table()``); see ``docs/v1.md``.

        Example:
            >>> cat.v1[run.uid].table()["motor"].tolist()
            [-1.0, -0.5, 0.0, 0.5, 1.0]
        """
        return Broker(self)

    def _records(self) -> Iterator[RunRecord]:
        # Small first batch (people often look at the first few), growing after that.
        # Each batch continues after the last run seen, so runs added meanwhile (newer ones,
        # at the front) neither shift the batches nor show up twice.
        before, size = None, _FIRST_BATCH
        while True:
            batch = self.store.search(self._view, limit=size, before=before)
            if not batch and before is None:
                warn_if_unknown(self.store, self._searched)
            yield from batch
            if len(batch) < size:
                return
            before = (batch[-1].start["time"], batch[-1].uid)
            size = min(2 * size, _MAX_BATCH)

    def __iter__(self) -> Iterator[str]:
        return (r.uid for r in self._records())

    def keys(self) -> Iterator[str]:
        """uids, newest run first."""
        return iter(self)

    def values(self) -> Iterator[Run]:
        """Runs, newest first."""
        return (Run(self, r) for r in self._records())

    def items(self) -> Iterator[tuple[str, Run]]:
        """``(uid, run)`` pairs, newest first."""
        return ((r.uid, Run(self, r)) for r in self._records())

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self._by_uid(uid, exact=True) is not None

    def __getitem__(self, key: int | str | slice) -> Any:
        """``cat[554]`` scan_id, ``cat[-1]`` most recent, ``cat["c6b4"]`` uid or prefix."""
        if isinstance(key, bool):
            raise TypeError("a run is looked up by scan_id (int), recency (-N) or uid (str)")
        if isinstance(key, int):
            return self._by_scan_id(key) if key >= 0 else self._by_recency(key)
        if isinstance(key, str):
            record = self._by_uid(key, exact=False)
            if record is None:
                raise RunNotFoundError(
                    f"no run whose uid is or starts with {key!r}{self._where()}{self._left_out()}"
                )
            return Run(self, record)
        if isinstance(key, slice):
            return self._slice(key)
        raise TypeError(
            f"catalog keys are int (scan_id if >= 0, recency if < 0), str (uid or uid prefix) "
            f"or a negative slice, not {type(key).__name__}"
        )

    def _where(self) -> str:
        return f" among runs matching {self.query!r}" if self.query is not None else ""

    def _left_out(self) -> str:
        """Why a run may be missing although its file is there, when the store knows."""
        if not isinstance(self.store, LeavesOut):
            return ""
        names = self.store.left_out()
        if not names:
            return ""
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        return (
            f"; {plural(len(names), 'file')} of {self.store.uri} left out as unreadable ({shown}): "
            "the run may be in one of them (see the warnings given when it was opened)"
        )

    def _and(self, query: Query) -> Query:
        return query if self._view is None else And(self._view, query)

    def _by_scan_id(self, scan_id: int) -> Run:
        found = self.store.search(self._and(ScanID(scan_id)), limit=1)
        if not found:
            raise RunNotFoundError(
                f"no run with scan_id {scan_id}{self._where()} (a non-negative int is a "
                f"scan_id; use a negative int such as cat[-1] for the most recent runs)"
                f"{self._left_out()}"
            )
        return Run(self, found[0])

    def _by_recency(self, index: int) -> Run:
        found = self.store.search(self._view, offset=-index - 1, limit=1)
        if not found:
            raise RunNotFoundError(
                f"no run at recency {index}: the catalog has {len(self)} runs{self._where()} "
                "(a negative int counts back from the most recent run, cat[-1])"
            )
        return Run(self, found[0])

    def _by_uid(self, key: str, exact: bool) -> RunRecord | None:
        if not key:
            raise RunNotFoundError("an empty string is not a uid")
        if self._view is None:
            record = self.store.get_run(key)
        else:
            exact_hit = self.store.search(self._and(Key("uid") == key), limit=1)
            record = exact_hit[0] if exact_hit else None
        if record is not None or exact:
            return record
        found = self.store.search(self._and(PartialUID(key)), limit=10)
        if not found:
            return None
        if len(found) > 1:
            raise AmbiguousUIDError(key, [r.uid for r in found])
        return found[0]

    def _slice(self, key: slice) -> list[Run]:
        start, stop, step = key.start, key.stop, key.step
        if (start is not None and start >= 0) or (stop is not None and stop > 0):
            raise TypeError(
                "only negative (recency) slices are supported, e.g. cat[-5:]; for a range of "
                "scan_ids use cat.search(ScanIDRange(first, last + 1))"
            )
        if step not in (None, 1):
            raise TypeError("catalog slices do not take a step")
        lo = 0 if stop is None else -stop
        hi = None if start is None else -start
        limit = None if hi is None else max(0, hi - lo)
        if limit == 0:
            return []
        return [Run(self, r) for r in self.store.search(self._view, offset=lo, limit=limit)]

    # -- display
    def __repr__(self) -> str:
        matching = f" matching {self.query!r}" if self.query is not None else ""
        return f"<Catalog {plural(len(self), 'run')}{matching} in {self.store.uri}>"

    def _repr_html_(self) -> str:
        total = len(self)
        shown = self[-_HTML_ROWS:] if total else []
        rows = []
        for run in shown:
            s, stop = run.start, run.stop
            t0, t1 = s.get("time"), (stop or {}).get("time")
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        s.get("scan_id", ""),
                        run.uid[:8],
                        s.get("plan_name", ""),
                        _when(t0),
                        duration(t1 - t0) if t0 is not None and t1 is not None else "",
                        (stop or {}).get("exit_status", "running"),
                    )
                )
                + "</tr>"
            )
        head = "".join(
            f"<th>{h}</th>" for h in ("scan_id", "uid", "plan", "start", "duration", "status")
        )
        hidden = total - len(shown)
        more = (
            f"<p>The {len(shown)} most recent are shown; {plural(hidden, 'more run')} "
            f"not shown (<code>cat[-N:]</code> or <code>cat.search(...)</code> reach them).</p>"
            if hidden > 0
            else ""
        )
        return (
            f"<p>{html.escape(repr(self))}</p><table><tr>{head}</tr>{''.join(rows)}</table>{more}"
        )


class Run(Mapping[str, Stream]):
    """One run: its metadata and its streams, as reached through ``catalog``.

    Example:
        >>> run = cat[-2]
        >>> run.metadata["start"]["plan_name"], list(run)
        ('count', ['baseline', 'primary'])
        >>> run.primary.read().sizes["time"]
        3
    """

    def __init__(self, catalog: Catalog, record: RunRecord) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self._record = record

    @property
    def uid(self) -> str:
        """The run's uid (from the start document)."""
        return self._record.uid

    @property
    def start(self) -> dict:
        """The start document."""
        return self._record.start

    @property
    def stop(self) -> dict | None:
        """The stop document, or None while the run is going on (or if it crashed)."""
        if self._record.stop is None:
            fresh = self.store.get_run(self.uid)
            if fresh is not None:
                self._record = fresh
        return self._record.stop

    @property
    def stats(self) -> dict[str, dict[str, dict[str, Any]]] | None:
        """Summary statistics of the run's numeric fields, stored when it stopped:
        ``{stream: {field: {"count", "nan", "sum", "min", "max", "mean"}}}`` (array fields:
        over the per-frame sums; see docs/data-search.md), or None when they were not
        computed (the run has not stopped, or was stored before statistics existed: run
        ``runbroker db stats``).

        Example:
            >>> motor = run.stats["primary"]["motor"]
            >>> motor["count"], motor["min"], motor["max"]
            (5, -1.0, 1.0)
        """
        if not isinstance(self.store, Summarises):
            raise TypeError(f"{self.store!r} keeps no statistics of its runs")
        return self.store.stats(self.uid)

    @property
    def metadata(self) -> dict[str, Any]:
        """``{"start": ..., "stop": ..., "summary": ...}``, and ``"start_original"`` (the
        start document as stored) when the run was corrected (``run.correct``)."""
        out = {"start": self.start, "stop": self.stop, "summary": self.summary}
        if self._record.original is not None:
            out["start_original"] = self._record.original
        return out

    # -- notes: annotations, tags, corrections (runbroker.run_notes does the work)

    def annotate(self, text: str, tags: Iterable[str] = (), visibility: str = "group") -> dict:
        """Write an annotation (``visibility``: private, group or public); return the note."""
        return notes_api.annotate(self, text, tags, visibility)

    def tag(self, *tags: str, visibility: str = "group") -> dict:
        """Tag the run; return the note."""
        return notes_api.tag(self, *tags, visibility=visibility)

    def untag(self, *tags: str) -> None:
        """Take tags off the run (any tag you see, whoever put it there)."""
        notes_api.untag(self, *tags)

    @property
    def tags(self) -> list[str]:
        """The run's tags you see, sorted."""
        return notes_api.tags(self)

    @property
    def annotations(self) -> list[dict]:
        """The run's current annotations you see, oldest first."""
        return notes_api.annotations(self)

    @property
    def notes(self) -> list[dict]:
        """Every current note on the run you see (annotations, tags, corrections)."""
        return notes_api.notes(self)

    @property
    def corrections(self) -> list[dict]:
        """The run's current corrections, oldest first."""
        return notes_api.corrections(self)

    def edit_note(self, note_id: str, **changes: Any) -> dict:
        """Revise one of your notes (``text=``, ``tags=``, ``visibility=``...); return it."""
        return self._noted(notes_api.edit_note(self, note_id, **changes))

    def delete_note(self, note_id: str) -> dict:
        """Delete one of your notes (its history stays); return the last revision."""
        return self._noted(notes_api.delete_note(self, note_id))

    def note_history(self, note_id: str | None = None) -> list[dict]:
        """Every revision of the run's notes you see (of one note if given), oldest first."""
        return notes_api.note_history(self, note_id)

    def correct(self, start: dict, reason: str) -> dict:
        """Correct start-document keys; reads and searches see them, the original stays."""
        return self._noted(notes_api.correct(self, start, reason))

    def _noted(self, note: dict) -> dict:
        # A correction changes the run's start: read it again.
        if note["kind"] == "correction":
            self._record = self.store.get_run(self.uid) or self._record
        return note

    @property
    def summary(self) -> dict[str, Any]:
        """A few facts at a glance: uid, scan_id, plan, times, duration, streams."""
        start, stop = self.start, self.stop
        t0 = start.get("time")
        t1 = stop.get("time") if stop else None
        return {
            "uid": self.uid,
            "scan_id": start.get("scan_id"),
            "plan_name": start.get("plan_name"),
            "timestamp": t0,
            "datetime": datetime.fromtimestamp(t0) if t0 is not None else None,
            "duration": (t1 - t0) if t1 is not None and t0 is not None else None,
            "exit_status": stop.get("exit_status") if stop else None,
            "stream_names": list(self),
        }

    def _stream_names(self, descriptors: list[dict] | None = None) -> list[str]:
        names: dict[str, None] = {}
        for d in self.store.descriptors(self.uid) if descriptors is None else descriptors:
            names[d.get("name", "primary")] = None
        return list(names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._stream_names())

    def __len__(self) -> int:
        return len(self._stream_names())

    def __getitem__(self, name: str) -> Stream:
        descriptors = self.store.descriptors(self.uid)
        names = self._stream_names(descriptors)
        if name not in names:
            raise NoStreamError(
                f"run {self.uid[:8]} has no stream {name!r}; its streams are {names}"
            )
        mine = [d for d in descriptors if d.get("name", "primary") == name]
        return Stream(
            self.store, self.uid, name, mine, self.catalog.filler, aliases=self.catalog.aliases
        )

    @property
    def parents(self) -> list[Run]:
        """The runs this run was derived from (its ``provenance.parents``), oldest first.

        They are looked up in the scope of the catalog the run was reached through (a search
        does not hide them); a parent outside it is left out.

        Example:
            >>> run.parents
            []
        """
        uids = ((self.start.get("provenance") or {}).get("parents")) or []
        whole = self.catalog.whole
        found = [whole._by_uid(uid, exact=True) for uid in uids]
        return [Run(whole, r) for r in found if r is not None]

    @property
    def derived(self) -> Catalog:
        """The runs derived from this one, as a catalog (newest first), within the scope of
        the catalog the run was reached through.

        Example:
            >>> len(other_run.derived)
            0
        """
        return self.catalog._within(derived_from(self))

    @property
    def v1(self) -> Header:
        """This run as databroker v1's ``Header`` (``run.v1.table()``); see ``docs/v1.md``.

        Example:
            >>> run.v1.stream_names
            ['primary']
        """
        # Made here, not in Header, so that v1 needs nothing from this module.
        return Header(self, Broker(self.catalog.whole))

    @property
    def primary(self) -> Stream:
        """The ``primary`` stream (``run["primary"]``)."""
        return self["primary"]

    @property
    def baseline(self) -> Stream:
        """The ``baseline`` stream (``run["baseline"]``)."""
        return self["baseline"]

    def documents(
        self,
        fill: bool | str = False,
        pages: bool = True,
        arrays: bool = False,
        notes: bool = False,
    ) -> Iterator[tuple[str, dict]]:
        """Replay the run's documents in the order they were stored.

        ``notes=True`` adds the run's notes you may see (annotations, tags, corrections,
        every revision) at the end as ``("note", revision)`` pairs, which a catalog's
        ``ingest`` stores as notes again (:mod:`runbroker.notestream`). The start document
        is always the one stored; a correction is one of the notes.

        Events come as ``event_page`` and datums as ``datum_page`` documents unless
        ``pages=False``. Page columns are lists, or numpy arrays in their stored dtype with
        ``arrays=True`` (faster, and exact for images kept in the events). Feeding the result
        to another catalog's ``ingest`` reproduces the run.
        ``fill=True`` puts the detector data from files into the events (as numpy arrays,
        marked ``filled``), reading each file's share of a page at once; databroker's
        ``"yes"`` / ``"no"`` are understood, ``"delayed"`` is refused (use ``to_dask()``).

        Example:
            >>> copy = runbroker.temp()
            >>> n = copy.ingest(run.documents())
            >>> copy[-1].primary.read().identical(run.primary.read())
            True
        """
        # Checked now, not at the first document: a generator would report it late.
        replay = self._replay(fill_flag(fill), pages, arrays)
        if notes:
            return itertools.chain(replay, replay_notes(self.store, self.uid, self.catalog.viewer))
        return replay

    def _replay(self, fill: bool, pages: bool, arrays: bool) -> Iterator[tuple[str, dict]]:
        descriptors: dict[str, dict] = {}
        for name, doc in self.store.documents(self.uid, arrays):
            if name == "descriptor":
                descriptors[doc["uid"]] = doc
            elif name == "event_page" and fill:
                doc = self._filled(doc, descriptors[doc["descriptor"]])
            if pages:
                yield name, doc
            elif name == "event_page":
                for ev in unpack_event_page(doc):
                    yield "event", ev
            elif name == "datum_page":
                for datum in unpack_datum_page(doc):
                    yield "datum", datum
            else:
                yield name, doc

    def export(self, format: str, directory: str | os.PathLike[str], **options: Any) -> list[Path]:
        """Write this run in ``format`` (``csv``, ``json``, ``jsonl``, ``msgpack``, ``spec``,
        ``hdf5``, ``nexus``, ``dx``, ``tiff``) into ``directory``; return the files written.

        Options: ``template`` (file names, see ``docs/export.md``), ``overwrite``, and those
        of the format. Detector data in files is read for the formats that need pixels.

        Example:
            >>> [p.name for p in run.export("jsonl", tmp_path, template="scan{scan_id}")]
            ['scan2.jsonl']
        """
        from .export import export_run

        return export_run(self, format, directory, **options)

    def _filled(self, page: dict, descriptor: dict) -> dict:
        # Datum fields hold their datum ids; STREAM: fields are not in the events at all (the
        # store finds their rows by seq_num).
        external = {
            k: (dk, kind)
            for k, dk in descriptor["data_keys"].items()
            if (kind := external_kind(dk)) == "stream" or (kind and k in page["data"])
        }
        if not external:
            return page
        data, filled = dict(page["data"]), dict(page.get("filled") or {})
        seq = np.asarray(page["seq_num"], dtype=np.int64)
        for key, (dk, kind) in external.items():
            refs = list(data[key]) if kind == "datum" else None
            events = FieldEvents(self.uid, (descriptor["uid"],), key, dk, refs, seq)
            data[key] = self.catalog.filler.fill(events)
            filled[key] = [True] * len(seq)
        return {**page, "data": data, "filled": filled}

    def __repr__(self) -> str:
        stop = self.stop
        status = stop.get("exit_status", "?") if stop else "running (no stop document)"
        end = _when(stop.get("time")) if stop else "…"
        t0 = self.start.get("time")
        lasted = f" ({duration(stop['time'] - t0)})" if stop and "time" in stop and t0 else ""
        streams = ", ".join(self) or "none"
        return (
            f"<Run uid={self.uid!r} scan_id={self.start.get('scan_id')} "
            f"plan={self.start.get('plan_name')!r} {status}\n"
            f"  {_when(self.start.get('time'))} -- {end}{lasted}\n  streams: {streams}>"
        )

    def _repr_html_(self) -> str:
        s = self.summary
        shown = {**s, "duration": duration(s["duration"]) if s["duration"] is not None else ""}
        rows = "".join(
            f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in shown.items()
            if k != "timestamp"
        )
        return f"<table>{rows}</table>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.uid == self.uid

    def __hash__(self) -> int:
        return hash(self.uid)
