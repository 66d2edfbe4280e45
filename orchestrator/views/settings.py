"""Settings: tool policy, API tokens, model profiles and roles, personas."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from .. import roles, selectors, services
from ..forms import (
    PROVIDER_LABELS,
    PersonaForm,
    ProfileForm,
    RoleForm,
    TokenForm,
    ToolPolicyForm,
    confirmation_field,
    override_field,
    ttl_field,
)
from ..models import ModelProfile, Persona
from ..policy import PolicyContext, decide_all
from ..tools.registry import registry
from .common import login_required, page_or_fragment, post_only, redirect_after_write

# --- Settings: tools -----------------------------------------------------------------------------

@login_required
@require_GET
def settings_home(request: HttpRequest) -> HttpResponse:
    return redirect("settings-tools")


def _tool_rows(form: ToolPolicyForm, context: PolicyContext) -> list[tuple[str, list[dict[str, Any]]]]:
    """The tools by category, each with its fields and what the policy does with it: the very
    decision the engine makes for a new job (outside a job, so nothing is approved for it yet)."""
    rows = [{"tool": decision.tool, "effective": decision, "override": form[override_field(decision.tool)],
             "confirmation": form[confirmation_field(decision.tool)], "ttl": form[ttl_field(decision.tool)]}
            for decision in decide_all(form.tools, context)]
    return [(category, list(items)) for category, items in groupby(rows, key=lambda r: r["tool"].category)]


def _tools_context(request: HttpRequest, form: ToolPolicyForm) -> dict[str, Any]:
    preview = form.policy() if form.is_bound and form.is_valid() else None
    context = selectors.policy_context_for_user(request.user, policy=preview)
    categories = _tool_rows(form, context)
    rows = [row for _, items in categories for row in items]
    return {"section": "settings", "form": form, "categories": categories, "rows": rows,
            "offered_count": sum(row["effective"].offered for row in rows),
            "allow_list": sorted(context.allow_list)}


def _policy_form(request: HttpRequest, data: Any = None) -> ToolPolicyForm:
    return ToolPolicyForm(data, tools=registry.visible_to(request.user.pk),
                          policy=selectors.risk_policy_for_user(request.user),
                          ttls=selectors.confirmation_ttls_for_user(request.user),
                          site_ttl=settings.CORTEX_CONFIRMATION_TTL)


@login_required
@require_http_methods(["GET", "POST"])
def settings_tools(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "settings/tools.html", _tools_context(request, _policy_form(request)))
    form = _policy_form(request, request.POST)
    if form.is_valid():
        try:
            services.policy_update(user=request.user, max_risk=form.cleaned_data["max_risk"],
                                   overrides=form.overrides(), confirmations=form.confirmations(),
                                   confirmation_ttls=form.confirmation_ttls())
        except services.ServiceError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Tool settings saved.")
            return redirect_after_write(request, reverse("settings-tools"))
    return render(request, "settings/tools.html", _tools_context(request, form), status=400)


@login_required
@post_only("settings-tools")
def settings_tools_preview(request: HttpRequest) -> HttpResponse:
    """What the selections would do, before they are saved."""
    form = _policy_form(request, request.POST)
    context = _tools_context(request, form)
    status = 200 if form.is_valid() else 400
    # With htmx every swap is out of band: one cell per tool, and the summary.
    return page_or_fragment(request, "settings/tools.html", {**context, "oob": bool(request.htmx)},
                            fragment="effective-preview", status=status)


# --- Settings: API tokens ------------------------------------------------------------------------

def _tokens_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "tokens": selectors.tokens_for_user(request.user), "form": TokenForm(),
            "created": None, "raw_token": None, **extra}


@login_required
@require_GET
def settings_tokens(request: HttpRequest) -> HttpResponse:
    return render(request, "settings/tokens.html", _tokens_context(request))


@login_required
@post_only("settings-tokens")
def token_create(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST)
    if not form.is_valid():
        return page_or_fragment(request, "settings/tokens.html", _tokens_context(request, form=form),
                                fragment="token-panel", status=400)
    token, raw = services.token_create(user=request.user, name=form.cleaned_data["name"])
    # The raw value exists only in this response: it is never stored, so it cannot be shown again.
    response = page_or_fragment(request, "settings/tokens.html", _tokens_context(request, created=token, raw_token=raw),
                                fragment="token-panel")
    response["Cache-Control"] = "no-store"
    return response


@login_required
@post_only("settings-tokens")
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = services.token_revoke(user=request.user, token_id=token_id)
    if request.htmx:
        return render(request, "settings/tokens.html#token-panel", _tokens_context(request))
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("settings-tokens")


# --- Settings: models ----------------------------------------------------------------------------

def _profile_rows(user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Each profile the user sees, with its provider's name and its limits in words."""
    rows = []
    for profile in selectors.profiles_for_user(user):
        limits = [f"{profile.max_rounds} rounds" if profile.max_rounds else "",
                  f"{profile.timeout_seconds:g} s timeout" if profile.timeout_seconds else "",
                  f"temperature {profile.temperature:g}" if profile.temperature is not None else ""]
        rows.append({"profile": profile, "provider": PROVIDER_LABELS.get(profile.provider, profile.provider),
                     "limits": " · ".join(limit for limit in limits if limit)})
    return rows


