"""JSON, JSON Lines and msgpack exports, and reading the last two back for ingest.

- ``json``: one JSON document per run holding its metadata (``record()``: uid, start, stop,
  descriptors, complete) and every stream as columns. Written when the run ends.
- ``jsonl``: the run's document stream, one ``[name, document]`` array per line, as
  suitcase-jsonl writes it. Lines are flushed as documents arrive, so a live file grows.
- ``msgpack``: the same document stream as consecutive msgpack ``[name, document]`` arrays,
  numpy arrays in msgpack-numpy's wire format (dtype and shape kept exactly).

``read_jsonl`` and ``read_msgpack`` give the ``(name, doc)`` pairs back:
``runbroker.temp().ingest(read_jsonl(path))`` reproduces the run, reads identical.

JSON has no integer widths, so the JSON Lines exporter declares a field's numpy dtype
(``dtype_numpy`` in the descriptor's data key, when the descriptor did not say) wherever a
plain list would read back as another dtype, e.g. uint16 images. It therefore writes each
descriptor just before its first event (or stream datum, or the stop document). NaN becomes
``null`` and infinities the strings ``"Infinity"`` / ``"-Infinity"`` in event columns (as
protobuf's JSON mapping does); the reader turns both back into floats. In metadata documents,
non-finite floats become ``null``. Integers beyond 64 bits are written exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import msgpack
import numpy as np
import orjson

from ..assets import external_kind, fill_flag
from ..documents import DOCUMENT_NAMES
from .base import Exporter, ExportError, Page

__all__ = [
    "JSONExporter",
    "JSONLinesExporter",
    "MsgpackExporter",
    "dumps",
    "read_jsonl",
    "read_msgpack",
]

_ASSET_DOCS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")
_EVENT_DOCS = ("event", "event_page")
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


def _json_values(values: Any) -> Any:
    """An event column (or value) with infinities spelled as strings, so they survive JSON."""
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
        return [_json_values(v) for v in values]
    return values


_NOT_FLOAT = {str, int, bool, type(None)}


def _json_events(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    for part in ("data", "timestamps"):
        if part in doc:
            out[part] = {k: _json_values(v) for k, v in doc[part].items()}
    return out


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


# -- exporters --------------------------------------------------------------------------------


class _DocumentStream(Exporter):
    """Writes the documents themselves, one record each, flushed as they come."""

    #: Whether to declare ``dtype_numpy`` where the encoding would lose a field's dtype.
    declare_dtypes: ClassVar[bool] = False

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fill: bool = False,
        opener: Callable[[Path], IO[bytes]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill = fill_flag(fill)
        #: Where the bytes of the file named ``path`` go, if not to that file: a pack keeps
        #: them in memory and writes them on another thread (creating a file can cost more
        #: than encoding a small run).
        self.opener = opener
        self.needs_pixels = fill
        self._file: IO[bytes] | None = None
        self._pending: dict[str, dict[str, Any]] = {}  # descriptors not written yet

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name in _EVENT_DOCS and not self.fill and self.start_doc and not self._closed:
            desc = self.descriptors.get(doc.get("descriptor", ""))
            if desc is not None:
                # Events go out as they came: no Page (and no copy) is needed.
                data = doc["data"]
                self._release(desc, data if name == "event_page" else None, data)
                self._write(name, doc)
                return
        super().__call__(name, doc)
        if name in _ASSET_DOCS and not self.fill:
            if name == "stream_datum" and doc.get("descriptor") in self.descriptors:
                self._release(self.descriptors[doc["descriptor"]], None, None)
            self._write(name, doc)

    def start(self, doc: dict[str, Any]) -> None:
        path = self.new_path(make_directory=self.opener is None)
        if self.opener is not None:
            self._file = self.opener(path)
        else:
            self._file = open(path, self.mode + "b")  # noqa: SIM115 -- closed in finish()
        self._write("start", doc)

    def descriptor(self, doc: dict[str, Any]) -> None:
        self._pending[doc["uid"]] = doc

    def event_page(self, page: Page) -> None:
        # Only when filling: the page holds the pixels read from the detector files.
        desc = page.descriptor
        self._release(desc, page.data, None)
        self._write(
            "event_page",
            {
                "descriptor": desc["uid"],
                "uid": page.uid,
                "time": page.time,
                "seq_num": page.seq_num,
                "data": page.data,
                "timestamps": page.timestamps,
            },
        )

    def stop(self, doc: dict[str, Any]) -> None:
        self._release_all()
        self._write("stop", doc)

    def finish(self, complete: bool) -> None:
        if self._file is None:
            return
        try:
            self._release_all()
        finally:
            self._file.close()

    # A descriptor is held back until its first event, whose values tell the dtypes that the
    # encoding would lose (and, when filling, the dtype of the pixels).
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


class JSONLinesExporter(_DocumentStream):
    """The run's documents as JSON Lines: one ``[name, document]`` per line.

    Options: ``fill=True`` puts the detector data from files into the events (and leaves
    out the resource and datum documents), for a file that stands alone.

    Example:
        >>> from runbroker.export import exporter
        >>> exp = exporter("jsonl", tmp_path)
        >>> for name, doc in run.documents(arrays=True):
        ...     exp(name, doc)
        >>> path, = exp.close()
        >>> [name for name, _ in read_jsonl(path)][:2]
        ['start', 'descriptor']
    """

    format = "jsonl"
    suffix = ".jsonl"
    declare_dtypes = True

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        if name in _EVENT_DOCS:
            doc = _json_events(doc)
        assert self._file is not None
        self._file.write(dumps([name, doc]) + b"\n")
        if self.live:  # a live file is read as it grows; a prompt export is read when closed
            self._file.flush()


class MsgpackExporter(_DocumentStream):
    """The run's documents as a sequence of msgpack ``[name, document]`` arrays.

    Arrays are stored in msgpack-numpy's format (dtype, shape, raw bytes), so values come
    back bit for bit; ``msgpack.Unpacker(f, object_hook=msgpack_numpy.decode)`` reads it
    outside runbroker. Options: ``fill=True`` as for ``jsonl``.

    Example:
        >>> path, = run.export("msgpack", tmp_path)
        >>> copy = runbroker.temp()
        >>> n = copy.ingest(read_msgpack(path))
        >>> copy[-1].primary.read().identical(run.primary.read())
        True
    """

    format = "msgpack"
    suffix = ".msgpack"

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        assert self._file is not None
        try:
            packed = msgpack.packb([name, doc], default=_mp_encode)
        except OverflowError:
            packed = msgpack.packb([name, _bigints(doc)], default=_mp_encode)
        self._file.write(packed)
        if self.live:  # a live file is read as it grows; a prompt export is read when closed
            self._file.flush()


class JSONExporter(Exporter):
    """Metadata and every stream of a run in one JSON document, written at the end.

    The document is ``record()`` (``uid``, ``complete``, ``start``, ``stop``,
    ``descriptors``, ``exported_by``) plus ``streams``: for each stream ``time``,
    ``seq_num``, ``uid`` and ``data`` / ``timestamps`` columns (plus ``descriptor``, the
    descriptor uid of each event, when the stream has several). Options: ``fill=True`` puts
    detector data from files in the columns instead of their references.

    Example:
        >>> import json
        >>> path, = run.export("json", tmp_path)
        >>> doc = json.loads(path.read_text())
        >>> doc["streams"]["primary"]["data"]["motor"]
        [-1.0, -0.5, 0.0, 0.5, 1.0]
        >>> doc["complete"], doc["start"]["sample"]["name"]
        (True, 'Cu')
    """

    format = "json"
    suffix = ".json"

    def __init__(
        self, directory: str | os.PathLike[str], *, fill: bool = False, **options: Any
    ) -> None:
        super().__init__(directory, **options)
        self.fill = fill = fill_flag(fill)
        self.needs_pixels = fill
        self._file: IO[bytes] | None = None
        self._pages: dict[str, list[Page]] = {}

    def start(self, doc: dict[str, Any]) -> None:
        # The file is claimed now, so a name clash is reported before the run, not after.
        self._file = open(self.new_path(), self.mode + "b")  # noqa: SIM115 -- see finish()

    def event_page(self, page: Page) -> None:
        self._pages.setdefault(page.stream, []).append(page)

    def finish(self, complete: bool) -> None:
        if self._file is None:
            return
        try:
            record = self.record()
            record["streams"] = {
                name: self._stream(name) for name in self.streams if name in self._pages
            }
            self._file.write(dumps(record))
        finally:
            self._file.close()

    def _stream(self, name: str) -> dict[str, Any]:
        pages = self._pages[name]
        out: dict[str, Any] = {
            "time": np.concatenate([p.time for p in pages]),
            "seq_num": np.concatenate([p.seq_num for p in pages]),
            "uid": [u for p in pages for u in p.uid],
        }
        if len(self.streams[name]) > 1:
            out["descriptor"] = [p.descriptor["uid"] for p in pages for _ in range(len(p))]
        for part in ("data", "timestamps"):
            out[part] = {
                f: _json_values(_concat([getattr(p, part).get(f) for p in pages], pages))
                for f in self.fields(name)
                if any(f in getattr(p, part) for p in pages)
            }
        return out


def _concat(columns: list[np.ndarray | None], pages: list[Page]) -> Any:
    if all(c is not None for c in columns):
        try:
            return np.concatenate(columns)  # type: ignore[arg-type]
        except ValueError:  # shapes differ between descriptors
            pass
    # A field some descriptors lack: null for their events.
    out: list[Any] = []
    for col, page in zip(columns, pages, strict=True):
        out.extend([None] * len(page) if col is None else list(col))
    return out


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
            or item[0] not in DOCUMENT_NAMES
            or not isinstance(item[1], dict)
        ):
            raise ExportError(
                f"{self.path}, {where}: expected a [name, document] pair with a document "
                f"name ({', '.join(DOCUMENT_NAMES)}), found {_short(item)}"
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
        elif name in _EVENT_DOCS:
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
