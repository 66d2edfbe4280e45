"""Asyncio HTTP/1.1 server and the scripting model shared by the provider fakes.

The server is deliberately small: keep-alive, Content-Length or chunked request
bodies, JSON responses and chunked streaming responses (used for Server-Sent
Events). It notices when a client goes away while an answer is being delayed
or streamed, so timeout and cancellation tests can assert that the server saw
the disconnect.

Everything a provider fake has in common (scripted turns, the default tool
loop, request recording, running in a background thread or as a CLI process)
lives in `ProviderFake`; each provider module only knows its wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "ClientDisconnected",
    "ErrorReply",
    "HTTPServer",
    "ProviderFake",
    "RecordedRequest",
    "Request",
    "Response",
    "StreamingResponse",
    "ToolCall",
    "Turn",
    "json_response",
    "run_cli",
    "sse",
]

_HEADER_LIMIT = 1 << 20
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_REASONS[529] = "Overloaded"


class ClientDisconnected(Exception):
    """Raised inside a handler when the client closed the connection mid-answer."""


class _BadRequest(Exception):
    """A request the fake cannot parse: answered with 400."""


# --------------------------------------------------------------------------- #
# Requests and responses
# --------------------------------------------------------------------------- #


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    version: str
    _gone: asyncio.Event = field(repr=False)

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def client_gone(self) -> bool:
        return self._gone.is_set()

    async def wait(self, seconds: float) -> None:
        """Sleep, but give up as soon as the client disconnects.

        Event driven rather than polled so that hundreds of delayed answers
        (the benchmark's fixed latency) cost one timer each.
        """
        if self._gone.is_set():
            raise ClientDisconnected
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._gone.wait()
        except TimeoutError:
            return
        raise ClientDisconnected


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamingResponse:
    """A chunked response; each item of `chunks` is flushed as its own chunk.

    `abort_after` cuts the TCP connection after that many chunks, to imitate
    a stream that dies half way.
    """

    chunks: AsyncIterator[bytes]
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/event-stream"
    abort_after: int | None = None


Reply = Response | StreamingResponse
Handler = Callable[[Request], Awaitable[Reply]]


def json_response(
    payload: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status=status, body=body, headers=list(headers))


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event; dicts are sent as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    if event is None:
        return f"data: {text}\n\n".encode()
    return f"event: {event}\ndata: {text}\n\n".encode()


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class _Protocol(asyncio.StreamReaderProtocol):
    """Stream protocol that also flags when the peer hangs up."""

    def __init__(self, server: HTTPServer) -> None:
        self.gone = asyncio.Event()
        reader = asyncio.StreamReader(limit=_HEADER_LIMIT)
        super().__init__(reader, self._connected)
        self._server = server

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        return self._server._serve_connection(reader, writer, self.gone)

    def eof_received(self) -> bool:
        self.gone.set()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        super().connection_lost(exc)


class HTTPServer:
    """HTTP/1.1 server calling `handler` for every request, one at a time per connection."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, backlog: int = 4096) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.disconnects = 0
        self.errors: list[str] = []

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self), self._host, self._port, backlog=self._backlog
        )

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        try:
            async with asyncio.timeout(2):
                await self._server.wait_closed()
        except TimeoutError:
            pass
        self._server = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gone: asyncio.Event
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._request_loop(reader, writer, gone)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ClientDisconnected:
            self.disconnects += 1
        finally:
            self._connections.discard(task)
            writer.close()

    async def _request_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gone: asyncio.Event
    ) -> None:
        while True:
            try:
                request = await _read_request(reader, writer, gone)
            except _BadRequest as exc:
                writer.write(_head(400, "text/plain", [], len(str(exc)), keep_alive=False) + str(exc).encode())
                return
            if request is None:
                return
            reply = await self._dispatch(request)
            keep_alive = request.keep_alive
            if isinstance(reply, StreamingResponse):
                keep_alive = await self._send_stream(writer, reply, keep_alive)
            else:
                writer.write(_head(reply.status, reply.content_type, reply.headers, len(reply.body), keep_alive))
                writer.write(reply.body)
                await writer.drain()
            if not keep_alive:
                return

    async def _dispatch(self, request: Request) -> Reply:
        try:
            return await self._handler(request)
        except ClientDisconnected:
            raise
        except Exception:
            # A bug in a fake must show up in the test that triggered it, not hang it.
            detail = traceback.format_exc()
            self.errors.append(detail)
            print(detail, file=sys.stderr, flush=True)
            return json_response({"error": {"message": "fake server crashed", "detail": detail}}, 500)

    async def _send_stream(self, writer: asyncio.StreamWriter, reply: StreamingResponse, keep_alive: bool) -> bool:
        headers = [*reply.headers, ("Transfer-Encoding", "chunked")]
        writer.write(_head(reply.status, reply.content_type, headers, None, keep_alive))
        sent = 0
        try:
            async for chunk in reply.chunks:
                if reply.abort_after is not None and sent >= reply.abort_after:
                    await writer.drain()
                    writer.transport.abort()
                    return False
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    sent += 1
        except ConnectionError as exc:
            raise ClientDisconnected from exc
        except ClientDisconnected:
            raise
        except Exception:
            # Headers are already out, so the only honest signal left is a cut stream.
            detail = traceback.format_exc()
            self.errors.append(detail)
            print(detail, file=sys.stderr, flush=True)
            writer.transport.abort()
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive


