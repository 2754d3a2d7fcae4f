"""``runbroker serve CATALOG``: serve a catalog over HTTP (see ``docs/server.md``).

Example:
    $ runbroker serve runs.db --port 8000
    $ runbroker serve postgresql://db/runs --host 0.0.0.0 --workers 4 --api-key "$KEY"
    $ runbroker serve 45id --public
    $ runbroker serve postgresql://db/runs --access /etc/runbroker/access.yaml

The server's packages (the ``server`` extra) are loaded only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_serve", "log_config", "open_line", "serve"]

_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def add_serve(sub: Any) -> None:
    """Add the ``serve`` command to the ``runbroker`` command's subparsers ``sub``."""
    sv = sub.add_parser("serve", help="serve a catalog over HTTP (runbroker.open(URL) reads it)")
    sv.add_argument("catalog", help="catalog file, folder, URL or name")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    sv.add_argument("--workers", type=int, default=1, help="server processes sharing the port (1)")
    sv.add_argument(
        "--api-key",
        help="the key every request must carry (default: $RUNBROKER_API_KEY, else a new "
        "one, printed once)",
    )
    sv.add_argument(
        "--public", action="store_true", help="anyone may read without a key; writes need it"
    )
    sv.add_argument(
        "--access",
        metavar="FILE",
        help="access control: principals, groups, API keys and OIDC from this YAML file "
        "(docs/access.md); each caller sees its groups' runs only",
    )
    sv.add_argument(
        "--no-access-log", action="store_true", help="no JSON line per request on stdout"
    )
    sv.set_defaults(func=serve)


def open_line(host: str, port: int, key: str | None) -> str:
    """The line a user pastes to open the served catalog.

    Example:
        >>> open_line("127.0.0.1", 8000, "s3cret")
        'runbroker.open("http://127.0.0.1:8000", api_key="s3cret")'
        >>> open_line("0.0.0.0", 80, None) == f'runbroker.open("http://{socket.getfqdn()}:80")'
        True
    """
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # every address: the machine's name is the one to give out
    elif ":" in host:
        host = f"[{host}]"
    key_part = f', api_key="{key}"' if key else ""
    return f'runbroker.open("http://{host}:{port}"{key_part})'


def log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging configuration: its own messages on stderr as usual, and our access
    log (one JSON line per request, :mod:`runbroker.server.ops`) on stdout in its place.

    Example:
        >>> log_config(True)["loggers"]["runbroker.server.access"]["level"]
        'INFO'
    """
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {
        **LOGGING_CONFIG,
        "formatters": {**LOGGING_CONFIG["formatters"], "line": {"format": "%(message)s"}},
        "handlers": {
            **LOGGING_CONFIG["handlers"],
            "lines": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            **LOGGING_CONFIG["loggers"],
            "runbroker.server": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "runbroker.server.access": {
                "handlers": ["lines"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
        },
    }
    return config


def serve(args: argparse.Namespace) -> int:
    """Run the server until it is stopped (Ctrl-C, SIGTERM)."""
    import uvicorn

    from .config import resolve
    from .opening import open as open_catalog
    from .server import Settings, build_app
    from .server.app import ENV_CATALOG
    from .server.settings import ENV_KEY, new_key

    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give 1 or more")
    key = args.api_key or os.environ.get(ENV_KEY) or None
    access = str(Path(args.access).resolve()) if args.access else None
    # With access control, callers bring their own keys: no server key is made up.
    made_up = key is None and access is None
    settings = Settings.from_env(
        api_key=key or (new_key() if made_up else None), public=args.public, access=access
    )
    uri, options = resolve(args.catalog)
    catalog = open_catalog(uri, **options)  # here too with workers: a bad catalog fails now
    if access is not None:
        from .auth.access import AccessControl

        AccessControl.from_config(access, catalog.store.uri)  # a bad file fails now, once
        mode = f"access control from {args.access}"
    elif args.public:
        mode = "read by anyone, written with the key"
    else:
        mode = "the key is needed"
    print(f"runbroker: serving {args.catalog} at http://{args.host}:{args.port} ({mode})")
    if access is not None:
        print("runbroker: callers use their own API keys (runbroker keys create) or tokens")
    elif made_up:
        print("runbroker: a new API key (shown only now; give --api-key or $RUNBROKER_API_KEY")
        print("           to choose it). Open this catalog with:")
    else:
        print("runbroker: open this catalog with:")
    print("    " + open_line(args.host, args.port, settings.api_key if made_up else None))
    sys.stdout.flush()
    common = {
        "host": args.host,
        "port": args.port,
        "log_config": log_config(not args.no_access_log),
        "access_log": False,  # ours replaces uvicorn's
        "timeout_graceful_shutdown": 10,
    }
    if args.workers == 1:
        uvicorn.run(build_app(catalog, settings), **common)
        catalog.close()
        return 0
    catalog.close()
    # Workers start as new processes: they learn what to serve from the environment.
    os.environ[ENV_CATALOG] = args.catalog
    os.environ.update(settings.to_env())
    metrics_dir = None
    if not os.environ.get(_METRICS_DIR):
        metrics_dir = tempfile.mkdtemp(prefix="runbroker-metrics-")
        os.environ[_METRICS_DIR] = metrics_dir
    try:
        uvicorn.run(
            "runbroker.server.app:app_from_env",
            factory=True,
            workers=args.workers,
            # A worker starting on a busy machine (imports, opening the catalog) is not dead:
            # uvicorn's default of 5 s would kill and restart it over and over.
            timeout_worker_healthcheck=60,
            **common,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
