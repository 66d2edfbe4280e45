"""An MCP server of the project's own, built with the SDK, for tests: a tool for every annotation
combination, and tools that misbehave (crash, hang, fail, answer with pictures or structure).

    python -m tests.fakes.mcp_server                 # stdio
    python -m tests.fakes.mcp_server --http PORT     # streamable HTTP on 127.0.0.1:PORT/mcp

What its tools do is appended, one line each, to the file named by MCP_TEST_TRACE (if set), so a
test can tell what ran, how often, and what was cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations

server = MCPServer("cortex-test-server", instructions="A server for Cortex's tests.")


def trace(line: str) -> None:
    path = os.environ.get("MCP_TEST_TRACE")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")


@server.tool(description="Reads a note (read-only).", annotations=ToolAnnotations(read_only_hint=True))
def read_note(title: str) -> str:
    trace(f"read_note {title}")
    return f"The note {title!r} says: buy milk."


@server.tool(description="Turns a light on or off (changes things, destroys nothing).",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def set_light(room: str, on: bool) -> str:
    trace(f"set_light {room} {on}")
    return f"The light in the {room} is {'on' if on else 'off'}."


@server.tool(description="Sets a thermostat (safe to repeat).",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True))
def set_thermostat(degrees: int) -> str:
    trace(f"set_thermostat {degrees}")
    return f"The thermostat is set to {degrees}."


@server.tool(description="Deletes a file (destructive).",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def delete_file(path: str) -> str:
    trace(f"delete_file {path}")
    return f"Deleted {path}."


@server.tool(description="Sends a message (no annotations at all).")
def send_message(to: str, text: str) -> str:
    trace(f"send_message {to} {text}")
    return f"Sent to {to}: {text}"


@server.tool(description="Counts slowly (read-only, not safe to repeat).",
             annotations=ToolAnnotations(read_only_hint=True))
async def slow_count(label: str, seconds: float = 0) -> str:
    trace(f"slow_count {label}")
    await asyncio.sleep(seconds)
    return f"counted {label}"


@server.tool(description="Waits until it is cancelled (read-only).", annotations=ToolAnnotations(read_only_hint=True))
async def hang(label: str) -> str:
    trace(f"hang {label}")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        trace(f"cancelled {label}")
        raise
    return "never"


@server.tool(description="Makes the server exit in the middle of the call (read-only).",
             annotations=ToolAnnotations(read_only_hint=True))
def crash() -> str:
    trace(f"crash {os.getpid()}")
    os._exit(3)


@server.tool(description="Says which process serves it (read-only).", annotations=ToolAnnotations(read_only_hint=True))
def whoami() -> str:
    return f"process {os.getpid()}"


@server.tool(description="Fails, as a tool result (read-only).", annotations=ToolAnnotations(read_only_hint=True))
def fails() -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text="the disk is full")], is_error=True)


@server.tool(description="Answers with a picture and a caption (read-only).",
             annotations=ToolAnnotations(read_only_hint=True))
def picture() -> list[Any]:
    return [TextContent(type="text", text="A red dot."),
            ImageContent(type="image", data=base64.b64encode(b"\x89PNG" + b"\x00" * 60).decode(), mime_type="image/png")]


@server.tool(description="Answers with structured content only (read-only).",
             annotations=ToolAnnotations(read_only_hint=True))
def weather() -> CallToolResult:
    return CallToolResult(content=[], structured_content={"city": "Oslo", "celsius": -3})


@server.tool(description="Answers with a great deal of text (read-only).", annotations=ToolAnnotations(read_only_hint=True))
def long_text(characters: int) -> str:
    return "x" * characters


@server.tool(description="Adds a tool, removes another and says the tool list changed (changes things).",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
async def grow(ctx: Context) -> str:
    trace("grow")  # a server started later (after a crash, by another executor) has grown too
    await _apply_growth()
    await ctx.request_context.session.send_tool_list_changed()
    return "grown"


def _late_arrival() -> str:
    return "I arrived late."


async def _apply_growth() -> None:
    names = {tool.name for tool in await server.list_tools()}
    if "late_arrival" not in names:
        server.add_tool(_late_arrival, name="late_arrival", description="Added while running (read-only).",
                        annotations=ToolAnnotations(read_only_hint=True))
    if "delete_file" in names:
        server.remove_tool("delete_file")


def _grown_before() -> bool:
    path = os.environ.get("MCP_TEST_TRACE")
    return bool(path) and os.path.exists(path) and "grow" in open(path).read().splitlines()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, help="serve streamable HTTP on this port instead of stdio")
    options = parser.parse_args()
    if _grown_before():
        asyncio.run(_apply_growth())
    if options.http is None:
        server.run()
        return
    server.run("streamable-http", host="127.0.0.1", port=options.http,
               transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))


if __name__ == "__main__":
    main()