def _head(
    status: int,
    content_type: str,
    headers: Iterable[tuple[str, str]],
    length: int | None,
    keep_alive: bool,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gone: asyncio.Event
) -> Request | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("truncated request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    lines = raw[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise _BadRequest("malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    url = urlsplit(target)
    return Request(
        method=method.upper(),
        target=target,
        path=url.path,
        query=dict(parse_qsl(url.query)),
        headers=headers,
        body=body,
        version=version,
        _gone=gone,
    )


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest("malformed chunk size") from exc
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if not length:
        return b""
    try:
        return await reader.readexactly(int(length))
    except ValueError as exc:
        raise _BadRequest("malformed Content-Length") from exc


# --------------------------------------------------------------------------- #
# Scripting model
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call in a model turn.

    `arguments` may be a string: the OpenAI fake sends it verbatim (so it can be
    malformed JSON); the others require it to decode to a JSON object.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))

    def arguments_object(self) -> dict[str, Any]:
        if isinstance(self.arguments, str):
            value = json.loads(self.arguments)
            if not isinstance(value, dict):
                raise ValueError(f"tool arguments must be a JSON object, got {self.arguments!r}")
            return value
        return dict(self.arguments)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error answer; `body=None` means the provider's usual body for `status`."""

    status: int
    message: str | None = None
    body: Any = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted answer.

    A turn with no text, no tool calls and no error means "whatever the default
    behaviour would answer", which lets a test add just a delay.
    `chunks` are the text deltas used when the request streams; `chunk_delay`
    spaces them out; `abort_after` cuts a streamed answer after that many
    events; `error_after` sends the provider's own server-error event after that
    many events and ends the stream (a failure half way through an answer that
    had started well). `finish_reason` overrides the provider's stop reason
    verbatim. `input_tokens`/`output_tokens` override the estimated usage.
    `raw` is sent verbatim as the whole response body (a misbehaving server's reply:
    NaN, lone surrogates, absurd nesting, wrong types); it takes precedence over the rest.
    """

    text: str | None = None
    chunks: Sequence[str] | None = None
    tool_calls: Sequence[ToolCall] = ()
    error: ErrorReply | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    abort_after: int | None = None
    error_after: int | None = None
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    raw: str | None = None

    @property
    def is_default(self) -> bool:
        return (self.text is None and self.chunks is None and not self.tool_calls and self.error is None
                and self.raw is None)

    @property
    def full_text(self) -> str:
        if self.chunks is not None:
            return "".join(self.chunks)
        return self.text or ""

    def deltas(self) -> list[str]:
        """Text pieces for streaming: the scripted chunks, else word by word."""
        if self.chunks is not None:
            return [c for c in self.chunks if c]
        text = self.text or ""
        words = text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]] if text else []


ToolCallLike = ToolCall | tuple[str, Mapping[str, Any] | str] | str


def _as_tool_call(call: ToolCallLike) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    if isinstance(call, str):
        return ToolCall(call)
    name, arguments = call
    return ToolCall(name, arguments)


def estimate_tokens(text_length: int) -> int:
    """Roughly four characters a token, as the providers' own rules of thumb say."""
    return max(1, text_length // 4)


def split_evenly(text: str, parts: int = 3) -> list[str]:
    """Split a string into up to `parts` non-empty pieces (for argument deltas)."""
    if not text:
        return []
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:length]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any


