"""Column pages: how a batch of events is turned into bytes and back.

A page holds the columns of up to a few thousand events of one descriptor. Reading a stream is
then a handful of blob reads and ``np.concatenate``, never a loop over events.

Layout of one encoded page::

    u32 header length | header (JSON) | column buffers, back to back

The header maps each column name to ``[codec, dtype, shape, offset, nbytes]``:

* ``raw``  numeric or boolean ndarray, C-ordered bytes (scalars per event: shape ``(n,)``);
* ``zstd`` the same, zstd-compressed: used for per-event arrays (images), where it pays;
* ``json`` a JSON list of per-event values: strings, ragged arrays, mixed or missing values;
* ``ascii`` event uids as one block of fixed-width ASCII (``|S36`` for uuid4s): used when every
  uid of the page is ASCII without NUL; decoded with ``np.frombuffer``, zero copies. Pages
  written before this codec existed hold their uids as ``json`` and are read as ever;
* ``const`` a numeric column whose values are all equal: one value is stored;
* ``same`` a numeric column equal to an earlier column of the page (timestamps often are).

Decoding a numeric column is ``np.frombuffer`` on a slice: zero copies until concatenation.
A uid block decodes to a fixed-width bytes array (what HDF5 stores); :func:`uid_list` turns it
into the ``str`` uids documents carry (it lives in :mod:`runbroker.columns`, shared with
streams and exporters).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import orjson
import zstandard

from ..columns import uid_list
from . import jsoncodec

__all__ = ["decode", "encode", "encode_parts", "to_column", "to_columns", "uid_column", "uid_list"]

_HEADER = struct.Struct("<I")
# Arrays smaller than this gain too little from compression to pay for it.
_COMPRESS_MIN_BYTES = 4096
# Numeric columns up to this size are encoded from a copy of their bytes (see encode_parts).
_SMALL_BYTES = 512
_zc = zstandard.ZstdCompressor(level=1)
_zd = zstandard.ZstdDecompressor()


def to_column(values: Sequence[Any]) -> np.ndarray | list:
    """Turn one field's per-event values into an ndarray when they are homogeneous numbers.

    Anything else (strings, ragged arrays, ``None``) stays a list and is stored as JSON.

    Example:
        >>> to_column([1.0, 2.0]).dtype
        dtype('float64')
        >>> to_column([1, 2]).dtype
        dtype('int64')
        >>> to_column(["a", "bc"])
        ['a', 'bc']
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "biufc":
            return values
        return values.tolist()
    if not values:
        return np.empty(0)
    first = values[0]
    if isinstance(first, str):
        return list(values)
    if type(first) is float:
        # The common case (readings are floats). struct refuses anything that is not a
        # number (fromiter would parse strings), so a refusal goes on to fromiter, as before.
        packed = _packed(values, "d")
        if packed is not None:
            return packed
        try:
            return np.fromiter(values, dtype=np.float64, count=len(values))
        except (TypeError, ValueError, OverflowError):
            pass  # strings, arrays or huge ints further down: let the general path decide
    elif type(first) is int:
        packed = _packed(values, "q")  # a float, or an int beyond 64 bits, falls through
        if packed is not None:
            return packed
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return list(values)
    if arr.dtype.kind in "biufc" and arr.ndim >= 1:
        return arr
    return list(values)


def to_columns(columns: Sequence[Sequence[Any]]) -> list[np.ndarray | list]:
    """:func:`to_column` of each of ``columns`` (each the per-event values of one field, all
    of one length), in their order.

    The columns whose first value is a float are converted together when each of their
    values is a number (the usual events): one ``struct`` call for all of them, each column a
    view of one table, where a conversion per field cost a small run's page more than twice
    as much. Anything else is converted column by column, as before.

    Example:
        >>> x, s = to_columns([(1.0, 2.5), ("a", "b")])
        >>> x.tolist(), s
        ([1.0, 2.5], ['a', 'b'])
    """
    floats = [i for i, column in enumerate(columns) if column and type(column[0]) is float]
    out: list[Any] = [None] * len(columns)
    if floats:
        n = len(columns[floats[0]])
        try:
            packed = _packer(n * len(floats), "d").pack(
                *chain.from_iterable(columns[i] for i in floats)
            )
        except (struct.error, TypeError, OverflowError):
            pass  # a missing value, or one that is not a number: column by column
        else:
            table = np.frombuffer(packed, dtype=np.float64).reshape(len(floats), n)
            for i, row in zip(floats, table, strict=True):
                out[i] = row
    return [
        to_column(values) if done is None else done
        for done, values in zip(out, columns, strict=True)
    ]


@lru_cache(maxsize=64)
def _packer(count: int, code: str) -> struct.Struct:
    return struct.Struct(f"{count}{code}")


