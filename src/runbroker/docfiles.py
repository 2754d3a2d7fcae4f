"""Files of one run's documents, ``.jsonl`` and ``.msgpack``: writing and reading them back.

The folder store keeps each run in such a file and the ``jsonl`` and ``msgpack`` exports write
them, so the format lives here, below both :mod:`runbroker.store` and :mod:`runbroker.export`.

- JSON Lines: one ``[name, document]`` array per line, as suitcase-jsonl writes it.
- msgpack: consecutive msgpack ``[name, document]`` arrays, numpy arrays in msgpack-numpy's
  wire format (dtype and shape kept exactly).

JSON has no integer widths, so a JSON Lines writer declares a field's numpy dtype
(``dtype_numpy`` in the descriptor's data key, when the descriptor did not say) wherever a
plain list would read back as another dtype, e.g. uint16 images. It therefore writes each
descriptor just before its first event (or stream datum, or the stop document). NaN becomes
``null`` and infinities the strings ``"Infinity"`` / ``"-Infinity"`` in event columns (as
protobuf's JSON mapping does); the reader turns both back into floats. In metadata documents,
non-finite floats become ``null``. Integers beyond 64 bits are written exactly.

Example:
    >>> path, = run.export("jsonl", tmp_path)
    >>> [name for name, _ in read(path)][:2]
    ['start', 'descriptor']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np
import orjson

from .assets import external_kind
from .documents import DOCUMENT_NAMES
from .errors import ExportError
from .notestream import NOTE

__all__ = [
    "EVENT_DOCS",
    "READERS",
    "SUFFIXES",
    "DescriptorsHeldBack",
    "dumps",
    "json_values",
    "jsonl_line",
    "msgpack_record",
    "read",
    "read_jsonl",
    "read_msgpack",
]

EVENT_DOCS = ("event", "event_page")
# dtypes a JSON list of numbers reads back as without being told.
_NATURAL = (np.dtype("int64"), np.dtype("float64"), np.dtype("bool"))
# A run of 20 or more digits may be an integer beyond 64 bits, which orjson reads as a float.
# Found by mapping every digit to 0 and looking for 20 zeros: a C scan, where a regular
# expression retries at every digit of every number.
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 20
# msgpack ext type holding an integer beyond 64 bits, as its decimal digits.
_EXT_BIGINT = 1


# -- JSON -----------------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON: numpy arrays as lists, NaN and infinities as ``null``,
    integers of any size exactly.

    Example:
        >>> dumps({"a": np.arange(3, dtype="uint16"), "b": float("nan"), "c": 2**70})
        b'{"a":[0,1,2],"b":null,"c":1180591620717411303424}'
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    except TypeError:
        # Integers beyond 64 bits, non-native byte order, non-string keys: orjson refuses
        # them, the standard library (given plain values) does not.
        return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False).encode()


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _plain(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return str(value)


def _plain(value: Any) -> Any:
    """Builtin values that the standard json module writes as orjson would (NaN -> null)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, complex):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _loads(line: bytes) -> Any:
    if _LONG_DIGITS in line.translate(_DIGITS_TO_0):
        return json.loads(line)  # exact for integers of any size
    return orjson.loads(line)


