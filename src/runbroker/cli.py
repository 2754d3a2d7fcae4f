"""The ``runbroker`` command: look into a catalog from a shell.

Example:
    $ runbroker ls runs.db -n 5
    $ runbroker db index runs.db sample proposal_id
    $ runbroker ls runs.db --query '{"plan_name": "scan", "num_points": {"$gt": 20}}'
    $ runbroker show runs.db -1
    $ runbroker export runs.db out/ --format nexus --uid 3f2a9c1e-...
    $ runbroker ingest copy.db out/
    $ runbroker pack runs.db beamtime/ --all
    $ runbroker verify beamtime/
    $ runbroker unpack beamtime/ --name beamtime
    $ runbroker serve runs.db --port 8000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from .catalog import Catalog
from .cli_auth import add_commands as add_auth_commands
from .cli_cache import add_commands as add_cache_commands
from .cli_notes import add_commands as add_note_commands
from .cli_open import open_named as _open
from .cli_open import run_named as _run_named
from .cli_serve import add_serve
from .cli_stats import add_command as add_stats_command
from .errors import NotACatalogError, NotFoundError
from .mongoquery import is_query_form, parse_query
from .opening import check_sqlite_path
from .queries import In, Query, QueryError
from .store.base import indexing
from .store.sql import SchemaVersionError, SQLStore
from .store.urls import driver_url, redact


def _ls(args: argparse.Namespace) -> int:
    cat = _open(args.uri, readonly=True)
    if args.query:
        cat = cat.search(parse_query(args.query))
    print(f"{len(cat)} run{'' if len(cat) == 1 else 's'} in {redact(args.uri)}")
    print(f"{'scan_id':>7}  {'uid':<8}  {'start':<19}  {'plan':<16} status")
    for run in islice(cat.values(), args.n):
        start, stop = run.start, run.stop
        when = datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S")
        status = stop.get("exit_status", "?") if stop else "running"
        print(
            f"{start.get('scan_id', ''):>7}  {run.uid[:8]}  {when}  "
            f"{start.get('plan_name', ''):<16} {status}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    cat = _open(args.uri, readonly=True)
    run = _run_named(cat, args.key)
    print(repr(run))
    print(json.dumps(run.start, indent=2, default=str))
    for name in run:
        print(run[name].read())
    return 0


def _uids(cat: Catalog, keys: Sequence[str], flag: str) -> list[str]:
    """The full uids of the runs ``keys`` name as ``show`` takes them (full uids, prefixes,
    scan_ids, -N), every key that names no run or several listed in one error.

    Example:
        >>> _uids(cat, [run.uid[:8]], "--uid") == [run.uid]
        True
    """
    exact = {r.uid for r in cat.search(In("uid", list(keys))).values()} if keys else set()
    out, problems = [], []
    for key in keys:
        if key in exact:
            out.append(key)
            continue
        try:
            out.append(_run_named(cat, key).uid)
        except KeyError as err:  # not found, or an ambiguous prefix (its candidates listed)
            problems.append(str(err))
    if problems:
        raise NotFoundError(f"{flag}: " + "; ".join(problems))
    return out


def _db_upgrade(args: argparse.Namespace) -> int:
    from .store.migrations import upgrade

    revision = upgrade(_url(args.uri))
    print(f"{redact(args.uri)} is at schema revision {revision}")
    return 0


def _db_index(args: argparse.Namespace) -> int:
    if not args.keys and not args.list:
        raise ValueError("name the metadata keys to index, or give --list")
    url = _url(args.uri)
    # Opened read-only first: what is not a catalog is refused before anything is written.
    store = SQLStore(url, readonly=True)
    try:
        if args.keys:
            store.close()
            store = SQLStore(url)
            made = indexing(store).create_index(*args.keys)
            print(
                f"indexed in {redact(args.uri)}: {', '.join(made)}" if made else "already indexed"
            )
        if args.list:
            for key in indexing(store).indexed_keys():
                print(key)
    finally:
        store.close()
    return 0


def _url(uri: str) -> str:
    """The database URL of a catalog given as a URL or an SQLite file, checked as
    ``runbroker.open`` checks it (``db`` commands work on databases, not folders)."""
    if "://" in uri:
        return driver_url(uri)
    path = Path(uri).expanduser().resolve()
    if path.is_dir():
        raise NotACatalogError(
            f"{uri!r} is a folder: `runbroker db` works on a catalog database (an SQLite file or "
            "a postgresql:// URL); a folder catalog has no schema to upgrade nor SQL indexes"
        )
    check_sqlite_path(path, create=False, readonly=True)
    return f"sqlite:///{path}"


_CREATE_HELP = (
    "create the catalog even where runbroker.open would refuse to (a name without .db, a "
    "missing folder)"
)


def _import_mongo(args: argparse.Namespace) -> int:
    from .importers import import_mongo

    report = import_mongo(
        args.source,
        args.dest,
        query=_mongo_filter(args.query) if args.query else None,
        progress=not args.quiet,
        batch_events=args.batch_events,
        strict=args.strict,
    )
    print(report)
    return 2 if report.failed else 0


def _mongo_filter(text: str) -> dict | Query:
    # The same --query as the other commands: parse_query refuses what they refuse, naming
    # the option. A dict query is handed on as a dict, so that import_mongo can give its
    # start keys to MongoDB to answer rather than read every run.
    query = parse_query(text)
    data = json.loads(text)
    return query if is_query_form(data) else data


def _selected(args: argparse.Namespace) -> Catalog:
    cat = _open(args.uri, readonly=True)
    if args.query:
        cat = cat.search(parse_query(args.query))
    if args.uid:
        cat = cat.search(In("uid", _uids(cat, args.uid, "--uid")))
    return cat


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: write it as KEY=VALUE, e.g. arrays=skip")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text  # a bare word is a string
    return out


def _export(args: argparse.Namespace) -> int:
    cat = _selected(args)
    if len(cat) == 0:
        raise ValueError(f"no run in {redact(args.uri)} matches; nothing exported")
    from .export import export_runs

    options = _options(args.option)
    if args.template:
        options["template"] = args.template
    report = export_runs(
        cat.values(),
        args.format,
        args.dest,
        progress=not args.quiet,
        overwrite=args.overwrite,
        strict=args.strict,
        skip_existing=args.skip_existing,
        **options,
    )
    print(f"{report} in {args.dest}" if not report.failed else report)
    return 2 if report.failed else 0


def _ingest(args: argparse.Namespace) -> int:
    from .export import export_files, run_of_export
    from .transfer import CopyReport, copy_runs

    files = export_files(args.files)
    if not files:
        raise FileNotFoundError(
            f"no .jsonl, .msgpack or .h5 export in {' '.join(args.files)} (detector files "
            "are passed over)"
        )
    report = CopyReport()
    runs = []
    for path in files:
        try:
            runs.append(run_of_export(path))
        except (ValueError, KeyError, OSError) as err:
            if args.strict:
                raise
            report.failed.append((str(path), str(err)))
    if not runs:  # a catalog is made only once there is something to put in it
        print(report)
        return 2
    new = _new_catalog_path(args.uri)
    cat = _open(args.uri, create=args.create)
    try:
        copy_runs(
            runs,
            cat,
            total=len(runs),
            progress=not args.quiet,
            strict=args.strict,
            desc="ingest",
            report=report,
        )
    finally:
        cat.close()
        if new is not None and not report.copied:
            _remove_new_catalog(new)
    print(report)
    return 2 if report.failed else 0


def _new_catalog_path(uri: str) -> Path | None:
    """The file or folder opening ``uri`` is about to create, if it creates one."""
    from .config import NamedCatalogs

    if "://" in uri or Path(uri).expanduser().exists() or uri in NamedCatalogs().entries():
        return None
    return Path(uri).expanduser()


def _remove_new_catalog(path: Path) -> None:
    """Remove the catalog this command created when nothing went into it after all (every
    file began well and failed later)."""
    import shutil

    if path.is_dir():
        if {p.name for p in path.iterdir()} <= {".runbroker"}:
            shutil.rmtree(path)
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _copy(args: argparse.Namespace) -> int:
    from .transfer import copy_catalog

    source = _open(args.source, readonly=True)
    dest = _open(args.dest, create=args.create)
    try:
        report = copy_catalog(
            source,
            dest,
            query=parse_query(args.query) if args.query else None,
            uids=_uids(source, args.uid, "--uid") if args.uid else None,
            progress=not args.quiet,
            strict=args.strict,
        )
    finally:
        dest.close()
        source.close()
    print(report)
    return 2 if report.failed else 0


def _pack(args: argparse.Namespace) -> int:
    from .pack import pack

    if args.all + bool(args.query) + bool(args.uids) != 1:
        raise ValueError("say which runs to pack: --query JSON, --uids FILE or --all")
    uids = query = None
    if args.uids:
        try:
            text = sys.stdin.read() if args.uids == "-" else Path(args.uids).read_text()
        except OSError as err:
            raise FileNotFoundError(f"--uids {args.uids}: {err.strerror or err}") from None
        uids = [line.split("#")[0].strip() for line in text.splitlines()]
        uids = [u for u in uids if u]
    if args.query:
        query = parse_query(args.query)
    source = _open(args.source, readonly=True)
    try:
        if uids is not None:
            uids = _uids(source, uids, f"--uids {args.uids}")
        report = pack(
            source,
            args.dest,
            query=query,
            uids=uids,
            external=args.external,
            format=args.format,
            archive=args.archive,
            append=args.append,
            strict=args.strict,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        if not args.archive and (Path(args.dest) / "manifest.json").exists():
            print(
                f"runbroker: interrupted; {args.dest} holds the runs packed so far, each whole: "
                "run the same command with --append to pack the rest",
                file=sys.stderr,
            )
        else:
            print("runbroker: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        source.close()
    print(report)
    return 2 if report.failed else 0


def _unpack(args: argparse.Namespace) -> int:
    from .pack import unpack

    report = unpack(
        args.pack,
        name=args.name,
        into=args.into,
        files_root=args.files_root,
        to=args.to,
        strict=args.strict,
        progress=not args.quiet,
    )
    print(report)
    if args.into is None:
        name = args.name or Path(report.path or args.pack).resolve().name
        print(f"open it with runbroker.catalog[{name!r}]")
    return 2 if report.failed else 0


def _verify(args: argparse.Namespace) -> int:
    from .pack import verify

    report = verify(args.pack, progress=not args.quiet)
    print(report)
    return 0 if report.ok else 3


def _catalogs_list(args: argparse.Namespace) -> int:
    from .config import NamedCatalogs, search_path

    entries = NamedCatalogs().entries()
    for name, entry in sorted(entries.items()):
        print(f"{name:<20} {redact(entry.uri)}" + (f"  ({entry.source})" if args.verbose else ""))
    if args.verbose or not entries:
        print("searched, first wins: " + os.pathsep.join(map(str, search_path())))
    return 0


def _catalogs_add(args: argparse.Namespace) -> int:
    from .config import NamedCatalogs

    options: dict[str, Any] = _options(args.option)
    if args.root_map:
        options["root_map"] = dict(_pair(p, "--root-map") for p in args.root_map)
    if args.index:
        options["indexes"] = args.index
    entry = NamedCatalogs().add(args.name, args.uri, **options)
    print(f"added {entry.name}: {redact(entry.uri)} ({entry.source})")
    return 0


def _pair(text: str, flag: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise ValueError(f"{flag} {text!r}: write it as OLD=NEW")
    return old, new


def _catalogs_remove(args: argparse.Namespace) -> int:
    from .config import NamedCatalogs

    path = NamedCatalogs().remove(args.name)
    print(f"removed {args.name} ({path})")
    return 0


_QUERY_HELP = (
    'a dict query in JSON, {"plan_name": "scan", "num_points": {"$gt": 20}}, '
    "or a query object's Query.to_json()"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runbroker`` command.

    Example (from Python; the shell form is ``runbroker ls runs.db -n 5``):
        >>> main(["ls", "/no/such/catalog.db"])
        1
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="runbroker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"runbroker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list runs, newest first")
    ls.add_argument("uri", help="catalog file, folder, URL or name")
    ls.add_argument("-n", type=int, default=20, help="how many runs to list (default 20)")
    ls.add_argument("--query", help=f"list the runs matching this query: {_QUERY_HELP}")
    ls.set_defaults(func=_ls)
    show = sub.add_parser("show", help="metadata and data of one run")
    show.add_argument("uri", help="catalog file, folder, URL or name")
    show.add_argument("key", help="scan_id, -N (recency), uid or uid prefix")
    show.set_defaults(func=_show)
    db = sub.add_parser("db", help="catalog maintenance").add_subparsers(dest="db", required=True)
    up = db.add_parser("upgrade", help="upgrade a catalog's schema in place (back it up first)")
    up.add_argument("uri", help="catalog file, folder, URL or name")
    up.set_defaults(func=_db_upgrade)
    ix = db.add_parser("index", help="give metadata keys an index of their own (see --list)")
    ix.add_argument("uri", help="catalog file, folder, URL or name")
    ix.add_argument("keys", nargs="*", metavar="KEY", help="query keys: sample, sample.name")
    ix.add_argument("--list", action="store_true", help="list the keys indexed")
    ix.set_defaults(func=_db_index)
    add_stats_command(db)
    imp = sub.add_parser("import", help="copy runs from a databroker MongoDB (mongodb://host/db)")
    imp.add_argument("source", help="mongodb://host:27017/dbname")
    imp.add_argument("dest", help="catalog file or URL (created if missing)")
    imp.add_argument("--query", help=f"import the runs matching this query: {_QUERY_HELP}")
    imp.add_argument("--batch-events", type=int, default=10_000, help="events per page")
    imp.add_argument("--strict", action="store_true", help="stop at the first refused document")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import_mongo)
    exp = sub.add_parser("export", help="write runs to files: csv, json, spec, hdf5, nexus, ...")
    exp.add_argument("uri", help="catalog file, folder, URL or name")
    exp.add_argument("dest", help="folder to write into (created if missing)")
    exp.add_argument("-f", "--format", required=True, help="csv, json, jsonl, msgpack, spec, ...")
    exp.add_argument("--query", help=f"export the runs matching this query: {_QUERY_HELP}")
    exp.add_argument("--uid", nargs="+", help="export these runs (uids, uid prefixes, scan_ids)")
    exp.add_argument("--template", help='file names, e.g. "{start[scan_id]:05d}-{stream}"')
    exp.add_argument("--overwrite", action="store_true", help="replace files that exist")
    exp.add_argument(
        "--skip-existing", action="store_true", help="leave runs whose files exist as they are"
    )
    exp.add_argument(
        "--strict", action="store_true", help="stop at the first run the format cannot hold"
    )
    exp.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the format (value as JSON or a bare word), e.g. -o arrays=summary",
    )
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(func=_export)
    ing = sub.add_parser("ingest", help="read .jsonl, .msgpack and .h5 exports into a catalog")
    ing.add_argument("uri", help="catalog file or URL (a new .db file or folder/ is created)")
    ing.add_argument("files", nargs="+", metavar="FILE", help="export files or folders of them")
    ing.add_argument("--strict", action="store_true", help="stop at the first file refused")
    ing.add_argument("--create", action="store_true", help=_CREATE_HELP)
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ing.set_defaults(func=_ingest)
    cp = sub.add_parser("copy", help="copy runs between catalogs, skipping those present")
    cp.add_argument("source", help="catalog file or URL to copy from")
    cp.add_argument("dest", help="catalog to copy into (a new .db file or folder/ is created)")
    cp.add_argument("--query", help=f"copy the runs matching this query: {_QUERY_HELP}")
    cp.add_argument("--uid", nargs="+", help="copy these runs (uids, uid prefixes, scan_ids)")
    cp.add_argument("--strict", action="store_true", help="stop at the first run refused")
    cp.add_argument("--create", action="store_true", help=_CREATE_HELP)
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cp.set_defaults(func=_copy)
    pk = sub.add_parser("pack", help="pack runs and their detector files into a folder or archive")
    pk.add_argument("source", help="catalog file, folder, URL or name to pack from")
    pk.add_argument("dest", help="the pack: a new folder (or archive, with --archive)")
    pk.add_argument("--query", help=f"pack the runs matching this query: {_QUERY_HELP}")
    pk.add_argument("--uids", metavar="FILE", help="pack the runs listed in FILE (- for stdin)")
    pk.add_argument("--all", action="store_true", help="pack every run")
    pk.add_argument(
        "--external",
        choices=["copy", "fill", "manifest", "ignore"],
        default="copy",
        help="detector files: copy into the pack (default), fill into the documents, "
        "list in a manifest for rsync/Globus, or ignore",
    )
    pk.add_argument("--format", choices=["jsonl", "msgpack"], default="jsonl")
    pk.add_argument("--archive", action="store_true", help="write one .tar (.tar.zst: zstd)")
    pk.add_argument("--append", action="store_true", help="add runs to an existing pack")
    pk.add_argument("--strict", action="store_true", help="stop at the first run that fails")
    pk.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pk.set_defaults(func=_pack)
    up_ = sub.add_parser("unpack", help="verify a pack, then name it or copy it into a database")
    up_.add_argument("pack", help="a pack folder or archive")
    up_.add_argument("--name", help="catalog name (default: the pack's folder name)")
    up_.add_argument("--into", metavar="URI", help="copy the runs into this database instead")
    up_.add_argument("--files-root", metavar="DIR", help="where --into puts detector files")
    up_.add_argument("--to", metavar="DIR", help="where to extract an archive (default: beside)")
    up_.add_argument("--strict", action="store_true", help="stop at the first run refused")
    up_.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    up_.set_defaults(func=_unpack)
    vf = sub.add_parser("verify", help="check a pack's files against its manifest")
    vf.add_argument("pack", help="a pack folder or archive")
    vf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    vf.set_defaults(func=_verify)
    cats = sub.add_parser("catalogs", help="catalogs known by name (runbroker.catalog[NAME])")
    cats_sub = cats.add_subparsers(dest="catalogs", required=True)
    cl = cats_sub.add_parser("list", help="names and where they point")
    cl.add_argument("-v", "--verbose", action="store_true", help="also the files that say so")
    cl.set_defaults(func=_catalogs_list)
    ca = cats_sub.add_parser("add", help="name a catalog, for this user")
    ca.add_argument("name", help="the name: letters, digits, - and _")
    ca.add_argument("uri", help="SQLite file, folder, or postgresql://... URL")
    ca.add_argument("--root-map", action="append", metavar="OLD=NEW", help="detector file roots")
    ca.add_argument("--index", action="append", metavar="KEY", help="a metadata key to index")
    ca.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE")
    ca.set_defaults(func=_catalogs_add)
    cr = cats_sub.add_parser("remove", help="forget a name added with `catalogs add`")
    cr.add_argument("name")
    cr.set_defaults(func=_catalogs_remove)
    add_cache_commands(sub)
    add_serve(sub)
    add_note_commands(sub)
    add_auth_commands(sub)
    args = parser.parse_args(argv)
    # Every URL the command was given (a catalog, --into, a source and a destination): their
    # passwords are kept out of whatever it prints, drivers' messages included.
    urls = [v for v in vars(args).values() if isinstance(v, str) and "://" in v]
    with warnings.catch_warnings():
        # A warning is a message to the user of the command, shown in its words rather than
        # as Python shows it (file, line, source); -W error does not turn it into a failure.
        warnings.simplefilter("default", UserWarning)
        warnings.showwarning = partial(_show_warning, urls=urls)
        return _run(args, urls)


def _run(args: argparse.Namespace, urls: list[str]) -> int:
    """Run the command ``args`` names; an error is one line on stderr and an exit status."""
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here when all of the output fit the buffer
        return code
    except BrokenPipeError:
        # The reader went away (`runbroker ls ... | head`): stop quietly, as shell tools do.
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for such a pipeline
    except (
        KeyError,
        QueryError,
        ValueError,
        FileNotFoundError,
        ImportError,
        SchemaVersionError,
        OSError,
    ) as err:
        print(f"runbroker: {redact(str(err), *urls)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as err:  # an unreachable server, a refused login, ...
        cause = getattr(err, "orig", None) or err
        message = redact(str(cause).strip(), *urls)
        print(f"runbroker: database error: {message}", file=sys.stderr)
        return 1


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
    *,
    urls: Sequence[str] = (),
) -> None:
    """Print a warning as ``runbroker: warning: ...`` (a warning of another library names
    its kind), in place of :func:`warnings.showwarning`.

    Example:
        >>> _show_warning(UserWarning("no run has the key 'sampel'"), UserWarning, "x.py", 1,
        ...               file=sys.stdout)
        runbroker: warning: no run has the key 'sampel'
    """
    text = redact(str(message), *urls)
    if not category.__module__.startswith("runbroker") and category is not UserWarning:
        text = f"{category.__name__}: {text}"
    print(f"runbroker: warning: {text}", file=sys.stderr if file is None else file)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush finds no closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # a stream without a descriptor (tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
