"""databroker's v1 API (``Broker`` / ``Header``) over a runbroker catalog, for old code.

``db = runbroker.v1(cat)`` (or ``cat.v1``) answers ``db[-1]``, ``db(plan_name="scan")``,
``header.table()``, ``db.get_table(headers)`` ... by calling Catalog, Run and Stream: nothing
here reads storage itself. What is covered and what is not: ``docs/v1.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pandas as pd
import xarray as xr
from event_model import unpack_datum_page, unpack_event_page

from .assets import external_kind
from .display import plural
from .queries import FullText, TimeRange

if TYPE_CHECKING:
    from .catalog import Catalog, Run
    from .stream import Stream

__all__ = ["ALL", "Broker", "Header", "Results"]

#: ``stream_name=ALL``: every stream of a run (databroker's sentinel; here simply None).
ALL = None

# v1 keywords of db(...) that are not metadata keys, and the runbroker way instead.
_UNSUPPORTED_SEARCH = {
    "data_key": "search descriptors with a query on a descriptor key instead",
}


class Broker:
    """databroker v1's ``Broker`` over a runbroker :class:`~runbroker.Catalog`.

    Example:
        >>> db = runbroker.v1(cat)
        >>> header = db[run.uid]
        >>> header.start["plan_name"], header.stop["exit_status"]
        ('scan', 'success')
        >>> header in db(plan_name="scan"), header in db(plan_name="count")
        (True, False)
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @property
    def v2(self) -> Catalog:
        """The runbroker catalog underneath (databroker called its newer API ``v2``)."""
        return self.catalog

    @property
    def v1(self) -> Broker:
        """This broker (so that ``db.v1`` works on both APIs)."""
        return self

    def insert(self, name: str, doc: dict) -> None:
        """Store one document: ``RE.subscribe(db.insert)``.

        Example:
            >>> token = RE.subscribe(runbroker.v1(runbroker.temp()).insert)
        """
        self.catalog.insert(name, doc)

    def __getitem__(self, key: int | str | slice) -> Header | list[Header]:
        """``db[-1]`` most recent, ``db[554]`` scan_id, ``db["c6b4"]`` uid or prefix,
        ``db[-5:]`` a list of the five most recent.

        Example:
            >>> db = runbroker.v1(cat)
            >>> db[run.uid[:8]].start["plan_name"], len(db[-2:])
            ('scan', 2)
        """
        found = self.catalog[key]
        if isinstance(found, list):
            return [Header(run, self) for run in found]
        return Header(found, self)

    def __call__(self, text_search: str | None = None, **kwargs: Any) -> Results:
        """Headers whose start document matches: ``db(plan_name="scan", since="2024-03-01")``.

        The keywords are a dict query, as in ``cat.search({...})`` (see ``docs/queries.md``):
        ``db(detectors="det")`` finds the runs whose list of detectors holds ``"det"``, and
        ``db(scan_id={"$gt": 10})`` works too. ``since``/``start_time`` and
        ``until``/``stop_time`` bound the start time: a date (``timezone=`` names the zone of
        dates without one) or, as in v1, a number of epoch seconds. ``text_search`` is a
        full-text search. Newest first.

        Example:
            >>> db = runbroker.v1(cat)
            >>> other_run.v1 in db(since="2000-01-01"), other_run.v1 in db(until="2000-01-01")
            (True, False)
            >>> other_run.v1 in db("Ni"), len(db(sample="Ni", plan_name="scan"))
            (True, 0)
            >>> len(db(detectors="det", plan_name="scan"))
            1
        """
        for key, instead in _UNSUPPORTED_SEARCH.items():
            if key in kwargs:
                raise ValueError(f"db({key}=...) is not supported by runbroker: {instead}")
        since = _time_keyword(kwargs, "since", "start_time")
        until = _time_keyword(kwargs, "until", "stop_time")
        timezone = kwargs.pop("timezone", None)
        found = self.catalog
        if since is not None or until is not None:
            found = found.search(TimeRange(since=since, until=until, timezone=timezone))
        if kwargs:
            found = found.search(kwargs)
        if text_search:
            found = found.search(FullText(text_search))
        return Results(found, self)

    @staticmethod
    def get_fields(header: Header, name: str | None = ALL) -> set[str]:
        """The field names of a header's stream ``name`` (all streams if None).

        Example:
            >>> sorted(runbroker.v1(cat).get_fields(run.v1, "primary"))
            ['det', 'motor', 'motor_setpoint']
        """
        return header.fields(name)

    def get_documents(
        self,
        headers: Header | Iterable[Header],
        stream_name: str | None = ALL,
        fields: Sequence[str] | None = None,
        fill: bool = False,
    ) -> Iterator[tuple[str, dict]]:
        """``(name, doc)`` of each run in turn, as single documents (``event``, ``datum``).

        ``stream_name`` keeps only that stream's descriptors and events; ``fields`` keeps
        only those data keys in the events; ``fill=True`` reads detector data from files.

        Example:
            >>> names = [n for n, _ in runbroker.v1(cat).get_documents(run.v1)]
            >>> names[0], names.count("event"), names[-1]
            ('start', 5, 'stop')
        """
        for header in _headers(headers):
            unknown = sorted(set(fields or ()) - header.fields(stream_name))
            if unknown:
                where = "its streams" if stream_name is ALL else f"stream {stream_name!r}"
                raise KeyError(
                    f"run {header.uid[:8]} has no field {unknown[0]!r} in {where}; its fields "
                    f"are {sorted(header.fields(stream_name))}"
                )
            wanted: set[str] = set()
            for name, doc in header.run.documents(fill=fill):
                if name == "descriptor":
                    if stream_name is not ALL and doc.get("name", "primary") != stream_name:
                        continue
                    wanted.add(doc["uid"])
                    yield name, doc
                elif name == "event_page":
                    if doc["descriptor"] in wanted:
                        for event in unpack_event_page(doc):
                            yield "event", _only(event, fields)
                elif name == "datum_page":
                    for datum in unpack_datum_page(doc):
                        yield "datum", datum
                else:
                    yield name, doc

    def get_events(
        self,
        headers: Header | Iterable[Header],
        stream_name: str = "primary",
        fields: Sequence[str] | None = None,
        fill: bool = False,
    ) -> Iterator[dict]:
        """The event documents of one stream of each run, in order.

        Example:
            >>> [ev["seq_num"] for ev in runbroker.v1(cat).get_events(run.v1)]
            [1, 2, 3, 4, 5]
        """
        for name, doc in self.get_documents(headers, stream_name, fields, fill):
            if name == "event":
                yield doc

    def restream(
        self, headers: Header | Iterable[Header], fields: Sequence[str] | None = None
    ) -> Iterator[tuple[str, dict]]:
        """All documents of the runs, to feed a callback as the RunEngine would.

        Example:
            >>> next(runbroker.v1(cat).restream(run.v1))[0]
            'start'
        """
        return self.get_documents(headers, ALL, fields)

    def process(
        self,
        headers: Header | Iterable[Header],
        func: Callable[[str, dict], Any],
        fields: Sequence[str] | None = None,
    ) -> None:
        """Pass every document of the runs to ``func(name, doc)``.

        Example:
            >>> seen = []
            >>> runbroker.v1(cat).process(run.v1, lambda name, doc: seen.append(name))
            >>> seen.count("event")
            5
        """
        for name, doc in self.restream(headers, fields):
            func(name, doc)

    def get_table(
        self,
        headers: Header | Iterable[Header],
        stream_name: str = "primary",
        fields: Sequence[str] | None = None,
        fill: bool = False,
        convert_times: bool = True,
        timezone: str | None = None,
        localize_times: bool = True,
    ) -> pd.DataFrame:
        """One stream of one or more runs as a ``DataFrame`` indexed by ``seq_num``.

        The ``time`` column holds datetimes in ``timezone`` (default: this machine's zone)
        without a zone attached, as databroker v1 gave them; ``localize_times=False`` gives
        UTC datetimes with their zone, ``convert_times=False`` seconds since the epoch. Fields
        kept in detector files are left out unless ``fill=True``. Several runs are stacked,
        each with its own ``seq_num`` from 1.

        Example:
            >>> table = runbroker.v1(cat).get_table(run.v1, fields=["det"])
            >>> list(table.columns), table.index.name, table.index.tolist()
            (['time', 'det'], 'seq_num', [1, 2, 3, 4, 5])
        """
        frames = []
        for header in _headers(headers):
            stream = header.run[stream_name]
            names = _table_fields(stream, fields, fill)
            frame = stream.to_pandas(names, index="seq_num")
            if not convert_times:
                frame["time"] = stream.read([])["time"].values
            elif localize_times:
                local = frame["time"].dt.tz_convert(timezone or _local_zone())
                frame["time"] = local.dt.tz_localize(None)
            frames.append(frame)
        if not frames:
            return pd.DataFrame(index=pd.Index([], name="seq_num"))
        return pd.concat(frames) if len(frames) > 1 else frames[0]

    def get_images(
        self, headers: Header | Iterable[Header], name: str, stream_name: str = "primary"
    ) -> Any:
        """The images of field ``name``, lazily: a dask array, one image per event.

        Index it (``images[3]``) and use ``numpy.asarray`` to read pixels; only the files
        of the images read are opened. Several runs are joined along the first axis.

        Example:
            >>> images = runbroker.v1(cat).get_images(run.v1, "det")
            >>> images.shape, float(images[2].compute())
            ((5,), 1.0)
        """
        import dask.array as da

        parts = [header.run[stream_name].to_dask([name])[name].data for header in _headers(headers)]
        if not parts:
            raise ValueError("get_images() was given no headers")
        return parts[0] if len(parts) == 1 else da.concatenate(parts)

    def __repr__(self) -> str:
        return f"<v1 Broker over {self.catalog!r}>"


