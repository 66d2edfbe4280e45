"""Talking to MCP servers through the SDK: one session per server per event loop, reused across
calls; discovery; and turning a call's result into what the model reads.

A session is opened (and, for stdio, its server started) by the first call that needs it and kept
by a task of its own, since the SDK's context managers must be left by the task that entered them.
A server that closes the connection (it crashed, or was restarted) is dropped from the pool and
opened again by the next call. A call that takes too long is abandoned with
`notifications/cancelled`, as is one whose job is cancelled (its task is cancelled).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore2
import httpx2
from django.conf import settings
from mcp import ClientSession, StdioServerParameters, stdio_client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from .. import netguard
from ..tools.registry import ToolError

logger = logging.getLogger(__name__)

ToolsChanged = Callable[[int, list[dict[str, Any]]], Awaitable[None]]


class ServerUnavailable(ToolError):
    """The server could not be reached, started or spoken to; the message says why, for a person
    or the model."""


@dataclass(frozen=True)
class ServerConfig:
    """What it takes to connect to one server, secrets decrypted. Compared whole: a server whose
    configuration changed gets a new session."""

    id: int
    name: str
    transport: str  # "stdio" or "http"
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    url: str = ""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    trusted: bool = False  # its URL may be private (staff added it)
    timeout: float = 60.0


# --- Sessions ------------------------------------------------------------------------------------

def _allow_private(config: ServerConfig) -> Callable[[], bool]:
    return lambda: config.trusted or settings.CORTEX_HTTP_ALLOW_PRIVATE


@asynccontextmanager
async def open_session(config: ServerConfig, *, on_message: Callable[[Any], Awaitable[None]] | None = None,
                       ended: anyio.Event | None = None) -> AsyncIterator[ClientSession]:
    """An initialised session to the server, closed (and a stdio server stopped) on leaving. Any
    failure to start, reach or speak to the server is a `ServerUnavailable` saying why. `ended` is
    set when the server closes the connection (a stdio server that exited, say)."""
    try:
        async with _connected(config, on_message, ended or anyio.Event()) as session:
            yield session
    except Exception as error:
        raise _unavailable(config, error) from None


@asynccontextmanager
async def _connected(config: ServerConfig, on_message: Callable[[Any], Awaitable[None]] | None,
                     ended: anyio.Event) -> AsyncIterator[ClientSession]:
    async with AsyncExitStack() as stack:
        if config.transport == "stdio":
            parameters = StdioServerParameters(command=config.command, args=list(config.args),
                                               env=dict(config.env) or None)
            read, write = await stack.enter_async_context(stdio_client(parameters, errlog=sys.__stderr__))
        else:
            try:
                await netguard.check_url(config.url, allow_private=_allow_private(config)())
            except netguard.Unreachable as error:
                raise ServerUnavailable(f"the address of the server {config.name} is not allowed: {error}") from None
            # Every connection goes through the address check, redirects included.
            http = await stack.enter_async_context(httpx2.AsyncClient(
                transport=netguard.checked_transport(_allow_private(config), http=httpx2, core=httpcore2),
                headers=dict(config.headers), timeout=httpx2.Timeout(30.0, read=config.timeout + 30.0)))
            read, write = await stack.enter_async_context(streamable_http_client(config.url, http_client=http))
        # What the server sends passes through a relay that notices the end of the stream, so a
        # session whose server went away between calls is replaced before the next call.
        relays = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(relays.cancel_scope.cancel)
        relayed_send, relayed = anyio.create_memory_object_stream[Any](0)
        relays.start_soon(_relay, read, relayed_send, ended)
        session = await stack.enter_async_context(ClientSession(relayed, write, message_handler=on_message))
        try:
            with anyio.fail_after(settings.CORTEX_MCP_CONNECT_SECONDS):
                await session.initialize()
        except TimeoutError:
            raise ServerUnavailable(f"the server {config.name} did not answer within "
                                    f"{settings.CORTEX_MCP_CONNECT_SECONDS:g} s") from None
        yield session


async def _relay(source: Any, target: Any, ended: anyio.Event) -> None:
    # A stream closed on either side is how the connection ends, not a failure: `ended` says so.
    try:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            async with target:
                async for item in source:
                    await target.send(item)
    finally:
        ended.set()


def _unavailable(config: ServerConfig, error: BaseException) -> ToolError:
    """What a failure means for a person or the model, out of whatever the SDK's task groups wrapped."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = next((inner for inner in error.exceptions if isinstance(inner, ToolError)), error.exceptions[0])
    if isinstance(error, ToolError):
        return error
    if isinstance(error, MCPError):
        if error.code == types.CONNECTION_CLOSED:
            return ServerUnavailable(f"the server {config.name} closed the connection (it may have crashed)")
        return ServerUnavailable(f"the server {config.name} refused: {error.message}")
    if isinstance(error, (OSError, ValueError)) and config.transport == "stdio":
        return ServerUnavailable(f"the server {config.name} could not be started: {error}")
    if isinstance(error, httpx2.HTTPStatusError):
        return ServerUnavailable(f"the server {config.name} answered HTTP {error.response.status_code}")
    return ServerUnavailable(f"the server {config.name} could not be reached: {_describe(error)}")


