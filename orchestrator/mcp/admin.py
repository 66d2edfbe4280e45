"""Read-only audit pages: the servers, their tools, and every change made to them."""

from __future__ import annotations

from django.contrib import admin

from .models import ServerChange, ServerTool, ToolServer


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ServerChange)
class ServerChangeAdmin(ReadOnly):
    list_display = ("at", "server_name", "action", "actor_label")
    list_filter = ("action",)
    search_fields = ("server_name", "actor_label")
    readonly_fields = ("at", "server_name", "action", "actor", "actor_label", "detail")
    list_select_related = ("actor",)


@admin.register(ToolServer)
class ToolServerAdmin(ReadOnly):
    list_display = ("name", "transport", "owner", "enabled", "refreshed_at", "last_error")
    list_filter = ("transport", "enabled")
    search_fields = ("name",)
    list_select_related = ("owner",)
    # The encrypted secrets are left out: not even their ciphertext is shown.
    fields = readonly_fields = ("name", "transport", "owner", "command", "args", "url", "trusted", "enabled",
                                "timeout_seconds", "last_error", "refreshed_at", "created_at", "updated_at")


@admin.register(ServerTool)
class ServerToolAdmin(ReadOnly):
    list_display = ("exposed_name", "server", "risk_shown", "risk_override")
    list_filter = ("server",)
    search_fields = ("exposed_name", "name")
    list_select_related = ("server",)
    readonly_fields = ("server", "name", "exposed_name", "title", "description", "input_schema", "annotations",
                       "risk_override", "updated_at")

    @admin.display(description="risk")
    def risk_shown(self, row: ServerTool) -> str:
        risk, source = row.risk
        return f"{risk} ({source})"
