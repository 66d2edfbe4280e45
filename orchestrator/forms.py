"""Forms for the web pages. They parse and check what a person typed; the services decide."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from . import selectors
from .models import Memory
from .policy import OVERRIDES, RiskPolicy, default_action
from .services import JobOptions
from .tools.registry import RISKS, Tool

RECENT_SESSIONS = 50


class JobSubmitForm(forms.Form):
    task = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "What should Cortex do? Try “Write a note: buy milk”."}))
    session = forms.ChoiceField(required=False, label="Conversation")
    persona = forms.ChoiceField(required=False)
    off_record = forms.BooleanField(required=False, label="Off the record",
                                    help_text="Not remembered and kept out of the conversation's memory.")
    respond_with_final = forms.BooleanField(required=False, initial=True, label="Answer by the chat model",
                                            help_text="The chat model writes the final answer from the tool results.")
    tier = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=None, label="Context tier",
        choices=[("", "Default"), ("1", "1 — least context"), ("2", "2"), ("3", "3 — most context")])
    include_long = forms.BooleanField(required=False, initial=True, label="Long-term memories")
    include_mid = forms.BooleanField(required=False, initial=True, label="Mid-term memories")
    include_short = forms.BooleanField(required=False, initial=True, label="Short-term memories")
    chat_role = forms.CharField(max_length=64, initial="chat", label="Chat role",
                                help_text="Which configured model role writes the answer.")

    def __init__(self, *args: Any, user: AbstractBaseUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sessions = selectors.sessions_for_user(user)[:RECENT_SESSIONS]
        self.fields["session"].choices = [("", "Start a new conversation")] + [
            (str(session.id), session.title or "Untitled conversation") for session in sessions]
        names = dict.fromkeys(persona.name for persona in selectors.personas_for_user(user))
        default = selectors.default_persona(user)
        self.fields["persona"].choices = [("", f"Default ({default.name})" if default else "Default")] + [
            (name, name) for name in names]

    def options(self) -> JobOptions:
        data = self.cleaned_data
        return JobOptions(tier=data["tier"], respond_with_final=data["respond_with_final"],
                          include_long=data["include_long"], include_mid=data["include_mid"],
                          include_short=data["include_short"], chat_role=data["chat_role"],
                          off_record=data["off_record"])


class DenyForm(forms.Form):
    reason = forms.CharField(required=False, max_length=2000, label="Reason (optional)")


class ApproveForm(forms.Form):
    remember = forms.ChoiceField(required=False, choices=[("", "this call"), ("job", "the rest of this job")])


BOOLEAN_CHOICES = [("true", "Yes"), ("false", "No")]


def _boolean(value: str) -> bool:
    return value == "true"


class ArgumentsForm(forms.Form):
    """A tool call's arguments as fields built from the tool's JSON schema, to edit before approving.

    The fields only parse types; the tool's schema itself is checked by `job_confirm`.
    """

    def __init__(self, *args: Any, tool: Tool, current: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool
        current = current if isinstance(current, dict) else {}
        required = set(tool.parameters.get("required", []))
        for name, spec in tool.parameters.get("properties", {}).items():
            field = _field_for(spec if isinstance(spec, dict) else {}, required=name in required)
            # A live update of the page must not wipe what the person is typing.
            field.widget.attrs["hx-preserve"] = "true"
            self.fields[name] = field
            if name in current:
                self.initial[name] = _initial_for(self.fields[name], current[name])

    def arguments(self) -> dict[str, Any]:
        """The edited arguments; optional fields left empty are left out."""
        return {name: value for name, value in self.cleaned_data.items() if value is not None and value != ""}


def _field_for(spec: dict[str, Any], *, required: bool) -> forms.Field:
    common: dict[str, Any] = {"required": required, "help_text": spec.get("description", "")}
    kind = spec.get("type")
    if kind == "string" and "enum" in spec:
        choices = [(value, value) for value in spec["enum"]]
        return forms.ChoiceField(choices=choices if required else [("", "—"), *choices], **common)
    if kind == "string":
        short = isinstance(spec.get("maxLength"), int) and spec["maxLength"] <= 2048
        widget = forms.TextInput if short else forms.Textarea(attrs={"rows": 4})
        return forms.CharField(strip=False, widget=widget, **common)
    if kind == "integer":
        return forms.IntegerField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "number":
        return forms.FloatField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "boolean":
        choices = BOOLEAN_CHOICES if required else [("", "—"), *BOOLEAN_CHOICES]
        return forms.TypedChoiceField(choices=choices, coerce=_boolean, empty_value=None, **common)
    # Objects, arrays and unions are edited as JSON.
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 4}), **common)


def _initial_for(field: forms.Field, value: Any) -> Any:
    if isinstance(field, forms.TypedChoiceField) and isinstance(value, bool):
        return "true" if value else "false"
    return value


OVERRIDE_LABELS = {"default": "Default", "include": "Force include", "exclude": "Force exclude"}


class ToolPolicyForm(forms.Form):
    """`max_risk`, and per tool an override and a confirmation rule."""

    max_risk = forms.ChoiceField(choices=[(risk, risk.title()) for risk in RISKS], widget=forms.RadioSelect,
                                 label="Offer tools up to this risk")

    def __init__(self, *args: Any, tools: list[Tool], policy: RiskPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tools = tools
        self.initial["max_risk"] = policy.max_risk
        for tool in tools:
            default = "runs" if default_action(tool) == "run" else "asks"
            self.fields[override_field(tool)] = forms.ChoiceField(
                choices=[(value, OVERRIDE_LABELS[value]) for value in OVERRIDES], label=f"Override for {tool.name}")
            self.fields[confirmation_field(tool)] = forms.ChoiceField(
                choices=[("default", f"Default ({default})"), ("run", "Run"), ("ask", "Ask"), ("never", "Never")],
                label=f"Confirmation for {tool.name}")
            self.initial[override_field(tool)] = policy.overrides.get(tool.name, "default")
            self.initial[confirmation_field(tool)] = policy.confirmations.get(tool.name, "default")

    def overrides(self) -> dict[str, str]:
        return {tool.name: self.cleaned_data[override_field(tool)] for tool in self.tools}

    def confirmations(self) -> dict[str, str]:
        return {tool.name: self.cleaned_data[confirmation_field(tool)] for tool in self.tools}

    def policy(self) -> RiskPolicy:
        return RiskPolicy(max_risk=self.cleaned_data["max_risk"], overrides=self.overrides(),
                          confirmations=self.confirmations())


def override_field(tool: Tool) -> str:
    return f"override_{tool.name}"


def confirmation_field(tool: Tool) -> str:
    return f"confirm_{tool.name}"


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="To tell your tokens apart, e.g. “nightly cron”.")


class MemoryForm(forms.Form):
    content = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=10000)
    tier = forms.ChoiceField(choices=Memory.Tier.choices, initial=Memory.Tier.MID)
