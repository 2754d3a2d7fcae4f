"""File names for exported runs and for the folder store's run files, from a ``str.format``
template over the start document.

A template sees ``start`` (the start document), ``uid``, ``short_uid`` (8 characters),
``scan_id``, ``plan_name``, ``time`` (the start time as a local ``datetime``, so
``{time:%Y%m%d}`` works), and, where the format writes several files, ``stream``, ``field`` and
``index``. Whatever the template makes is then made safe for any filesystem.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .errors import TemplateError

__all__ = ["DEFAULT_TEMPLATE", "TemplateError", "render", "safe_name"]

#: Sorts by date, then scan id; the short uid keeps two runs of one second apart.
DEFAULT_TEMPLATE = "{time:%Y%m%d-%H%M%S}_scan{scan_id}_{short_uid}"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX = 200  # well under the 255 bytes most filesystems allow, leaving room for a suffix


def safe_name(name: str) -> str:
    """``name`` with anything but letters, digits and ``._+-`` replaced by ``_``.

    Example:
        >>> safe_name("Fe/Cu sample: 2.5 K")
        'Fe_Cu_sample_2.5_K'
        >>> safe_name("../../etc")
        'etc'
    """
    cleaned = _UNSAFE.sub("_", name).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned[:_MAX] or "run"


def _fields(start: Mapping[str, Any]) -> dict[str, Any]:
    uid = str(start.get("uid", ""))
    return {
        "start": start,
        "uid": uid,
        "short_uid": uid[:8],
        "scan_id": start.get("scan_id", ""),
        "plan_name": start.get("plan_name", ""),
        "time": datetime.fromtimestamp(float(start.get("time", 0))),
    }


@functools.lru_cache(maxsize=64)
def _roots(template: str) -> frozenset[str]:
    """The names a template's fields start with (``start`` for ``{start[sample]}``)."""
    named = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    return frozenset(re.split(r"[.\[]", n, maxsplit=1)[0] for n in named)


def render(
    template: str,
    start: Mapping[str, Any],
    *,
    stream: str | None = None,
    field: str | None = None,
    index: int | None = None,
) -> str:
    """The safe file name (without suffix) ``template`` gives for this run.

    Parts the format needs (``stream``, ``field``, ``index``) that the template does not
    mention are appended, so two files of one run never share a name.

    Example:
        >>> start = {"uid": "3f2a9c1e-77", "scan_id": 7, "time": 0, "sample": "Fe"}
        >>> render("{start[scan_id]:05d}-{start[sample]}", start, stream="primary")
        '00007-Fe_primary'
        >>> render("{start[sample]}", start, stream="baseline", field="img", index=3)
        'Fe_baseline_img_00003'
    """
    extra = {"stream": stream, "field": field, "index": index}
    try:
        roots = _roots(template)
        text = template.format(**_fields(start), **extra)
    except KeyError as exc:
        raise TemplateError(
            f"file-name template {template!r} names {exc.args[0]!r}, which run "
            f"{str(start.get('uid', '?'))[:8]} does not have; its start document has: "
            f"{', '.join(sorted(start))}"
        ) from None
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise TemplateError(f"file-name template {template!r}: {exc}") from None
    for key in ("stream", "field"):
        if extra[key] is not None and key not in roots:
            text += f"_{extra[key]}"
    if index is not None and "index" not in roots:
        text += f"_{index:05d}"
    return safe_name(text)
