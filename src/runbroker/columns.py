"""The columns a store keeps for a stream, named and turned into arrays the same way by stores,
streams and exporters.

Every page of events is a set of named columns:

* ``time``, ``seq_num`` and ``uid`` of the events;
* ``d:<field>`` the field's values, ``t:<field>`` its timestamps and ``f:<field>`` whether
  each value was filled from detector files: :data:`DATA`, :data:`TIMESTAMP` and
  :data:`FILLED` followed by the field's name.

Example:
    >>> DATA + "det", concat_columns([np.arange(2.0), None], [2, 1])
    ('d:det', [0.0, 1.0, None])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DATA",
    "DTYPES",
    "FILLED",
    "MISSING_VALUE",
    "SEQ_NUM",
    "TIME",
    "TIMESTAMP",
    "UID",
    "as_column",
    "concat_columns",
    "uid_list",
]

TIME = "time"
SEQ_NUM = "seq_num"
UID = "uid"
#: Prefixes of a field's values, timestamps and filled flags.
DATA, TIMESTAMP, FILLED = "d:", "t:", "f:"

#: numpy dtypes of the event-model ``dtype`` names that have one.
DTYPES = {"number": "float64", "integer": "int64", "boolean": "bool"}
#: Placeholder for a field an event did not carry; becomes NaN or None when read.
MISSING_VALUE = None


def concat_columns(parts: Sequence[np.ndarray | list], lengths: Sequence[int]) -> np.ndarray | list:
    """Join one column's pieces from several pages into one column.

    Pieces that are all ndarrays with the same per-event shape are concatenated (numpy picks
    the common dtype); otherwise the result is a list of per-event values. A ``None`` piece
    stands for a page where the field was absent and is filled with missing values.

    Example:
        >>> concat_columns([np.arange(2), None], [2, 1])
        [0, 1, None]
        >>> concat_columns([np.arange(2), np.arange(1.0)], [2, 1]).tolist()
        [0.0, 1.0, 0.0]
    """
    arrays = [p for p in parts if isinstance(p, np.ndarray)]
    if len(arrays) == len(parts) and len({a.shape[1:] for a in arrays}) <= 1:
        if not arrays:
            return np.empty(0)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    out: list = []
    for part, n in zip(parts, lengths, strict=True):
        if part is None:
            out.extend([MISSING_VALUE] * n)
        elif isinstance(part, np.ndarray) and part.dtype.kind == "S":
            out.extend(uid_list(part))
        elif isinstance(part, np.ndarray):
            out.extend(list(part) if part.ndim > 1 else part.tolist())
        else:
            out.extend(part)
    return out


def uid_list(uids: np.ndarray | Sequence[str]) -> list[str]:
    """Event uids as a list of ``str``, from a decoded uid block (a fixed-width ASCII bytes
    array, as pages store them) or any sequence of str.

    The NUL padding of values shorter than the block's width is dropped.

    Example:
        >>> uid_list(np.array([b"e1", b"e22"])), uid_list(["a"])
        (['e1', 'e22'], ['a'])
    """
    if not isinstance(uids, np.ndarray) or uids.dtype.kind != "S":
        return [str(u) for u in uids] if isinstance(uids, np.ndarray) else list(uids)
    n, width = len(uids), uids.dtype.itemsize
    raw = np.ascontiguousarray(uids).view(np.uint8).reshape(n, width)
    if not n or (raw == ord("\n")).any():  # no separator to split on: value by value
        return [u.decode("ascii") for u in uids.tolist()]
    # One decode and one split in C: far faster than decoding value by value.
    rows = np.empty((n, width + 1), dtype=np.uint8)
    rows[:, :width] = raw
    rows[:, width] = ord("\n")
    text = rows.tobytes().decode("ascii")
    if "\0" in text:  # padding of values shorter than the block's width
        text = text.replace("\0", "")
    return text.split("\n")[:-1]


def as_column(values: np.ndarray | list, data_key: Mapping[str, Any]) -> np.ndarray:
    """Give a column the dtype its descriptor declares (or a sensible inferred one).

    Example:
        >>> as_column([1, 2], {"dtype": "number"}).dtype
        dtype('float64')
        >>> as_column([1.0, None], {"dtype": "number"}).tolist()
        [1.0, nan]
    """
    declared = data_key.get("dtype_numpy")
    dtype = np.dtype(declared) if declared else None
    if dtype is None and data_key.get("dtype") == "number":
        # "number" means float even when a device happened to report whole numbers.
        dtype = np.dtype("float64")
    if dtype is not None and dtype.kind in "USO" and dtype.itemsize == 0 and dtype.kind != "O":
        dtype = None  # "<U0": a string of unknown length, let numpy size it
    if isinstance(values, np.ndarray):
        if dtype is not None and dtype.kind in "biufc" and values.dtype != dtype:
            return values.astype(dtype)
        return values
    n = len(values)
    kind = data_key.get("dtype")
    numeric = kind in DTYPES or (dtype is not None and dtype.kind in "biufc")
    if numeric and any(v is None for v in values):
        # Missing readings become NaN in a numeric column, as xarray users expect.
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    shape = data_key.get("shape") or []
    if any(s is None for s in shape) or (values and isinstance(values[0], list)):
        try:
            arr = np.array(values, dtype=dtype) if dtype is not None else np.array(values)
            if arr.dtype != object:
                return arr
        except (ValueError, TypeError):
            pass
        out = np.empty(n, dtype=object)  # ragged: one array per event
        out[:] = [np.asarray(v) if v is not None else None for v in values]
        return out
    try:
        if any(v is None for v in values):
            raise TypeError
        return np.array(values, dtype=dtype) if dtype is not None else np.array(values)
    except (ValueError, TypeError):
        out = np.empty(n, dtype=object)
        out[:] = values
        return out