def _describe(error: BaseException) -> str:
    """The innermost useful message of an error the SDK or its task groups wrapped."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def list_tools(session: ClientSession) -> list[dict[str, Any]]:
    """Every tool the server offers (all pages), as plain data."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        result = await session.list_tools(params=params)
        found.extend(tool_as_data(tool) for tool in result.tools)
        cursor = result.next_cursor
        if not cursor:
            return found


def tool_as_data(tool: types.Tool) -> dict[str, Any]:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
    annotations = {key: value for key, value in (annotations or {}).items() if key != "title"} or (
        {} if annotations is not None else None)
    return {"name": tool.name, "title": tool.title or (tool.annotations.title if tool.annotations else None) or "",
            "description": tool.description or "", "input_schema": tool.input_schema or {"type": "object"},
            "annotations": annotations}


async def discover(config: ServerConfig) -> list[dict[str, Any]]:
    """Open a session, list the tools, close it: for a test of the connection or a refresh."""
    async with open_session(config) as session:
        try:
            with anyio.fail_after(config.timeout):
                return await list_tools(session)
        except TimeoutError:
            raise ServerUnavailable(f"the server {config.name} did not list its tools within {config.timeout:g} s") \
                from None
        except MCPError as error:
            raise ServerUnavailable(f"the server {config.name} could not list its tools: {error.message}") from None


