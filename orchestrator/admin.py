"""The audit trail: jobs, their events, tool calls and the decisions people made on them, API
tokens (their hash only), personas and policies.

History is read-only here: nobody can add, edit or delete a job, an event or a decision in admin,
whatever their permissions; it can only be viewed, searched and exported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .models import ApiToken, Job, JobEvent, Persona, ToolCall, ToolPolicy

admin.site.site_header = "Cortex audit trail"
admin.site.site_title = "Cortex admin"
admin.site.index_title = "Jobs, decisions and settings"

# Cells a spreadsheet would read as a formula; tasks and arguments are text anyone may have written.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return response


def _stamp() -> str:
    return timezone.now().strftime("%Y%m%d-%H%M%S")


def _pretty(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return format_html('<pre class="cortex-json">{}</pre>',
                       json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str))


DECISION_HEADER = ("job", "task", "round", "call id", "tool", "risk", "verdict", "status", "decision", "decided by",
                   "decided at", "arguments", "original arguments", "reason", "remember for job", "result")


def decision_rows(calls: QuerySet[ToolCall]) -> Iterable[Sequence[Any]]:
    for call in calls.select_related("job", "decided_by").order_by("job__created_at", "round", "position"):
        yield (call.job_id, call.job.task, call.round, call.call_id, call.name, call.risk, call.verdict, call.status,
               call.decision, call.decided_by.get_username() if call.decided_by else "", call.decided_at,
               call.args, call.original_args, call.reason, call.remember, (call.result or "")[:2000])


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable and exportable; never added, changed or deleted through admin."""

    class Media:
        css = {"all": ["cortex-admin.css"]}

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ToolCallInline(ReadOnlyInline):
    model = ToolCall
    fields = ("round", "name", "risk", "verdict", "status", "decision", "decided_by", "decided_at", "arguments",
              "original_arguments", "reason", "duration")
    readonly_fields = fields
    ordering = ("round", "position")
    show_change_link = True

    @admin.display(description="arguments")
    def arguments(self, call: ToolCall) -> str:
        return _pretty(call.args)

    @admin.display(description="original arguments")
    def original_arguments(self, call: ToolCall) -> str:
        return _pretty(call.original_args)

    @admin.display(description="duration")
    def duration(self, call: ToolCall) -> str:
        return f"{call.duration_ms} ms" if call.duration_ms is not None else "—"


class JobEventInline(ReadOnlyInline):
    model = JobEvent
    fields = ("seq", "type", "at", "payload")
    readonly_fields = fields
    ordering = ("seq",)

    @admin.display(description="data")
    def payload(self, event: JobEvent) -> str:
        return _pretty(event.data)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("short_id", "task_excerpt", "user", "status", "backend", "created_at", "completed_at")
    list_filter = ("status", ("user", admin.RelatedOnlyFieldListFilter), "backend", "created_at")
    search_fields = ("task",)
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    fields = ("id", "user", "status", "task", "session", "persona", "options", "orchestrator_model", "chat_model",
              "backend", "backend_label", "host", "response", "error", "rounds", "approved_tools", "usage",
              "created_at", "started_at", "completed_at")
    inlines = [ToolCallInline, JobEventInline]
    actions = ["export_jobs", "export_decisions"]

    @admin.display(description="job", ordering="created_at")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="task")
    def task_excerpt(self, job: Job) -> str:
        return job.task if len(job.task) <= 90 else job.task[:89] + "…"

    @admin.action(description="Export selected jobs as CSV", permissions=["view"])
    def export_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse:
        jobs = queryset.select_related("user").annotate(call_count=Count("tool_calls")).order_by("created_at")
        return csv_response(f"cortex-jobs-{_stamp()}.csv",
                            ("id", "created at", "user", "status", "task", "backend", "backend label", "rounds",
                             "tool calls", "completed at", "error"),
                            ((job.id, job.created_at, job.user.get_username(), job.status, job.task, job.backend,
                              job.backend_label, job.rounds, job.call_count, job.completed_at, job.error)
                             for job in jobs))

    @admin.action(description="Export the decisions in selected jobs as CSV", permissions=["view"])
    def export_decisions(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse:
        calls = ToolCall.objects.filter(job__in=queryset).exclude(decision="")
        return csv_response(f"cortex-decisions-{_stamp()}.csv", DECISION_HEADER, decision_rows(calls))


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    list_display = ("name", "job_link", "risk", "verdict", "status", "decision", "decided_by", "decided_at")
    list_filter = ("decision", "risk", "verdict", "status", "name", ("decided_by", admin.RelatedOnlyFieldListFilter))
    search_fields = ("job__task", "name", "call_id", "decided_by__username")
    list_select_related = ("job", "decided_by")
    date_hierarchy = "created_at"
    fields = ("job_link", "call_id", "round", "position", "name", "risk", "verdict", "status", "interrupted",
              "decision", "decided_by", "decided_at", "remember", "reason", "arguments", "original_arguments",
              "raw_arguments", "result", "is_error", "created_at", "started_at", "finished_at")
    readonly_fields = ("job_link", "arguments", "original_arguments")
    actions = ["export_decisions"]

    @admin.display(description="job")
    def job_link(self, call: ToolCall) -> str:
        url = reverse("admin:orchestrator_job_change", args=[call.job_id])
        task = call.job.task if len(call.job.task) <= 60 else call.job.task[:59] + "…"
        return format_html('<a href="{}">{}</a>', url, task)

    @admin.display(description="arguments")
    def arguments(self, call: ToolCall) -> str:
        return _pretty(call.args)

    @admin.display(description="original arguments (before an edit)")
    def original_arguments(self, call: ToolCall) -> str:
        return _pretty(call.original_args)

    @admin.action(description="Export selected tool calls and their decisions as CSV", permissions=["view"])
    def export_decisions(self, request: HttpRequest, queryset: QuerySet[ToolCall]) -> HttpResponse:
        return csv_response(f"cortex-decisions-{_stamp()}.csv", DECISION_HEADER, decision_rows(queryset))


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = (("user", admin.RelatedOnlyFieldListFilter), "revoked_at")
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    fields = ("user", "name", "prefix", "digest", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("orchestrator.change_apitoken")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset.select_related("user"):
            services.token_revoke(user=token.user, token_id=token.pk)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_default", "created_at")
    list_filter = ("is_default", ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "prompt")
    list_select_related = ("owner",)


@admin.register(ToolPolicy)
class ToolPolicyAdmin(ReadOnlyAdmin):
    """People set their own policy under Settings → Tools, where it is checked; here it is shown."""

    list_display = ("user", "max_risk", "override_count", "rule_count", "updated_at")
    list_filter = ("max_risk",)
    search_fields = ("user__username",)
    list_select_related = ("user",)
    fields = ("user", "max_risk", "overrides", "confirmations", "updated_at")

    @admin.display(description="overrides")
    def override_count(self, policy: ToolPolicy) -> int:
        return len(policy.overrides)

    @admin.display(description="confirmation rules")
    def rule_count(self, policy: ToolPolicy) -> int:
        return len(policy.confirmations)
