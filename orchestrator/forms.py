"""Forms for the web pages. They parse and check what a person typed; the services decide."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from . import roles, selectors
from .models import Memory, ModelProfile, Persona
from .policy import OVERRIDES, RiskPolicy, default_action
from .roles import RoleConfig
from .services import MAX_CONFIRMATION_TTL, MAX_OUTPUT_TOKENS, MIN_OUTPUT_TOKENS, JobOptions
from .tools.registry import RISKS, Tool

RECENT_SESSIONS = 50


class PersonaField(forms.ChoiceField):
    """The default persona is offered once, as "Default (its name)"; its name is still accepted."""

    accepted: set[str] = set()

    def valid_value(self, value: Any) -> bool:
        return value in self.accepted or super().valid_value(value)


class JobSubmitForm(forms.Form):
    task = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "What should Cortex do? Try “Write a note: buy milk”."}))
    session = forms.ChoiceField(required=False, label="Conversation")
    persona = PersonaField(required=False)
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
    chat_role = forms.ChoiceField(initial=roles.CHAT, label="Chat role",
                                  help_text="Which configured model role writes the answer.")

    def __init__(self, *args: Any, user: AbstractBaseUser, autofocus: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if autofocus:  # the page is there to start a task
            self.fields["task"].widget.attrs["autofocus"] = True
        sessions = selectors.sessions_for_user(user)[:RECENT_SESSIONS]
        self.fields["session"].choices = [("", "Start a new conversation")] + [
            (str(session.id), session.title or "Untitled conversation") for session in sessions]
        default = selectors.default_persona(user)
        names = dict.fromkeys(persona.name for persona in selectors.personas_for_user(user))
        self.fields["persona"].choices = [("", f"Default ({default.name})" if default else "Default")] + [
            (name, name) for name in names if not default or name != default.name]
        self.fields["persona"].accepted = set(names)
        self.fields["chat_role"].choices = [(name, name) for name in selectors.role_names_for_user(user)
                                            if name != roles.ORCHESTRATOR]

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
    """`max_risk`, and per tool an override, a confirmation rule and how long a call may wait for a
    person before it expires (empty: the site's default)."""

    max_risk = forms.ChoiceField(choices=[(risk, risk.title()) for risk in RISKS], widget=forms.RadioSelect,
                                 label="Offer tools up to this risk")

    def __init__(self, *args: Any, tools: list[Tool], policy: RiskPolicy, ttls: dict[str, int] | None = None,
                 site_ttl: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tools = tools
        self.initial["max_risk"] = policy.max_risk
        ttls = ttls or {}
        placeholder = f"{site_ttl} (site default)" if site_ttl else "never"
        for tool in tools:
            default = "runs" if default_action(tool) == "run" else "asks"
            self.fields[override_field(tool)] = forms.ChoiceField(
                choices=[(value, OVERRIDE_LABELS[value]) for value in OVERRIDES], label=f"Override for {tool.name}")
            self.fields[confirmation_field(tool)] = forms.ChoiceField(
                choices=[("default", f"Default ({default})"), ("run", "Run"), ("ask", "Ask"), ("never", "Never")],
                label=f"Confirmation for {tool.name}")
            self.initial[override_field(tool)] = policy.overrides.get(tool.name, "default")
            self.initial[confirmation_field(tool)] = policy.confirmations.get(tool.name, "default")
            self.fields[ttl_field(tool)] = forms.IntegerField(
                required=False, min_value=1, max_value=MAX_CONFIRMATION_TTL, label=f"Seconds {tool.name} may wait",
                widget=forms.NumberInput(attrs={"placeholder": placeholder, "class": "ttl-input"}))
            self.initial[ttl_field(tool)] = ttls.get(tool.name)

    def overrides(self) -> dict[str, str]:
        return {tool.name: self.cleaned_data[override_field(tool)] for tool in self.tools}

    def confirmations(self) -> dict[str, str]:
        return {tool.name: self.cleaned_data[confirmation_field(tool)] for tool in self.tools}

    def confirmation_ttls(self) -> dict[str, int | None]:
        return {tool.name: self.cleaned_data[ttl_field(tool)] for tool in self.tools}

    def policy(self) -> RiskPolicy:
        return RiskPolicy(max_risk=self.cleaned_data["max_risk"], overrides=self.overrides(),
                          confirmations=self.confirmations())


def override_field(tool: Tool) -> str:
    return f"override_{tool.name}"


def confirmation_field(tool: Tool) -> str:
    return f"confirm_{tool.name}"


def ttl_field(tool: Tool) -> str:
    return f"ttl_{tool.name}"


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="To tell your tokens apart, e.g. “nightly cron”.")


class SessionRenameForm(forms.Form):
    title = forms.CharField(max_length=200, label="Title")


class MemoryForm(forms.Form):
    content = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=10000)
    tier = forms.ChoiceField(choices=Memory.Tier.choices, initial=Memory.Tier.MID)


# Every provider, in the order a person adding a profile most likely wants them.
PROVIDER_LABELS = {"openai": "OpenAI-compatible", "gemini": "Google Gemini", "anthropic": "Anthropic Claude",
                   "demo": "Demo (offline)"}