def _models_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    user = request.user
    return {"section": "settings", "profile_rows": _profile_rows(user),
            "roles": selectors.role_configs_for_user(user),
            "profile_form": ProfileForm(), "editing_profile": None, "role_form": _role_form(request),
            "editing_role": None, **extra}


def _models_page(request: HttpRequest, partial: str, status: int = 200, **extra: Any) -> HttpResponse:
    """The page, or with htmx only the partial that changed."""
    return page_or_fragment(request, "settings/models.html", _models_context(request, **extra), fragment=partial,
                            status=status)


def _role_form(request: HttpRequest, data: Any = None, *, role: str | None = None,
               initial: dict[str, Any] | None = None) -> RoleForm:
    """The form for one of the user's roles, or (`role` None) for adding a chat role."""
    default_model = settings.CORTEX_ORCHESTRATOR_MODEL if role == roles.ORCHESTRATOR else settings.CORTEX_CHAT_MODEL
    return RoleForm(data, user=request.user, tools=registry.visible_to(request.user.pk), role=role, default_model=default_model,
                    initial=initial)


@login_required
@require_GET
def settings_models(request: HttpRequest) -> HttpResponse:
    # With htmx, an edit given up: a fresh form.
    return page_or_fragment(request, "settings/models.html", _models_context(request), fragment=request.htmx.target,
                            when=request.htmx.target in ("profile-form", "role-form"))


def _save_profile(request: HttpRequest, form: ProfileForm, profile: ModelProfile | None) -> HttpResponse | None:
    """Save a valid form through the service; None when the form (now with the error) must be shown again."""
    if not form.is_valid():
        return None
    data = form.cleaned_data
    try:
        saved = services.profile_save(
            by=request.user, owner=request.user, name=data["name"], provider=data["provider"], model=data["model"],
            base_url=data["base_url"], api_key=form.key_change(), max_rounds=data["max_rounds"],
            timeout_seconds=data["timeout_seconds"], temperature=data["temperature"],
            profile_id=profile.pk if profile else None)
    except services.ServiceError as error:
        form.add_error(None, error.message)
        return None
    messages.success(request, f"Profile “{saved.name}” {'saved' if profile else 'added'}.")
    return redirect_after_write(request, reverse("settings-models"))


@login_required
@post_only("settings-models")
def profile_create(request: HttpRequest) -> HttpResponse:
    form = ProfileForm(request.POST)
    return _save_profile(request, form, None) or _models_page(request, "profile-form", 400, profile_form=form)


@login_required
@require_http_methods(["GET", "POST"])
def profile_edit(request: HttpRequest, profile_id: int) -> HttpResponse:
    profile = selectors.own_profile_for_user(request.user, profile_id)
    if request.method == "GET":
        form = ProfileForm(initial=ProfileForm.initial_for(profile), has_key=profile.has_api_key)
        return _models_page(request, "profile-form", profile_form=form, editing_profile=profile)
    form = ProfileForm(request.POST, has_key=profile.has_api_key)
    return _save_profile(request, form, profile) or _models_page(request, "profile-form", 400, profile_form=form,
                                                                 editing_profile=profile)


@login_required
@post_only("settings-models")
def profile_delete(request: HttpRequest, profile_id: int) -> HttpResponse:
    profile = selectors.own_profile_for_user(request.user, profile_id)
    services.profile_delete(by=request.user, owner=request.user, profile_id=profile.pk)
    messages.success(request, f"Profile “{profile.name}” deleted; roles that used it fall back to the default.")
    return redirect_after_write(request, reverse("settings-models"))


@login_required
@post_only("settings-models")
def profile_check(request: HttpRequest, profile_id: int) -> HttpResponse:
    profile = selectors.usable_profile_for_user(request.user, profile_id)
    try:
        check = {"ok": True, "message": services.profile_check(user=request.user, profile_id=profile.pk)}
    except services.Invalid as error:
        check = {"ok": False, "message": error.message}
    if request.htmx:
        return render(request, "settings/models.html#profile-check", {"profile": profile, "check": check})
    if check["ok"]:
        messages.success(request, f"“{profile.name}”: {check['message']}")
    else:
        messages.error(request, f"“{profile.name}” failed the connection test: {check['message']}")
    return redirect("settings-models")


