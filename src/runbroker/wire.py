"""The bytes between a runbroker server and its clients: msgpack, with numpy arrays kept whole.

Both ends of the HTTP service speak it (``application/x-msgpack``): documents, run records,
page lists and page columns go out as msgpack maps and lists; a numpy array travels as an
extension type holding its dtype, shape and raw bytes, so a column of a million floats costs
one ``memcpy`` at each end instead of a million msgpack numbers.

A long answer (a stream's pages, a run's documents) is a **framed stream**: a sequence of
``[tag, payload]`` records. Every stream ends with ``["end", count]``; a reader that reaches
the end of the bytes without it knows the answer was cut short (a server restarted mid-read)
and raises instead of returning part of the data as if it were all. A server that fails
mid-stream sends ``["error", {code, message, detail}]`` and stops.

Example:
    >>> import numpy as np
    >>> back = unpack(pack({"x": np.arange(3.0), "n": np.int64(2)}))
    >>> back["x"].tolist(), back["n"]
    ([0.0, 1.0, 2.0], 2)
    >>> list(records(iter([frame("page", 1), frame("end", 1)])))
    [('page', 1)]
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack
import numpy as np

from .errors import TruncatedStreamError, from_dict

__all__ = [
    "FRAMES",
    "MSGPACK",
    "end",
    "frame",
    "pack",
    "parts",
    "read_parts",
    "records",
    "stream_end",
    "unpack",
]

MSGPACK = "application/x-msgpack"

_EXT_ARRAY = 1
_EXT_BIGINT = 2


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OV":
            return value.tolist()
        arr = np.ascontiguousarray(value)
        head = msgpack.packb([arr.dtype.str, list(arr.shape)])
        # One copy of the array's bytes (head + arr.tobytes() would make two).
        return msgpack.ExtType(_EXT_ARRAY, b"".join((head, memoryview(arr).cast("B"))))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int):  # beyond 64 bits
        return msgpack.ExtType(_EXT_BIGINT, str(value).encode())
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot send a value of type {type(value).__name__}: {value!r:.80}")


def _decode_ext(code: int, data: bytes) -> Any:
    if code == _EXT_ARRAY:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        dtype, shape = unpacker.unpack()
        body = memoryview(data)[unpacker.tell() :]
        # A copy: arrays users get are writable, as a local read gives them.
        return np.frombuffer(body, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == _EXT_BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


# Packers kept per thread, and their buffers with them: msgpack.packb grows a fresh buffer for
# every call, and for answers of megabytes (a page of columns) the fresh pages the allocator
# maps for it cost ten times the copying (12 ms instead of 1.5 ms for a 7 MB page).
_packers = threading.local()
# A packer whose buffer grew past this is dropped after use rather than kept for the thread.
_KEEP_BUFFER = 64 * 2**20


def pack(value: Any) -> bytes:
    """``value`` as msgpack bytes (numpy arrays as arrays, tuples as lists)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = msgpack.Packer(default=_encode, use_bin_type=True, autoreset=False)
    else:
        _packers.packer = None  # a pack() called while this one runs makes its own
    try:
        packer.pack(value)
        out = packer.bytes()
    finally:
        packer.reset()
    if len(out) <= _KEEP_BUFFER:
        _packers.packer = packer
    return out


def unpack(data: bytes) -> Any:
    """What :func:`pack` packed."""
    return msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=False)


def frame(tag: str, payload: Any) -> bytes:
    """One record of a framed stream."""
    return pack([tag, payload])


def end(count: int) -> bytes:
    """The record that ends a framed stream of ``count`` records."""
    return frame("end", count)


