"""Detector files: handlers and readers, ``root_map``, filling, and writers for derived data.

Example:
    >>> from runbroker.assets import Registry
    >>> Registry().handler("AD_TIFF").__name__
    'ADTIFFHandler'
"""

from .filling import Assets, ExternalDataError, LocalFiller, external_kind, fill_flag
from .paths import UnsafePathError
from .registry import HandlerNotFoundError, Registry, register_handler, register_reader

__all__ = [
    "Assets",
    "ExternalDataError",
    "HandlerNotFoundError",
    "LocalFiller",
    "Registry",
    "UnsafePathError",
    "external_kind",
    "fill_flag",
    "register_handler",
    "register_reader",
]
