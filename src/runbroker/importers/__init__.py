"""Copy runs into a catalog from other data stores.

- :func:`import_mongo`: a databroker MongoDB (``mongo_normalized`` layout), needs ``pymongo``
  (``pip install 'runbroker[mongo]'``). See ``docs/import.md``.

Example:
    >>> from runbroker.importers import ImportReport, import_mongo
    >>> print(ImportReport(skipped=3))
    copied 0 runs (0 documents), skipped 3 already in the catalog, 0 failed
"""

from __future__ import annotations

from .mongo import ImportReport, import_mongo

__all__ = ["ImportReport", "import_mongo"]