def records(chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """The ``(tag, payload)`` records of a framed stream, read as its bytes arrive.

    Raises the error a server sent mid-stream, and
    :class:`~runbroker.errors.TruncatedStreamError` when the bytes end before the end record.
    """
    unpacker = msgpack.Unpacker(
        ext_hook=_decode_ext, raw=False, strict_map_key=False, max_buffer_size=0
    )
    seen = 0
    for chunk in chunks:
        unpacker.feed(chunk)
        for tag, payload in unpacker:
            if tag == "end":
                if payload != seen:
                    raise TruncatedStreamError(f"the answer held {seen} records of {payload}")
                return
            if tag == "error":
                raise from_dict(payload)
            seen += 1
            yield tag, payload
    raise TruncatedStreamError(
        f"the answer stopped after {seen} records without its end (the server stopped "
        "mid-answer); nothing of it was used"
    )


# -- framed streams with arrays outside the msgpack ------------------------------------------
#
# The protocol's long answers (a stream's pages, a run's documents, detector data) carry large
# arrays. In msgpack each would be copied into the packed bytes on the server and out of them
# twice on the client; in this framing a record is a 4-byte length, a msgpack header in which
# each array is a placeholder (dtype, shape), then the arrays' raw bytes in order. The server
# hands the arrays' own memory to the socket; the client reads each straight into the numpy
# array it returns. Records, end and error records are as in :func:`records`.

FRAMES = "application/vnd.runbroker.frames"

_EXT_BUFFER = 3
_LENGTH = struct.Struct("<I")


def parts(tag: str, payload: Any) -> list[Any]:
    """One record of a raw-buffer stream, as bytes-like pieces to send in order.

    Example:
        >>> pieces = parts("page", {"x": np.arange(2.0)})
        >>> len(pieces), bytes(pieces[1])[:8] == np.arange(2.0).tobytes()[:8]
        (2, True)
    """
    buffers: list[Any] = []

    def outside(value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype.kind not in "OV":
            arr = np.ascontiguousarray(value)
            buffers.append(memoryview(arr).cast("B") if arr.nbytes else b"")
            return msgpack.ExtType(_EXT_BUFFER, msgpack.packb([arr.dtype.str, list(arr.shape)]))
        return _encode(value)

    head = msgpack.packb([tag, payload], default=outside, use_bin_type=True)
    return [_LENGTH.pack(len(head)) + head, *buffers]


def stream_end(count: int) -> list[Any]:
    """The end record of a raw-buffer stream of ``count`` records."""
    return parts("end", count)


class _Chunks:
    """Exact reads over an iterator of byte chunks (an HTTP answer as it arrives)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(bytes(self._buf) + chunk) if self._buf else memoryview(chunk)
                return True
        return False

    def at_end(self) -> bool:
        return not self._buf and not self._more()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._more():
                raise EOFError
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    def read_into(self, out: memoryview) -> None:
        filled = 0
        while filled < len(out):
            if not self._buf and not self._more():
                raise EOFError
            take = min(len(self._buf), len(out) - filled)
            out[filled : filled + take] = self._buf[:take]
            self._buf = self._buf[take:]
            filled += take


def read_parts(chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """The ``(tag, payload)`` records of a raw-buffer stream (see :func:`parts`), as
    :func:`records` reads a msgpack one: errors sent mid-stream are raised, a stream cut
    short raises :class:`~runbroker.errors.TruncatedStreamError`.

    Example:
        >>> pieces = [*parts("page", {"x": np.arange(3)}), *stream_end(1)]
        >>> [(tag, p["x"].tolist()) for tag, p in read_parts([b"".join(map(bytes, pieces))])]
        [('page', [0, 1, 2])]
    """
    reader = _Chunks(chunks)
    seen = 0
    arrays: list[np.ndarray] = []

    def placeholder(code: int, data: bytes) -> Any:
        if code != _EXT_BUFFER:
            return _decode_ext(code, data)
        dtype, shape = msgpack.unpackb(data)
        arrays.append(np.empty(shape, dtype=np.dtype(dtype)))
        return arrays[-1]

    try:
        while not reader.at_end():
            (length,) = _LENGTH.unpack(reader.read(_LENGTH.size))
            arrays.clear()
            tag, payload = msgpack.unpackb(
                reader.read(length), ext_hook=placeholder, raw=False, strict_map_key=False
            )
            for arr in arrays:  # filled in place: the payload holds these very arrays
                if arr.nbytes:
                    reader.read_into(memoryview(arr).cast("B"))
            if tag == "end":
                if payload != seen:
                    raise TruncatedStreamError(f"the answer held {seen} records of {payload}")
                return
            if tag == "error":
                raise from_dict(payload)
            seen += 1
            yield tag, payload
    except EOFError:
        pass
    raise TruncatedStreamError(
        f"the answer stopped after {seen} records without its end (the server stopped "
        "mid-answer); nothing of it was used"
    )
