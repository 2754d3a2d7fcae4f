"""``runbroker cache``: what the remote client keeps on disk, per server.

Example:
    $ runbroker cache ls                          # servers, their runs and sizes
    $ runbroker cache size                        # bytes kept in all
    $ runbroker cache clear http://host:8000      # one server's (or, without a URL, all)
"""

from __future__ import annotations

import argparse
from typing import Any

# The client's packages (diskcache) are imported by the commands only: `runbroker` itself
# runs without the client extra.

__all__ = ["add_commands"]


def _human(n: int) -> str:
    """Bytes as a short text.

    Example:
        >>> _human(512), _human(1_234_567)
        ('512 B', '1.2 MB')
    """
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _ls(args: argparse.Namespace) -> int:
    from .client.cache import cache_root, server_caches

    caches = server_caches(args.dir)
    if not caches:
        print(f"nothing cached in {args.dir or cache_root()}")
        return 0
    for server in caches:
        runs = server.runs()
        print(f"{server.url}  {_human(server.size())}, {len(runs)} runs  ({server.folder})")
        for run in runs[: args.n]:
            scan_id = "" if run.scan_id is None else run.scan_id
            print(f"  {scan_id!s:>8}  {run.uid}  {run.plan_name or '':<16} {_human(run.size)}")
        if len(runs) > args.n:
            print(f"  ... {len(runs) - args.n} more (-n to list more)")
    return 0


def _size(args: argparse.Namespace) -> int:
    from .client.cache import cache_root, server_caches

    total = sum(s.size() for s in server_caches(args.dir))
    print(f"{total} bytes ({_human(total)}) in {args.dir or cache_root()}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from .client.cache import server_caches

    caches = server_caches(args.dir)
    if args.url:
        caches = [s for s in caches if s.url == args.url.rstrip("/")]
        if not caches:
            known = ", ".join(s.url for s in server_caches(args.dir)) or "none"
            raise ValueError(f"nothing cached for {args.url} (servers cached: {known})")
    for server in caches:
        _clear_one(server)
    return 0


def _clear_one(server: Any) -> None:
    size = server.size()
    server.clear()
    print(f"cleared {server.url} ({_human(size)})")


def add_commands(sub: Any) -> None:
    """Add the ``cache`` command group to the ``runbroker`` command's subparsers ``sub``."""
    cache = sub.add_parser("cache", help="what the remote client keeps on disk (ls, size, clear)")
    commands = cache.add_subparsers(dest="cache", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        help="the cache folder (default: $RUNBROKER_CACHE_DIR, else the user's cache folder)",
    )
    ls = commands.add_parser("ls", parents=[where], help="servers cached, their runs and sizes")
    ls.add_argument("-n", type=int, default=20, help="runs listed per server (default 20)")
    ls.set_defaults(func=_ls)
    size = commands.add_parser("size", parents=[where], help="bytes kept, all servers together")
    size.set_defaults(func=_size)
    clear = commands.add_parser("clear", parents=[where], help="remove what is kept")
    clear.add_argument("url", nargs="?", help="only this server's (default: every server's)")
    clear.set_defaults(func=_clear)