# --------------------------------------------------------------------------- #
# Provider fake base
# --------------------------------------------------------------------------- #


class ProviderFake:
    """Shared behaviour of the provider fakes; subclasses speak one wire protocol.

    Use as `with SomeFake() as fake:` (background thread with its own event
    loop), `async with SomeFake() as fake:`, or through `run_cli`.
    """

    #: Appended to the server root to form the base URL the provider's SDK expects.
    api_prefix: ClassVar[str] = ""
    default_model: ClassVar[str] = "model"

    def __init__(
        self,
        *,
        rounds: int = 5,
        tool_name: str = "current_time",
        tool_arguments: Mapping[str, Any] | None = None,
        final_text: str = "All done.",
        latency: float = 0.0,
        expect_key: str | None = None,
        strict: bool = True,
        record: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.rounds = rounds
        self.tool_name = tool_name
        self.tool_arguments: dict[str, Any] = dict(tool_arguments or {})
        self.final_text = final_text
        self.latency = latency
        self.expect_key = expect_key
        self.strict = strict
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.request_count = 0
        self.call_count = 0
        self._turns: collections.deque[Turn] = collections.deque()
        self._server = HTTPServer(self._handle, host, port)
        self._host = host
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- scripting --------------------------------------------------------- #

    def script(self, *turns: Turn) -> Self:
        for turn in turns:
            self.check_turn(turn)
        self._turns.extend(turns)
        return self

    def script_text(
        self,
        text: str | None = None,
        *,
        chunks: Sequence[str] | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        abort_after: int | None = None,
        error_after: int | None = None,
        finish_reason: str | None = None,
    ) -> Self:
        if text is None and chunks is None:
            raise ValueError("script_text needs text or chunks")
        return self.script(
            Turn(
                text=text,
                chunks=chunks,
                delay=delay,
                chunk_delay=chunk_delay,
                abort_after=abort_after,
                error_after=error_after,
                finish_reason=finish_reason,
            )
        )

    def script_tool_calls(
        self,
        *calls: ToolCallLike,
        text: str | None = None,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        finish_reason: str | None = None,
    ) -> Self:
        if not calls:
            raise ValueError("script_tool_calls needs at least one call")
        tool_calls = tuple(_as_tool_call(c) for c in calls)
        return self.script(
            Turn(text=text, tool_calls=tool_calls, delay=delay, chunk_delay=chunk_delay, finish_reason=finish_reason)
        )

    def script_error(
        self,
        status: int,
        *,
        message: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Self:
        error = ErrorReply(status, message, body, retry_after, dict(headers or {}))
        return self.script(Turn(error=error, delay=delay))

    def script_delay(self, seconds: float, turn: Turn | None = None) -> Self:
        """A slow answer: `turn` (default behaviour if None) after `seconds`."""
        return self.script(dataclasses.replace(turn or Turn(), delay=seconds))

    def clear_script(self) -> None:
        self._turns.clear()

    @property
    def pending(self) -> int:
        """Scripted turns not consumed yet."""
        return len(self._turns)

    def reset(self) -> None:
        self._turns.clear()
        self.requests.clear()
        self.request_count = 0
        self.call_count = 0
        self._server.disconnects = 0
        self._server.errors.clear()

    # -- recording --------------------------------------------------------- #

    @property
    def calls(self) -> list[Any]:
        """JSON bodies of the generation requests, in arrival order."""
        return [r.json for r in self.requests if self.is_generation_path(r.path)]

    @property
    def last_call(self) -> Any:
        calls = self.calls
        if not calls:
            raise LookupError("no generation request received")
        return calls[-1]

    @property
    def disconnects(self) -> int:
        """Answers abandoned because the client hung up while waiting or streaming."""
        return self._server.disconnects

    @property
    def errors(self) -> list[str]:
        """Tracebacks of bugs inside the fake itself (should stay empty)."""
        return self._server.errors

    async def wait_for_calls(self, count: int, timeout: float = 5.0) -> None:
        await _wait_until(lambda: self.call_count >= count, timeout, f"{count} generation requests")

    async def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> None:
        await _wait_until(lambda: self.disconnects >= count, timeout, f"{count} client disconnects")

    # -- lifecycle --------------------------------------------------------- #

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + self.api_prefix

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass
        thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.serve(on_ready=lambda _url: self._ready.set()))
        except BaseException as exc:  # surfaced to start() instead of dying silently
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def serve(self, on_ready: Callable[[str], None] | None = None, install_signals: bool = False) -> None:
        """Serve on the running loop until `stop()` (or SIGTERM/SIGINT when asked)."""
        self._stop_event = asyncio.Event()
        await self._server.start()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop_event.set)
        try:
            if on_ready is not None:
                on_ready(self.base_url)
            await self._stop_event.wait()
        finally:
            await self._server.close()

    # -- request flow ------------------------------------------------------ #

    async def _handle(self, request: Request) -> Reply:
        self.request_count += 1
        body = request.json()
        if self.is_generation_path(request.path):
            self.call_count += 1
        if self.record:
            self.requests.append(
                RecordedRequest(request.method, request.path, request.query, request.headers, request.body, body)
            )
        return await self.route(request, body)

    async def generate(self, request: Request, body: Any, *, stream: bool, model: str) -> Reply:
        """The common path of every generation request.

        Order mirrors the real services: authentication, request validation,
        then the (possibly delayed) answer. A rejected request does not use up
        a scripted turn.
        """
        auth = self.auth_error(request)
        if auth is not None:
            await request.wait(self.latency)
            return self.error_response(auth)
        if not isinstance(body, dict):
            return self.error_response(ErrorReply(400, "Request body is not a valid JSON object."))
        problem = self.validate(body)
        if problem is not None:
            return self.error_response(problem)
        turn = self._turns.popleft() if self._turns else Turn()
        await request.wait(self.latency + turn.delay)
        if turn.error is not None:
            return self.error_response(turn.error)
        if turn.is_default:
            turn = _replace_default(turn, self.default_turn(body))
        return self.answer(request, body, self._within_limit(turn, body), stream=stream, model=model)

    def _within_limit(self, turn: Turn, body: Mapping[str, Any]) -> Turn:
        """The turn cut off at the request's output limit, as a real model would be."""
        limit = self.output_limit(body)
        if not isinstance(limit, int) or limit <= 0 or self.output_tokens(turn) <= limit:
            return turn
        cut = turn.full_text[: limit * 4]
        return dataclasses.replace(
            turn, text=cut, chunks=None, output_tokens=limit, finish_reason=turn.finish_reason or self.length_reason
        )

    def streaming(
        self, request: Request, turn: Turn, events: list[bytes], headers: Sequence[tuple[str, str]] = ()
    ) -> StreamingResponse:
        """A streamed answer of `events`, failing half way when the turn says so."""
        if turn.error_after is not None:
            events = [*events[: turn.error_after], self.stream_error_event()]
        return StreamingResponse(
            paced(request, events, turn.chunk_delay), headers=list(headers), abort_after=turn.abort_after
        )

    def default_turn(self, body: Mapping[str, Any]) -> Turn:
        # A model offered no tools cannot call one (a final answer's request, say): it answers.
        if self.count_tool_results(body) < self.rounds and self.offers_tools(body):
            return Turn(tool_calls=(ToolCall(self.tool_name, self.tool_arguments),))
        return Turn(text=self.final_text)

    def request_tokens(self, request: Request) -> int:
        return estimate_tokens(len(request.body))

    @staticmethod
    def output_tokens(turn: Turn) -> int:
        if turn.output_tokens is not None:
            return turn.output_tokens
        length = len(turn.full_text) + sum(len(c.name) + len(c.arguments_json()) for c in turn.tool_calls)
        return estimate_tokens(length) + 4 * len(turn.tool_calls)

    # -- provider hooks ---------------------------------------------------- #

    def is_generation_path(self, path: str) -> bool:
        raise NotImplementedError

    async def route(self, request: Request, body: Any) -> Reply:
        raise NotImplementedError

    def auth_error(self, request: Request) -> ErrorReply | None:
        raise NotImplementedError

    def validate(self, body: Mapping[str, Any]) -> ErrorReply | None:
        """A 400 the real service would give for this body (honouring `self.strict`)."""
        return None

    def count_tool_results(self, body: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def offers_tools(self, body: Mapping[str, Any]) -> bool:
        """Whether the request offers the model any tool to call."""
        raise NotImplementedError

    def answer(self, request: Request, body: Mapping[str, Any], turn: Turn, *, stream: bool, model: str) -> Reply:
        raise NotImplementedError

    def error_response(self, error: ErrorReply) -> Response:
        raise NotImplementedError

    def check_turn(self, turn: Turn) -> None:
        """Reject turns the provider could not express, at scripting time."""

    #: The provider's finish reason for an answer cut off at the output limit.
    length_reason: ClassVar[str] = "length"

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        """The output limit in tokens the request sets, if any."""
        return None

    def stream_error_event(self) -> bytes:
        """The event the provider sends when it fails in the middle of a stream."""
        raise NotImplementedError


def _replace_default(scripted: Turn, default: Turn) -> Turn:
    """The default answer, keeping the streaming and usage knobs of the scripted turn."""
    return dataclasses.replace(scripted, text=default.text, chunks=default.chunks, tool_calls=default.tool_calls,
                               raw=default.raw)


def error_headers(error: ErrorReply) -> list[tuple[str, str]]:
    headers = list(error.headers.items())
    if error.retry_after is not None:
        value = error.retry_after
        headers.append(("Retry-After", str(int(value)) if float(value).is_integer() else str(value)))
    return headers


async def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def paced(request: Request, items: Iterable[bytes], delay: float) -> AsyncIterator[bytes]:
    """Yield stream events, waiting `delay` between them (and noticing hang-ups)."""
    first = True
    for item in items:
        if delay and not first:
            await request.wait(delay)
        first = False
        yield item


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def run_cli(fake_class: type[ProviderFake], argv: Sequence[str] | None = None) -> None:
    """Serve a fake until SIGTERM; prints `LISTENING <base_url>` once ready."""
    parser = argparse.ArgumentParser(prog=fake_class.__name__, description=fake_class.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--rounds", type=int, default=5, help="tool calls before the final text")
    parser.add_argument("--tool-name", default="current_time")
    parser.add_argument("--final-text", default="All done.")
    parser.add_argument("--expect-key", default=None, help="reject any other API key")
    parser.add_argument("--record", action="store_true", help="keep request bodies (grows memory)")
    parser.add_argument("--no-strict", action="store_true", help="skip protocol validation")
    args = parser.parse_args(argv)
    fake = fake_class(
        host=args.host,
        port=args.port,
        latency=args.latency,
        rounds=args.rounds,
        tool_name=args.tool_name,
        final_text=args.final_text,
        expect_key=args.expect_key,
        record=args.record,
        strict=not args.no_strict,
    )

    def announce(url: str) -> None:
        print(f"LISTENING {url}", flush=True)

    asyncio.run(fake.serve(on_ready=announce, install_signals=True))
