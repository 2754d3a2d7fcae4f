"""The ``runbroker`` command: look into a catalog from a shell.

Example:
    $ runbroker ls runs.db -n 5
    $ runbroker db index runs.db sample proposal_id
    $ runbroker ls runs.db --query '{"type": "key_present", "key": "sample"}'
    $ runbroker show runs.db -1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from itertools import islice
from pathlib import Path

from . import open as open_catalog
from .queries import Query, QueryError
from .store.sql import SchemaVersionError, SQLStore


def _ls(args: argparse.Namespace) -> int:
    cat = open_catalog(args.uri, readonly=True)
    if args.query:
        cat = cat.search(Query.from_json(args.query))
    print(f"{len(cat)} runs in {args.uri}")
    for run in islice(cat.values(), args.n):
        start, stop = run.start, run.stop
        when = datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S")
        status = stop.get("exit_status", "?") if stop else "running"
        print(
            f"{start.get('scan_id', ''):>6}  {run.uid[:8]}  {when}  "
            f"{start.get('plan_name', ''):<16} {status}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    cat = open_catalog(args.uri, readonly=True)
    key: int | str = int(args.key) if args.key.lstrip("-").isdigit() else args.key
    run = cat[key]
    print(repr(run))
    print(json.dumps(run.start, indent=2, default=str))
    for name in run:
        print(run[name].read())
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from .store.migrations import upgrade

    revision = upgrade(_url(args.uri))
    print(f"{args.uri} is at schema revision {revision}")
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
            made = store.create_index(*args.keys)
            print(f"indexed in {args.uri}: {', '.join(made)}" if made else "already indexed")
        if args.list:
            for key in store.indexed_keys():
                print(key)
    finally:
        store.close()
    return 0


def _url(uri: str) -> str:
    if "://" in uri:
        return uri.replace("postgresql://", "postgresql+psycopg://", 1)
    path = Path(uri).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no catalog at {uri!r}")
    return f"sqlite:///{path.resolve()}"


def _import_mongo(args: argparse.Namespace) -> int:
    from .importers import import_mongo

    report = import_mongo(
        args.source,
        args.dest,
        query=json.loads(args.query) if args.query else None,
        progress=not args.quiet,
        batch_events=args.batch_events,
        strict=args.strict,
    )
    print(report)
    return 2 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runbroker`` command.

    Example (from Python; the shell form is ``runbroker ls runs.db -n 5``):
        >>> main(["ls", "/no/such/catalog.db"])
        1
    """
    parser = argparse.ArgumentParser(prog="runbroker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list runs, newest first")
    ls.add_argument("uri", help="catalog file or URL")
    ls.add_argument("-n", type=int, default=20, help="how many runs to list (default 20)")
    ls.add_argument("--query", help="a query in its JSON form (Query.to_json())")
    ls.set_defaults(func=_ls)
    show = sub.add_parser("show", help="metadata and data of one run")
    show.add_argument("uri", help="catalog file or URL")
    show.add_argument("key", help="scan_id, -N (recency), uid or uid prefix")
    show.set_defaults(func=_show)
    db = sub.add_parser("db", help="catalog maintenance").add_subparsers(dest="db", required=True)
    up = db.add_parser("upgrade", help="upgrade a catalog's schema in place (back it up first)")
    up.add_argument("uri", help="catalog file or URL")
    up.set_defaults(func=_db_upgrade)
    ix = db.add_parser("index", help="give metadata keys an index of their own (see --list)")
    ix.add_argument("uri", help="catalog file or URL")
    ix.add_argument("keys", nargs="*", metavar="KEY", help="query keys: sample, sample.name")
    ix.add_argument("--list", action="store_true", help="list the keys indexed")
    ix.set_defaults(func=_db_index)
    imp = sub.add_parser("import", help="copy runs from a databroker MongoDB (mongodb://host/db)")
    imp.add_argument("source", help="mongodb://host:27017/dbname")
    imp.add_argument("dest", help="catalog file or URL (created if missing)")
    imp.add_argument("--query", help='MongoDB filter on run_start, as JSON: {"plan_name": "scan"}')
    imp.add_argument("--batch-events", type=int, default=10_000, help="events per page")
    imp.add_argument("--strict", action="store_true", help="stop at the first refused document")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import_mongo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (
        KeyError,
        QueryError,
        ValueError,
        FileNotFoundError,
        ImportError,
        SchemaVersionError,
        PermissionError,
    ) as err:
        print(f"runbroker: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
