"""Copy runs from a databroker MongoDB (the ``mongo_normalized`` layout) into a catalog.

databroker kept one MongoDB document per event-model document, in six collections:
``run_start``, ``run_stop``, ``event_descriptor``, ``event``, ``resource`` and ``datum``.
:func:`import_mongo` reads them run by run and stores each run with one
:meth:`runbroker.Catalog.ingest` call, so a run is copied whole or not at all and an
interrupted import, started again, copies only the runs still missing.

Example (``mongomock`` stands in for a MongoDB server here):
    >>> import mongomock
    >>> db = mongomock.MongoClient()["databroker"]
    >>> start = {"uid": "r1", "time": 1.0, "plan_name": "count", "scan_id": 1}
    >>> _ = db["run_start"].insert_one(start)
    >>> _ = db["run_stop"].insert_one(
    ...     {"uid": "s1", "run_start": "r1", "time": 2.0, "exit_status": "success"}
    ... )
    >>> cat = runbroker.temp()
    >>> print(import_mongo(db, cat, progress=False))
    copied 1 run (2 documents), skipped 0 already in the catalog, 0 failed
    >>> cat["r1"].start["plan_name"]
    'count'
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from event_model import pack_datum_page, pack_event_page

from ..catalog import Catalog
from ..errors import DocumentError
from ..mongoquery import from_mongo
from ..queries import Query
from ..store.urls import redact
from ..transfer import CopyReport, copy_runs

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["ImportReport", "import_mongo"]

# The collections of databroker's mongo_normalized layout that hold a run's documents.
COLLECTIONS = ("run_start", "run_stop", "event_descriptor", "event", "resource", "datum")

# Projection that leaves out MongoDB's own ``_id``: it is no part of the event-model document
# (and an ObjectId cannot be stored as JSON).
_NO_ID = {"_id": False}


#: What an import did (the report every copy gives).
ImportReport = CopyReport


def import_mongo(
    source: Database | str,
    catalog: Catalog | str | os.PathLike,
    *,
    query: Mapping[str, Any] | Query | None = None,
    progress: bool = True,
    batch_events: int = 10_000,
    strict: bool = False,
) -> ImportReport:
    """Copy the runs of a databroker MongoDB into ``catalog``, oldest first.

    ``source`` is a pymongo ``Database`` or a URL naming one, ``mongodb://host/dbname``.
    ``catalog`` is a :class:`runbroker.Catalog` or a path/URL given to :func:`runbroker.open`
    (that catalog is closed again at the end). ``query`` selects the runs copied; it means
    what it means in :meth:`Catalog.search <runbroker.Catalog.search>`: a dict query such as
    ``{"plan_name": "scan"}``, ``{"time": {"$gte": 1.6e9}}`` or
    ``{"stop.exit_status": "success"}``, or a query object (``Key("plan_name") == "scan"``).
    The parts of a dict query on start keys are handed to MongoDB's ``run_start`` collection;
    the rest (``stop.`` keys, a ``$or`` reaching the stop, a whole sub-document) and query
    objects are applied to each run's start and stop documents after they are read.

    A run whose uid is already in the catalog is skipped, so running the same import again
    after an interruption copies only what is missing. Each run is stored in one transaction.
    Events are read per descriptor in batches of ``batch_events``, sorted by ``seq_num``, and
    stored as event pages; datums are stored as datum pages. Lower ``batch_events`` if events
    hold large inline arrays (images), to bound the memory one batch takes.

    Documents written by old databroker versions may lack keys that event-model now requires.
    These are filled in, and nothing else is changed:

    - a resource without ``run_start`` gets the uid of the run being copied. A resource is part
      of a run either by its ``run_start`` or because the run's events point at its datums
      (older resources were found only that way, and are found that way here too);
    - a resource without ``path_semantics`` gets ``"posix"`` (event-model's default), without
      ``root`` gets ``""`` and without ``resource_kwargs`` gets ``{}``;
    - an event without ``filled`` (or with fewer keys in it than the other events of its
      batch) gets ``False`` for the missing keys: data in MongoDB was never filled.

    A run with a document the catalog still refuses is left out and listed in
    ``report.failed`` with the error message; the import goes on with the next run. With
    ``strict=True`` the first such error is raised instead (the run is not stored). Errors of
    MongoDB itself (connection lost) always stop the import.

    Example:
        >>> import mongomock
        >>> db = mongomock.MongoClient()["databroker"]
        >>> for uid, plan in [("a1", "count"), ("b2", "scan")]:
        ...     _ = db["run_start"].insert_one({"uid": uid, "time": 1.0, "plan_name": plan})
        >>> cat = runbroker.temp()
        >>> import_mongo(db, cat, query={"plan_name": "scan"}, progress=False).copied
        1
        >>> report = import_mongo(db, cat, progress=False)  # copies only what is missing
        >>> report.copied, report.skipped
        (1, 1)

        With a server, name the database in the URL:

        >>> import_mongo("mongodb://localhost:27017/metadatastore", "runs.db")  # doctest: +SKIP
    """
    if batch_events < 1:
        raise ValueError(f"batch_events must be at least 1, not {batch_events}")
    if not isinstance(query, Query):
        query = dict(query or {})
        from_mongo(query)  # refused here as cat.search refuses it, before MongoDB is asked
    db, client = _open_source(source)
    try:
        if isinstance(catalog, Catalog):
            return _import(db, catalog, query, progress, batch_events, strict)
        with _open_catalog(catalog) as cat:
            return _import(db, cat, query, progress, batch_events, strict)
    finally:
        if client is not None:
            client.close()


# -- opening ---------------------------------------------------------------------------------


def _open_catalog(target: str | os.PathLike) -> Catalog:
    from .. import open as open_catalog

    return open_catalog(target)


def _open_source(source: Any) -> tuple[Any, Any]:
    """``(database, client we opened or None)``."""
    if not isinstance(source, str):
        if not hasattr(source, "list_collection_names"):
            raise TypeError(
                "source must be a pymongo Database or a mongodb:// URL naming one, "
                f"not {type(source).__name__}"
            )
        _check_layout(source)
        return source, None
    if not source.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError(f"{redact(source)!r} is not a MongoDB URL (mongodb://host/dbname)")
    try:
        import pymongo
        from pymongo.errors import ConfigurationError
    except ImportError as err:
        raise ImportError(
            "importing from MongoDB needs pymongo: pip install 'runbroker[mongo]'"
        ) from err
    client = pymongo.MongoClient(source)
    try:
        db = client.get_default_database()
    except ConfigurationError:
        client.close()
        raise ValueError(
            f"{redact(source)!r} names no database: put it in the path, as in "
            "mongodb://host:27017/metadatastore"
        ) from None
    try:
        _check_layout(db)
    except BaseException:
        client.close()
        raise
    return db, client


def _check_layout(db: Any) -> None:
    # MongoDB answers queries on a database that does not exist with nothing at all, so a
    # misspelt name would "import" zero runs without a word. Say so instead.
    if "run_start" not in db.list_collection_names():
        raise ValueError(
            f"database {db.name!r} has no run_start collection: is it a databroker "
            f"(mongo_normalized) database? Expected collections: {', '.join(COLLECTIONS)}"
        )


# -- copying ---------------------------------------------------------------------------------


def _import(
    db: Any,
    cat: Catalog,
    query: dict[str, Any] | Query,
    progress: bool,
    batch_events: int,
    strict: bool,
) -> ImportReport:
    # The list of runs is read first, whole (two small fields per run), and sorted here:
    # a cursor held open for the hours a large import takes would time out on the server,
    # and sorting here needs no index on run_start.time.
    report = ImportReport()
    heads: list[tuple[float, str]] = []
    native, after = ({}, query) if isinstance(query, Query) else _split(query)
    found = (
        db["run_start"].find(native)
        if after is not None
        else db["run_start"].find(native, {"uid": True, "time": True})
    )
    for head in found:
        uid, time = head.get("uid"), head.get("time")
        if not isinstance(uid, str):
            report.failed.append((f"_id {head.get('_id')}", "run_start document without a uid"))
            continue
        if after is not None and not after.matches(_record(db, head)):
            continue
        heads.append((time if isinstance(time, (int, float)) else 0.0, uid))
    heads.sort()
    runs = ((uid, partial(_run_documents, db, uid, batch_events)) for _time, uid in heads)
    return copy_runs(
        runs, cat, total=len(heads), progress=progress, strict=strict, desc="import", report=report
    )


def _split(query: dict[str, Any]) -> tuple[dict[str, Any], Query | None]:
    """``(the part of a dict query MongoDB's run_start answers as runbroker does, the rest as
    a query to apply after reading, or None)``. The top-level fields are ANDed, so each goes
    to one side."""
    native = {key: value for key, value in query.items() if _native(key, value)}
    rest = {key: value for key, value in query.items() if key not in native}
    return native, (from_mongo(rest) if rest else None)


def _native(key: str, value: Any) -> bool:
    # run_start holds only start documents, and keys there have no "start." in front.
    # $and, $or, $nor and $not are applied after reading, whole: exact, if slower.
    if key.startswith(("$", "start.", "stop.")):
        return False
    return _plain(value)


def _plain(value: Any) -> bool:
    # A dict value is a whole sub-document, which MongoDB compares in field order and
    # runbroker does not: those are applied after reading, the one place they agree.
    if isinstance(value, Mapping):
        return bool(value) and all(
            isinstance(op, str) and op.startswith("$") and _plain(arg) for op, arg in value.items()
        )
    if isinstance(value, list | tuple):
        return not any(isinstance(item, Mapping) for item in value)
    return True


def _record(db: Any, start: dict) -> dict[str, Any]:
    # The stop is read for every run, as a query may reach it (stop.exit_status).
    stop = db["run_stop"].find_one({"run_start": start["uid"]}, _NO_ID)
    return {"start": _strip(start), "stop": stop}


def _run_documents(db: Any, uid: str, batch_events: int) -> Iterator[tuple[str, dict]] | None:
    start = db["run_start"].find_one({"uid": uid}, _NO_ID)
    if start is None:  # deleted since the list of runs was read
        return None
    return _RunReader(db, _strip(start), batch_events).documents()


def _strip(doc: dict) -> dict:
    doc.pop("_id", None)
    return doc


class _RunReader:
    """One run's documents from MongoDB, each parent before its children.

    Order: start, descriptors, the run's resources each followed by its datums, then each
    descriptor's events in pages (preceded by any resource first met through their datum ids),
    stop last.
    """

    def __init__(self, db: Any, start: dict, batch_events: int) -> None:
        self.db = db
        self.start = start
        self.uid: str = start["uid"]
        self.batch = batch_events
        self.resources: set[str] = set()  # uids of the resources already handed on

    def documents(self) -> Iterator[tuple[str, dict]]:
        yield "start", self.start
        descriptors = [
            _strip(d) for d in self.db["event_descriptor"].find({"run_start": self.uid}, _NO_ID)
        ]
        descriptors.sort(key=lambda d: (d.get("time", 0.0), d.get("uid", "")))
        for descriptor in descriptors:
            yield "descriptor", descriptor
        for resource in self.db["resource"].find({"run_start": self.uid}, _NO_ID):
            yield from self._resource(_strip(resource))
        for descriptor in descriptors:
            yield from self._events(descriptor)
        stop = self.db["run_stop"].find_one({"run_start": self.uid}, _NO_ID)
        if stop is not None:
            yield "stop", _strip(stop)

    # -- resources and datums

    def _resource(self, resource: dict) -> Iterator[tuple[str, dict]]:
        if resource.get("uid") in self.resources:
            return
        # Old databroker documents predate these keys; see import_mongo's docstring.
        if not resource.get("run_start"):
            resource["run_start"] = self.uid
        resource.setdefault("path_semantics", "posix")
        resource.setdefault("root", "")
        resource.setdefault("resource_kwargs", {})
        self.resources.add(resource.get("uid"))
        yield "resource", resource
        datums = self.db["datum"].find({"resource": resource.get("uid")}, _NO_ID)
        yield from self._datum_pages(datums)

    def _datum_pages(self, datums: Any) -> Iterator[tuple[str, dict]]:
        page: list[dict] = []
        for datum in datums:
            _strip(datum)
            # One page holds datums with the same datum_kwargs keys (columns of equal length).
            if page and (
                len(page) >= self.batch
                or datum.get("datum_kwargs", {}).keys() != page[0].get("datum_kwargs", {}).keys()
            ):
                yield "datum_page", _pack("datum", pack_datum_page, page)
                page = []
            page.append(datum)
        if page:
            yield "datum_page", _pack("datum", pack_datum_page, page)

    def _orphan_resources(self, events: list[dict], external: list[str]) -> Iterator[Any]:
        """Resources, not yet handed on, whose datums these events point at.

        Old resources carry no ``run_start``; the events' datum ids are the only link to them.
        """
        wanted: set[str] = set()
        for event in events:
            data = event.get("data", {})
            for key in external:
                value = data.get(key)
                if isinstance(value, str):
                    wanted.add(value)
        # ophyd names datums "<resource uid>/<n>": those of known resources need no query.
        unknown = [d for d in wanted if d.rpartition("/")[0] not in self.resources]
        if not unknown:
            return
        owners = {
            d["resource"]
            for d in self.db["datum"].find(
                {"datum_id": {"$in": unknown}}, {"_id": False, "resource": True}
            )
            if "resource" in d
        } - self.resources
        if owners:
            for resource in self.db["resource"].find({"uid": {"$in": sorted(owners)}}, _NO_ID):
                yield from self._resource(_strip(resource))

    # -- events

    def _events(self, descriptor: dict) -> Iterator[tuple[str, dict]]:
        external = [
            key
            for key, data_key in descriptor.get("data_keys", {}).items()
            if isinstance(data_key, Mapping) and data_key.get("external")
        ]
        cursor = (
            self.db["event"]
            .find({"descriptor": descriptor.get("uid")}, _NO_ID)
            .sort("seq_num", 1)
            .batch_size(min(self.batch, 100_000))
        )
        # Without it a real server refuses to sort more than 100 MB of events in memory
        # (32 MB before MongoDB 4.4) when there is no (descriptor, seq_num) index.
        cursor = cursor.allow_disk_use(True)
        batch: list[dict] = []
        for event in cursor:
            batch.append(_strip(event))
            if len(batch) >= self.batch:
                yield from self._event_page(batch, external)
                batch = []
        if batch:
            yield from self._event_page(batch, external)

    def _event_page(self, events: list[dict], external: list[str]) -> Iterator[tuple[str, dict]]:
        if external:
            yield from self._orphan_resources(events, external)
        _fill_filled(events)
        yield "event_page", _pack("event", pack_event_page, events)


def _fill_filled(events: list[dict]) -> None:
    """Give every event of a page the same ``filled`` keys (the page has one column per key)."""
    keys: set[str] = set()
    for event in events:
        keys.update(event.get("filled") or ())
    if not keys:
        return
    for event in events:
        filled = event.get("filled") or {}
        if filled.keys() != keys:
            # Data stored in MongoDB is a datum id, never the filled-in array.
            event["filled"] = {key: filled.get(key, False) for key in keys}


def _pack(kind: str, pack: Any, docs: list[dict]) -> dict:
    """``pack(*docs)``, with a missing key reported as the catalog reports refused documents."""
    try:
        return pack(*docs)
    except KeyError as err:
        key = str(err.args[0])
        id_key = "datum_id" if kind == "datum" else "uid"
        bad = next((d for d in docs if key not in d), docs[0])
        raise DocumentError(kind, bad.get(id_key), key, f"{key!r} is a required property") from None
