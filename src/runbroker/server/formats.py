"""A stream's data as bytes in the format a caller asked for, block by block.

The data route reads a stream in blocks of events (a few MB each) and hands them here; each
encoder turns them into chunks of bytes as they come, so no answer is ever held whole. A
block is a dict of columns, ``time`` and ``seq_num`` first, then the chosen fields, each a
numpy array with one row per event.

- ``arrow``: an Apache Arrow IPC stream, one record batch per block. Fields with an array
  per event are ``arrow.fixed_shape_tensor`` columns (their shape kept); each field's data
  key (units, source, shape) is in its metadata as JSON under ``runbroker.data_key``.
- ``msgpack``: a framed msgpack stream (:mod:`runbroker.wire`): ``["block", {column: array}]``
  records, ending with ``["end", count]``.
- ``json``: an array of one object per event.
- ``csv``: a header line, then one line per event; scalar fields only.
- ``raw``: the bytes of exactly one numeric field, C order; its dtype and whole shape are in
  the ``X-Runbroker-Dtype`` and ``X-Runbroker-Shape`` headers.

:meth:`Encoder.prepare` looks at the first block before anything is sent, so a request an
encoder cannot answer (an array field asked for as CSV) is a 400 naming the field.

Example:
    >>> import numpy as np
    >>> block = {"time": np.array([1.5]), "seq_num": np.array([1]), "x": np.array([2.0])}
    >>> enc = ENCODERS["csv"]()
    >>> enc.prepare(block, 1, {})
    {}
    >>> b"".join(enc.chunks(iter([block]))).decode()
    '"time","seq_num","x"\\n1.5,1,2\\n'
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from .. import wire
from ..errors import RequestError, RunbrokerError
from .encoding import frames, to_json

__all__ = ["ENCODERS", "Block", "Encoder", "media_types"]

#: One block of events: column name -> array with one row per event.
Block = dict[str, np.ndarray]

# Columns every block has before the fields.
INDEX = ("time", "seq_num")


class Encoder(Protocol):
    """Writes blocks of a stream's data in one format."""

    name: ClassVar[str]
    media_type: ClassVar[str]

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        """Check the answer can be given (RequestError if not), from its first block and its
        number of events; the response headers it needs."""
        ...

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        """The bytes of the answer, a chunk per block."""
        ...


def _fields(block: Block) -> list[str]:
    return [k for k in block if k not in INDEX]


class Arrow:
    name = "arrow"
    media_type = "application/vnd.apache.arrow.stream"

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        self.data_keys = data_keys
        return {}

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        import pyarrow as pa

        sink = _Sink()
        writer = None
        schema = None
        for block in blocks:
            arrays = [_arrow_array(v) for v in block.values()]
            if schema is None:
                schema = pa.schema(
                    [
                        pa.field(k, a.type, metadata=self._metadata(k))
                        for k, a in zip(block, arrays, strict=True)
                    ],
                    metadata={"runbroker.format": "stream data"},
                )
                writer = pa.ipc.new_stream(sink, schema)
            else:
                # A later block may come out in another type (a missing reading turns an
                # integer column into floats): one schema holds for the whole stream.
                arrays = [_conform(a, f.type) for a, f in zip(arrays, schema, strict=True)]
            assert writer is not None
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            yield sink.take()
        if writer is not None:
            writer.close()
        yield sink.take()

    def _metadata(self, name: str) -> dict[str, bytes] | None:
        dk = self.data_keys.get(name)
        return None if dk is None else {"runbroker.data_key": to_json(dk)}