def json_values(values: Any) -> Any:
    """An event column (or value) with infinities spelled as strings, so they survive JSON.

    Example:
        >>> json_values(np.array([1.0, np.inf, np.nan]))
        [1.0, 'Infinity', None]
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "f" or not values.size or not np.isinf(values).any():
            return values
        out = values.astype(object)
        out[np.isnan(values)] = None
        out[np.isposinf(values)] = "Infinity"
        out[np.isneginf(values)] = "-Infinity"
        return out.tolist()
    if isinstance(values, (float, np.floating)):
        if math.isinf(values):
            return "Infinity" if values > 0 else "-Infinity"
        return values
    if isinstance(values, (list, tuple)):
        if set(map(type, values)) <= _NOT_FLOAT:  # datum ids, counts: nothing to spell
            return values
        return [json_values(v) for v in values]
    return values


_NOT_FLOAT = {str, int, bool, type(None)}


def _json_events(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    for part in ("data", "timestamps"):
        if part in doc:
            out[part] = {k: json_values(v) for k, v in doc[part].items()}
    return out


def jsonl_line(name: str, doc: Mapping[str, Any]) -> bytes:
    """One line of a JSON Lines file: ``[name, doc]`` and a newline.

    Example:
        >>> jsonl_line("event", {"data": {"x": float("inf")}, "timestamps": {}})
        b'["event",{"data":{"x":"Infinity"},"timestamps":{}}]\\n'
    """
    if name in EVENT_DOCS:
        doc = _json_events(doc)
    return dumps([name, doc]) + b"\n"


# -- msgpack ----------------------------------------------------------------------------------


def _mp_encode(value: Any) -> Any:
    """msgpack-numpy's wire format for numeric/string arrays; objects become lists."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OV":
            return value.tolist()
        arr = np.ascontiguousarray(value)
        return {
            b"nd": True,
            b"type": arr.dtype.str,
            b"kind": b"",
            b"shape": list(arr.shape),
            b"data": arr.tobytes(),
        }
    if isinstance(value, (np.bool_, np.number)):
        return {b"nd": False, b"type": value.dtype.str, b"data": value.tobytes()}
    if isinstance(value, complex):
        return {b"complex": True, b"data": repr(value)}
    if isinstance(value, int):  # msgpack hands over the integers beyond 64 bits
        return msgpack.ExtType(_EXT_BIGINT, str(value).encode())
    return str(value)


def _mp_decode(obj: dict) -> Any:
    # msgpack-numpy's own decoder unpickles object arrays; an export never holds them, and a
    # file that does is refused rather than run.
    if b"nd" in obj:
        kind = obj.get(b"kind", b"")
        if kind:
            raise ValueError(f"array of kind {kind!r} (runbroker never writes pickled arrays)")
        dtype = np.dtype(obj[b"type"])
        if obj[b"nd"] is True:
            return np.frombuffer(obj[b"data"], dtype=dtype).reshape(obj[b"shape"])
        return np.frombuffer(obj[b"data"], dtype=dtype)[0]
    if b"complex" in obj:
        return complex(obj[b"data"])
    return obj


def _mp_ext(code: int, data: bytes) -> Any:
    if code == _EXT_BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