class Results:
    """The headers a ``db(...)`` search found, newest first; iterate, or ``len()``.

    Example:
        >>> hits = runbroker.v1(cat)(plan_name="scan")
        >>> run.v1 in hits, all(h.start["plan_name"] == "scan" for h in hits)
        (True, True)
    """

    def __init__(self, catalog: Catalog, db: Broker) -> None:
        self.catalog = catalog
        self._db = db

    def __iter__(self) -> Iterator[Header]:
        runs = iter(self.catalog.values())
        while True:
            with _warnings_to_caller():
                run = next(runs, None)
            if run is None:
                return
            yield Header(run, self._db)

    def __len__(self) -> int:
        with _warnings_to_caller():
            return len(self.catalog)

    def __repr__(self) -> str:
        return f"<v1 Results: {plural(len(self), 'header')}>"


class Header:
    """databroker v1's ``Header``: one run's documents and tables.

    Example:
        >>> h = run.v1
        >>> h.stream_names, h.start["plan_name"], len(h.descriptors)
        (['primary'], 'scan', 1)
        >>> h.table()["det"].round(2).tolist()
        [0.61, 0.88, 1.0, 0.88, 0.61]
    """

    def __init__(self, run: Run, db: Broker | None = None) -> None:
        self.run = run
        # Without a Broker, the run's own (``run.v1``) gives one over the run's catalog.
        self.db = db if db is not None else run.v1.db

    @property
    def v2(self) -> Run:
        """The runbroker run underneath."""
        return self.run

    @property
    def uid(self) -> str:
        """The run's uid."""
        return self.run.uid

    @property
    def start(self) -> dict:
        """The start document."""
        return self.run.start

    @property
    def stop(self) -> dict:
        """The stop document; ``{}`` while the run goes on (``Run.stop`` says None)."""
        return self.run.stop or {}

    @property
    def descriptors(self) -> list[dict]:
        """Every descriptor of the run, all streams, in the order they were stored."""
        return list(self.run.store.descriptors(self.uid))

    @property
    def stream_names(self) -> list[str]:
        """Names of the run's streams."""
        return list(self.run)

    def __getitem__(self, key: str) -> Any:
        """``h["start"]``, ``h["stop"]``, ``h["descriptors"]``: the dict habit of old code."""
        if key not in ("start", "stop", "descriptors"):
            raise KeyError(
                f"a header has 'start', 'stop' and 'descriptors', not {key!r}; "
                f"metadata is in h['start'][{key!r}]"
            )
        return getattr(self, key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Header) and other.uid == self.uid

    def __hash__(self) -> int:
        return hash(self.uid)

    def fields(self, stream_name: str | None = ALL) -> set[str]:
        """Names of the data fields, of one stream or of all.

        Example:
            >>> sorted(run.v1.fields())
            ['det', 'motor', 'motor_setpoint']
        """
        return {
            key
            for d in self.descriptors
            if stream_name is ALL or d.get("name", "primary") == stream_name
            for key in d["data_keys"]
        }

    def devices(self, stream_name: str | None = ALL) -> set[str]:
        """Names of the devices read, of one stream or of all.

        Example:
            >>> sorted(run.v1.devices())
            ['det', 'motor']
        """
        return {
            obj
            for d in self.descriptors
            if stream_name is ALL or d.get("name", "primary") == stream_name
            for obj in d.get("object_keys") or {}
        }

    def config_data(self, device_name: str) -> dict[str, list[dict]]:
        """A device's configuration: stream name -> one dict per descriptor that has it.

        Example:
            >>> other_run.v1.config_data("det")["primary"][0]["det_sigma"]
            1
        """
        out: dict[str, list[dict]] = {}
        for d in self.descriptors:
            config = (d.get("configuration") or {}).get(device_name)
            if config:
                out.setdefault(d.get("name", "primary"), []).append(config.get("data") or {})
        return out

    def table(
        self,
        stream_name: str = "primary",
        fields: Sequence[str] | None = None,
        fill: bool = False,
        timezone: str | None = None,
        convert_times: bool = True,
        localize_times: bool = True,
    ) -> pd.DataFrame:
        """One stream as a ``DataFrame`` indexed by ``seq_num``; see ``Broker.get_table``.

        Example:
            >>> run.v1.table("primary", ["motor"])["motor"].tolist()
            [-1.0, -0.5, 0.0, 0.5, 1.0]
        """
        return self.db.get_table(
            self,
            stream_name=stream_name,
            fields=fields,
            fill=fill,
            convert_times=convert_times,
            timezone=timezone,
            localize_times=localize_times,
        )

    def events(
        self, stream_name: str = "primary", fields: Sequence[str] | None = None, fill: bool = False
    ) -> Iterator[dict]:
        """The event documents of one stream.

        Example:
            >>> [ev["data"]["motor"] for ev in run.v1.events(fields=["motor"])]
            [-1.0, -0.5, 0.0, 0.5, 1.0]
        """
        return self.db.get_events(self, stream_name, fields, fill)

    def documents(
        self, stream_name: str | None = ALL, fields: Sequence[str] | None = None, fill: bool = False
    ) -> Iterator[tuple[str, dict]]:
        """``(name, doc)`` of the run, as single documents; see ``Broker.get_documents``.

        Example:
            >>> [name for name, _ in other_run.v1.documents("baseline")].count("event")
            2
        """
        return self.db.get_documents(self, stream_name, fields, fill)

    def data(self, field: str, stream_name: str = "primary", fill: bool = True) -> Iterator[Any]:
        """Each event's value of one field (images read from their files), in order.

        Example:
            >>> list(run.v1.data("motor"))
            [-1.0, -0.5, 0.0, 0.5, 1.0]
        """
        values = self.run[stream_name].read([field], fill=fill)[field].values
        for value in values:
            yield value.item() if getattr(value, "ndim", None) == 0 else value

    def xarray(self, stream_name: str = "primary") -> xr.Dataset:
        """One stream as an ``xarray.Dataset`` (``run[stream_name].read()``)."""
        return self.run[stream_name].read()

    def xarray_dask(self, stream_name: str = "primary") -> xr.Dataset:
        """One stream as a lazy ``xarray.Dataset`` (``run[stream_name].to_dask()``)."""
        return self.run[stream_name].to_dask()

    def __repr__(self) -> str:
        return f"<v1 Header of {self.run!r}>"

    def _repr_html_(self) -> str:
        return self.run._repr_html_()


