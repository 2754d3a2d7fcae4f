"""Standard names: one catalog's table of beamline field names -> NeXus dictionary names.

Each beamline names its signals its own way (``I0``, ``th``); analysis code wants the names of
the NeXus dictionary (``monitor``, ``theta``). A catalog may carry an alias table (the
``aliases:`` option of a named catalog, or ``runbroker.open(uri, aliases=...)``); then

- ``stream.read(names="standard")`` gives each field under its standard name (a field the
  table does not name keeps its own);
- queries naming a field (``Field``, ``DataKey``) accept standard names: the catalog's search
  replaces a standard name by the beamline names the table maps to it
  (:func:`resolve_fields`);
- the NeXus exporter writes fields under their standard names (``names="standard"``).

Several beamline names may map to one standard name (``I0`` at one beamline, ``i0_mon`` at
another): a search finds either, but a stream holding both cannot be read with standard names
(which of them would be ``monitor``?), and says so.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from .errors import AliasError
from .queries import And, Not, Or, Query

__all__ = ["NAMINGS", "Aliases", "NamesAField", "check_naming", "resolve_fields"]

#: The values ``names=`` takes: the fields' own names, or the alias table's standard names.
NAMINGS = ("beamline", "standard")
# A NeXus name (NXDL's validItemName): letters, digits and underscores, dots inside.
_NEXUS_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.]*[A-Za-z0-9_])?")


@runtime_checkable
class NamesAField(Protocol):
    """A query about one field of a stream (``DataKey``, ``Field``): what
    :func:`resolve_fields` renames.

    Example:
        >>> isinstance(DataKey("I0"), NamesAField), isinstance(Key("a") == 1, NamesAField)
        (True, False)
    """

    stream: Any
    field: str


class Aliases(Mapping[str, str]):
    """A checked alias table: beamline name -> standard (NeXus) name.

    Example:
        >>> table = Aliases({"I0": "monitor", "i0_mon": "monitor", "th": "theta"})
        >>> table["th"], table.beamline_names("monitor"), table.beamline_names("energy")
        ('theta', ['I0', 'i0_mon', 'monitor'], ['energy'])
    """

    def __init__(self, table: Mapping[str, str] | None = None, where: str = "aliases") -> None:
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            raise AliasError(
                f"{where}: an alias table maps beamline names to standard names, e.g. "
                f"{{I0: monitor, th: theta}}; got {type(table).__name__} {table!r}"
            )
        for beamline, standard in table.items():
            if not isinstance(beamline, str) or not beamline:
                raise AliasError(f"{where}: beamline name {beamline!r} is not a non-empty str")
            if not isinstance(standard, str) or not _NEXUS_NAME.fullmatch(standard):
                raise AliasError(
                    f"{where}: {beamline!r} maps to {standard!r}, which is not a NeXus name "
                    "(letters, digits and underscores, dots inside), e.g. 'monitor', 'theta'"
                )
        self._table = dict(table)
        self._back: dict[str, list[str]] = {}
        for beamline, standard in self._table.items():
            self._back.setdefault(standard, []).append(beamline)

    def __getitem__(self, name: str) -> str:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Aliases({self._table!r})"

    def standard(self, name: str) -> str:
        """The standard name of field ``name`` (itself when the table does not name it)."""
        return self._table.get(name, name)

    def beamline_names(self, name: str) -> list[str]:
        """The field names a query naming ``name`` means: for a standard name of the table,
        the names the table maps to it and ``name`` itself unless the table maps it to another
        name; any other name (a beamline name, a name the table does not know) is itself.

        Example:
            >>> Aliases({"th": "theta"}).beamline_names("theta"), Aliases({}).beamline_names("x")
            (['th', 'theta'], ['x'])
        """
        names = list(self._back.get(name, []))
        if not names:
            return [name]
        if name not in self._table and name not in names:
            names.append(name)
        return names

    def renaming(self, fields: Iterable[str], where: str) -> dict[str, str]:
        """Field -> standard name for these fields (of one stream, named in errors by
        ``where``); two fields that would get one name are an error naming both.

        Example:
            >>> Aliases({"I0": "monitor"}).renaming(["I0", "th"], "stream 'primary'")
            {'I0': 'monitor', 'th': 'th'}
            >>> Aliases({"I0": "monitor", "i0": "monitor"}).renaming(["I0", "i0"], "here")
            Traceback (most recent call last):
            ...
            runbroker.errors.AliasError: here: fields 'I0' and 'i0' both have the standard ...
        """
        out: dict[str, str] = {}
        taken: dict[str, str] = {}
        for field in fields:
            name = self.standard(field)
            if name in taken:
                raise AliasError(
                    f"{where}: fields {taken[name]!r} and {field!r} both have the standard name "
                    f"{name!r}; read them with names='beamline', or fix the alias table"
                )
            taken[name], out[field] = field, name
        return out

    @classmethod
    def of(cls, value: Aliases | Mapping[str, str] | None) -> Aliases:
        """``value`` as a checked table (an empty one for None).

        Example:
            >>> len(Aliases.of(None)), Aliases.of({"th": "theta"})["th"]
            (0, 'theta')
        """
        return value if isinstance(value, Aliases) else cls(value)


def check_naming(names: Any) -> str:
    """``names`` if it is one of :data:`NAMINGS`, else a clear error.

    Example:
        >>> check_naming("standard")
        'standard'
    """
    if names not in NAMINGS:
        raise ValueError(
            f"names={names!r}: use 'beamline' (the fields' own names, the default) or "
            "'standard' (the catalog's alias table's names)"
        )
    return names


def resolve_fields(query: Query | None, aliases: Mapping[str, str]) -> Query | None:
    """``query`` with every standard field name replaced by the beamline names it stands for.

    Every node having ``stream`` and ``field`` attributes (``DataKey``, ``Field``) is rebuilt
    with ``dataclasses.replace``; a standard name several field names stand for becomes an
    ``Or`` of them: the beamline names the table maps to it, and the name itself unless the
    table maps it elsewhere (a field of that very name keeps it when read with standard
    names). And, Or and Not are walked; other queries are kept as they are.

    Example:
        >>> q = DataKey("theta", dtype="number") & (Key("plan_name") == "scan")
        >>> resolve_fields(q, {"th": "theta", "theta": "two_theta"})
        And(DataKey('th', dtype='number'), Key('plan_name') == 'scan')
        >>> resolve_fields(DataKey("monitor"), {"I0": "monitor"})
        Or(DataKey('I0'), DataKey('monitor'))
    """
    if not aliases or query is None:
        return query
    table = Aliases.of(aliases)
    return _resolve(query, table)


def _resolve(query: Query, table: Aliases) -> Query:
    if isinstance(query, And | Or):
        return type(query)(*(_resolve(sub, table) for sub in query.queries))
    if isinstance(query, Not):
        return Not(_resolve(query.query, table))
    if not isinstance(query, NamesAField) or not dataclasses.is_dataclass(query):
        return query
    names = table.beamline_names(query.field)
    if names == [query.field]:
        return query
    found = [dataclasses.replace(query, field=name) for name in names]  # type: ignore[type-var]
    return found[0] if len(found) == 1 else Or(*found)