class _Sink(io.RawIOBase):
    """A file for pyarrow's writer that hands out what was written since the last take."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _arrow_array(values: np.ndarray) -> Any:
    import pyarrow as pa

    if values.dtype.kind == "O":
        # Strings, or arrays whose shape changes from event to event: lists.
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])
    if values.ndim > 1:
        # Built from its storage (a fixed-size list of each event's values, C order), which
        # also serves an empty block (from_numpy_ndarray refuses one).
        shape = values.shape[1:]
        type_ = pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), shape)
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape)))
        return pa.ExtensionArray.from_storage(type_, storage)
    return pa.array(values, from_pandas=values.dtype.kind == "f")


def _conform(array: Any, type_: Any) -> Any:
    import pyarrow as pa

    if array.type == type_:
        return array
    try:
        if pa.types.is_floating(array.type) and pa.types.is_integer(type_):
            # NaN (a missing reading) becomes null rather than a made-up integer.
            array = pa.array(array.to_numpy(zero_copy_only=False), from_pandas=True)
        return array.cast(type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise RunbrokerError(f"a later block of the stream does not fit {type_}: {err}") from None


class Msgpack:
    name = "msgpack"
    media_type = wire.MSGPACK

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        return {}

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        return frames(("block", block) for block in blocks)


class JSON:
    name = "json"
    media_type = "application/json"

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        return {}

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        sep = b"["
        for block in blocks:
            names = list(block)
            columns = [v.tolist() for v in block.values()]
            rows = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
            if rows:
                yield sep + to_json(rows)[1:-1]
                sep = b","
        yield b"[]" if sep == b"[" else b"]"


def _scalar(values: np.ndarray) -> bool:
    if values.ndim > 1:
        return False
    return values.dtype.kind != "O" or not any(isinstance(v, list | np.ndarray) for v in values)


class CSV:
    name = "csv"
    media_type = "text/csv"

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        arrays = [k for k in _fields(first) if not _scalar(first[k])]
        if arrays:
            scalars = [k for k in _fields(first) if k not in arrays]
            raise RequestError(
                f"field {arrays[0]!r} holds an array per event, which CSV cannot: ask for "
                f"scalar fields (fields={','.join(scalars)}) or another format "
                "(format=arrow, msgpack or json)"
            )
        return {}

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        import pyarrow as pa
        import pyarrow.csv

        header = True
        for block in blocks:
            table = pa.table({k: _arrow_array(v) for k, v in block.items()})
            out = pa.BufferOutputStream()
            pyarrow.csv.write_csv(table, out, pyarrow.csv.WriteOptions(include_header=header))
            header = False
            yield out.getvalue().to_pybytes()


class Raw:
    name = "raw"
    media_type = "application/octet-stream"

    def prepare(self, first: Block, total: int, data_keys: Mapping[str, dict]) -> dict[str, str]:
        fields = _fields(first)
        if len(fields) != 1:
            raise RequestError(
                f"format=raw sends exactly one field; {len(fields)} were asked for "
                f"({', '.join(fields)}): name one with fields=NAME"
            )
        values = first[fields[0]]
        if values.dtype.kind not in "biufc":
            raise RequestError(
                f"field {fields[0]!r} is not a numeric array of fixed shape ({values.dtype}), "
                "which format=raw needs; use format=arrow, msgpack or json"
            )
        self.field, self.dtype, self.shape = fields[0], values.dtype, values.shape[1:]
        shape = (total, *self.shape)
        return {
            "X-Runbroker-Dtype": self.dtype.str,
            "X-Runbroker-Shape": ",".join(map(str, shape)),
            "X-Runbroker-Field": self.field,
            "Content-Length": str(int(np.prod(shape)) * self.dtype.itemsize),
        }

    def chunks(self, blocks: Iterable[Block]) -> Iterator[bytes]:
        for block in blocks:
            values = block[self.field]
            if values.shape[1:] != self.shape or not np.can_cast(values.dtype, self.dtype):
                # Headers promised another shape or dtype: stop rather than send wrong bytes
                # (the client sees fewer bytes than Content-Length said).
                raise RunbrokerError(
                    f"field {self.field!r} changes to {values.dtype} {values.shape[1:]} "
                    f"mid-stream from {self.dtype} {self.shape}; format=raw cannot carry that"
                )
            yield np.ascontiguousarray(values, dtype=self.dtype).tobytes()


#: Format name -> its encoder class (an encoder is made per answer: it keeps what its first
#: block told it).
ENCODERS: dict[str, type[Encoder]] = {e.name: e for e in (Arrow, Msgpack, JSON, CSV, Raw)}


def media_types() -> dict[str, str]:
    """Media type -> format name, to choose a format by ``Accept``.

    Example:
        >>> media_types()["text/csv"]
        'csv'
    """
    return {e.media_type: name for name, e in ENCODERS.items()}
