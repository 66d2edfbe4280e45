"""The model endpoints' HTTP/1.1 transport (`orchestrator.http1`), against real servers on
127.0.0.1 that answer with raw bytes: each way a body can end, kept-alive connections taken again
only when that is safe, timeouts and broken answers raised as the errors the SDKs understand, the
pool's limit, TLS through the checked connection, and a request that could smuggle a header
refused before anything is sent."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
import openai
import pytest

from orchestrator import http1, netguard
from tests.test_tools_builtin import tls_material  # noqa: F401 (a fixture)

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[None]]


class RawServer:
    """Reads each request (its head, and a body by Content-Length or chunked) and lets `answer`
    write whatever bytes it likes; counts connections and keeps the requests it read."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _read_body(reader, head)
                self.requests.append((head, body))
                await self.answer(reader, writer, head, body)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its end, or broke the connection off
        finally:
            self.open -= 1
            writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return body
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def replies(*raw: bytes, close: bool = False) -> Answer:
    """An answer that writes `raw` (each in its own write), then closes if asked."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        for part in raw:
            writer.write(part)
            await writer.drain()
        if close:
            writer.close()

    return answer


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def transport(**options: Any) -> http1.Http1Transport:
    return http1.Http1Transport(connect=http1.connect_anywhere, ssl_context=netguard.tls_context(),
                                max_connections=options.pop("max_connections", 10), **options)


async def test_a_chunked_body_is_read_whole_and_its_connection_taken_again() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    async with RawServer(replies(chunked)) as server, httpx2.AsyncClient(transport=transport()) as client:
        for _ in range(3):
            answer = await client.get(server.url)
            assert (answer.status_code, answer.text) == (200, "hello, world")
    assert server.connections == 1


async def test_a_body_that_ends_with_the_connection_is_read_to_the_end_and_not_taken_again() -> None:
    async with RawServer(replies(b"HTTP/1.0 200 OK\r\n\r\nall of it", close=True)) as server, \
            httpx2.AsyncClient(transport=transport()) as client:
        assert (await client.get(server.url)).text == "all of it"
        assert (await client.get(server.url)).text == "all of it"
    assert server.connections == 2


async def test_interim_answers_are_skipped_and_bodiless_answers_keep_the_connection() -> None:
    async with RawServer(replies(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                                 b"HTTP/1.1 204 No Content\r\n\r\n")) as server, \
            httpx2.AsyncClient(transport=transport()) as client:
        for _ in range(2):
            answer = await client.post(server.url, content=b"{}")
            assert (answer.status_code, answer.content) == (204, b"")
    assert server.connections == 1


async def test_connection_close_is_honoured() -> None:
    async with RawServer(replies(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")) as server, \
            httpx2.AsyncClient(transport=transport()) as client:
        assert (await client.get(server.url)).text == "ok"
        assert (await client.get(server.url)).text == "ok"
    assert server.connections == 2


async def test_a_body_beside_both_a_length_and_chunks_is_read_as_chunks_and_its_connection_dropped() -> None:
    smuggled = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n")
    async with RawServer(replies(smuggled)) as server, httpx2.AsyncClient(transport=transport()) as client:
        assert (await client.get(server.url)).text == "ok"
        assert (await client.get(server.url)).text == "ok"
    assert server.connections == 2


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed before the body ended
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # closed inside a chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",  # not a chunk size
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",  # two lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",  # a body with no end
    b"ICY 200 OK\r\n\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    b"",  # closed without a word
], ids=["short-body", "short-chunk", "bad-chunk-size", "two-lengths", "negative-length", "unknown-coding",
        "not-http", "no-colon", "folded", "silence"])
async def test_a_broken_answer_is_a_protocol_error(raw: bytes) -> None:
    async with RawServer(replies(raw, close=True)) as server, httpx2.AsyncClient(transport=transport()) as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(server.url)


async def test_a_head_without_end_is_refused_once_it_is_too_long() -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"a" * (http1.MAX_HEAD + 10)
    async with RawServer(replies(endless)) as server, httpx2.AsyncClient(transport=transport()) as client:
        with pytest.raises(httpx2.RemoteProtocolError, match="more than"):
            await client.get(server.url)


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with RawServer(replies(OK)) as server, httpx2.AsyncClient(transport=transport()) as client:
        for value in ("k\r\nX-Injected: 1", "k\nX-Injected: 1", "k\rX", "k\0"):
            with pytest.raises(httpx2.LocalProtocolError):
                await client.get(server.url, headers={"Authorization": value})
        assert (await client.get(server.url)).text == "ok"  # the pool still works
    assert len(server.requests) == 1 and b"x-injected" not in server.requests[0][0].lower()


@pytest.mark.parametrize("sent_first", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no"],
                         ids=["nothing", "head-and-part-of-the-body"])
async def test_a_slow_answer_times_out_and_its_connection_is_not_taken_again(sent_first: bytes) -> None:
    calls = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            writer.write(sent_first)
            await asyncio.sleep(0.5)  # the rest after the client gave up
            writer.write(b"k" if sent_first else OK)
            return
        writer.write(OK)

    async with RawServer(answer) as server, httpx2.AsyncClient(transport=transport()) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(server.url, timeout=httpx2.Timeout(5, read=0.1))
        assert (await client.get(server.url)).text == "ok"
    assert server.connections == 2


async def test_the_sdk_turns_a_timeout_and_a_refused_connection_into_its_own_errors() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        await asyncio.sleep(5)

    async with RawServer(never) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(transport=transport()))
        async with client:
            with pytest.raises(openai.APITimeoutError):
                await client.models.list(timeout=0.2)
    closed = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0,
                                http_client=openai.DefaultAsyncHttpxClient(transport=transport()))
    async with closed:
        with pytest.raises(openai.APIConnectionError):
            await closed.models.list(timeout=2)


async def test_no_more_connections_than_the_limit_and_a_request_left_waiting_times_out() -> None:
    async def slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        await asyncio.sleep(0.05)
        writer.write(OK)

    async with RawServer(slowly) as server, httpx2.AsyncClient(transport=transport(max_connections=2)) as client:
        answers = await asyncio.gather(*(client.get(server.url) for _ in range(6)))
        assert [answer.text for answer in answers] == ["ok"] * 6
        assert server.most_open == 2 and server.connections == 2
        with pytest.raises(httpx2.PoolTimeout):
            await asyncio.gather(*(client.get(server.url, timeout=httpx2.Timeout(5, pool=0.01)) for _ in range(3)))


async def test_idle_connections_past_their_expiry_are_closed_even_when_nobody_asks_for_them() -> None:
    async with RawServer(replies(OK)) as idle, RawServer(replies(OK)) as busy:
        pool = transport(keepalive_expiry=0.2)
        async with httpx2.AsyncClient(transport=pool) as client:
            await asyncio.gather(*(client.get(idle.url) for _ in range(3)))
            await asyncio.sleep(0.3)
            assert (await client.get(busy.url)).text == "ok"  # another origin's request
            for _ in range(50):
                if idle.open == 0:
                    break
                await asyncio.sleep(0.01)
            assert idle.connections == 3 and idle.open == 0
            assert (await client.get(idle.url)).text == "ok"  # on a new connection
        assert idle.connections == 4


async def test_a_cancelled_request_gives_its_connection_slot_back() -> None:
    held = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        if not held.is_set():
            held.set()
            await asyncio.sleep(5)
        writer.write(OK)

    async with RawServer(hold) as server, httpx2.AsyncClient(transport=transport(max_connections=1)) as client:
        stuck = asyncio.create_task(client.get(server.url))
        await held.wait()
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        answer = await client.get(server.url, timeout=httpx2.Timeout(5, pool=1))
        assert answer.text == "ok"
    assert server.connections == 2  # the cancelled request's connection was closed, not reused


async def test_a_streamed_answer_arrives_piece_by_piece() -> None:
    more = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n")
        await writer.drain()
        await more.wait()  # the rest only once the client has read the first piece
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")

    async with RawServer(stream) as server, httpx2.AsyncClient(transport=transport()) as client:
        async with client.stream("GET", server.url) as answer:
            pieces = []
            async for piece in answer.aiter_bytes():
                pieces.append(piece)
                more.set()
        assert pieces == [b"first ", b"last"]
        assert (await client.get(server.url)).text == "first last"
    assert server.connections == 1


@pytest.mark.parametrize("pieces_read", [0, 1])
async def test_an_answer_left_unread_closes_its_connection(pieces_read: int) -> None:
    more = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if pieces_read:
            writer.write(b"6\r\nfirst \r\n")
        await writer.drain()
        await more.wait()  # the rest comes after the client has stopped reading
        writer.write(b"6\r\nfirst \r\n" * (1 - pieces_read) + b"4\r\nlast\r\n0\r\n\r\n")

    async with RawServer(stream) as server, httpx2.AsyncClient(transport=transport()) as client:
        async with client.stream("GET", server.url) as answer:
            if pieces_read:
                async for _ in answer.aiter_bytes():
                    break
        more.set()
        assert (await client.get(server.url)).text == "first last"
    assert server.connections == 2


async def test_large_bodies_both_ways_and_a_streamed_request() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket and the read buffer hold at once

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b""
        yield b"request"

    async with RawServer(echo) as server, httpx2.AsyncClient(transport=transport()) as client:
        assert (await client.post(server.url, content=big)).content == big
        assert (await client.post(server.url, content=parts())).content == b"streamed request"
    assert server.connections == 1


async def test_the_checked_transport_speaks_tls_to_the_checked_address_under_the_asked_name(
        tls_material: dict[str, Any], monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:  # noqa: F811
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tls_material["cert"], tls_material["key"])
    looked_up = []

    async def resolve(host: str, port: int) -> list[Any]:
        looked_up.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    server = await asyncio.start_server(lambda r, w: replies(OK)(r, w, b"", b""), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(tls_material["ca"]))
    try:
        async with httpx2.AsyncClient(transport=netguard.endpoint_transport(ssl_context=client_context)) as client:
            assert (await client.get(f"https://cortex.test:{port}/")).text == "ok"
            with pytest.raises(httpx2.ConnectError, match="certificate"):
                await client.get(f"https://impostor.test:{port}/")
        settings.CORTEX_HTTP_ALLOW_PRIVATE = False
        async with httpx2.AsyncClient(transport=netguard.endpoint_transport(ssl_context=client_context)) as client:
            with pytest.raises(netguard.AddressRefused):
                await client.get(f"https://cortex.test:{port}/")
    finally:
        server.close()
    assert looked_up == ["cortex.test", "impostor.test", "cortex.test"]
