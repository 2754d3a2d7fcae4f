"""runbroker: store Bluesky runs, find them again, read them back fast.

Example:
    >>> import runbroker
    >>> cat = runbroker.temp()                   # or runbroker.open("runs.db")
    >>> len(cat)
    0
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Any

from . import export  # runbroker.export.live(...) without a second import
from ._version import __version__ as __version__
from .assets import register_handler, register_reader
from .catalog import Catalog, Run
from .combine import align, concat
from .config import NamedCatalogs
from .derived import derived_from
from .errors import (
    AmbiguousUIDError,
    CatalogNotFoundError,
    CatalogUnavailableError,
    ConflictError,
    CorruptCatalogError,
    DocumentError,
    ExternalDataError,
    HandlerNotFoundError,
    MissingDependencyError,
    NotACatalogError,
    ProvenanceError,
    RunbrokerError,
    SchemaVersionError,
    UnknownParentError,
    UnknownSchemeError,
    UnsafePathError,
)
from .federation import merge
from .opening import open
from .stream import Stream
from .v1 import Broker

__all__ = [
    "AmbiguousUIDError",
    "Catalog",
    "CatalogNotFoundError",
    "CatalogUnavailableError",
    "ConflictError",
    "CorruptCatalogError",
    "DocumentError",
    "ExternalDataError",
    "HandlerNotFoundError",
    "MissingDependencyError",
    "NotACatalogError",
    "ProvenanceError",
    "Run",
    "RunbrokerError",
    "SchemaVersionError",
    "Stream",
    "UnknownParentError",
    "UnknownSchemeError",
    "UnsafePathError",
    "align",
    "catalog",
    "concat",
    "derived_from",
    "export",
    "merge",
    "open",
    "register_handler",
    "register_reader",
    "temp",
    "v1",
]

#: Catalogs by name, as configured (``runbroker.catalog["45id"]``, ``list(runbroker.catalog)``;
#: see ``runbroker.config``). The name is databroker's; it hides the ``runbroker.catalog``
#: submodule as an attribute only: ``from runbroker.catalog import Run`` still works.
catalog: NamedCatalogs = NamedCatalogs()


def temp(**options: Any) -> Catalog:
    """A throwaway catalog in a temporary folder, deleted when the process exits.

    Example:
        >>> cat = temp()
        >>> len(cat)
        0
    """
    folder = tempfile.mkdtemp(prefix="runbroker-")
    cat = open(os.path.join(folder, "temp.db"), **options)
    weakref.finalize(cat.store, shutil.rmtree, folder, True)
    return cat


def v1(catalog: Catalog) -> Broker:
    """``catalog`` through databroker's v1 API: ``db[-1].table()``, ``db(plan_name="scan")``.

    The same as ``catalog.v1``; what is covered is listed in ``docs/v1.md``. (The name hides
    the ``runbroker.v1`` submodule as an attribute only: ``from runbroker.v1 import Header``
    still works.)

    Example:
        >>> db = runbroker.v1(cat)
        >>> db[run.uid].table(fields=["motor"])["motor"].tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return Broker(catalog)
