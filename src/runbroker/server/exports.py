"""Exports as downloads: ``GET /api/v1/runs/{uid}/export/{format}``.

The run is exported by :meth:`~runbroker.catalog.Run.export` into a temporary folder. One
file is sent as it is; several (or any, with ``?archive=``) are put in a zip or tar archive
in that folder. Either way the answer is streamed from disk, and the folder is removed once
it has been sent (or when the export fails).
"""

from __future__ import annotations

import mimetypes
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ..errors import NotFoundError
from ..export import FORMATS
from ..naming import safe_name
from .context import Data

__all__ = ["pack_files", "router"]

router = APIRouter()

Archive = Literal["zip", "tar"]

# What a browser is told a file of each suffix is, where Python's table does not know.
_MEDIA_TYPES = {
    ".jsonl": "application/jsonl",
    ".msgpack": "application/x-msgpack",
    ".h5": "application/x-hdf5",
    ".hdf5": "application/x-hdf5",
    ".nxs": "application/x-hdf5",
    ".spec": "text/plain",
}


@router.get(
    "/runs/{uid}/export/{format}",
    summary="A run exported (any run.export format), as a file or a zip/tar archive",
    response_class=FileResponse,
)
def export(
    uid: str,
    format: str,
    ctx: Data,
    archive: Annotated[
        Archive | None, Query(description="pack in an archive (default: zip if several files)")
    ] = None,
    template: Annotated[
        str | None, Query(description="file names, as run.export takes them")
    ] = None,
) -> FileResponse:
    if format not in FORMATS:
        raise NotFoundError(
            f"no export format {format!r}; the formats are {', '.join(sorted(FORMATS))}"
        )
    run = ctx.catalog[uid]
    folder = Path(tempfile.mkdtemp(prefix="runbroker-export-"))
    cleanup = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
    try:
        options = {} if template is None else {"template": template}
        files = run.export(format, folder / "files", **options)
        stem = safe_name(f"scan{run.start.get('scan_id', '')}-{run.uid[:8]}-{format}")
        if len(files) == 1 and archive is None:
            path = files[0]
            media_type = _MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path)[0]
            return FileResponse(
                path,
                media_type=media_type or "application/octet-stream",
                filename=path.name,
                background=cleanup,
            )
        kind = archive or "zip"
        packed = pack_files(folder / f"{stem}.{kind}", folder / "files", files, kind)
        return FileResponse(
            packed,
            media_type="application/zip" if kind == "zip" else "application/x-tar",
            filename=packed.name,
            background=cleanup,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def pack_files(target: Path, root: Path, files: list[Path], kind: Archive = "zip") -> Path:
    """Pack ``files`` (under ``root``, named relative to it) into ``target``, a zip or tar.

    Example:
        >>> (tmp_path / "a.txt").write_text("x")
        1
        >>> out = pack_files(tmp_path / "out.zip", tmp_path, [tmp_path / "a.txt"])
        >>> zipfile.ZipFile(out).namelist()
        ['a.txt']
    """
    if kind == "zip":
        # Deflated at the fastest level: text formats shrink a lot at once, HDF5 and TIFF
        # cost little time. (A tar is left plain: it is compressed on the wire when the
        # client asks, by server.compression.)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for f in files:
                zf.write(f, f.relative_to(root).as_posix())
    else:
        with tarfile.open(target, "w") as tf:
            for f in files:
                tf.add(f, f.relative_to(root).as_posix())
    return target