def _bigints(value: Any) -> Any:
    """``value`` with integers beyond 64 bits as ext types (msgpack holds up to 64 bits)."""
    if isinstance(value, dict):
        return {k: _bigints(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bigints(v) for v in value]
    big = isinstance(value, int) and not -(2**63) <= value < 2**64
    if big and not isinstance(value, bool):
        return msgpack.ExtType(_EXT_BIGINT, str(value).encode())
    return value


def msgpack_record(name: str, doc: Mapping[str, Any]) -> bytes:
    """One record of a msgpack file: ``[name, doc]``, arrays in msgpack-numpy's format.

    Example:
        >>> msgpack.unpackb(msgpack_record("stop", {"uid": "s1"}))
        ['stop', {'uid': 's1'}]
    """
    try:
        return msgpack.packb([name, doc], default=_mp_encode)
    except OverflowError:
        return msgpack.packb([name, _bigints(doc)], default=_mp_encode)


# -- writing ----------------------------------------------------------------------------------


class DescriptorsHeldBack:
    """Holds each descriptor back until its first event, whose values tell the dtypes that the
    encoding would lose (and, when filling, the dtype of the pixels); a writer of document
    files mixes it in and implements ``_write``.

    ``declare_dtypes``: declare ``dtype_numpy`` where the encoding would lose a field's dtype.
    ``fill``: the events hold the detector data (their data keys no longer point at files).
    """

    declare_dtypes: ClassVar[bool] = False
    fill: bool = False
    descriptors: dict[str, dict[str, Any]]
    _pending: dict[str, Mapping[str, Any]]  # descriptors not written yet, in arrival order

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _write_after_descriptor(self, name: str, doc: Mapping[str, Any]) -> None:
        """Write ``doc`` as it came, after its descriptor if that is still held back."""
        desc = self.descriptors.get(doc.get("descriptor", ""))
        if desc is not None:
            data = doc["data"] if name in EVENT_DOCS else None
            self._release(desc, data if name == "event_page" else None, data)
        self._write(name, doc)

    def _release(
        self,
        desc: Mapping[str, Any],
        columns: Mapping[str, Any] | None,
        event_data: Mapping[str, Any] | None,
    ) -> None:
        if desc["uid"] not in self._pending:
            return
        if columns is None and event_data is not None:
            columns = {k: [v] for k, v in event_data.items()}
        stream = desc.get("name", "primary")
        # Descriptors go out in the order they came (it orders the run's streams): earlier
        # ones first, learning dtypes from these columns if they are of the same stream.
        for uid, other in list(self._pending.items()):
            same = other.get("name", "primary") == stream
            self._write("descriptor", self._declared(other, columns if same else None))
            del self._pending[uid]
            if uid == desc["uid"]:
                break

    def _release_all(self) -> None:
        for uid, desc in list(self._pending.items()):
            self._write("descriptor", self._declared(desc, None))
            del self._pending[uid]

    def _declared(
        self, desc: Mapping[str, Any], columns: Mapping[str, Any] | None
    ) -> Mapping[str, Any]:
        if not (self.declare_dtypes or self.fill):
            return desc
        keys: dict[str, Any] = {}
        changed = False
        for key, dk in desc["data_keys"].items():
            external = bool(external_kind(dk))
            if external and not self.fill:
                keys[key] = dk
                continue
            new = dict(dk)
            if external:
                # The pixels are in the events now; the data key no longer points at files.
                new.pop("external", None)
            if not new.get("dtype_numpy") and columns is not None and key in columns:
                dtype = _dtype_of(columns[key])
                if dtype is not None and (
                    external or dtype not in _NATURAL or dk.get("dtype") == "array"
                ):
                    new["dtype_numpy"] = dtype.str
            changed |= new != dk
            keys[key] = new
        return {**desc, "data_keys": keys} if changed else desc


def _dtype_of(values: Any) -> np.dtype | None:
    if not isinstance(values, np.ndarray):
        try:
            values = np.asarray(values)
        except ValueError:  # ragged
            return None
    return values.dtype if values.dtype.kind in "biuf" else None


# -- reading back -----------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The ``(name, doc)`` pairs of a JSON Lines export, event columns as numpy arrays.

    Raises ``ExportError`` naming the file and line when it is not such an export or is cut
    short.

    Example:
        >>> path, = run.export("jsonl", tmp_path)
        >>> copy = runbroker.temp()
        >>> n = copy.ingest(read_jsonl(path))
        >>> copy[-1].primary.read().identical(run.primary.read())
        True
    """
    path = Path(path)
    reader = _Columns(path)
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = _loads(line)
            except ValueError as err:
                if not line.endswith(b"\n"):
                    raise ExportError(
                        f"{path}: line {number} is cut short (the file is truncated, or "
                        "still being written)"
                    ) from None
                raise ExportError(f"{path}, line {number}: not JSON ({err})") from None
            yield reader.pair(item, f"line {number}")


def read_msgpack(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The ``(name, doc)`` pairs of a msgpack export.

    Raises ``ExportError`` naming the file and byte offset when it is not such an export or
    is cut short.

    Example:
        >>> path, = run.export("msgpack", tmp_path)
        >>> [name for name, _ in read_msgpack(path)][-1]
        'stop'
    """
    path = Path(path)
    reader = _Columns(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(
            f, raw=False, object_hook=_mp_decode, ext_hook=_mp_ext, max_buffer_size=0
        )
        number = 0
        while True:
            offset = unpacker.tell()
            try:
                item = unpacker.unpack()
            except msgpack.OutOfData:
                break
            except (ValueError, TypeError, msgpack.UnpackException) as err:
                raise ExportError(
                    f"{path}: not a runbroker msgpack export: cannot decode the data at byte "
                    f"{offset} ({err})"
                ) from None
            number += 1
            yield reader.pair(item, f"record {number} (byte {offset})")
        if unpacker.tell() != size:
            raise ExportError(
                f"{path}: cut short after record {number}, at byte {unpacker.tell()} of "
                f"{size} (the file is truncated, or still being written)"
            )


#: File suffix -> the reader of such a file of one run's documents.
READERS: dict[str, Callable[[str | os.PathLike[str]], Iterator[tuple[str, dict]]]] = {
    ".jsonl": read_jsonl,
    ".msgpack": read_msgpack,
}
#: Suffixes of files of one run's documents.
SUFFIXES = tuple(READERS)


def read(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict]]:
    """The ``(name, doc)`` pairs of a ``.jsonl`` or ``.msgpack`` file, read by its suffix.

    Example:
        >>> path, = run.export("msgpack", tmp_path)
        >>> next(read(path))[0]
        'start'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in READERS:
        raise ExportError(
            f"{path}: not a file of documents; runbroker reads {', '.join(SUFFIXES)} files"
        )
    return READERS[suffix](path)


# An export holds the run's notes after its documents (runbroker.notestream).
_NAMES = (*DOCUMENT_NAMES, NOTE)


class _Columns:
    """Checks each record and gives event columns numpy arrays of their declared dtypes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, Mapping[str, Any]] = {}  # descriptor uid -> data_keys
        self.started = False

    def pair(self, item: Any, where: str) -> tuple[str, dict]:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or item[0] not in _NAMES
            or not isinstance(item[1], dict)
        ):
            raise ExportError(
                f"{self.path}, {where}: expected a [name, document] pair with a document "
                f"name ({', '.join(_NAMES)}), found {_short(item)}"
            )
        name, doc = item
        if not self.started:
            if name != "start":
                raise ExportError(
                    f"{self.path}, {where}: the first document is a {name}, not a start "
                    "document; is this an export of one run?"
                )
            self.started = True
        if name == "descriptor":
            self.keys[doc.get("uid", "")] = doc.get("data_keys") or {}
        elif name in EVENT_DOCS:
            doc = self._typed(name, doc)
        return name, doc

    def _typed(self, name: str, doc: dict) -> dict:
        keys = self.keys.get(doc.get("descriptor", ""), {})
        page = name == "event_page"
        out = dict(doc)
        data = {}
        for key, values in (doc.get("data") or {}).items():
            dtype = _numeric(keys.get(key) or {})
            if dtype is not None:
                # Values unlike what the descriptor says go on as they are: the catalog
                # names the document and field when it refuses them.
                with contextlib.suppress(ValueError, TypeError):
                    values = _as(values, dtype, page)
            data[key] = values
        out["data"] = data
        out["timestamps"] = {
            k: _as(v, np.dtype("float64"), page) for k, v in (doc.get("timestamps") or {}).items()
        }
        if page:
            out["time"] = np.asarray(doc["time"], dtype="float64")
            out["seq_num"] = np.asarray(doc["seq_num"], dtype="int64")
        return out


def _numeric(dk: Mapping[str, Any]) -> np.dtype | None:
    if external_kind(dk):
        return None
    declared = dk.get("dtype_numpy")
    if declared:
        try:
            dtype = np.dtype(declared)
        except TypeError:
            return None
        return dtype if dtype.kind in "biuf" else None
    if dk.get("dtype") == "number":
        return np.dtype("float64")
    return None


def _as(values: Any, dtype: np.dtype, page: bool) -> Any:
    if isinstance(values, np.ndarray):
        return values
    if dtype.kind == "f" or page or isinstance(values, list):
        arr = np.asarray(values, dtype=dtype)  # null -> NaN, "Infinity" -> inf
        return arr if page or arr.ndim else arr[()]
    return values


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
