"""The remote client: a runbroker server's catalog through the same Python API.

``runbroker.open("http://host:8000", api_key=...)`` returns a :class:`~runbroker.Catalog`
over an :class:`HTTPStore`, by way of :func:`open_http` (registered for ``http`` and
``https``), wrapped in a :class:`~runbroker.client.cache.CachedStore` that keeps what was
downloaded on disk. Needs the ``client`` extra (httpx, diskcache).
"""

from __future__ import annotations

import os
from typing import Any

from ..store.base import Store
from .cache import DEFAULT_SIZE, CachedStore, folder_for
from .store import HTTPStore

__all__ = ["CachedStore", "HTTPStore", "open_http"]

ENV_KEY = "RUNBROKER_API_KEY"


def open_http(
    url: str,
    *,
    api_key: str | None = None,
    timeout: float | None = None,
    cache: str | os.PathLike | bool | None = None,
    cache_size: int | str | None = None,
    readonly: bool = False,
    **options: Any,
) -> Store:
    """The store of the runbroker server at ``url`` (the opener of ``http``/``https``).

    ``api_key`` defaults to ``$RUNBROKER_API_KEY``. What is downloaded about finished runs is
    kept in a folder per server below ``cache`` (default: ``$RUNBROKER_CACHE_DIR`` or the
    user's cache folder; ``False``: nothing is kept), at most ``cache_size`` bytes (an int
    or ``"500MB"``; default 2 GB). Store options of local catalogs (``create``,
    ``durability`` ...) mean nothing here and are ignored.

    Example:
        >>> open_http("http://127.0.0.1:8000", api_key="k", cache=False)
        HTTPStore('http://127.0.0.1:8000')
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = tempfile.mkdtemp()
        >>> store = open_http("http://127.0.0.1:8000", cache=folder, cache_size="1GB")
        >>> store.folder.parent == Path(folder), store.size_limit
        (True, 1000000000)
    """
    if api_key is None:
        api_key = os.environ.get(ENV_KEY) or None
    kwargs: dict[str, Any] = {"api_key": api_key, "readonly": readonly}
    if timeout is not None:
        kwargs["timeout"] = timeout
    store = HTTPStore(url, **kwargs)
    if cache is False:
        return store
    root = None if cache is None or cache is True else cache
    return CachedStore(store, folder_for(store.uri, root), size_limit=cache_size or DEFAULT_SIZE)
