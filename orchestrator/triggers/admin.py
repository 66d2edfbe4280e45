"""Schedules and hooks in the admin: audit pages, changed only by their owners' pages, the API and
the commands. The hooks' secrets are never shown."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from ..admin import ReadOnlyAdmin, ReadOnlyInline
from .models import Hook, HookDelivery, Schedule, ScheduleRun


def _job_link(job) -> str:
    if job is None:
        return "—"
    return format_html('<a href="{}">{}</a>', reverse("admin:orchestrator_job_change", args=[job.pk]),
                       str(job.pk)[:8])


class ScheduleRunInline(ReadOnlyInline):
    model = ScheduleRun
    fields = ("due_at", "fired_at", "late", "missed", "manual", "job", "error", "fired_by")
    readonly_fields = fields
    ordering = ("-due_at",)
    show_change_link = True


@admin.display(description="calls back", boolean=True)
def calls_back(saved: Schedule | Hook) -> bool:
    return bool(saved.callback_url)


@admin.register(Schedule)
class ScheduleAdmin(ReadOnlyAdmin):
    list_display = ("name", "user", "cron", "time_zone", "max_risk", calls_back, "enabled", "next_run_at")
    list_filter = ("enabled", "max_risk", ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "task")
    list_select_related = ("user",)
    fields = ("name", "user", "cron", "time_zone", "task", "options", "max_risk", "callback_url",
              "callback_on_confirmation", "confirmation_ttl", "enabled", "next_run_at", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [ScheduleRunInline]


@admin.register(ScheduleRun)
class ScheduleRunAdmin(ReadOnlyAdmin):
    list_display = ("schedule", "due_at", "fired_at", "late", "missed", "manual", "job_link", "fired_by")
    list_filter = ("late", "manual", "due_at")
    list_select_related = ("schedule", "job")
    date_hierarchy = "due_at"

    @admin.display(description="job")
    def job_link(self, run: ScheduleRun) -> str:
        return _job_link(run.job)


class HookDeliveryInline(ReadOnlyInline):
    model = HookDelivery
    fields = ("received_at", "delivery_id", "signature_valid", "verdict", "status_code", "body_bytes", "job", "detail")
    readonly_fields = fields
    ordering = ("-received_at",)
    max_num = 50


@admin.register(Hook)
class HookAdmin(ReadOnlyAdmin):
    list_display = ("slug", "user", "max_risk", calls_back, "enabled", "max_body_bytes", "max_per_minute",
                    "created_at")
    list_filter = ("enabled", "max_risk", ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("slug", "task_template")
    list_select_related = ("user",)
    # Not the secret, not even encrypted.
    fields = ("slug", "user", "task_template", "options", "max_risk", "callback_url", "callback_on_confirmation",
              "confirmation_ttl", "enabled", "max_body_bytes", "max_per_minute", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [HookDeliveryInline]


@admin.register(HookDelivery)
class HookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("hook", "received_at", "delivery_id", "signature_valid", "verdict", "status_code", "job_link")
    list_filter = ("verdict", "signature_valid", "received_at")
    search_fields = ("delivery_id", "hook__slug")
    list_select_related = ("hook", "job")
    date_hierarchy = "received_at"

    @admin.display(description="job")
    def job_link(self, delivery: HookDelivery) -> str:
        return _job_link(delivery.job)
