"""The runbroker HTTP server: one catalog over HTTP, for the remote client and for anyone else.

``runbroker serve CATALOG`` runs it; :func:`build_app` gives the ASGI app for embedding. The
routes are thin: each hands its arguments to the catalog's store (or, for data in a chosen
format, to a :class:`~runbroker.stream.Stream`) through the one dependency that names the caller
(:mod:`runbroker.server.context`). Needs the ``server`` extra.
"""

from __future__ import annotations

from .app import build_app
from .settings import Settings

__all__ = ["Settings", "build_app"]
