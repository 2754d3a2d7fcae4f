"""Catalogs found by name: ``runbroker.catalog["45id"]``, ``runbroker catalogs list``.

Each named catalog is a small YAML file::

    # ~/.config/runbroker/catalogs/45id.yml
    45id:
      uri: /data/45id/runs.db          # SQLite file, folder, postgresql://..., http://...
      root_map: {/nsls2/data: /mnt/45id}
      indexes: [sample, proposal_id]
      aliases: {I0: monitor, th: theta}  # beamline name -> standard (NeXus) name
    beamline-server:
      uri: https://runs.example.org/45id   # a runbroker server
      api_key: ...                     # or leave it out: $RUNBROKER_API_KEY
      timeout: 60                      # seconds
      cache: false                     # a folder, or false: keep no downloads
    everywhere:
      sources: [45id, beamline-server]  # other named catalogs, searched as one (merge)

A file may define several catalogs. Files are looked for, first match of a name winning, in:

1. the files and folders listed in ``$RUNBROKER_CATALOGS`` (separated by ``os.pathsep``);
2. the user's folder: ``platformdirs.user_config_dir("runbroker")/catalogs/`` (where
   ``runbroker catalogs add`` writes);
3. the environment's folder: ``<sys.prefix>/etc/runbroker/catalogs/``;
4. the machine's folders: ``platformdirs.site_config_dir("runbroker", multipath=True)``
   ``/catalogs/`` (``$XDG_CONFIG_DIRS``, by default ``/etc/xdg/runbroker/catalogs/``).

A relative ``uri`` or ``root_map`` target is taken from the folder of the file that names it,
so a catalog configuration can travel with its data. Files are read on every look-up, so a
catalog added by another process is there at once. A broken file is reported (file and line)
and skipped; the other catalogs still load.

An entry with ``sources:`` (instead of ``uri``) names other catalogs of the configuration and
opens as :func:`runbroker.merge` of them, in that order (the first wins for a run several
hold); a name that leads back to itself is refused when it is opened.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from .errors import AliasError, CatalogConfigError
from .standard_names import Aliases
from .store.urls import redact

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = [
    "ENV",
    "CatalogConfigError",
    "ConfigWarning",
    "NamedCatalog",
    "NamedCatalogs",
    "resolve",
    "search_path",
]

ENV = "RUNBROKER_CATALOGS"
_APP = "runbroker"
#: Options a catalog entry may hold (passed to ``runbroker.open``).
OPTIONS = frozenset(
    {
        "root_map",
        "handlers",
        "readers",
        "indexes",
        "readonly",
        "durability",
        "flush_interval",
        "pool_size",
        "max_overflow",
        "aliases",
        *("api_key", "timeout", "cache"),
    }
)
#: Options only a runbroker server (an ``http://`` or ``https://`` uri) takes.
SERVER_OPTIONS = frozenset({"api_key", "timeout", "cache"})


class ConfigWarning(UserWarning):
    """A configuration file was skipped; the other catalogs still load."""


@dataclass(frozen=True)
class NamedCatalog:
    """One entry: its name, where it is, how to open it, and which file said so."""

    name: str
    uri: str
    options: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    #: Names of the catalogs this one merges (``sources:``); ``uri`` then only describes it.
    sources: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # A password in the URL stays out of reprs (and so out of logs and tracebacks).
        return (
            f"NamedCatalog(name={self.name!r}, uri={redact(self.uri)!r}, "
            f"options={self.options!r}, source={self.source!r})"
        )

    def open(self) -> Catalog:
        """Open this catalog with its options (a merge of its ``sources``, if it has some)."""
        if self.sources:
            from .opening import open_sources

            return open_sources(self.name, NamedCatalogs().entries())
        from .opening import open as open_catalog

        return open_catalog(self.uri, **self.options)


def resolve(text: str) -> tuple[str, dict[str, Any]]:
    """The URI and options ``text`` means: itself when it is a URL or a file or folder that
    exists, else the configured catalog of that name (with its options), else itself (so
    that opening it says what is missing there).

    Example:
        >>> resolve("postgresql://host/runs")
        ('postgresql://host/runs', {})
    """
    if "://" not in text and not Path(text).expanduser().exists():
        entry = NamedCatalogs().entries().get(text)
        if entry is not None and entry.sources:
            raise CatalogConfigError(
                f"catalog {text!r} merges {', '.join(entry.sources)} ({entry.source}): it opens "
                f"in Python, runbroker.catalog[{text!r}], not as one URI; name one of its sources"
            )
        if entry is not None:
            return entry.uri, dict(entry.options)
    return text, {}


def search_path() -> list[Path]:
    """The folders and files searched for catalogs, the first winning.

    Example:
        >>> os.environ["RUNBROKER_CATALOGS"] = "/tmp/a.yml"
        >>> search_path()[0]
        PosixPath('/tmp/a.yml')
        >>> del os.environ["RUNBROKER_CATALOGS"]
    """
    out = [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    out.append(user_folder())
    out.append(Path(sys.prefix) / "etc" / _APP / "catalogs")
    out.extend(
        Path(p) / "catalogs"
        for p in platformdirs.site_config_dir(_APP, multipath=True).split(os.pathsep)
    )
    return out


def user_folder() -> Path:
    """Where ``runbroker catalogs add`` writes: one YAML file per catalog."""
    return Path(platformdirs.user_config_dir(_APP)) / "catalogs"


def _files(place: Path) -> list[Path]:
    if place.is_dir():
        return sorted(p for p in place.iterdir() if p.suffix in (".yml", ".yaml"))
    return [place] if place.is_file() else []


def read_file(path: Path) -> list[NamedCatalog]:
    """The catalogs ``path`` defines; ``CatalogConfigError`` names the file and line."""
    import yaml  # here, not at import: most sessions never look a catalog up by name

    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogConfigError(f"{where}: not valid YAML: {problem}") from None
    if body is None:
        return []
    if not isinstance(body, Mapping):
        raise CatalogConfigError(f"{path}: expected catalog names mapping to entries")
    out = []
    for name, entry in body.items():
        out.append(_entry(path, str(name), entry, _line_of(text, str(name))))
    return out


def _line_of(text: str, name: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if line.split(":", 1)[0].strip().strip("'\"") == name and not line[:1].isspace():
            return i
    return None


def _entry(path: Path, name: str, entry: Any, line: int | None) -> NamedCatalog:
    where = f"{path}, line {line}" if line else str(path)
    if isinstance(entry, str):
        entry = {"uri": entry}
    if isinstance(entry, Mapping) and "sources" in entry:
        return _merging(where, path, name, entry)
    if not isinstance(entry, Mapping) or "uri" not in entry:
        raise CatalogConfigError(f"{where}: catalog {name!r} needs a 'uri'")
    unknown = sorted(set(entry) - OPTIONS - {"uri"})
    if unknown:
        raise CatalogConfigError(
            f"{where}: catalog {name!r} has unknown option(s) {', '.join(unknown)}; "
            f"known: uri (or sources), {', '.join(sorted(OPTIONS))}"
        )
    options = {k: v for k, v in entry.items() if k != "uri"}
    misplaced = sorted(set(options) & SERVER_OPTIONS)
    if misplaced and not str(entry["uri"]).lower().startswith(("http://", "https://")):
        raise CatalogConfigError(
            f"{where}: catalog {name!r} has option(s) {', '.join(misplaced)}, which only a "
            "runbroker server (an http:// or https:// uri) takes"
        )
    if "aliases" in options:
        try:
            Aliases(options["aliases"], where=f"catalog {name!r}: aliases")
        except AliasError as exc:
            raise CatalogConfigError(f"{where}: {exc}") from None
    if "root_map" in options:
        options["root_map"] = {
            old: _relative_to(path, str(new)) for old, new in dict(options["root_map"]).items()
        }
    return NamedCatalog(name, _relative_to(path, str(entry["uri"])), options, path)


def _merging(where: str, path: Path, name: str, entry: Mapping[str, Any]) -> NamedCatalog:
    """An entry with ``sources:``: the names of the catalogs it merges, and nothing else."""
    others = sorted(set(entry) - {"sources"})
    if others:
        raise CatalogConfigError(
            f"{where}: catalog {name!r} has sources, so it takes no {', '.join(others)}: "
            "give those to the catalogs it merges"
        )
    sources = entry["sources"]
    if (
        not isinstance(sources, list)
        or not sources
        or not all(isinstance(s, str) and s for s in sources)
    ):
        raise CatalogConfigError(
            f"{where}: catalog {name!r}: sources must be a list of catalog names, "
            f"e.g. sources: [45id, archive]; got {sources!r}"
        )
    if len(set(sources)) != len(sources):
        raise CatalogConfigError(f"{where}: catalog {name!r} names a source twice: {sources}")
    return NamedCatalog(name, f"merge({', '.join(sources)})", {}, path, tuple(sources))


def _relative_to(config: Path, target: str) -> str:
    if "://" in target or Path(target).expanduser().is_absolute():
        return str(Path(target).expanduser()) if "://" not in target else target
    return str((config.parent / target).resolve())


class NamedCatalogs(Mapping[str, "Catalog"]):
    """The catalogs the configuration names: ``runbroker.catalog``.

    Example:
        >>> "no-such-catalog" in NamedCatalogs()
        False
    """

    def entries(self) -> dict[str, NamedCatalog]:
        """Every name with the entry that wins for it (broken files are warned about)."""
        found: dict[str, NamedCatalog] = {}
        for place in search_path():
            for path in _files(place):
                try:
                    entries = read_file(path)
                except CatalogConfigError as exc:
                    warnings.warn(f"skipped: {exc}", ConfigWarning, stacklevel=3)
                    continue
                for entry in entries:
                    found.setdefault(entry.name, entry)
        return found

    def __getitem__(self, name: str) -> Catalog:
        entry = self.entries().get(name)
        if entry is None:
            known = ", ".join(sorted(self.entries())) or "none are configured"
            raise KeyError(
                f"no catalog named {name!r} ({known}); add one with "
                f"`runbroker catalogs add {name} URI`"
            )
        return entry.open()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries()))

    def __len__(self) -> int:
        return len(self.entries())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.entries()

    def __repr__(self) -> str:
        return f"<named catalogs: {', '.join(self) or 'none'}>"

    def add(
        self, name: str, uri: str, *, folder: Path | None = None, **options: Any
    ) -> NamedCatalog:
        """Write ``name`` to the user's configuration (one file per catalog); return it.

        A relative file ``uri`` is made absolute first. ``folder`` writes elsewhere (tests,
        site configuration).
        """
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ValueError(f"unknown catalog option(s) {', '.join(unknown)}")
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot name a catalog: use letters, digits, - and _")
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        import yaml

        folder = folder or user_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.yml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump({name: {"uri": uri, **options}}, sort_keys=False))
        os.replace(tmp, path)  # another process sees the old file or the new one, never half
        return read_file(path)[0]

    def remove(self, name: str, *, folder: Path | None = None) -> Path:
        """Delete ``name``'s file from the user's configuration; return the file removed."""
        folder = folder or user_folder()
        path = folder / f"{name}.yml"
        if path.exists():
            path.unlink()
            return path
        entry = self.entries().get(name)
        if entry is None:
            raise KeyError(f"no catalog named {name!r}")
        raise PermissionError(
            f"catalog {name!r} is defined in {entry.source}, not by `runbroker catalogs add`; "
            "edit that file to remove it"
        )
