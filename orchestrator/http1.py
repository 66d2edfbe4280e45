"""HTTP/1.1 for the provider SDKs' calls to model endpoints: an httpx2 transport that speaks the
protocol itself over asyncio, with a pool of kept-alive connections.

A model call is one small JSON request and one JSON answer (or a stream of server-sent events),
hundreds of them in flight on one event loop. Through httpx's own transport (httpcore and h11) a
call's HTTP cost about three times what the rest of the SDK's request did, and with every job's
round waiting on the same loop, that was most of an executor's work per round. This transport does
what those calls need and no more: one request per connection at a time, `Content-Length`,
chunked and close-delimited bodies, 1xx answers skipped, TLS, timeouts (connect, read, write, pool)
raised as the `httpx2` exceptions the SDKs turn into their own connection and timeout errors.

How a connection is opened is the caller's: `netguard` gives one that connects anywhere (the site's
own endpoints) and one that connects only to addresses that passed its check.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2

MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers
MAX_CHUNK_LINE = 4096  # bytes of a chunk's size line (and of each trailer line)
READ_HIGH_WATER = 256 * 1024  # bytes buffered before the socket stops being read until they are taken

# Opens a connection: (protocol factory, host, port, TLS context or None) -> the protocol, connected.
Connect = Callable[[Callable[[], asyncio.Protocol], str, int, ssl.SSLContext | None], Awaitable[Any]]

STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


async def connect_anywhere(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                           context: ssl.SSLContext | None) -> Any:
    """A connection to wherever `host` resolves (the caller vouches for it)."""
    _, protocol = await asyncio.get_running_loop().create_connection(
        factory, host, port, ssl=context, server_hostname=host if context else None)
    return protocol


class _Closed(Exception):
    """The server closed the connection (or it broke) before what was being read arrived."""


class Connection(asyncio.Protocol):
    """One connection: the bytes the server sent, waited for with a timeout, and the writes the
    socket will take."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._socket: Any = None
        self.idle_since = 0.0

    # --- the event loop's side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport: nothing is sent after the answer is read

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the request's side -------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether an idle connection may carry another request: the server has sent nothing
        since the last answer (not even its close) and the transport is open. The socket itself
        is asked too: a close that arrived since the event loop last looked is not read yet."""
        return (not self._eof and not self._buffer and self.transport is not None
                and not self.transport.is_closing() and not readable(self._socket))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.transport is None or self.transport.is_closing():
            raise _Closed("the connection is closed")
        self.transport.write(data)
        writable = self._writable
        if writable is not None and not writable.done():
            await self._within(writable, timeout, httpx2.WriteTimeout)
        if self._error is not None:
            raise _Closed(str(self._error))

    async def _more(self, timeout: float | None) -> None:
        """Wait until more bytes (or the end) arrive."""
        if self._eof:
            raise _Closed(str(self._error) if self._error else "the server closed the connection")
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._within(self._waiter, timeout, httpx2.ReadTimeout)
        finally:
            self._waiter = None

    async def _within(self, future: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
        if timeout is None:
            await future
            return
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if not future.done():
                future.cancel()

        timer = self._loop.call_later(timeout, expire)
        try:
            await future
        except asyncio.CancelledError:
            if expired:
                raise error("timed out") from None
            raise
        finally:
            timer.cancel()

    async def read_until(self, separator: bytes, limit: int, timeout: float | None) -> bytes:
        """Bytes up to and including `separator`, which must come within `limit` bytes."""
        start = 0
        while (end := self._buffer.find(separator, start)) < 0:
            if len(self._buffer) > limit:
                raise httpx2.RemoteProtocolError(f"the server sent more than {limit} bytes without a line end")
            start = max(0, len(self._buffer) - len(separator) + 1)
            await self._more(timeout)
        end += len(separator)
        if end > limit:
            raise httpx2.RemoteProtocolError(f"the server sent more than {limit} bytes without a line end")
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    async def read_some(self, most: int, timeout: float | None) -> bytes:
        """Up to `most` bytes, as soon as there are any; b"" once the server has closed."""
        while not self._buffer:
            if self._eof:
                return b""
            await self._more(timeout)
        data = bytes(self._buffer[:most])
        del self._buffer[:most]
        return data


def readable(sock: Any) -> bool:
    """Whether reading `sock` would return at once: on an idle connection, that the server closed
    it (or sent what it should not have). A socket that is gone reads as closed."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _head(request: httpx2.Request) -> bytes:
    """The request line and headers, refusing anything that would end a line or the head early
    (a CR or LF in a header, as an API key pasted with its newline would carry)."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    expected = len(request.headers.raw) + 2
    if head.count(b"\n") != expected or head.count(b"\r") != expected or b"\0" in head or b" " in target:
        raise httpx2.LocalProtocolError("a header or the request target holds a line break, NUL or space")
    return head


def _parse_head(head: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Status, reason phrase, HTTP minor version and headers of a response's head."""
    lines = head[:-4].split(b"\r\n")
    status_line = STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise httpx2.RemoteProtocolError(f"not an HTTP/1 status line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or TOKEN.fullmatch(name) is None:
            raise httpx2.RemoteProtocolError(f"a malformed header line: {line[:100]!r}")
        headers.append((name, value.strip(b" \t")))
    return int(status_line[2]), status_line[3] or b"", status_line[1], headers


class Framing:
    """How a response's body ends, and whether its connection may carry another request after it."""

    def __init__(self, method: str, status: int, minor: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        connection, encodings, lengths = [], [], []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"connection":
                connection += [token.strip().lower() for token in value.split(b",")]
            elif lowered == b"transfer-encoding":
                encodings += [token.strip().lower() for token in value.split(b",")]
            elif lowered == b"content-length":
                lengths += [token.strip() for token in value.split(b",")]
        self.keep_alive = b"close" not in connection if minor == b"1" else b"keep-alive" in connection
        self.chunked = False
        self.length: int | None = None
        if method == "HEAD" or status in (204, 304):
            self.length = 0
        elif encodings:
            if encodings[-1] != b"chunked":
                raise httpx2.RemoteProtocolError("a transfer coding other than chunked ends the body")
            self.chunked = True
            # A length beside a transfer coding is a smuggling shape: read this answer, keep nothing.
            self.keep_alive = self.keep_alive and not lengths
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise httpx2.RemoteProtocolError(f"an invalid Content-Length: {b', '.join(lengths)[:100]!r}")
            self.length = int(lengths[0])
        else:
            self.keep_alive = False  # the body ends when the server closes the connection


class Body(httpx2.AsyncByteStream):
    """A response's body as it arrives. Read to its end, its connection goes back to the pool;
    closed before that, the connection is closed."""

    def __init__(self, pool: Http1Transport, origin: tuple[str, str, int], connection: Connection,
                 framing: Framing, timeout: float | None) -> None:
        self._pool, self._origin, self._connection = pool, origin, connection
        self._framing, self._timeout = framing, timeout
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._finished:
            return
        try:
            async for chunk in self._chunks():
                yield chunk
        except _Closed as error:
            self._give_back(reuse=False)
            raise httpx2.RemoteProtocolError(f"the server closed the connection before the body ended ({error})") from None
        except BaseException:
            self._give_back(reuse=False)
            raise
        self._give_back(reuse=self._framing.keep_alive)

    async def _chunks(self) -> AsyncIterator[bytes]:
        connection, timeout, framing = self._connection, self._timeout, self._framing
        if framing.chunked:
            while size := _chunk_size(await connection.read_until(b"\r\n", MAX_CHUNK_LINE, timeout)):
                async for piece in self._exactly(size):
                    yield piece
                if await connection.read_until(b"\r\n", 2, timeout) != b"\r\n":
                    raise httpx2.RemoteProtocolError("a chunk is longer than its size says")
            while await connection.read_until(b"\r\n", MAX_CHUNK_LINE, timeout) != b"\r\n":
                pass  # trailers: nothing the SDKs read
        elif framing.length is not None:
            async for piece in self._exactly(framing.length):
                yield piece
        else:
            while piece := await connection.read_some(READ_HIGH_WATER, timeout):
                yield piece

    async def _exactly(self, size: int) -> AsyncIterator[bytes]:
        while size:
            piece = await self._connection.read_some(min(size, READ_HIGH_WATER), self._timeout)
            if not piece:
                raise _Closed(f"{size} bytes short")
            size -= len(piece)
            yield piece

    async def aclose(self) -> None:
        self._give_back(reuse=False)

    def _give_back(self, *, reuse: bool) -> None:
        if not self._finished:
            self._finished = True
            self._pool._release(self._origin, self._connection, reuse=reuse)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    try:
        if not size or size.startswith((b"+", b"-", b"0x", b"0X")):
            raise ValueError
        return int(size, 16)
    except ValueError:
        raise httpx2.RemoteProtocolError(f"an invalid chunk size line: {line[:100]!r}") from None


class Http1Transport(httpx2.AsyncBaseTransport):
    """Requests over a pool of HTTP/1.1 connections, at most `max_connections` open at once (a
    request waits for one up to its pool timeout), idle ones kept up to `max_keepalive` for
    `keepalive_expiry` seconds. One event loop's: as the SDK clients that use it are."""

    def __init__(self, *, connect: Connect, ssl_context: ssl.SSLContext, max_connections: int,
                 max_keepalive: int | None = None, keepalive_expiry: float = 5.0) -> None:
        self._connect = connect
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._max_keepalive = max_connections if max_keepalive is None else max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._idle_count = 0
        self._busy = 0  # connections carrying a request, or being opened for one
        self._waiting: list[asyncio.Future[None]] = []
        self._swept = 0.0
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"this transport speaks http and https, not {url.scheme!r}")
        timeouts = request.extensions.get("timeout", {})
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        head = _head(request)
        connection = await self._acquire(origin, timeouts.get("pool"), timeouts.get("connect"))
        try:
            await self._send(connection, request, head, timeouts.get("write"))
            read_timeout = timeouts.get("read")
            while True:
                status, reason, minor, headers = _parse_head(
                    await connection.read_until(b"\r\n\r\n", MAX_HEAD, read_timeout))
                if status >= 200:
                    break
                if status == 101:
                    raise httpx2.RemoteProtocolError("the server switched protocols, which a model call never asks")
            framing = Framing(request.method, status, minor, headers)
        except _Closed as error:
            self._release(origin, connection, reuse=False)
            raise httpx2.RemoteProtocolError(f"the server closed the connection without answering ({error})") from None
        except BaseException:
            self._release(origin, connection, reuse=False)
            raise
        return httpx2.Response(status, headers=headers,
                               stream=Body(self, origin, connection, framing, read_timeout),
                               extensions={"http_version": b"HTTP/1." + minor, "reason_phrase": reason})

    async def _send(self, connection: Connection, request: httpx2.Request, head: bytes, timeout: float | None) -> None:
        try:
            if request.headers.get("transfer-encoding", "").lower() == "chunked":
                await connection.write(head, timeout)
                async for chunk in request.stream:  # type: ignore[union-attr]
                    if chunk:
                        await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk), timeout)
                await connection.write(b"0\r\n\r\n", timeout)
            else:
                await connection.write(head + await request.aread(), timeout)
        except _Closed as error:
            raise httpx2.WriteError(f"the connection closed while the request was sent ({error})") from None

    # --- the pool -------------------------------------------------------------------------------

    async def _acquire(self, origin: tuple[str, str, int], pool_timeout: float | None,
                       connect_timeout: float | None) -> Connection:
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = asyncio.get_running_loop()
        if self._busy >= self._max_connections:
            await self._wait_for_slot(loop, pool_timeout)
        self._busy += 1
        try:
            idle = self._idle.get(origin)
            now = loop.time()
            while idle:
                connection = idle.pop()
                self._idle_count -= 1
                if now - connection.idle_since < self._expiry and connection.usable:
                    return connection
                connection.close()
            if self._busy + self._idle_count > self._max_connections:
                self._close_oldest_idle()
            return await self._open(loop, origin, connect_timeout)
        except BaseException:
            self._busy -= 1
            self._wake_one()
            raise

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        deadline = None if timeout is None else loop.time() + timeout
        while self._busy >= self._max_connections:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as error:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken for a slot this request won't take: pass it on
                if isinstance(error, TimeoutError):
                    raise httpx2.PoolTimeout("no connection came free in time") from None
                raise

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _open(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int],
                    timeout: float | None) -> Connection:
        scheme, host, port = origin
        context = self._ssl_context if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connect(lambda: Connection(loop), host, port, context)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as error:  # refused, unreachable, a TLS failure (ssl.SSLError is one)
            raise httpx2.ConnectError(f"could not connect to {host}:{port}: {error}") from None
        return connection

    def _release(self, origin: tuple[str, str, int], connection: Connection, *, reuse: bool) -> None:
        self._busy -= 1
        now = asyncio.get_running_loop().time()
        if reuse and not self._closed and connection.usable and self._idle_count < self._max_keepalive:
            connection.idle_since = now
            self._idle.setdefault(origin, []).append(connection)
            self._idle_count += 1
        else:
            connection.close()
        if now - self._swept > self._expiry:
            self._sweep(now)
        self._wake_one()

    def _sweep(self, now: float) -> None:
        """Close the idle connections that have outlived the keep-alive expiry (the oldest of an
        origin's are only taken when the newer are all busy, so they may sit unasked)."""
        self._swept = now
        for idle in self._idle.values():
            # Each list is in the order its connections went idle: the expired ones come first.
            expired = next((n for n, connection in enumerate(idle) if now - connection.idle_since < self._expiry),
                           len(idle))
            for connection in idle[:expired]:
                connection.close()
            del idle[:expired]
            self._idle_count -= expired

    def _close_oldest_idle(self) -> None:
        oldest = min((idle for idle in self._idle.values() if idle), key=lambda idle: idle[0].idle_since, default=None)
        if oldest is not None:
            oldest.pop(0).close()
            self._idle_count -= 1

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