class ProfileForm(forms.Form):
    """A model profile. The key field never shows a key: not the stored one, not even the one just
    typed when the form comes back with an error."""

    name = forms.CharField(max_length=100, help_text="To tell your profiles apart, e.g. “local llama”.")
    provider = forms.ChoiceField(choices=list(PROVIDER_LABELS.items()))
    model = forms.CharField(max_length=200, help_text="As the provider names it, e.g. gpt-4o-mini, gemini-2.5-flash, "
                                                      "claude-sonnet-4-6.")
    base_url = forms.URLField(required=False, max_length=500, label="Base URL",
                              help_text="Empty for the provider's own API. Ollama: http://localhost:11434/v1.")
    api_key = forms.CharField(required=False, max_length=1000, label="API key",
                              widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}))
    remove_key = forms.BooleanField(required=False, label="Remove the stored key")
    max_rounds = forms.IntegerField(required=False, min_value=1, max_value=100, label="Max tool rounds",
                                    help_text="Empty for the default.")
    timeout_seconds = forms.FloatField(required=False, min_value=1, max_value=3600, label="Timeout (seconds)",
                                       help_text="Per model call.")
    temperature = forms.FloatField(required=False, min_value=0, max_value=2, help_text="0 to 2; empty for the "
                                                                                       "model's own.")

    def __init__(self, *args: Any, has_key: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if has_key:
            self.fields["api_key"].help_text = "A key is stored. Leave empty to keep the stored key."
        else:
            self.fields["api_key"].help_text = ("Stored encrypted, never shown again. Leave empty if the endpoint "
                                                "needs none; with no base URL, the server's own key for this "
                                                "provider is used.")
            del self.fields["remove_key"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("remove_key") and data.get("api_key"):
            raise forms.ValidationError("Type a new key or remove the stored one, not both.")
        return data

    def key_change(self) -> str | None:
        """What `profile_save` takes: None keeps the stored key, "" removes it, text replaces it."""
        if self.cleaned_data.get("remove_key"):
            return ""
        return self.cleaned_data["api_key"] or None

    @staticmethod
    def initial_for(profile: ModelProfile) -> dict[str, Any]:
        return {"name": profile.name, "provider": profile.provider, "model": profile.model,
                "base_url": profile.base_url, "max_rounds": profile.max_rounds,
                "timeout_seconds": profile.timeout_seconds, "temperature": profile.temperature}


# The profile choice for "no profile": the model the server's environment names.
ENVIRONMENT_DEFAULT = ""


class RoleForm(forms.Form):
    """Which profile plays a role, and how the role's system prompt is put together. The role's name
    is typed only when adding one; an existing role's comes from the address."""

    role = forms.SlugField(max_length=64, label="Role name",
                           help_text="A chat role of your own, e.g. “poet”; a job picks it under Advanced.")
    profile = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Model")
    system_append = forms.CharField(required=False, max_length=10000, label="Add to the system prompt",
                                    widget=forms.Textarea(attrs={"rows": 3}))
    inject_datetime = forms.BooleanField(required=False, initial=True, label="Tell the model the date and time")
    inject_mode = forms.BooleanField(required=False, initial=True, label="Tell the model the mode",
                                     help_text="Chat, or off the record.")
    tools = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                      label="Tools this role may offer",
                                      help_text="None ticked: every tool your tool settings allow.")
    max_output_tokens = forms.IntegerField(
        required=False, min_value=MIN_OUTPUT_TOKENS, max_value=MAX_OUTPUT_TOKENS, label="Max output tokens",
        help_text="The longest answer, in tokens. Empty for the provider's default (16,384 for Claude; the "
                  "model's own for the others). An answer cut off at the limit fails the job.")

    def __init__(self, *args: Any, user: AbstractBaseUser, tools: list[Tool], default_model: str,
                 role: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if role is not None:
            del self.fields["role"]
        profiles = list(selectors.profiles_for_user(user))
        yours = [(str(p.pk), f"{p.name} · {p.model_string}") for p in profiles if p.owner_id is not None]
        site_wide = [(str(p.pk), f"{p.name} · {p.model_string}") for p in profiles if p.owner_id is None]
        choices: list[Any] = [(ENVIRONMENT_DEFAULT, f"Environment default ({default_model})")]
        if yours:
            choices.append(("Your profiles", yours))
        if site_wide:
            choices.append(("Site-wide profiles", site_wide))
        self.fields["profile"].choices = choices
        self.fields["tools"].choices = [(tool.name, tool.name) for tool in tools]

    @staticmethod
    def initial_for(config: RoleConfig) -> dict[str, Any]:
        return {"profile": config.profile_id, "system_append": config.system_append,
                "inject_datetime": config.inject_datetime, "inject_mode": config.inject_mode,
                "tools": list(config.tools), "max_output_tokens": config.max_output_tokens}


class PersonaForm(forms.Form):
    name = forms.SlugField(max_length=64, help_text="Letters, digits, - or _. Jobs pick a persona by this name.")
    prompt = forms.CharField(required=False, max_length=20000, label="System prompt",
                             widget=forms.Textarea(attrs={"rows": 5, "placeholder": "You are …"}))
    is_default = forms.BooleanField(required=False, label="Use for my jobs unless I pick another")

    @staticmethod
    def initial_for(persona: Persona) -> dict[str, Any]:
        return {"name": persona.name, "prompt": persona.prompt, "is_default": persona.is_default}
