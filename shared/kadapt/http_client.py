"""A lean asyncio HTTP/1.1 keep-alive client for one hot path: the gateway's plan requests to the sampler.

Why: ``httpx.AsyncClient`` adds about 2 ms to a plan round trip on one core, against a 5 ms p99 plan
budget (docs/sampler.md, "Plan transport"). Here a connection is an ``asyncio.Protocol`` whose response
``httptools`` (llhttp) parses: one ``transport.writelines`` per request, no per-request task, no layers.

It does: absolute http(s) URLs; GET and POST with a ``bytes`` body; one idle keep-alive pool per
(scheme, host, port); at most ``max_connections`` open connections; a ``timeout`` over the whole exchange
(connect + send + response -> :class:`TimeoutError`); responses framed by content-length, chunked or end
of stream, capped at ``max_response_bytes``; one retry on a fresh connection when a reused idle one dies
before any response byte (a server closing idle connections, as uvicorn does after 5 s, what httpx also
retries). A connection whose exchange failed, timed out or was cancelled is closed, never pooled: a late
answer is never read as the next request's.

It deliberately does not: redirects, cookies, URL credentials, proxies, HTTP/2, request or response
streaming, decompression, ``Expect: 100-continue``, upgrades; ``content-length`` is always the client's
and ``transfer-encoding`` is refused. Errors: :class:`HTTPClientError` (an ``OSError``) for refused /
reset / closed connections, malformed or oversized responses and a closed client; ``ValueError`` for a
URL that is not absolute http(s) or a header with a line break.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

_PoolKey = tuple[str, str, int]  # (scheme, host, port)


class HTTPClientError(ConnectionError):
    """No HTTP answer: connection refused / reset / closed mid-response, a malformed or too large
    response, or a closed client. An ``OSError``, so callers catching network failures catch it too."""


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """A complete response: status, headers (lower-cased names; repeated ones joined by ``", "``), body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not, as httpx's ``Response.json``)."""
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the response parsed by httptools callbacks."""

    def __init__(self, max_response_bytes: int) -> None:
        self.max_response_bytes = max_response_bytes
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[HTTPReply] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.received_any = False  # a byte of the current request's response has arrived
        self.keep_alive = False
        self.on_message_begin()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, head: bytes, body: bytes) -> HTTPReply:
        self.received_any = False
        if not self.usable or self.transport is None:
            raise HTTPClientError("the connection was closed before the request was sent")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        try:
            return await self.waiter
        finally:
            self.waiter = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # asyncio sets TCP_NODELAY on TCP transports since 3.7 and uvloop does too; kept explicit because
        # a 40 ms Nagle / delayed-ACK stall would cost more than the whole plan budget.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: this connection cannot carry another request
            return
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(HTTPClientError(f"malformed HTTP response: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter is None or self.waiter.done():
            return
        ends_at_eof = "content-length" not in self.headers and "transfer-encoding" not in self.headers
        if exc is None and self.status_code and ends_at_eof:
            self._complete(keep_alive=False)  # a body delimited by the end of the stream (RFC 9112 6.3)
        else:
            reason = f": {exc}" if exc is not None else ""
            self._fail(HTTPClientError(f"connection closed before the response was complete{reason}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count(len(name) + len(value)):
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status_code = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._count(len(body)):
            self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status_code < 200:
            return  # an interim response; the final one follows on this connection
        self._complete(keep_alive=self.parser.should_keep_alive())

    def _count(self, size: int) -> bool:
        self.size += size
        if self.size <= self.max_response_bytes:
            return True
        self._fail(HTTPClientError(f"response larger than max_response_bytes={self.max_response_bytes}"))
        return False

    def _complete(self, *, keep_alive: bool) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.keep_alive = keep_alive
            reply = HTTPReply(self.status_code, MappingProxyType(self.headers), b"".join(self.body))
            self.waiter.set_result(reply)

    def _fail(self, error: HTTPClientError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()


@lru_cache(maxsize=256)
def _parse_url(url: str) -> tuple[_PoolKey, str, str]:
    """``(pool key, host header, request target)`` of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), parts.netloc.rpartition("@")[2], target