class Connection:
    """One open session, held by a task of its own until closed or until the server goes away."""

    def __init__(self, config: ServerConfig, on_tools_changed: ToolsChanged | None) -> None:
        self.config = config
        self.session: ClientSession | None = None
        self._on_tools_changed = on_tools_changed
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._ended = anyio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task | None = None
        self._refreshes: set[asyncio.Task] = set()

    @property
    def alive(self) -> bool:
        return (self.session is not None and not self._ended.is_set() and self._task is not None
                and not self._task.done())

    async def open(self) -> ClientSession:
        self._task = asyncio.get_running_loop().create_task(self._hold(), name=f"mcp server {self.config.name}")
        await asyncio.wait([self._task, asyncio.ensure_future(self._ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if self.session is None:
            error = self._error
            raise error if isinstance(error, ToolError) else ServerUnavailable(
                f"the server {self.config.name} could not be reached")
        return self.session

    async def _hold(self) -> None:
        try:
            async with open_session(self.config, on_message=self._on_message, ended=self._ended) as session:
                self.session = session
                self._ready.set()
                async with anyio.create_task_group() as waiting:  # until closed, or the server goes away
                    async def stop_when(event: Any) -> None:
                        await event.wait()
                        waiting.cancel_scope.cancel()

                    waiting.start_soon(stop_when, self._stop)
                    waiting.start_soon(stop_when, self._ended)
        except Exception as error:  # kept for `open`; a session that was up just ends
            self._error = error
            if self._ready.is_set():
                logger.info("session to MCP server %s ended: %s", self.config.name, _describe(error))
        finally:
            self.session = None
            self._ready.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and self._on_tools_changed is not None:
            # Not in the handler itself: listing the tools is a request on this very session.
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._keep(task)

    def _keep(self, task: asyncio.Task) -> None:
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self) -> None:
        session = self.session
        if session is None or self._on_tools_changed is None:
            return
        try:
            listing = await list_tools(session)
            await self._on_tools_changed(self.config.id, listing)
        except Exception:
            logger.warning("MCP server %s said its tools changed; listing them failed", self.config.name,
                           exc_info=True)

    async def close(self) -> None:
        self._stop.set()
        for task in list(self._refreshes):
            task.cancel()
        if self._task is not None:
            try:
                async with asyncio.timeout(10):
                    await asyncio.gather(self._task, return_exceptions=True)
            except TimeoutError:
                self._task.cancel()


class Pool:
    """The sessions of one event loop (one executor process), one per server."""

    def __init__(self, on_tools_changed: ToolsChanged | None = None) -> None:
        self._connections: dict[int, Connection] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.on_tools_changed = on_tools_changed

    async def session(self, config: ServerConfig) -> Connection:
        lock = self._locks.setdefault(config.id, asyncio.Lock())
        async with lock:
            connection = self._connections.get(config.id)
            if connection is not None and (connection.config != config or not connection.alive):
                del self._connections[config.id]
                await connection.close()
                connection = None
            if connection is None:
                connection = Connection(config, self.on_tools_changed)
                # Kept at once, so that a call cancelled while the server starts leaves nothing
                # running that the pool would not close.
                self._connections[config.id] = connection
                try:
                    await connection.open()
                except ToolError:
                    del self._connections[config.id]
                    await connection.close()
                    raise
            return connection

    async def call(self, config: ServerConfig, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Call `tool` on the server; a failure to reach it or a broken connection is a ToolError."""
        connection = await self.session(config)
        session = connection.session
        if session is None:
            raise ServerUnavailable(f"the server {config.name} went away before the call")
        try:
            result = await session.call_tool(tool, arguments, read_timeout_seconds=config.timeout)
        except MCPError as error:
            if error.code == types.CONNECTION_CLOSED:
                await self.discard(config.id, connection)
                raise ServerUnavailable(
                    f"the server {config.name} closed the connection during the call (it may have crashed); "
                    "the call may or may not have taken effect. The server is started again on the next call."
                ) from None
            if error.code == types.REQUEST_TIMEOUT:
                raise ToolError(f"the server {config.name} did not answer within {config.timeout:g} s; "
                                "the call was cancelled") from None
            raise ToolError(f"the server {config.name} answered with an error: {error.message}") from None
        if not isinstance(result, types.CallToolResult):
            raise ToolError(f"the server {config.name} answered in a form Cortex does not handle")
        return result

    def is_open(self, server_id: int) -> bool:
        """A session to the server is open and its server still there."""
        connection = self._connections.get(server_id)
        return connection is not None and connection.alive

    async def discard(self, server_id: int, connection: Connection | None = None) -> None:
        current = self._connections.get(server_id)
        if current is not None and (connection is None or current is connection):
            del self._connections[server_id]
            await current.close()

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = weakref.WeakKeyDictionary()


def pool(on_tools_changed: ToolsChanged | None = None) -> Pool:
    """The running event loop's pool (a session must be used on the loop that opened it)."""
    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is None:
        found = _pools[loop] = Pool(on_tools_changed)
    return found


async def close_pool() -> None:
    found = _pools.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


# --- Results -------------------------------------------------------------------------------------

def result_text(result: types.CallToolResult, limit: int) -> str:
    """What the model reads of a result: its text, structured content when there is no text,
    anything else described in words (never dropped silently), cut at `limit` characters."""
    parts = [_content_text(block) for block in result.content]
    texts = [part for part in parts if part]
    if result.structured_content is not None and not any(
            isinstance(block, types.TextContent) for block in result.content):
        texts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    text = "\n".join(texts) if texts else "(the tool returned no content)"
    if len(text) > limit:
        text = text[:limit] + f"\n[output cut: {len(text) - limit} more characters not shown]"
    return text


def _size(data: str) -> str:
    try:
        return f"{len(base64.b64decode(data, validate=False))} bytes"
    except (binascii.Error, ValueError):
        return "unknown size"


def _content_text(block: Any) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent):
        return f"[an image ({block.mime_type}, {_size(block.data)}) that is not shown here]"
    if isinstance(block, types.AudioContent):
        return f"[an audio clip ({block.mime_type}, {_size(block.data)}) that is not played here]"
    if isinstance(block, types.ResourceLink):
        return f"[a link to the resource {block.uri}" + (f" ({block.name})" if block.name else "") + "]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[resource {resource.uri}]\n{resource.text}"
        return (f"[a resource {resource.uri} ({resource.mime_type or 'binary'}, {_size(resource.blob)}) "
                "that is not shown here]")
    return f"[content of type {getattr(block, 'type', type(block).__name__)} that is not shown here]"
