"""The tool servers' tools as registry tools.

The registry asks `mcp_tools.tools()` whenever it is read. Outside an event loop (the engine's
database thread, a page, a command) that costs one small read of the catalogue's stamp, and the
tools are built again from the database only when the stamp changed: a server added or refreshed
in another process is seen by the next step of the next job, without a restart. Inside an event
loop (a tool running) it answers from the copy the last read made, which is the one the running
step's offer and verdicts were made from.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import jsonschema
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction

from .. import crypto, rows
from ..tools.registry import Tool, ToolContext, ToolError
from . import client
from . import risk as risks

logger = logging.getLogger(__name__)


def server_config(server: Any) -> client.ServerConfig:
    """The connection settings of a `ToolServer`, secrets decrypted (raises crypto.SecretUnreadable)."""
    return client.ServerConfig(
        id=server.pk, name=server.name, transport=server.transport, command=server.command,
        args=tuple(str(arg) for arg in server.args or ()), env=tuple(sorted(server.secrets("env").items())),
        url=server.url, headers=tuple(sorted(server.secrets("headers").items())), trusted=server.trusted,
        timeout=server.timeout_seconds)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _tools_changed(server_id: int, listing: list[dict[str, Any]]) -> None:
    """A server said its tools changed (`notifications/tools/list_changed`): store the new list."""
    from . import services

    await sync_to_async(services.server_tools_store, thread_sensitive=False)(server_id=server_id, listing=listing)


def _handler(config: client.ServerConfig | None, problem: str, tool_name: str):
    async def call(context: ToolContext, **arguments: Any) -> str:
        if config is None:
            raise ToolError(problem)
        result = await client.pool(_tools_changed).call(config, tool_name, arguments)
        text = client.result_text(result, settings.CORTEX_MCP_MAX_OUTPUT_CHARS)
        if result.is_error:
            raise ToolError(f"the tool reported an error: {text}")
        return text

    return call


def build_tool(server: Any, row: Any, config: client.ServerConfig | None, problem: str = "") -> Tool:
    risk, _ = row.risk
    return Tool(
        name=row.exposed_name,
        category=f"{server.name} (MCP server)",
        description=(row.description or row.title or row.name)[:2000],
        parameters=row.input_schema,
        risk=risk,
        idempotent=risks.is_idempotent(row.annotations),
        # The call's own timeout (the server's) ends it first, with a clear message and a
        # cancellation sent to the server; this bound is the engine's backstop.
        timeout=server.timeout_seconds + settings.CORTEX_MCP_CONNECT_SECONDS + 5.0,
        handler=_handler(config, problem, row.name),
        source=f"MCP server {server.name}",
        owner_id=server.owner_id,
    )


class McpTools:
    """The registry's source of MCP tools (see the module's docstring)."""

    def __init__(self) -> None:
        self._stamp: str | None = None
        self._tools: list[Tool] = []
        self._lock = threading.Lock()

    def tools(self) -> list[Tool]:
        if _in_event_loop():
            return self._tools
        try:
            stamp = self._read_stamp()
        except Exception:  # no database here (a check before migrations, a test without one): none known
            return []
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._tools = self._load()
                    self._stamp = stamp
        return self._tools

    @staticmethod
    def _read_stamp() -> str:
        from .models import Catalog

        def read() -> str:
            # `Catalog.objects.filter(pk=1).values_list("stamp", flat=True).first() or ""`, through
            # a statement built once: every look at the registry asks.
            found = rows.select(Catalog, ("stamp",), {"pk": 1}, order_by=("pk",), limit=1)
            return (found[0][0] if found else None) or ""

        if not connection.in_atomic_block:
            return read()
        # Inside a transaction, a savepoint: a failed read (no table yet) must not spoil the caller's.
        with transaction.atomic():
            return read()

    @staticmethod
    def _load() -> list[Tool]:
        from .models import ServerTool

        built = []
        configs: dict[int, tuple[client.ServerConfig | None, str]] = {}
        for row in ServerTool.objects.filter(server__enabled=True).select_related("server"):
            server = row.server
            if server.pk not in configs:
                try:
                    configs[server.pk] = (server_config(server), "")
                except (crypto.SecretUnreadable, ValueError) as error:
                    configs[server.pk] = (None, f"the stored secrets of the server {server.name} cannot be read: "
                                                f"{error}; a person must enter them again")
            try:
                jsonschema.Draft202012Validator.check_schema(row.input_schema)
            except jsonschema.SchemaError:
                logger.warning("MCP tool %s has an input schema that is not valid; it is not offered", row.exposed_name)
                continue
            built.append(build_tool(server, row, *configs[server.pk]))
        return built

    async def aclose(self) -> None:
        await client.close_pool()

    def forget(self) -> None:
        """Read the database again at the next look (after a flush in tests, for instance)."""
        self._stamp = None


mcp_tools = McpTools()