def _request_head(
    method: str, host: str, target: str, body: bytes, headers: Mapping[str, str] | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    given = {name.lower(): value for name, value in (headers or {}).items()}
    if "transfer-encoding" in given:
        raise ValueError("transfer-encoding is not supported: the body is sent with a content-length")
    given.pop("content-length", None)
    if "host" not in given:
        lines.append(f"host: {host}")
    if method == "POST":
        lines.append(f"content-length: {len(body)}")
    for name, value in given.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"line break in request header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class LeanHTTPClient:
    """A pooled HTTP/1.1 keep-alive client (module docstring: what it does and does not do).

    ``max_connections`` bounds the open connections (busy + idle, all hosts); ``max_response_bytes``
    bounds one response's headers + body; ``ssl_context`` is used for https (default:
    ``ssl.create_default_context()``). Use one client per event loop."""

    def __init__(
        self,
        *,
        max_connections: int = 64,
        max_response_bytes: int = 16 * 2**20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1 or max_response_bytes < 1:
            raise ValueError("max_connections and max_response_bytes must be positive")
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._permits = asyncio.Semaphore(max_connections)
        self._idle: dict[_PoolKey, list[_Connection]] = {}
        self._busy = 0  # requests holding a permit
        self._closed = False

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> HTTPReply:
        return await self._request("POST", url, content, headers, timeout)

    async def get(
        self, url: str, *, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> HTTPReply:
        return await self._request("GET", url, b"", headers, timeout)

    @property
    def idle_connections(self) -> int:
        """Open keep-alive connections waiting for a request (all hosts)."""
        return sum(len(pool) for pool in self._idle.values())

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when their exchange ends. Later calls raise."""
        self._closed = True
        idle = [connection for pool in self._idle.values() for connection in pool]
        self._idle.clear()
        for connection in idle:
            connection.close()
        if idle:  # let the transports finish closing while the loop still runs
            await asyncio.wait([connection.lost for connection in idle], timeout=1.0)

    async def _request(
        self, method: str, url: str, body: bytes, headers: Mapping[str, str] | None, timeout: float | None
    ) -> HTTPReply:
        key, host, target = _parse_url(url)
        head = _request_head(method, host, target, body, headers)
        if timeout is None:
            return await self._send(key, head, body)
        try:
            async with asyncio.timeout(timeout):
                return await self._send(key, head, body)
        except TimeoutError:
            raise TimeoutError(f"{method} {url}: no complete response within {timeout} s") from None

    async def _send(self, key: _PoolKey, head: bytes, body: bytes) -> HTTPReply:
        self._check_open()
        async with self._permits:
            self._check_open()
            self._busy += 1
            try:
                connection = self._take_idle(key)
                if connection is not None:
                    try:
                        return await self._exchange(key, connection, head, body)
                    except HTTPClientError:
                        if connection.received_any:
                            raise
                        # A stale keep-alive connection: the server closed it while idle. Retry once, fresh.
                return await self._exchange(key, await self._connect(key), head, body)
            finally:
                self._busy -= 1

    async def _exchange(self, key: _PoolKey, connection: _Connection, head: bytes, body: bytes) -> HTTPReply:
        try:
            reply = await connection.exchange(head, body)
        except BaseException:  # failure, timeout or cancellation: the answer may still come, never pool it
            connection.close()
            raise
        if connection.keep_alive and connection.usable and not self._closed:
            self._idle.setdefault(key, []).append(connection)
        else:
            connection.close()
        return reply

    def _take_idle(self, key: _PoolKey) -> _Connection | None:
        pool = self._idle.get(key)
        while pool:
            connection = pool.pop()  # the most recently used: the least likely to have timed out
            if connection.usable:
                return connection
        return None

    async def _connect(self, key: _PoolKey) -> _Connection:
        # Busy requests (this one included) plus idle connections may not exceed the limit: close the
        # oldest idle connections of any host to make room.
        while self._busy + self.idle_connections > self._max_connections:
            next(pool for pool in self._idle.values() if pool).pop(0).close()
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._max_response_bytes),
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        except OSError as error:
            raise HTTPClientError(f"cannot connect to {scheme}://{host}:{port}: {error}") from error
        return connection

    def _check_open(self) -> None:
        if self._closed:
            raise HTTPClientError("the client is closed")
