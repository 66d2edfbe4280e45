"""The audit trail: jobs, their events, tool calls and the decisions people made on them, API
tokens (their hash only), personas, model profiles (their keys never shown), roles and policies.

History is read-only here: nobody can add, edit or delete a job, an event or a decision in admin,
whatever their permissions; it can only be viewed, searched and exported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.validators import URLValidator
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .forms import PROVIDER_LABELS
from .models import (
    ApiToken,
    Job,
    JobEvent,
    ModelProfile,
    Persona,
    RoleAssignment,
    ToolCall,
    ToolPolicy,
)

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
    list_display = ("short_id", "task_excerpt", "user", "status", "origin", "backend", "created_at", "completed_at")
    list_filter = ("status", "origin", ("user", admin.RelatedOnlyFieldListFilter), "backend", "created_at")
    search_fields = ("task",)
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    fields = ("id", "user", "status", "origin", "origin_max_risk", "origin_detail", "task", "session", "persona",
              "options", "orchestrator_model", "chat_model",
              "backend", "backend_label", "host", "response", "orchestrator_summary", "error", "rounds",
              "approved_tools", "usage", "system_prompt", "chat_system_prompt", "created_at", "started_at",
              "completed_at")
    inlines = [ToolCallInline, JobEventInline]
    actions = ["export_jobs", "export_decisions"]

    @admin.display(description="job", ordering="created_at")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="task")
    def task_excerpt(self, job: Job) -> str:
        excerpt = job.task if len(job.task) <= 90 else job.task[:89] + "…"
        return format_html('<span class="task-excerpt" title="{}">{}</span>', job.task, excerpt)

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
    fields = ("job_link", "call_id", "round", "position", "name", "risk", "verdict", "verdict_reason", "status",
              "interrupted",
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


class OwnedForm(forms.ModelForm):
    """An object that belongs to a user or to the whole site, and stays where it was created: the
    services find it by owner and id. Kept in the form (disabled) so the per-owner unique name is
    still checked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["owner"].required = False
        self.fields["owner"].help_text = "Empty for everyone on the site."
        if self.instance.pk:
            self.fields["owner"].disabled = True


class PersonaAdminForm(OwnedForm):
    prompt = forms.CharField(required=False, max_length=20000, widget=forms.Textarea)

    class Meta:
        model = Persona
        fields = ("owner", "name", "prompt", "is_default")


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    """Writes go through the services, which keep one default per owner."""

    form = PersonaAdminForm
    list_display = ("name", "owner_label", "is_default", "created_at")
    list_filter = ("is_default", ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "prompt")
    list_select_related = ("owner",)

    @admin.display(description="owner", ordering="owner__username")
    def owner_label(self, persona: Persona) -> str:
        return persona.owner.get_username() if persona.owner else "site-wide"

    def save_model(self, request: HttpRequest, obj: Persona, form: forms.ModelForm, change: bool) -> None:
        saved = services.persona_save(owner=obj.owner, name=obj.name, prompt=obj.prompt, is_default=obj.is_default,
                                      persona_id=obj.pk if change else None)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Persona) -> None:
        services.persona_delete(owner=obj.owner, persona_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        for persona in queryset.select_related("owner"):
            self.delete_model(request, persona)


class ModelProfileAdminForm(OwnedForm):
    """The key can be set or removed here, never read: the field starts empty on every page."""

    provider = forms.ChoiceField(choices=list(PROVIDER_LABELS.items()))
    base_url = forms.URLField(required=False, max_length=500, label="Base URL",
                              validators=[URLValidator(schemes=["http", "https"])])
    api_key = forms.CharField(required=False, label="API key", strip=True,
                              widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
                              help_text="Stored encrypted; never shown. Leave empty to keep the stored key.")
    remove_key = forms.BooleanField(required=False, label="Remove the stored key")
    max_rounds = forms.IntegerField(required=False, min_value=1, max_value=100)
    timeout_seconds = forms.FloatField(required=False, min_value=1, max_value=3600)
    temperature = forms.FloatField(required=False, min_value=0, max_value=2)

    class Meta:
        model = ModelProfile
        fields = ("owner", "name", "provider", "model", "base_url", "max_rounds", "timeout_seconds", "temperature")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("remove_key") and data.get("api_key"):
            raise forms.ValidationError("Type a new key or remove the stored one, not both.")
        if data.get("base_url"):
            try:
                services.profile_endpoint_check(owner=data.get("owner"), base_url=data["base_url"])
            except services.ServiceError as error:
                self.add_error("base_url", error.message)
        return data

    def key_change(self) -> str | None:
        """What `profile_save` takes: None keeps the stored key, "" removes it, text replaces it."""
        if self.cleaned_data.get("remove_key"):
            return ""
        return self.cleaned_data.get("api_key") or None


@admin.register(ModelProfile)
class ModelProfileAdmin(admin.ModelAdmin):
    """Profiles may be edited here; the key only ever shows as set or not."""

    form = ModelProfileAdminForm
    list_display = ("name", "owner_label", "provider", "model", "base_url", "key_status", "updated_at")
    list_filter = ("provider", ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "model", "base_url", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = ("key_status", "created_at", "updated_at")
    fieldsets = [
        (None, {"fields": ("owner", "name", "provider", "model", "base_url")}),
        ("API key", {"fields": ("key_status", "api_key", "remove_key")}),
        ("Limits", {"fields": ("max_rounds", "timeout_seconds", "temperature")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    ]

    @admin.display(description="owner", ordering="owner__username")
    def owner_label(self, profile: ModelProfile) -> str:
        return profile.owner.get_username() if profile.owner else "site-wide"

    @admin.display(description="key")
    def key_status(self, profile: ModelProfile) -> str:
        return "key set" if profile.has_api_key else "no key"

    def save_model(self, request: HttpRequest, obj: ModelProfile, form: ModelProfileAdminForm, change: bool) -> None:
        saved = services.profile_save(
            by=request.user, owner=obj.owner, name=obj.name, provider=obj.provider, model=obj.model,
            base_url=obj.base_url, api_key=form.key_change(), max_rounds=obj.max_rounds,
            timeout_seconds=obj.timeout_seconds, temperature=obj.temperature, profile_id=obj.pk if change else None)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: ModelProfile) -> None:
        services.profile_delete(by=request.user, owner=obj.owner, profile_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelProfile]) -> None:
        for profile in queryset.select_related("owner"):
            self.delete_model(request, profile)


@admin.register(RoleAssignment)
class RoleAssignmentAdmin(ReadOnlyAdmin):
    """People set their own roles under Settings → Models, the site's with `manage.py models`."""

    list_display = ("role", "owner_label", "profile", "inject_datetime", "inject_mode", "tool_count", "updated_at")
    list_filter = ("role", "inject_datetime", "inject_mode", ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("role", "owner__username", "profile__name", "system_append")
    list_select_related = ("owner", "profile")
    fields = ("owner", "role", "profile", "system_append", "inject_datetime", "inject_mode", "tools",
              "max_output_tokens", "updated_at")

    @admin.display(description="owner", ordering="owner__username")
    def owner_label(self, assignment: RoleAssignment) -> str:
        return assignment.owner.get_username() if assignment.owner else "site-wide"

    @admin.display(description="tools")
    def tool_count(self, assignment: RoleAssignment) -> str:
        return str(len(assignment.tools)) if assignment.tools else "all"


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
