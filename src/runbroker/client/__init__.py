"""The remote client: a runbroker server's catalog through the same Python API.

``runbroker.open("http://host:8000", api_key=...)`` returns a :class:`~runbroker.Catalog`
over an :class:`HTTPStore`, by way of :func:`open_http` (registered for ``http`` and
``https``). Needs the ``client`` extra (httpx).
"""

from __future__ import annotations

import os
from typing import Any

from ..store.base import Store
from .store import HTTPStore

__all__ = ["HTTPStore", "open_http"]

ENV_KEY = "RUNBROKER_API_KEY"


def open_http(
    url: str,
    *,
    api_key: str | None = None,
    timeout: float | None = None,
    cache: str | os.PathLike | bool | None = None,
    readonly: bool = False,
    **options: Any,
) -> Store:
    """The store of the runbroker server at ``url`` (the opener of ``http``/``https``).

    ``api_key`` defaults to ``$RUNBROKER_API_KEY``; store options of local catalogs
    (``create``, ``durability`` ...) mean nothing here and are ignored.

    Example:
        >>> open_http("http://127.0.0.1:8000", api_key="k")
        HTTPStore('http://127.0.0.1:8000')
    """
    if api_key is None:
        api_key = os.environ.get(ENV_KEY) or None
    kwargs: dict[str, Any] = {"api_key": api_key, "readonly": readonly}
    if timeout is not None:
        kwargs["timeout"] = timeout
    return HTTPStore(url, **kwargs)
