"""MCP: tools from Model Context Protocol servers, governed like built-in ones, and Cortex itself
as an MCP server at /mcp.

- `risk`: the tool names the model sees and the risk read from a tool's annotations (pure);
- `models`, `services`, `selectors`: the servers people add, their tools, the audit of changes;
- `client`: the sessions to the servers (one per server per executor process) and discovery;
- `source`: the servers' tools as registry tools, so the engine treats them like any other;
- `server`: the /mcp endpoint; `views`: the Tool servers settings page.
"""
