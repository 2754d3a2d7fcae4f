"""SPEC data files, as PyMca, spec2nexus and silx read them.

A file starts with the ``#F #E #D #C`` header and the positioner names (``#O``); each run is a
scan: ``#S <scan_id> <command>``, ``#D`` date, ``#C`` comments, ``#MD key = value`` lines holding
the uid and the start document, ``#P`` positions at the start (from the baseline stream's first
reading, else the motors' first values), ``#N`` and ``#L`` (axes first, then ``Epoch``, other
fields, detectors last), then one row per event, written and flushed as events arrive so a
reader can follow a growing file. The end of the scan adds the stop document as
``#MD stop.<key>`` lines, or a ``#C`` line saying the run is incomplete.

One file per run by default; ``file="session.spec"`` appends every run to one file, as SPEC
does. Only numbers are columns: arrays and text are named in a ``#C`` line instead.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from ..assets import Assets, external_kind
from ..documents import to_builtin
from .base import Exporter, ExportError, Page, unique
from .csv import column_text, is_array
from .hints import axes, signals

__all__ = ["SpecExporter"]

_PER_LINE = 8  # names per #O line and values per #P line, as SPEC writes them
_NUMERIC = ("number", "integer", "boolean")
_BOOLEANS = ("0", "1")
# Session files being written by an exporter of this process: two runs cannot share one.
_WRITING: dict[Path, str] = {}


def _is_number(data_key: Mapping[str, Any]) -> bool:
    return (
        data_key.get("dtype") in _NUMERIC and not is_array(data_key) and not external_kind(data_key)
    )


def _labels(names: Iterable[str]) -> list[str]:
    """Unique labels without double spaces: SPEC separates labels by two spaces."""
    taken: set[str] = set()
    return [unique(" ".join(str(name).split()) or "unnamed", taken) for name in names]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _note_lines(notes: list[dict[str, Any]]) -> list[str]:
    """``#C`` lines for the run's notes as they stand (:mod:`runbroker.notes`).

    Example:
        >>> from runbroker.notes import new_note
        >>> _note_lines([new_note("r1", "annotation", author="ada", text="burned", tags=["x"])])
        ['#C note by ada: burned [tags: x]']
    """
    from ..notes import current

    lines = []
    for n in current(notes):
        what = n["text"] if n["kind"] == "annotation" else n["kind"]
        if n["kind"] == "correction":
            fixed = ", ".join(f"{k} = {v!r}" for k, v in n["correction"]["start"].items())
            what = f"correction {fixed} ({n['reason']})"
        tags = f" [tags: {', '.join(n['tags'])}]" if n["tags"] else ""
        lines.append(_one_line(f"#C note by {n['author']}: {what}{tags}"))
    return lines


def _md_value(value: Any) -> str:
    """Text as it is (SPEC and apstools habit); anything else, or multi-line text, as JSON."""
    if isinstance(value, str) and "\n" not in value and "\r" not in value:
        return value
    return orjson.dumps(to_builtin(value), default=str).decode()


def _md_lines(items: Iterable[tuple[str, Any]], prefix: str = "") -> list[str]:
    # spec2nexus takes the first word after #MD as the key: no spaces in keys.
    return [f"#MD {prefix}{'_'.join(str(k).split())} = {_md_value(v)}" for k, v in items]


def _compact(value: Any) -> str:
    """A plan argument as a word: devices by name, lists without spaces."""
    if isinstance(value, str):
        match = re.match(r"^\w+\(.*?\bname='([^']*)'", value)
        return match.group(1) if match else _one_line(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_compact(v)}" for k, v in value.items()) + "}"
    return _one_line(str(value))


def _numbered(key: str, words: Sequence[str], sep: str) -> list[str]:
    return [
        f"#{key}{i // _PER_LINE} " + sep.join(words[i : i + _PER_LINE])
        for i in range(0, len(words), _PER_LINE)
    ]


class _Session:
    """What appending to an existing SPEC file needs to know about it."""

    def __init__(self, path: Path) -> None:
        self.epoch: int | None = None
        self.positioners: list[str] = []
        self.uids: dict[str, str] = {}  # run uid -> its scan number in the file
        self.last_scan = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
            if not first.startswith("#F"):
                raise ExportError(
                    f"{path} is not a SPEC data file (it begins {first[:40]!r}, not '#F'); "
                    "a SPEC export appends scans only to a SPEC file"
                )
            scan = ""
            line = first
            while line:
                if line.startswith(("#F", "#E")):  # a header block begins
                    self.positioners = []
                if line.startswith("#E "):
                    self.epoch = int(float(line.split()[1]))
                elif line.startswith("#O"):
                    if line.startswith("#O0"):
                        self.positioners = []
                    text = line[line.find(" ") + 1 :].strip() if " " in line else ""
                    self.positioners.extend(re.split(r"  +", text) if text else [])
                elif line.startswith("#S "):
                    scan = line.split()[1]
                    if scan.isdigit():
                        self.last_scan = max(self.last_scan, int(scan))
                elif line.startswith("#MD uid = "):
                    self.uids[line[len("#MD uid = ") :].strip()] = scan
                last = line
                line = f.readline()
        self.ends_with_newline = last.endswith("\n")


class SpecExporter(Exporter):
    """Writes a run as a scan of a SPEC data file (one file per run, or a session file).

    Options: ``file`` -- a session file (relative to the directory, or absolute) that every run
    is appended to, created with its header if missing; ``stream`` -- the stream whose events
    are the scan's rows (``"primary"``). Appending to an existing SPEC file is the one case
    where an export writes into a file it did not create: a file that is not SPEC, or that
    already holds the run, is refused. ``overwrite`` applies to per-run files only.

    Example:
        >>> [p.name for p in run.export("spec", tmp_path, template="scan{scan_id}")]
        ['scan2.spec']
        >>> text = (tmp_path / "scan2.spec").read_text()
        >>> [line for line in text.splitlines() if line.startswith(("#S", "#N", "#L"))]
        ['#S 2  scan detectors=[det] num=5 args=[motor,-1,1] per_step=None', '#N 4', '#L motor  Epoch  motor_setpoint  det']
    """  # noqa: E501

    needs_uids = False  # event uids are not written

    format = "spec"
    suffix = ".spec"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        file: str | os.PathLike[str] | None = None,
        stream: str = "primary",
        template: str | None = None,
        overwrite: bool = False,
        assets: Assets | None = None,
    ) -> None:
        super().__init__(directory, template=template, overwrite=overwrite, assets=assets)
        self.session = None if file is None else self.directory / file
        self.stream = stream
        self._out: IO[str] | None = None
        self._path: Path | None = None
        self._lock: Path | None = None
        self._epoch = 0
        self._header_pending = False  # a new file's header still lacks its #O lines
        self._positioners: list[str] = []  # the #O names of the header in force
        self._scan_number = 1
        self._columns: list[tuple[str, str | None]] = []  # (label, field; None for Epoch)
        self._first_baseline: dict[str, np.ndarray] | None = None
        self._waiting: list[Page] = []
        self._rows = 0

    # -- the document hooks -----------------------------------------------------------------

    def start(self, doc: dict[str, Any]) -> None:
        when = float(doc.get("time", time.time()))
        scan_id = doc.get("scan_id")
        number = scan_id if isinstance(scan_id, int) and not isinstance(scan_id, bool) else 0
        if self.session is None:
            self._path = self.new_path()
            # Open across events so rows are appended as they arrive; closed in finish().
            self._out = open(self._path, self.mode, encoding="utf-8", newline="")  # noqa: SIM115
            self._file_header(when, first=True)
        else:
            self._open_session(when)
        self._scan_number = number if number > 0 else self._scan_number

    def _open_session(self, when: float) -> None:
        path = self.session
        assert path is not None
        key = path.resolve()
        if key in _WRITING:
            raise ExportError(
                f"session file {path} is being written by run {_WRITING[key]}; a SPEC file "
                f"holds one scan at a time, so run {self.uid} cannot be appended until it stops"
            )
        existing = path.exists() and path.stat().st_size > 0
        if existing:
            state = _Session(path)
            if self.uid in state.uids:
                raise ExportError(
                    f"{path} already holds run {self.uid} (scan {state.uids[self.uid]}); "
                    "a run is appended to a session file once"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        _WRITING[key] = self.uid
        self._lock = key
        self._path = path
        self.files.append(path)
        if existing:
            if not state.ends_with_newline:
                self._out.write("\n")
            self._epoch = state.epoch if state.epoch is not None else int(when)
            self._positioners = state.positioners
            self._scan_number = state.last_scan + 1
        else:
            self._file_header(when, first=True)

    def descriptor(self, doc: dict[str, Any]) -> None:
        if doc.get("name", "primary") != self.stream or not self._columns:
            return
        # The columns were fixed by #L: a later descriptor's new fields can only be noted.
        named = {field for _, field in self._columns}
        extra = [k for k, dk in doc["data_keys"].items() if _is_number(dk) and k not in named]
        if extra:
            self._write(
                f"#C descriptor {doc['uid']} adds {', '.join(extra)}, not columns of this scan"
            )

    def event_page(self, page: Page) -> None:
        if page.stream == "baseline" and self._first_baseline is None:
            self._first_baseline = {
                k: page.data[k][:1]
                for k, dk in page.descriptor["data_keys"].items()
                if _is_number(dk) and k in page.data
            }
            self._release()
        if page.stream != self.stream:
            return
        if not self._columns:
            if "baseline" in self.streams and self._first_baseline is None:
                # A catalog replays the baseline's page after the scan's: the #P positions
                # come from it, so the rows wait (live, the baseline always comes first).
                self._waiting.append(page)
                return
            self._scan_header(page)
        self._rows_of(page)

    def _release(self) -> None:
        if self._waiting and not self._columns:
            self._scan_header(self._waiting[0])
        for page in self._waiting:
            self._rows_of(page)
        self._waiting.clear()

    def _rows_of(self, page: Page) -> None:
        n = len(page)
        if not n:
            return
        cells = []
        for label, field in self._columns:
            if field is None:
                cells.append(column_text(page.time - self._epoch))
            elif field in page.data:
                cells.append(self._numbers(page.data[field], label))
            else:
                cells.append(["nan"] * n)
        self._write("\n".join(map(" ".join, zip(*cells, strict=True))))
        self._rows += n

    def finish(self, complete: bool) -> None:
        if self._out is None:
            return
        try:
            self._release()
            if not self._columns:
                self._scan_header(None)
            lines = []
            others = [s for s in self.streams if s != self.stream]
            if others:
                lines.append(
                    f"#C streams not in the columns: {', '.join(others)}"
                    + (" (baseline: first reading in #P)" if "baseline" in others else "")
                )
            if complete:
                stop = self.stop_doc or {}
                when = float(stop.get("time", time.time()))
                lines.append(
                    f"#C {time.ctime(when)}.  Run stopped: exit_status = "
                    f"{stop.get('exit_status', '?')}"
                    + (f", reason = {_one_line(stop['reason'])}" if stop.get("reason") else "")
                    + f"; {self._rows} points."
                )
                lines += _md_lines(stop.items(), prefix="stop.")
                lines += _note_lines(self.notes)
            else:
                lines.append(
                    f"#C {time.ctime()}.  INCOMPLETE: run {self.uid} sent no stop document; "
                    f"{self._rows} points exported."
                )
            self._write(*lines)
        finally:
            self._out.close()
            if self._lock is not None:
                _WRITING.pop(self._lock, None)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, *lines: str) -> None:
        assert self._out is not None
        self._out.write("".join(f"{line}\n" for line in lines))
        self._out.flush()

    def _file_header(self, when: float, *, first: bool) -> None:
        """``#F #E #D #C``; the ``#O`` lines follow once the positioners are known."""
        from .._version import __version__

        assert self._path is not None
        self._epoch = int(when)
        self._write(
            *([] if first else [""]),
            f"#F {self._path.name}",
            f"#E {self._epoch}",
            f"#D {time.ctime(when)}",
            f"#C runbroker {__version__}  SPEC export of Bluesky runs",
        )
        self._header_pending = True

    def _scan_header(self, page: Page | None) -> None:
        names, values = self._positioner_values(page)
        if self._header_pending or names != self._positioners:
            if not self._header_pending:  # the motors changed: SPEC starts a new header
                self._file_header(float(self.start_doc.get("time", time.time())), first=False)
            self._write(*_numbered("O", names, "  "))
            self._positioners = names
            self._header_pending = False
        self._columns = self._column_plan()
        start = self.start_doc
        command = " ".join(
            [
                _one_line(str(start.get("plan_name", "run"))) or "run",
                *(f"{k}={_compact(v)}" for k, v in (start.get("plan_args") or {}).items()),
            ]
        )
        lines = [
            "",
            f"#S {self._scan_number}  {command}",
            f"#D {time.ctime(float(start.get('time', time.time())))}",
            f"#C Bluesky run {self.uid}",
            *_md_lines([("uid", self.uid)]),
            *_md_lines((k, v) for k, v in start.items() if k != "uid"),
        ]
        if values:
            lines += _numbered("P", values, " ")
        left_out = self._not_columns()
        if left_out:
            lines.append(f"#C not columns (arrays or text): {', '.join(left_out)}")
        lines += [f"#N {len(self._columns)}", "#L " + "  ".join(c for c, _ in self._columns)]
        self._write(*lines)

    def _positioner_values(self, page: Page | None) -> tuple[list[str], list[str]]:
        """Positions at the start: the baseline's first reading, else the motors' first values."""
        if self._first_baseline:
            fields = [f for f in self.fields("baseline") if f in self._first_baseline]
            first = self._first_baseline
        elif page is not None:
            fields = [f for f in self._axes() if f in page.data]
            first = {f: page.data[f][:1] for f in fields}
        else:
            return [], []
        values = [self._numbers(first[f], f)[0] for f in fields]
        return _labels(fields), values

    def _data_keys(self) -> dict[str, Mapping[str, Any]]:
        keys: dict[str, Mapping[str, Any]] = {}
        for desc in self.streams.get(self.stream, []):
            for k, dk in desc["data_keys"].items():
                keys.setdefault(k, dk)
        return keys

    def _axes(self) -> list[str]:
        out: list[str] = []
        for desc in self.streams.get(self.stream, []):
            out += [f for f in axes(self.start_doc, desc) if f not in out]
        return out

    def _column_plan(self) -> list[tuple[str, str | None]]:
        """Axes first, then Epoch, other fields, detectors last (PyMca plots last vs first)."""
        numbers = [k for k, dk in self._data_keys().items() if _is_number(dk)]
        first = [f for f in self._axes() if f in numbers]
        last: list[str] = []
        for desc in self.streams.get(self.stream, []):
            last += [
                f
                for f in signals(self.start_doc, desc)
                if f in numbers and f not in first and f not in last
            ]
        middle = [f for f in numbers if f not in first and f not in last]
        fields: list[str | None] = [*first, None, *middle, *last]
        labels = _labels("Epoch" if f is None else f for f in fields)
        return list(zip(labels, fields, strict=True))

    def _not_columns(self) -> list[str]:
        return [
            f"{k} {list(dk.get('shape') or [])}" if is_array(dk) else k
            for k, dk in self._data_keys().items()
            if not _is_number(dk)
        ]

    def _numbers(self, values: np.ndarray, label: str) -> list[str]:
        if values.dtype.kind not in "biuf":
            try:
                values = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise ExportError(
                    f"field {label!r} of stream {self.stream!r} in run {self.uid} is declared a "
                    f"number but holds {values[:1].tolist()!r}, which a SPEC column cannot"
                ) from None
        try:
            return column_text(values, booleans=_BOOLEANS)
        except ValueError as exc:
            raise ExportError(
                f"field {label!r} of stream {self.stream!r} in run {self.uid}: {exc}"
            ) from None
