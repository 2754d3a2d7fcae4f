"""Compression of answers (zstd or gzip) chosen by the caller's ``Accept-Encoding``.

An answer is compressed only where it helps: not when it is small (under
:data:`MIN_SIZE`), not when it is compressed already (zip, gzip, images, or any answer with a
``Content-Encoding``), not for server-sent events, and not when its first bytes do not shrink
(random floats, packed detector frames: the time would be spent for nothing). A streamed
answer stays streamed: each chunk is compressed and flushed as it comes, so the client can
decode as it reads.

Example:
    >>> choose("gzip, deflate, zstd")
    'zstd'
    >>> choose("gzip;q=1, zstd;q=0") , choose("identity") is None
    ('gzip', True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import zstandard

__all__ = ["Compression", "choose"]

#: Answers smaller than this (bytes) are sent as they are.
MIN_SIZE = 1024
# A sample of the first bytes is compressed to see if compression helps: it must save this
# share of them.
_SAMPLE = 64 * 1024
_MIN_SAVING = 0.25
_ZSTD_LEVEL = 1
_GZIP_LEVEL = 1

# Media types that are compressed already.
_PACKED = (
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/x-bzip2",
    "application/x-xz",
    "image/",
    "video/",
    "audio/",
    # Events sent one by one as they happen: each is small, and proxies hold compressed ones.
    "text/event-stream",
)

Scope = dict[str, Any]
Message = dict[str, Any]


def choose(accept_encoding: str) -> str | None:
    """The coding to use for an ``Accept-Encoding`` header: zstd, gzip or None."""
    offered: dict[str, float] = {}
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        offered[name.strip().lower()] = q
    for coding in ("zstd", "gzip"):
        if offered.get(coding, offered.get("*", 0.0)) > 0:
            return coding
    return None


class _Zstd:
    def __init__(self) -> None:
        self.obj = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()

    def chunk(self, data: bytes) -> bytes:
        return self.obj.compress(data) + self.obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self.obj.flush()


class _Gzip:
    def __init__(self) -> None:
        self.obj = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def chunk(self, data: bytes) -> bytes:
        return self.obj.compress(data) + self.obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self.obj.flush()


_CODERS = {"zstd": _Zstd, "gzip": _Gzip}


def _helps(data: bytes) -> bool:
    """Whether ``data`` shrinks, judged by pieces taken across it (the head of an answer may
    be an index or a header that compresses well while the bulk after it does not)."""
    n = len(data)
    if n > _SAMPLE:
        piece = _SAMPLE // 8
        data = b"".join(data[i : i + piece] for i in range(0, n - piece + 1, (n - piece) // 7))
    return len(zstandard.compress(data, 1)) < (1 - _MIN_SAVING) * len(data)


class Compression:
    """ASGI middleware compressing answers as :func:`choose` and the module text say."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = ""
        for key, value in scope.get("headers", []):
            if key == b"accept-encoding":
                accept = value.decode("latin-1")
        coding = choose(accept)
        if coding is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Responder(send, coding).send)


class _Responder:
    """Holds the start of an answer until its first bytes show whether to compress it."""

    def __init__(self, send: Callable, coding: str) -> None:
        self._send = send
        self.coding = coding
        self.start: Message = {}
        self.coder: _Zstd | _Gzip | None = None
        self.decided = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            media = headers.get(b"content-type", b"").decode("latin-1")
            if b"content-encoding" in headers or media.startswith(_PACKED):
                await self._begin(compress=False)
            return
        if kind != "http.response.body":
            await self._send(message)
        elif self.decided:
            await self._send(await self._compressed(message) if self.coder else message)
        else:
            await self._first(message)

    async def _first(self, message: Message) -> None:
        body, more = message.get("body", b""), message.get("more_body", False)
        if not body and more:
            return  # nothing to judge by yet
        if not (more or len(body) >= MIN_SIZE) or not _helps(body):
            await self._begin(compress=False)
            await self._send(message)
            return
        self.coder = _CODERS[self.coding]()
        message = await self._compressed(message)
        # A whole body is sent with its new length; a stream goes on in chunks.
        await self._begin(True, None if more else len(message["body"]))
        await self._send(message)

    async def _begin(self, compress: bool, length: int | None = None) -> None:
        self.decided = True
        headers = [
            (k, v)
            for k, v in self.start.get("headers", [])
            if not compress or k.lower() != b"content-length"
        ]
        headers.append((b"vary", b"Accept-Encoding"))
        if compress:
            headers.append((b"content-encoding", self.coding.encode()))
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await self._send({**self.start, "headers": headers})

    async def _compressed(self, message: Message) -> Message:
        assert self.coder is not None
        body = message.get("body", b"")
        if len(body) > _SAMPLE:
            # Off the event loop: other requests go on while a large chunk is compressed.
            data = await anyio.to_thread.run_sync(self.coder.chunk, body)
        else:
            data = self.coder.chunk(body)
        if not message.get("more_body", False):
            data += self.coder.finish()
        return {**message, "body": data}
