"""Copying files and checksumming them in processes of their own.

While a pack encodes the documents of its runs, the files it writes (detector files copied,
run files written) are checksummed elsewhere. Threads would not do: each takes the interpreter
lock back between its system calls and its hashing, and waits for it behind the thread
encoding documents, so neither gets a core to itself. :class:`Copiers` hands the work to a few
processes running this module as a script. The module imports nothing but the standard
library, so such a process starts in a few milliseconds.

The processes speak a small protocol over their standard input and output. A request is one
line of JSON; a ``write`` request is followed by the bytes to write. A reply is one line of
JSON: ``{"id", "size", "sha256"}``, or ``{"id", "error"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

if __name__ == "__main__":  # a process of Copiers: no package, so errors.py (stdlib only) alone
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from errors import CopyError
else:
    from ..errors import CopyError

__all__ = ["Copiers", "CopyError", "copy", "write"]

#: Files are copied (and hashed) this many bytes at a time.
BLOCK = 16 << 20


def copy(src: str, dest: str) -> tuple[int, str]:
    """Copy ``src`` to ``dest``, keeping its times and mode; return the size and SHA-256 of
    the bytes copied. ``dest`` appears whole or not at all (the copy is written beside it,
    then renamed), and its folder is made if need be.

    Each block is read once, hashed and written: the checksum is of exactly the bytes in the
    copy, and a file of up to :data:`BLOCK` bytes costs one read, one hash and one write.

    Example:
        >>> _ = (tmp_path / "a.h5").write_bytes(b"frames")
        >>> copy(str(tmp_path / "a.h5"), str(tmp_path / "copy" / "a.h5"))[0]
        6
    """
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    head, name = os.path.split(dest)
    tmp = os.path.join(head, f".{name}.tmp")
    try:
        digest = hashlib.sha256()
        with open(src, "rb", buffering=0) as f, open(tmp, "wb", buffering=0) as out:
            info = os.fstat(f.fileno())
            copied = 0
            while block := f.read(min(BLOCK, info.st_size - copied) + 1):
                digest.update(block)
                out.write(block)
                copied += len(block)
        os.utime(tmp, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.chmod(tmp, stat.S_IMODE(info.st_mode))
        if copied != info.st_size:
            raise CopyError(f"detector file {src} changed while it was being copied")
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CopyError(f"cannot copy detector file {src}: {exc.strerror or exc}") from None
        raise
    return copied, digest.hexdigest()


def write(data: bytes | None, staged: str, dest: str) -> tuple[int, str]:
    """Write ``data`` to ``staged``, then rename it to ``dest``; return its size and SHA-256.
    ``None``: ``staged`` is written already. A stop at any moment leaves no half-written file
    under the name ``dest``.

    Example:
        >>> write(b"[]", str(tmp_path / "incoming" / "a.jsonl"), str(tmp_path / "a.jsonl"))[0]
        2
    """
    try:
        if data is None:
            with open(staged, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
                size = f.tell()
        else:
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            with open(staged, "wb", buffering=0) as f:
                f.write(data)
            size, digest = len(data), hashlib.sha256(data)
        os.replace(staged, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise CopyError(f"cannot write {os.path.basename(dest)}: {exc.strerror or exc}") from None
    return size, digest.hexdigest()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until ``requests`` ends: what a copier process does."""
    while line := requests.readline():
        request = json.loads(line)
        reply: dict[str, Any] = {"id": request["id"]}
        try:
            if request["op"] == "copy":
                size, digest = copy(request["src"], request["dest"])
            else:
                n = request["size"]
                data = requests.read(n) if n >= 0 else None
                size, digest = write(data, request["staged"], request["dest"])
            reply.update(size=size, sha256=digest)
        except CopyError as exc:
            reply["error"] = str(exc)
        except Exception as exc:  # reported with the file, not a dead process
            reply["error"] = f"{type(exc).__name__}: {exc}"
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


