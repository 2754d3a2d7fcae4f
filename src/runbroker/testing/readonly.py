"""Running a command that sees a folder as read-only media does: for tests of read-only folders
and packs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_read_only"]

# As root, chmod stops nothing: the folder is bind-mounted read-only over itself, in a mount
# namespace that lives as long as the command.
_REMOUNT = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'


def run_read_only(
    folder: Path, command: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (its output captured as text) while ``folder`` cannot be written: as
    root, with the folder mounted read-only in a mount namespace of the command's own; as
    anyone else, with the folder and everything in it made read-only, and writable again
    afterwards.

    Example:
        >>> import sys
        >>> code = "import sys, pathlib; pathlib.Path(sys.argv[1], 'x').touch()"
        >>> run_read_only(tmp_path, [sys.executable, "-c", code, str(tmp_path)]).returncode
        1
    """
    paths = [folder, *folder.rglob("*")]
    if os.geteuid() == 0:
        command = ["unshare", "-m", "sh", "-c", _REMOUNT, "sh", str(folder), *command]
    else:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    finally:
        if os.geteuid() != 0:
            for path in paths:
                path.chmod(0o755 if path.is_dir() else 0o644)
