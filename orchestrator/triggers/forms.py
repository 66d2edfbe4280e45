"""The forms of the schedule and hook pages. They parse; the services decide."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from .. import selectors as core_selectors
from ..services import MAX_CONFIRMATION_TTL
from ..tools.registry import RISKS
from .models import Hook, JobFollowUp, Schedule

RISK_CHOICES = [(risk, risk.title()) for risk in RISKS]
TIER_CHOICES = [("", "Default"), ("1", "1: long-term memories"), ("2", "2: long and mid-term"),
                ("3", "3: long, mid and short-term")]


class JobOptionsForm(forms.Form):
    """The job options a schedule or a hook starts its jobs with, and its risk ceiling."""

    persona = forms.ChoiceField(required=False, help_text="The persona its jobs speak with (default: yours).")
    tier = forms.TypedChoiceField(choices=TIER_CHOICES, required=False, coerce=int, empty_value=None,
                                  label="Memory tier")
    chat_role = forms.SlugField(max_length=64, initial="chat", label="Chat role",
                                help_text="The model role that writes the final answer.")
    session_id = forms.UUIDField(required=False, label="Continue conversation",
                                 help_text="The id of a conversation of yours to continue; empty for a new one each time.")
    respond_with_final = forms.BooleanField(required=False, initial=True,
                                            label="Have the chat model write the final answer")
    off_record = forms.BooleanField(required=False, label="Off the record")
    max_risk = forms.ChoiceField(choices=RISK_CHOICES, initial="low", widget=forms.RadioSelect,
                                 label="Highest tool risk",
                                 help_text="Applied on top of your own tool settings; it never allows more than they do. "
                                           "Calls that need a confirmation wait for you as usual.")
    callback_url = forms.CharField(
        required=False, max_length=500, label="Callback URL", widget=forms.URLInput,
        help_text="Each job's result is POSTed here when it ends, signed with your callback secret "
                  "(Settings → Callbacks). Empty: no callback.")
    callback_on_confirmation = forms.BooleanField(required=False,
                                                  label="Also call back when a job waits for a confirmation")
    confirmation_ttl = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_CONFIRMATION_TTL, label="Seconds a call may wait for you",
        help_text="After this, a call that waits for a confirmation is denied as expired and the job goes on. "
                  "Empty: the site's or the tool's limit alone; otherwise the shorter one applies.")

    def __init__(self, *args: Any, user: AbstractBaseUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = [persona.name for persona in core_selectors.personas_for_user(user)]
        self.fields["persona"].choices = [("", "Your default")] + [(name, name) for name in dict.fromkeys(names)]

    def job_options(self) -> dict[str, Any]:
        data = self.cleaned_data
        session = data.get("session_id")
        return {"persona": data.get("persona") or None, "tier": data.get("tier"), "chat_role": data.get("chat_role"),
                "session_id": str(session) if session else None, "respond_with_final": data["respond_with_final"],
                "off_record": data["off_record"]}

    def follow_up(self) -> dict[str, Any]:
        """The callback and the time limit, as the services take them."""
        data = self.cleaned_data
        return {"callback_url": data.get("callback_url") or "",
                "callback_on_confirmation": data.get("callback_on_confirmation", False),
                "confirmation_ttl": data.get("confirmation_ttl")}

    @staticmethod
    def initial_follow_up(saved: JobFollowUp) -> dict[str, Any]:
        return {"callback_url": saved.callback_url, "callback_on_confirmation": saved.callback_on_confirmation,
                "confirmation_ttl": saved.confirmation_ttl}

    @staticmethod
    def initial_options(options: dict[str, Any], max_risk: str) -> dict[str, Any]:
        return {"persona": options.get("persona", ""), "tier": options.get("tier"),
                "chat_role": options.get("chat_role", "chat"), "session_id": options.get("session_id", ""),
                "respond_with_final": options.get("respond_with_final", True),
                "off_record": options.get("off_record", False), "max_risk": max_risk}


class ScheduleForm(JobOptionsForm):
    name = forms.CharField(max_length=100)
    cron = forms.CharField(max_length=200, label="When (cron)", initial="0 9 * * 1-5",
                           help_text="Five fields: minute hour day-of-month month day-of-week. "
                                     "“0 9 * * 1-5” is 9:00 on weekdays; “*/15 * * * *” every quarter hour.")
    time_zone = forms.CharField(max_length=64, initial="UTC", label="Time zone",
                                help_text="A name such as Europe/Berlin, America/New_York or UTC.")
    task = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), max_length=20000,
                           help_text="{date}, {time} and {weekday} are filled in with the due time, in the time zone.")
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")

    field_order = ["name", "cron", "time_zone", "task", "enabled"]

    @classmethod
    def initial_for(cls, schedule: Schedule) -> dict[str, Any]:
        return {"name": schedule.name, "cron": schedule.cron, "time_zone": schedule.time_zone, "task": schedule.task,
                "enabled": schedule.enabled, **cls.initial_options(schedule.options, schedule.max_risk),
                **cls.initial_follow_up(schedule)}


class HookForm(JobOptionsForm):
    slug = forms.SlugField(max_length=64, help_text="The hook's address: /hooks/<slug>. Letters, digits, - or _.")
    task_template = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), max_length=20000, label="Task template",
        help_text="{payload} is the whole payload; {payload.repository.full_name} one of its fields. "
                  "The payload reaches the model marked as outside data, never as instructions.")
    enabled = forms.BooleanField(required=False, initial=True, label="Enabled")
    max_body_bytes = forms.IntegerField(min_value=1024, max_value=10_000_000, label="Largest body (bytes)")
    max_per_minute = forms.IntegerField(min_value=1, max_value=10_000, label="Deliveries a minute at most")

    field_order = ["slug", "task_template", "enabled"]

    def __init__(self, *args: Any, editing: Hook | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing is not None:
            del self.fields["slug"]  # the address senders know stays as it is

    @classmethod
    def initial_for(cls, hook: Hook) -> dict[str, Any]:
        return {"task_template": hook.task_template, "enabled": hook.enabled, "max_body_bytes": hook.max_body_bytes,
                "max_per_minute": hook.max_per_minute, **cls.initial_options(hook.options, hook.max_risk),
                **cls.initial_follow_up(hook)}