class Copiers:
    """``processes`` copier processes, started when first needed, and the futures of the
    requests each was sent. ``processes=0`` does the work on threads of this process.

    Example:
        >>> _ = (tmp_path / "a.h5").write_bytes(b"frames")
        >>> with Copiers(1) as copiers:
        ...     copiers.copy(str(tmp_path / "a.h5"), str(tmp_path / "b.h5")).result()[0]
        6
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._workers: list[_Worker] = []
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def copy(self, src: str, dest: str) -> Future[tuple[int, str]]:
        """Copy a file (see :func:`copy`); the future gives its size and SHA-256."""
        return self._submit({"op": "copy", "src": src, "dest": dest}, None, copy, src, dest)

    def write(self, data: bytes | None, staged: str, dest: str) -> Future[tuple[int, str]]:
        """Write a file (see :func:`write`); the future gives its size and SHA-256."""
        request = {"op": "write", "staged": staged, "dest": dest}
        request["size"] = -1 if data is None else len(data)
        return self._submit(request, data, write, data, staged, dest)

    def _submit(
        self,
        request: dict[str, Any],
        data: bytes | None,
        fallback: Callable[..., tuple[int, str]],
        *args: Any,
    ) -> Future[tuple[int, str]]:
        with self._lock:
            if not self._workers and self._threads is None:
                self._start()
            if self._threads is not None:
                return self._threads.submit(fallback, *args)
            worker = min(self._workers, key=lambda w: len(w.pending))
        return worker.send(request, data)

    def _start(self) -> None:
        # A frozen application's executable is not an interpreter that runs this file.
        runnable = bool(sys.executable) and not getattr(sys, "frozen", False)
        try:
            for _ in range(self.processes if runnable else 0):
                self._workers.append(_Worker())
        except OSError:  # no interpreter to start (an embedded one): threads, then
            for worker in self._workers:
                worker.close()
            self._workers = []
        if not self._workers:
            self._threads = ThreadPoolExecutor(max(1, self.processes), "pack-copy")

    def close(self) -> None:
        """Let every process finish what it was sent, then end it."""
        for worker in self._workers:
            worker.close()
        if self._threads is not None:
            self._threads.shutdown()

    def __enter__(self) -> Copiers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Worker:
    """One copier process, a thread feeding it requests (so that whoever asks never waits
    for the process to read them) and a thread reading its replies."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.pending: dict[int, Future[tuple[int, str]]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[int, bytes, bytes | None] | None]
        self._requests = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._feed, name="pack-copier-in", daemon=True),
            threading.Thread(target=self._read, name="pack-copier-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send(self, request: dict[str, Any], data: bytes | None) -> Future[tuple[int, str]]:
        future: Future[tuple[int, str]] = Future()
        with self._lock:
            request["id"] = key = self._next
            self._next += 1
            self.pending[key] = future
        self._requests.put((key, json.dumps(request).encode() + b"\n", data))
        return future

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        while (item := self._requests.get()) is not None:
            key, header, data = item
            try:
                stdin.write(header)
                if data is not None:
                    stdin.write(data)
                stdin.flush()
            except OSError:  # the process is gone
                if (future := self.pending.pop(key, None)) is not None:
                    future.set_exception(CopyError(self._gone()))
        with contextlib.suppress(OSError):
            stdin.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            reply = json.loads(line)
            future = self.pending.pop(reply["id"])
            if "error" in reply:
                future.set_exception(CopyError(reply["error"]))
            else:
                future.set_result((reply["size"], reply["sha256"]))
        self.process.wait()
        for key in list(self.pending):
            if (future := self.pending.pop(key, None)) is not None:
                future.set_exception(CopyError(self._gone()))

    def _gone(self) -> str:
        self._stderr.seek(0)
        said = self._stderr.read().decode(errors="replace").strip().splitlines()
        code = self.process.poll()
        return f"the copier process stopped (exit status {code})" + (
            f": {said[-1]}" if said else ""
        )

    def close(self) -> None:
        self._requests.put(None)  # once the requests sent are written, end of input
        for thread in self._threads:
            thread.join()
        self._stderr.close()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the pack decides, and closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
