from django.apps import AppConfig


class McpConfig(AppConfig):
    name = "orchestrator.mcp"
    label = "cortex_mcp"
    verbose_name = "Cortex tool servers (MCP)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ..tools.registry import registry
        from .source import mcp_tools

        # The servers' tools join the registry: every reader of it (the engine's offer and
        # verdicts, the settings pages, confirmations) sees them beside the built-in ones.
        registry.add_source(mcp_tools)