@contextmanager
def _warnings_to_caller() -> Iterator[None]:
    """Give the warnings raised inside (a search that found nothing, and why) to the code that
    called a ``Results`` method: they are about its ``db(...)``, not about this module."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        # 4: this generator, contextlib's __exit__, the Results method, its caller.
        warnings.warn(warning.message, warning.category, stacklevel=4)


def _time_keyword(kwargs: dict[str, Any], name: str, alias: str) -> Any:
    """Pop ``name`` and its v1 alias from ``kwargs``: the time they give, or None."""
    given = {k: kwargs.pop(k) for k in (name, alias) if k in kwargs}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) == 2 and given[name] != given[alias]:
        raise ValueError(
            f"db({name}={given[name]!r}, {alias}={given[alias]!r}): {alias} is another name "
            f"for {name}; give one of them"
        )
    value = next(iter(given.values()), None)
    # v1 read a number as epoch seconds; runbroker asks to mark them, as a bare 2021 could
    # also be a year.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"@{value}"
    return value


def _headers(headers: Header | Iterable[Header]) -> list[Header]:
    """One header or several, as a list (v1 took both everywhere)."""
    if isinstance(headers, Header):
        return [headers]
    listed = list(headers)
    for h in listed:
        if not isinstance(h, Header):
            raise TypeError(
                f"expected v1 headers (db[...] gives them; run.v1 turns a Run into one), "
                f"got {type(h).__name__}"
            )
    return listed


def _only(event: dict, fields: Sequence[str] | None) -> dict:
    """The event with only ``fields`` in its data, timestamps and filled markers."""
    if fields is None:
        return event
    keep = set(fields)
    out = dict(event)
    for part in ("data", "timestamps", "filled"):
        if part in out:
            out[part] = {k: v for k, v in out[part].items() if k in keep}
    return out


def _table_fields(stream: Stream, fields: Sequence[str] | None, fill: bool) -> list[str]:
    """The fields a table reads: detector fields in files only when filled (as in v1)."""
    keys = stream.data_keys
    if fields is None:
        return [f for f, dk in keys.items() if fill or not external_kind(dk)]
    in_files = [f for f in fields if f in keys and external_kind(keys[f])]
    if in_files and not fill:
        raise ValueError(
            f"fields {in_files} of stream {stream.name!r} are detector data kept in files; "
            "ask for them with fill=True"
        )
    return list(fields)


def _local_zone() -> Any:
    """This machine's timezone, daylight saving time included."""
    from dateutil.tz import tzlocal

    return tzlocal()