def _packed(values: Sequence[Any], code: str) -> np.ndarray | None:
    """``values`` as a float64 (``code`` "d") or int64 ("q") array, or None if one of them
    is not such a number.

    ``struct`` converts a list of Python numbers about twice as fast as ``np.fromiter``:
    it reads each through the same C conversion, without numpy's per-item dispatch. Floats
    take ints, bools and numpy scalars as ``float()`` does; ints take what has ``__index__``.

    Example:
        >>> _packed([1.5, 2], "d").tolist(), _packed([1, 2.5], "q")
        ([1.5, 2.0], None)
    """
    try:
        raw = _packer(len(values), code).pack(*values)
    except (struct.error, TypeError, OverflowError):
        return None
    return np.frombuffer(raw, dtype=np.float64 if code == "d" else np.int64)


def uid_column(uids: Sequence[str] | np.ndarray) -> np.ndarray | list:
    """A page's event uids as the block :func:`encode` stores (a fixed-width ASCII bytes
    array, our own copy) when they make one, else as a list.

    Making the block page by page, while the page is in the CPU's cache, costs a third of
    making it from the joined uids of a whole commit, and the join is then one memcpy.

    Example:
        >>> uid_column(["e1", "e2"]), uid_column(["e1", "e22"])
        (array([b'e1', b'e2'], dtype='|S2'), ['e1', 'e22'])
    """
    if isinstance(uids, np.ndarray) and uids.dtype.kind == "S":
        return uids.copy() if uids.dtype.itemsize else uids.tolist()
    block = _ascii_block(uids)
    if block is None:
        return uids.tolist() if isinstance(uids, np.ndarray) else list(uids)
    buf, dtype = block
    return np.frombuffer(buf, dtype=dtype)


def encode(columns: Mapping[str, np.ndarray | list]) -> bytes:
    """Encode named columns into one page blob.

    Example:
        >>> blob = encode({"x": np.arange(3.0), "s": ["a", "b", "c"]})
        >>> decode(blob)["x"].tolist()
        [0.0, 1.0, 2.0]
    """
    return b"".join(encode_parts(columns))


def encode_parts(columns: Mapping[str, np.ndarray | list]) -> list[bytes | memoryview]:
    """The pieces of :func:`encode`'s blob, in order, not yet joined (a writer may put
    them in place without the join's copy). Numeric columns are views of the arrays.

    Example:
        >>> parts = encode_parts({"x": np.arange(3.0)})
        >>> decode(b"".join(parts))["x"].tolist()
        [0.0, 1.0, 2.0]
    """
    header: dict[str, list] = {}
    buffers: list[bytes | memoryview] = []
    offset = 0
    # (dtype, shape, bytes) of small columns, (dtype, shape, first, last) of large ones ->
    # (name, column): the columns an equal one may refer to
    seen: dict[tuple, tuple[str, np.ndarray]] = {}
    for name, col in columns.items():
        if isinstance(col, np.ndarray) and col.dtype.kind in "biufc" and col.size:
            numeric = _small_numeric if col.nbytes <= _SMALL_BYTES else _large_numeric
            codec, buf = numeric(name, col, seen)
            if codec == "same":  # buf: the name of the equal column
                header[name] = ["same", col.dtype.str, list(col.shape), buf, 0]
                continue
            header[name] = [codec, col.dtype.str, list(col.shape), offset, len(buf)]
        elif name == "uid":  # strings, as the schema requires: no need to look for NaN
            block = _ascii_block(col)
            if block is None:
                buf = orjson.dumps(col if isinstance(col, list) else uid_list(col))
                header[name] = ["json", None, [len(col)], offset, len(buf)]
            else:
                buf, dtype = block
                header[name] = ["ascii", dtype, [len(col)], offset, len(buf)]
        else:
            buf = jsoncodec.dumps(col)
            header[name] = ["json", None, [len(col)], offset, len(buf)]
        buffers.append(buf)
        offset += len(buf)
    head = orjson.dumps(header)
    return [_HEADER.pack(len(head)), head, *buffers]


def _small_numeric(name: str, col: np.ndarray, seen: dict) -> tuple[str, Any]:
    """(codec, buffer) of a small numeric column, or ("same", the equal column's name).

    A small run's page: its bytes, compared as bytes, cost a third of the numpy tests of
    :func:`_large_numeric` (each makes numpy scalars); equal bytes are also exactly equal
    values, NaN and -0.0 included.
    """
    buf = col.tobytes()
    key = (col.dtype.str, col.shape, buf)
    if key in seen:
        return "same", seen[key][0]
    seen[key] = (name, col)
    size = col.dtype.itemsize
    if col.ndim == 1 and buf == buf[:size] * len(col):
        return "const", buf[:size]
    return "raw", buf


