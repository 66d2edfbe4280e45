"""Deliveries, notification settings, callback secrets (never their value) and confirmation
deadlines, for audit: read-only, except that a given-up delivery may be sent again."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from ..admin import ReadOnlyAdmin
from . import services
from .models import CallbackSecret, ConfirmationDeadline, Delivery, NotificationSettings


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "channel", "event", "short_target", "state", "attempts",
                    "response_status", "delivered_at")
    list_filter = ("state", "channel", "event", ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("id", "target", "job__id", "user__username")
    list_select_related = ("user",)
    fields = ("id", "user", "job", "channel", "event", "target", "subject", "body", "state", "attempts",
              "next_attempt_at", "held_by", "held_until", "response_status", "last_error", "created_at",
              "delivered_at")
    actions = ["send_again"]

    @admin.display(description="to")
    def short_target(self, delivery: Delivery) -> str:
        return delivery.target if len(delivery.target) <= 60 else delivery.target[:59] + "…"

    def has_send_again_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("delivery.change_delivery")

    @admin.action(description="Send the selected given-up deliveries again", permissions=["send_again"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = services.deliveries_retry(ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} delivery(ies) will be sent again.", messages.SUCCESS)


@admin.register(NotificationSettings)
class NotificationSettingsAdmin(ReadOnlyAdmin):
    list_display = ("user", "events", "email_enabled", "ntfy_enabled", "webhook_enabled", "browser_enabled",
                    "updated_at")
    list_filter = ("email_enabled", "ntfy_enabled", "webhook_enabled", "browser_enabled")
    search_fields = ("user__username", "email_address")
    list_select_related = ("user",)
    fields = ("user", "events", "email_enabled", "email_address", "ntfy_enabled", "ntfy_server", "ntfy_topic",
              "has_ntfy_token", "webhook_enabled", "webhook_url", "browser_enabled", "updated_at")

    @admin.display(boolean=True, description="ntfy token stored")
    def has_ntfy_token(self, chosen: NotificationSettings) -> bool:
        return bool(chosen.ntfy_token_encrypted)


@admin.register(CallbackSecret)
class CallbackSecretAdmin(ReadOnlyAdmin):
    list_display = ("user", "prefix", "rotated_at")
    search_fields = ("user__username", "prefix")
    list_select_related = ("user",)
    fields = ("user", "prefix", "rotated_at")  # never the secret, not even encrypted


@admin.register(ConfirmationDeadline)
class ConfirmationDeadlineAdmin(ReadOnlyAdmin):
    list_display = ("call", "job", "ttl_seconds", "expires_at", "fired_at", "expired")
    list_filter = ("expired",)
    search_fields = ("job__id", "call__name")
    list_select_related = ("call", "job")
    fields = ("call", "job", "ttl_seconds", "expires_at", "fired_at", "expired")