def _save_role(request: HttpRequest, form: RoleForm, role: str | None) -> HttpResponse | None:
    """Like `_save_profile`; with `role` None the form names the role."""
    if not form.is_valid():
        return None
    data = form.cleaned_data
    role = role or data["role"]
    try:
        services.role_assign(by=request.user, owner=request.user, role=role, profile_id=data["profile"],
                             system_append=data["system_append"], inject_datetime=data["inject_datetime"],
                             inject_mode=data["inject_mode"], tools=data["tools"],
                             max_output_tokens=data["max_output_tokens"])
    except services.ServiceError as error:
        form.add_error(None, error.message)
        return None
    messages.success(request, f"Role “{role}” saved.")
    return redirect_after_write(request, reverse("settings-models"))


@login_required
@post_only("settings-models")
def role_create(request: HttpRequest) -> HttpResponse:
    form = _role_form(request, request.POST)
    return _save_role(request, form, None) or _models_page(request, "role-form", 400, role_form=form)


@login_required
@require_http_methods(["GET", "POST"])
def role_edit(request: HttpRequest, role: str) -> HttpResponse:
    config = selectors.role_for_user(request.user, role)
    if request.method == "GET":
        form = _role_form(request, role=role, initial=RoleForm.initial_for(config))
        return _models_page(request, "role-form", role_form=form, editing_role=config)
    form = _role_form(request, request.POST, role=role)
    return _save_role(request, form, role) or _models_page(request, "role-form", 400, role_form=form,
                                                           editing_role=config)


@login_required
@post_only("settings-models")
def role_unassign(request: HttpRequest, role: str) -> HttpResponse:
    assignment = selectors.own_assignment_for_user(request.user, role)
    services.role_unassign(by=request.user, owner=request.user, role=assignment.role)
    fallback = "the site-wide setting" if selectors.role_is_assigned_site_wide(role) else "the environment default"
    messages.success(request, f"Your setting for “{role}” was removed; it falls back to {fallback}.")
    return redirect_after_write(request, reverse("settings-models"))


# --- Settings: personas --------------------------------------------------------------------------

def _personas_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "own": selectors.own_personas_for_user(request.user),
            "site_wide": selectors.site_personas(), "default": selectors.default_persona(request.user),
            "form": PersonaForm(), "editing": None, **extra}


def _personas_page(request: HttpRequest, status: int = 200, **extra: Any) -> HttpResponse:
    """The page, or with htmx only the form."""
    return page_or_fragment(request, "settings/personas.html", _personas_context(request, **extra),
                            fragment="persona-form", status=status)


@login_required
@require_GET
def settings_personas(request: HttpRequest) -> HttpResponse:
    # With htmx, an edit given up: a fresh form.
    return page_or_fragment(request, "settings/personas.html", _personas_context(request), fragment="persona-form",
                            when=request.htmx.target == "persona-form")


def _save_persona(request: HttpRequest, form: PersonaForm, persona: Persona | None) -> HttpResponse | None:
    """Like `_save_profile`."""
    if not form.is_valid():
        return None
    data = form.cleaned_data
    try:
        saved = services.persona_save(owner=request.user, name=data["name"], prompt=data["prompt"],
                                      is_default=data["is_default"], persona_id=persona.pk if persona else None)
    except services.ServiceError as error:
        form.add_error(None, error.message)
        return None
    messages.success(request, f"Persona “{saved.name}” {'saved' if persona else 'added'}.")
    return redirect_after_write(request, reverse("settings-personas"))


@login_required
@post_only("settings-personas")
def persona_create(request: HttpRequest) -> HttpResponse:
    form = PersonaForm(request.POST)
    return _save_persona(request, form, None) or _personas_page(request, 400, form=form)


@login_required
@require_http_methods(["GET", "POST"])
def persona_edit(request: HttpRequest, persona_id: int) -> HttpResponse:
    persona = selectors.own_persona_for_user(request.user, persona_id)
    if request.method == "GET":
        return _personas_page(request, form=PersonaForm(initial=PersonaForm.initial_for(persona)), editing=persona)
    form = PersonaForm(request.POST)
    return _save_persona(request, form, persona) or _personas_page(request, 400, form=form, editing=persona)


@login_required
@post_only("settings-personas")
def persona_make_default(request: HttpRequest, persona_id: int) -> HttpResponse:
    persona = selectors.own_persona_for_user(request.user, persona_id)
    services.persona_save(owner=request.user, name=persona.name, prompt=persona.prompt, is_default=True,
                          persona_id=persona.pk)
    messages.success(request, f"Your jobs now speak as “{persona.name}” unless you pick another persona.")
    return redirect_after_write(request, reverse("settings-personas"))


@login_required
@post_only("settings-personas")
def persona_delete(request: HttpRequest, persona_id: int) -> HttpResponse:
    persona = selectors.own_persona_for_user(request.user, persona_id)
    services.persona_delete(owner=request.user, persona_id=persona.pk)
    messages.success(request, f"Persona “{persona.name}” deleted.")
    return redirect_after_write(request, reverse("settings-personas"))