def _large_numeric(name: str, col: np.ndarray, seen: dict) -> tuple[str, Any]:
    """(codec, buffer) of a numeric column, a view of it where stored raw, or ("same", the
    equal column's name)."""
    col = np.ascontiguousarray(col)
    flat = col.reshape(-1)
    bits = _bits(flat)
    # Cheap tests first: most columns differ in their first or last value.
    key = (col.dtype.str, col.shape, flat[0].tobytes(), flat[-1].tobytes())
    found = seen.get(key)
    if found is not None and (found[1] is col or np.array_equal(_bits(found[1].reshape(-1)), bits)):
        return "same", found[0]
    seen[key] = (name, col)
    if (
        col.ndim == 1
        and bits.dtype.itemsize == col.dtype.itemsize
        and bits[0] == bits[-1]
        and (bits == bits[0]).all()
    ):
        return "const", flat[:1].tobytes()
    buf = memoryview(col).cast("B")
    if col.ndim > 1 and col.nbytes >= _COMPRESS_MIN_BYTES:
        packed = _zc.compress(buf)
        if len(packed) < 0.9 * col.nbytes:
            return "zstd", packed
    return "raw", buf


def _bits(flat: np.ndarray) -> np.ndarray:
    """A contiguous 1-D array's bits as unsigned integers, one per value where the item size
    allows (else bytes): equal exactly when the stored bytes would be, NaN and -0.0 included
    (a column of 0.0 and -0.0 is not a constant, and NaN columns may be the same)."""
    size = flat.dtype.itemsize
    return flat.view(f"<u{size}") if size in (1, 2, 4, 8) else flat.view(np.uint8)


def decode(
    blob: bytes, names: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> dict[str, np.ndarray | list]:
    """Decode the named columns (all when ``names`` is None) of a page blob.

    Columns absent from the page, or named in ``skip``, are absent from the result.

    Example:
        >>> decode(encode({"x": np.arange(2), "y": np.ones(2)}), ["y"])
        {'y': array([1., 1.])}
    """
    (hlen,) = _HEADER.unpack_from(blob)
    header = orjson.loads(memoryview(blob)[4 : 4 + hlen])
    base = 4 + hlen
    wanted = header if names is None else [n for n in names if n in header]
    if skip:
        wanted = [n for n in wanted if n not in skip]
    out: dict[str, np.ndarray | list] = {}
    for name in wanted:
        codec, dtype, shape, offset, nbytes = header[name]
        if codec == "same":
            codec, dtype, shape, offset, nbytes = header[offset]
        start = base + offset
        if codec == "const":
            value = np.frombuffer(blob, dtype=dtype, count=1, offset=start)
            out[name] = np.full(shape, value[0], dtype=dtype)
            continue
        if codec == "json":
            text = memoryview(blob)[start : start + nbytes]
            # uids are strings (orjson wrote them): nothing the standard library must read.
            out[name] = orjson.loads(text) if name == "uid" else jsoncodec.loads(text)
            continue
        if codec == "ascii":
            out[name] = np.frombuffer(blob, dtype=dtype, count=shape[0], offset=start)
            continue
        if codec == "zstd":
            raw: Any = _zd.decompress(blob[start : start + nbytes])
            arr = np.frombuffer(raw, dtype=dtype)
        else:
            count = nbytes // np.dtype(dtype).itemsize
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=start)
        out[name] = arr.reshape(shape)
    return out


def _ascii_block(uids: Sequence[str] | np.ndarray) -> tuple[bytes | memoryview, str] | None:
    """Event uids as one fixed-width ASCII block and its dtype, or None when they are not all
    ASCII strings of one length without NUL (numpy strips NUL from the end of fixed-width
    values, so a NUL could not come back)."""
    if isinstance(uids, np.ndarray):
        if uids.dtype.kind == "S" and uids.dtype.itemsize:
            # A block decoded before (perhaps widened by a join): no value holds a NUL, so
            # the padding of shorter ones is unambiguous.
            uids = np.ascontiguousarray(uids)
            return memoryview(uids).cast("B"), uids.dtype.str
        uids = uids.tolist()
    if not uids or not isinstance(uids[0], str):
        return None
    width, n = len(uids[0]), len(uids)
    try:
        joined = "".join(uids)
    except TypeError:  # not all strings: the JSON codec refuses or keeps them
        return None
    if not width or len(joined) != width * n or not joined.isascii() or "\0" in joined:
        return None
    # All are one length when, joined with a NUL (which no value holds), the NULs fall
    # every width + 1 characters: checked in C, where len() of each value was a Python loop.
    if n > 1 and "\0".join(uids)[width :: width + 1] != "\0" * (n - 1):
        return None
    return joined.encode("ascii"), f"|S{width}"
