"""One runbroker server, as requests: timeouts, retries, and the server's errors as ours.

:class:`Transport` is the only place the client touches HTTP. It sends the API key, asks for
msgpack, turns an error answer back into the exception the server raised
(:func:`runbroker.errors.from_dict`: a missing run is a ``RunNotFoundError`` remotely as
locally), and retries with backoff where that is safe: on connection errors and 503 answers,
for requests that change nothing or that may be repeated without harm (every runbroker write
is idempotent: storing the same document twice is a no-op). A server that does not answer
after the retries is a :class:`~runbroker.errors.ServerUnreachableError` naming the URL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import httpx

from .. import wire
from ..errors import RunbrokerError, ServerUnreachableError, TruncatedStreamError, from_dict
from ..notes import user_name

__all__ = ["Transport"]

_RETRY_STATUS = {502, 503, 504}


class Transport:
    """Requests to the server at ``url`` (its API under ``url + "/api/v1"``).

    ``timeout`` (seconds) bounds connecting and each read; ``retries`` is how many times a
    failed request is sent again, waiting ``backoff * 2**n`` seconds (with jitter) before the
    n-th retry. ``compress=True`` asks the server to compress answers (zstd or gzip): worth
    it on slow networks.

    Example:
        >>> t = Transport("http://127.0.0.1:1", retries=0, timeout=0.5)
        >>> t.get("/info")
        Traceback (most recent call last):
        ...
        runbroker.errors.ServerUnreachableError: cannot reach the runbroker server at ...
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        compress: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        # Uncompressed by default: on loopback and fast networks compressing costs more than
        # it saves (the server compresses with zstd for clients that ask).
        headers = {
            "accept": wire.MSGPACK,
            "accept-encoding": "zstd, gzip" if compress else "identity",
            "user-agent": "runbroker-client",
            # who this client's notes are by, on a server of one shared key (others ignore it)
            "x-runbroker-user": user_name(),
        }
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.client = httpx.Client(
            base_url=self.url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        #: Requests sent (each retry counts): tests and the cache's users count them.
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    # -- one request, retried

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def send() -> httpx.Response:
            response = self.client.request(method, path, **kwargs)
            if response.status_code in _RETRY_STATUS:
                raise _Busy(response)
            return response

        return self._attempts(send)

    def _attempts(self, send: Any) -> Any:
        """``send()``'s answer, sent again after a connection error, a cut answer or a
        502/503/504 (every runbroker request may be repeated: reads change nothing, and
        storing a document twice stores it once)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self.requests += 1
            wait = None
            try:
                return send()
            except (httpx.TransportError, TruncatedStreamError) as err:
                if last:
                    raise self._unreachable(err) from None
            except _Busy as busy:
                if last:
                    self._check(busy.response)
                wait = _retry_after(busy.response)
            time.sleep(self._delay(attempt, wait))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, asked: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: what the server asked for
        (``Retry-After``, up to a minute), else exponential backoff with jitter."""
        if asked is not None:
            return min(asked, 60.0)
        return self.backoff * 2**attempt * (0.5 + random.random())

    def _unreachable(self, err: Exception) -> RunbrokerError:
        if isinstance(err, TruncatedStreamError):
            return err
        tried = f"tried {self.retries + 1} times"
        if isinstance(err, httpx.TimeoutException):
            return ServerUnreachableError(
                f"the runbroker server at {self.url} did not answer within {self.timeout} s "
                f"({type(err).__name__}); {tried}. A slow answer needs a longer timeout: "
                "runbroker.open(URL, timeout=...)"
            )
        return ServerUnreachableError(
            f"cannot reach the runbroker server at {self.url} ({type(err).__name__}: {err}); "
            f"{tried}. Is it running, and is the URL right?"
        )

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        try:
            error = wire.unpack(response.content)["error"]
        except Exception:
            error = {"code": "error", "message": response.text[:500] or response.reason_phrase}
        err = from_dict(error)
        if type(err) is RunbrokerError:
            err = RunbrokerError(f"the server answered {response.status_code}: {err}")
        raise err

    # -- what the store calls

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` and decode the answer."""
        return wire.unpack(self._check(self._send("GET", path, params=params)).content)

    def post(self, path: str, json: Any = None, content: Any = None) -> Any:
        """POST a JSON value (``json``) or msgpack-packed ``content`` and decode the answer."""
        if content is not None:
            kwargs: dict[str, Any] = {
                "content": wire.pack(content),
                "headers": {"content-type": wire.MSGPACK},
            }
        else:
            kwargs = {"json": json}
        return wire.unpack(self._check(self._send("POST", path, **kwargs)).content)

    def records(self, method: str, path: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """All records of a framed answer; an answer cut short is asked for again (within the
        retries), never returned in part."""

        def whole() -> list[tuple[str, Any]]:
            with self.client.stream(method, path, **kwargs) as response:
                self._check_streamed(response)
                return list(wire.read_parts(response.iter_bytes()))

        return self._attempts(whole)

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """The records of a framed answer as they arrive (a replay of documents). Until the
        answer starts, failures are retried as for any request; after that, a cut answer
        raises :class:`~runbroker.errors.TruncatedStreamError` where it stops (the records
        before it have been taken already)."""
        started = False

        def opened() -> Any:
            context = self.client.stream(method, path, **kwargs)
            response = context.__enter__()
            try:
                self._check_streamed(response)
            except BaseException:
                context.__exit__(None, None, None)
                raise
            return context, response

        context, response = self._attempts(opened)
        try:
            for item in wire.read_parts(response.iter_bytes()):
                started = True
                yield item
        except httpx.TransportError as err:
            where = "mid-way" if started else "before its first record"
            raise TruncatedStreamError(
                f"the answer from {self.url} stopped {where} ({type(err).__name__}: {err})"
            ) from None
        finally:
            context.__exit__(None, None, None)

    def _check_streamed(self, response: httpx.Response) -> None:
        """Raise the error a streamed answer's status says (:class:`_Busy` for one worth
        asking again), having read its body."""
        if response.status_code >= 400:
            response.read()
            if response.status_code in _RETRY_STATUS:
                raise _Busy(response)
            self._check(response)


class _Busy(RunbrokerError):
    """A 502, 503 or 504 answer: worth sending the request again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait (None without one, or with a date).

    Example:
        >>> _retry_after(httpx.Response(503, headers={"retry-after": "2"}))
        2.0
        >>> _retry_after(httpx.Response(503)) is None
        True
    """
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
