"""CSV: one file per stream, for spreadsheets and ``pandas.read_csv``.

Each stream becomes ``<name>_<stream>.csv`` with the columns ``time``, ``seq_num`` and the
stream's scalar fields (over all of its descriptors, in declaration order). Rows are appended
and flushed as events arrive, so a file is readable while the run goes on. Numbers are written
in the shortest form that reads back to the identical value. A ``<name>.metadata.json`` sidecar
holds the uid, the start and stop documents and the descriptors.

Fields holding arrays (images, spectra) do not fit a cell: ``arrays="skip"`` (the default)
leaves them out and names them in the sidecar, ``"refuse"`` stops the export, ``"summary"``
writes per-event statistics (``<field>.shape``, ``.min``, ``.max``, ``.mean``, ``.sum``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..assets import Assets, external_kind
from .base import Exporter, ExportError, Page

__all__ = ["ARRAY_POLICIES", "STATISTICS", "CSVExporter", "column_text", "is_array", "summarise"]

#: What the ``arrays`` option accepts.
ARRAY_POLICIES = ("skip", "refuse", "summary")
#: The per-event statistics ``arrays="summary"`` writes, as ``<field>.<statistic>`` columns.
STATISTICS = ("shape", "min", "max", "mean", "sum")
_RESERVED = ("time", "seq_num")
_NEEDS_QUOTES = frozenset(',"\r\n')


def is_array(data_key: Mapping[str, Any]) -> bool:
    """Whether a field holds an array per event rather than one value.

    Example:
        >>> is_array({"dtype": "array", "shape": [512, 512]}), is_array({"dtype": "number"})
        (True, False)
    """
    return bool(data_key.get("shape")) or data_key.get("dtype") == "array"


def column_text(values: np.ndarray, *, booleans: tuple[str, str] = ("False", "True")) -> list[str]:
    """The text of each value of a column, reading back to the identical value.

    Floats use the shortest decimal that round-trips (Python's ``repr``), integers their digits,
    text is quoted as CSV requires; missing values (``None``) are empty. ``booleans`` spells
    false and true.

    Example:
        >>> column_text(np.array([0.1, 1 / 3, np.nan]))
        ['0.1', '0.3333333333333333', 'nan']
        >>> column_text(np.array(["a,b", 'x"y']))
        ['"a,b"', '"x""y"']
    """
    kind = values.dtype.kind
    if values.ndim != 1:
        raise ValueError(
            f"a column holds one value per event, not an array of shape {values.shape}"
        )
    if kind == "f":
        return list(map(repr, values.tolist()))
    if kind in "iu":
        return list(map(str, values.tolist()))
    if kind == "b":
        return [booleans[v] for v in values.tolist()]
    return [_cell(v, booleans) for v in values.tolist()]


def _cell(value: Any, booleans: tuple[str, str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return booleans[bool(value)]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    if _NEEDS_QUOTES.intersection(text) or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def summarise(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event ``STATISTICS`` of an array field (first axis: the event).

    Example:
        >>> stats = summarise(np.arange(12, dtype="uint16").reshape(2, 2, 3))
        >>> stats["shape"].tolist(), stats["max"].tolist(), stats["mean"].tolist()
        (['2x3', '2x3'], [5, 11], [2.5, 8.5])
    """
    n = len(values)
    if values.dtype != object and values.dtype.kind in "biuf" and values.ndim > 1:
        flat = values.reshape(n, -1)
        shape = "x".join(map(str, values.shape[1:]))
        if flat.shape[1] == 0:
            empty = np.full(n, np.nan)
            return {"shape": np.full(n, shape), **dict.fromkeys(STATISTICS[1:], empty)}
        return {
            "shape": np.full(n, shape),
            "min": flat.min(axis=1),
            "max": flat.max(axis=1),
            "mean": flat.mean(axis=1, dtype=np.float64),
            "sum": flat.sum(axis=1),
        }
    # Ragged or non-numeric arrays: one event at a time (never the scalar fast path).
    rows = [_summary_of(v) for v in values]
    return {s: np.array([r[s] for r in rows], dtype=object) for s in STATISTICS}


def _summary_of(value: Any) -> dict[str, Any]:
    if value is None:
        return dict.fromkeys(STATISTICS)
    arr = np.asarray(value)
    out: dict[str, Any] = dict.fromkeys(STATISTICS)
    out["shape"] = "x".join(map(str, arr.shape))
    if arr.dtype.kind in "biuf" and arr.size:
        out.update(min=arr.min(), max=arr.max(), mean=float(arr.mean(dtype=np.float64)))
        out["sum"] = arr.sum()
    return out


def _header(columns: list[str]) -> str:
    return ",".join(column_text(np.array([*_RESERVED, *columns]))) + "\n"


class _StreamFile:
    """One stream's open CSV file: its columns and, per descriptor, what fills them."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self.handle = handle
        self.columns: list[str] = []
        # descriptor uid -> column -> (field, statistic or None)
        self.plans: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.skipped: list[str] = []
        self.rows = 0


class CSVExporter(Exporter):
    """Writes each stream of a run as a CSV file, plus a metadata sidecar.

    Options: ``arrays`` -- ``"skip"`` (default: array fields are left out and listed in the
    sidecar), ``"refuse"`` (an ``ExportError`` names the field and stream) or ``"summary"``
    (per-event shape, min, max, mean and sum columns; detector files are read for this).

    Example:
        >>> files = run.export("csv", tmp_path, template="scan{scan_id}")
        >>> [p.name for p in files]
        ['scan2_primary.csv', 'scan2.metadata.json']
        >>> import pandas as pd
        >>> table = pd.read_csv(files[0])
        >>> list(table.columns)
        ['time', 'seq_num', 'det', 'motor', 'motor_setpoint']
        >>> bool((table["det"] == run.primary.read()["det"].values).all())
        True
    """

    needs_uids = False  # event uids are not written

    format = "csv"
    suffix = ".csv"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        arrays: str = "skip",
        template: str | None = None,
        overwrite: bool = False,
        assets: Assets | None = None,
    ) -> None:
        if arrays not in ARRAY_POLICIES:
            raise ExportError(
                f"csv export: arrays={arrays!r}; choose one of {', '.join(ARRAY_POLICIES)}"
            )
        super().__init__(directory, template=template, overwrite=overwrite, assets=assets)
        self.arrays = arrays
        self.needs_pixels = arrays == "summary"
        self._sidecar: Path | None = None
        self._files: dict[str, _StreamFile] = {}

    def start(self, doc: dict[str, Any]) -> None:
        self._sidecar = self.write_sidecar()

    def descriptor(self, doc: dict[str, Any]) -> None:
        stream = doc.get("name", "primary")
        plan, skipped = self._plan(stream, doc)
        clash = [c for c in plan if c in _RESERVED]
        if clash:
            raise ExportError(
                f"stream {stream!r} of run {self.uid} has a field named {clash[0]!r}, which is "
                "also the name of a column the CSV export writes (time, seq_num)"
            )
        out = self._files.get(stream)
        if out is None:
            path = self.new_path(stream=stream)
            # Open across events so rows are appended as they arrive; closed in finish().
            handle = open(path, self.mode, newline="", encoding="utf-8")  # noqa: SIM115
            out = _StreamFile(path, handle)
            self._files[stream] = out
            out.columns = list(plan)
            out.handle.write(_header(out.columns))
            out.handle.flush()
        else:
            self._widen(out, [c for c in plan if c not in out.columns])
        out.plans[doc["uid"]] = plan
        out.skipped.extend(f for f in skipped if f not in out.skipped)
        if self._sidecar is not None:
            self.write_sidecar(self._sidecar)

    def _plan(
        self, stream: str, desc: Mapping[str, Any]
    ) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
        plan: dict[str, tuple[str, str | None]] = {}
        skipped: list[str] = []
        for field, dk in desc["data_keys"].items():
            if not is_array(dk) and not external_kind(dk):
                plan[field] = (field, None)
            elif self.arrays == "refuse":
                raise ExportError(
                    f"field {field!r} of stream {stream!r} in run {self.uid} holds arrays "
                    f"(shape {dk.get('shape')}), which a CSV cell cannot; export with "
                    "arrays='skip' or 'summary', or to hdf5, nexus or tiff"
                )
            elif self.arrays == "summary":
                for stat in STATISTICS:
                    column = f"{field}.{stat}"
                    if column in desc["data_keys"]:
                        raise ExportError(
                            f"stream {stream!r} of run {self.uid}: the summary column "
                            f"{column!r} of array field {field!r} is also a field's name"
                        )
                    plan[column] = (field, stat)
            else:
                skipped.append(field)
        return plan, skipped

    def _widen(self, out: _StreamFile, added: list[str]) -> None:
        """A later descriptor brought new fields: rewrite the file with their (empty) columns.

        Older data has this; the file is replaced atomically so a reader sees the old or the
        new table, never half of one.
        """
        if not added:
            return
        out.handle.close()
        out.columns.extend(added)
        tmp = out.path.with_name(f".{out.path.name}.tmp")
        pad = "," * len(added) + "\n"
        with (
            open(out.path, encoding="utf-8", newline="") as old,
            open(tmp, "w", encoding="utf-8", newline="") as new,
        ):
            old.readline()
            new.write(_header(out.columns))
            for line in old:
                new.write(line.rstrip("\r\n") + pad)
        os.replace(tmp, out.path)
        out.handle = open(out.path, "a", encoding="utf-8", newline="")  # noqa: SIM115

    def event_page(self, page: Page) -> None:
        out = self._files[page.stream]
        plan = out.plans[page.descriptor["uid"]]
        n = len(page)
        if not n:
            return
        empty = [""] * n
        stats: dict[str, dict[str, np.ndarray]] = {}
        cells = [column_text(page.time), column_text(page.seq_num)]
        for column in out.columns:
            source = plan.get(column)
            if source is None or source[0] not in page.data:
                cells.append(empty)
                continue
            field, stat = source
            values = page.data[field]
            if stat is not None:
                if field not in stats:
                    stats[field] = summarise(values)
                values = stats[field][stat]
            try:
                cells.append(column_text(values))
            except ValueError as exc:
                raise ExportError(
                    f"field {field!r} of stream {page.stream!r} in run {self.uid}: {exc}, "
                    "though its descriptor declares a scalar"
                ) from None
        out.handle.write("\n".join(map(",".join, zip(*cells, strict=True))) + "\n")
        out.handle.flush()
        out.rows += n

    def finish(self, complete: bool) -> None:
        for out in self._files.values():
            out.handle.close()
        if self._sidecar is not None:
            self.write_sidecar(self._sidecar)
            # Data files first, the sidecar last: the order users look at them in.
            self.files.remove(self._sidecar)
            self.files.append(self._sidecar)

    def record(self) -> dict[str, Any]:
        """The run's record (see ``Exporter.record``) plus each stream's file and columns."""
        out = super().record()
        out["csv"] = {
            "arrays": self.arrays,
            "streams": {
                stream: {
                    "file": f.path.name,
                    "columns": [*_RESERVED, *f.columns],
                    "rows": f.rows,
                    "arrays_skipped": f.skipped,
                }
                for stream, f in self._files.items()
            },
        }
        return out
