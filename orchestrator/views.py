"""The htmx pages. Every view reads through `selectors`, writes through `services`, and answers an
htmx request with the template partial it swaps, any other request with the whole page (or a
redirect after a write), so every form works without JavaScript."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from itertools import groupby
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.decorators import login_required as django_login_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import redirect, render, resolve_url
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect, retarget

from . import job_page, roles, selectors, services
from .forms import (
    PROVIDER_LABELS,
    ApproveForm,
    ArgumentsForm,
    DenyForm,
    JobSubmitForm,
    MemoryForm,
    PersonaForm,
    ProfileForm,
    RoleForm,
    SessionRenameForm,
    TokenForm,
    ToolPolicyForm,
    confirmation_field,
    override_field,
)
from .models import Job, JobStatus, Memory, ModelProfile, Persona, ToolCall
from .policy import PolicyContext, decide_all
from .tools.registry import registry

SESSIONS_PER_PAGE = 20
# The memory being edited has its own field ids, apart from the "add a memory" form on the same page.
EDIT_PREFIX = "edit"


def login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Django's, except for an htmx request from someone signed out (their session ended, in another
    tab or by expiring): the whole page goes to the sign-in page, and from there back to the page
    they were on. Django's redirect would be followed inside the swap, putting the sign-in page in
    place of a card, and would come back to the address htmx posted to, which takes no GET."""
    checked = django_login_required(view)

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.htmx and not request.user.is_authenticated:
            page = request.htmx.current_url_abs_path or reverse("jobs")  # only a page of ours
            return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?"
                                              f"{urlencode({REDIRECT_FIELD_NAME: page})}")
        return checked(request, *args, **kwargs)

    return wrapper


def post_only(page: str, *url_kwargs: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Like `require_POST`, except for a GET: the address a form posts to is reloaded, bookmarked or
    opened again after a page showed a validation error, and the person gets the page the form
    belongs to (`page`, with the named arguments of this address) instead of a bare 405."""
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method in ("GET", "HEAD"):
                url = reverse(page, kwargs={name: kwargs[name] for name in url_kwargs})
                return HttpResponseRedirect(url, status=303)
            if request.method != "POST":
                return HttpResponseNotAllowed(["POST"])
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    """After a write: htmx loads the next page itself, a plain form follows a 302."""
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _next_url(request: HttpRequest, default: str) -> str:
    candidate = request.POST.get("next", "")
    if candidate and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()},
                                                     require_https=request.is_secure()):
        return candidate
    return default


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("jobs")


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page's `<link rel=icon>` says."""
    return HttpResponseRedirect(static("favicon.svg"), status=301)


# --- Jobs ----------------------------------------------------------------------------------------

def _job_list_context(request: HttpRequest, form: JobSubmitForm | None = None) -> dict[str, Any]:
    context = job_page.job_list_context(request.user, status=request.GET.get("status", ""),
                                        page_number=request.GET.get("page"))
    return {**context, "section": "jobs", "form": form or JobSubmitForm(user=request.user, autofocus=True)}


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    context = _job_list_context(request)
    if request.htmx and request.htmx.target == "job-list":
        return render(request, "jobs/list.html#job-list", context)
    return render(request, "jobs/list.html", context)


@login_required
@post_only("jobs")
def job_submit(request: HttpRequest) -> HttpResponse:
    form = JobSubmitForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            job = services.job_submit(user=request.user, task=form.cleaned_data["task"],
                                      session_id=form.cleaned_data["session"] or None,
                                      persona=form.cleaned_data["persona"] or None, options=form.options())
        except services.ServiceError as error:
            form.add_error("task", error.message)
        else:
            return _redirect(request, job_url(job))
    if request.htmx:
        return render(request, "jobs/list.html#job-form", {"form": form}, status=400)
    return render(request, "jobs/list.html", _job_list_context(request, form), status=400)


def job_url(job: Job) -> str:
    return reverse("job-detail", args=[job.id])


def _job_detail(request: HttpRequest, job: Job, *, status: int = 200,
                edit_forms: dict[int, ArgumentsForm] | None = None) -> HttpResponse:
    events = selectors.job_events(job)
    job.refresh_from_db()  # read after the events, so the state shown is never older than the history
    context = job_page.page_context(job, events, edit_forms=edit_forms)
    context.update(section="jobs", next=job_url(job))
    return render(request, "jobs/detail.html", context, status=status)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    return _job_detail(request, selectors.job_for_user(request.user, job_id))


@login_required
@post_only("job-detail", "job_id")
def job_cancel(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = selectors.job_for_user(request.user, job_id)
    try:
        job = services.job_cancel(user=request.user, job_id=job.id)
    except services.Conflict as error:
        if request.htmx:
            return render(request, "jobs/detail.html#job-actions", {"job": job, "problem": error.message},
                          status=409)
        messages.warning(request, f"Nothing to cancel: {error.message}.")
        return redirect(job_url(job))
    if request.htmx:
        return render(request, "jobs/detail.html#job-actions", {"job": job})
    messages.success(request, "The job was cancelled.")
    return redirect(job_url(job))


# --- Confirmations -------------------------------------------------------------------------------

def _decide(request: HttpRequest, job: Job, call: ToolCall, decide: Callable[[], Job], done: str,
            form: ArgumentsForm | None = None) -> HttpResponse:
    """Apply a decision. The card answers in place: decided, with its controls disabled, or, when the
    call was decided elsewhere or is no longer as shown, with a clear message and nothing changed."""
    url = _next_url(request, job_url(job))
    try:
        decide()
    except services.Conflict as error:
        call.refresh_from_db()
        problem = _already_decided(call) or error.message
        if request.htmx:
            return _card(request, job, call, url, problem=problem, form=form, status=409)
        messages.warning(request, problem)
        return redirect(url)
    call.refresh_from_db()
    if request.htmx:
        return _card(request, job, call, url, form=form)
    messages.success(request, f"{call.name}: {done}.")
    return redirect(url)


def _card(request: HttpRequest, job: Job, call: ToolCall, url: str, *, problem: str = "",
          form: ArgumentsForm | None = None, status: int = 200) -> HttpResponse:
    """One confirmation card, as the page it came from shows it (the inbox names the job)."""
    return render(request, "components.html#confirmation-card", {
        "card": job_page.card_for(job, call, form), "problem": problem, "next": url,
        "show_job": url == reverse("confirmations")}, status=status)


def _shown_digest(request: HttpRequest) -> str:
    """The digest of the arguments the card showed. Every card sends one; a form without it comes
    from a page older than the digests and is refused like a stale one ("" matches no call)."""
    return request.POST.get("args_digest", "")[:128]


def _already_decided(call: ToolCall) -> str:
    if not call.decision:
        return ""
    who = call.decided_by.get_username() if call.decided_by else "someone"
    return f"This call was already {call.decision} by {who}; nothing was changed."


@login_required
@post_only("job-detail", "job_id")
def call_approve(request: HttpRequest, job_id: uuid.UUID, call_pk: int) -> HttpResponse:
    job = selectors.job_for_user(request.user, job_id)
    call = selectors.tool_call_for_job(job, call_pk)
    form = ApproveForm(request.POST)
    remember = "job" if form.is_valid() and form.cleaned_data["remember"] == "job" else None
    return _decide(request, job, call, lambda: services.job_confirm(
        user=request.user, job_id=job.id, tool_call_id=call.call_id, remember=remember,
        args_digest=_shown_digest(request)),
        "approved for the rest of this job" if remember else "approved")


@login_required
@post_only("job-detail", "job_id")
def call_deny(request: HttpRequest, job_id: uuid.UUID, call_pk: int) -> HttpResponse:
    job = selectors.job_for_user(request.user, job_id)
    call = selectors.tool_call_for_job(job, call_pk)
    form = DenyForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    return _decide(request, job, call, lambda: services.job_deny(
        user=request.user, job_id=job.id, tool_call_id=call.call_id, reason=reason,
        args_digest=_shown_digest(request)), "denied")


@login_required
@post_only("job-detail", "job_id")
def call_edit(request: HttpRequest, job_id: uuid.UUID, call_pk: int) -> HttpResponse:
    job = selectors.job_for_user(request.user, job_id)
    call = selectors.tool_call_for_job(job, call_pk)
    tool = registry.get(call.name)
    if tool is None:
        raise Http404("this tool no longer exists; approve or deny the call as it is")
    form = ArgumentsForm(request.POST, tool=tool, current=call.args, prefix=job_page.form_prefix(call))
    if form.is_valid():
        try:
            return _decide(request, job, call, lambda: services.job_confirm(
                user=request.user, job_id=job.id, tool_call_id=call.call_id, args=form.arguments(),
                args_digest=_shown_digest(request)),
                "approved with your arguments", form=form)
        except services.Invalid as error:
            form.add_error(None, error.message)
    if request.htmx:
        return _card(request, job, call, _next_url(request, job_url(job)), form=form, status=400)
    return _job_detail(request, job, status=400, edit_forms={call.pk: form})


@login_required
@require_GET
def confirmation_inbox(request: HttpRequest) -> HttpResponse:
    inbox = job_page.inbox_for(request.user)
    return render(request, "confirmations/inbox.html", {
        "section": "confirmations", "cards": inbox.cards, "next": request.path,
        "inbox_signature": inbox.signature})


# --- Sessions ------------------------------------------------------------------------------------

@login_required
@require_GET
def session_list(request: HttpRequest) -> HttpResponse:
    sessions = selectors.sessions_for_user(request.user).annotate(
        turns=Count("messages", distinct=True), job_count=Count("jobs", distinct=True))
    page = Paginator(sessions, SESSIONS_PER_PAGE).get_page(request.GET.get("page"))
    if request.htmx and request.htmx.target == "session-list":
        return render(request, "sessions/list.html#session-list", {"page": page})
    return render(request, "sessions/list.html", {"section": "sessions", "page": page})


def _continue_form(request: HttpRequest, data: Any = None) -> JobSubmitForm:
    form = JobSubmitForm(data, user=request.user)
    # The conversation is the one in the address, whatever the form says.
    del form.fields["session"]
    return form


def _session_page(request: HttpRequest, session_id: uuid.UUID, form: JobSubmitForm | None = None,
                  status: int = 200, rename_form: SessionRenameForm | None = None) -> HttpResponse:
    session = selectors.session_for_user(request.user, session_id)
    form = form or _continue_form(request)
    return render(request, "sessions/detail.html", {
        "section": "sessions", "session": session, "messages_list": session.messages.all(),
        "active_jobs": session.jobs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING,
                                                         JobStatus.AWAITING_CONFIRMATION]),
        "form": form, "rename_form": rename_form or SessionRenameForm(initial={"title": session.title})},
        status=status)


@login_required
@require_GET
def session_detail(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    return _session_page(request, session_id)


@login_required
@post_only("session-detail", "session_id")
def session_continue(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = selectors.session_for_user(request.user, session_id)
    form = _continue_form(request, request.POST)
    if form.is_valid():
        try:
            services.job_submit(user=request.user, task=form.cleaned_data["task"], session_id=str(session.id),
                                persona=form.cleaned_data["persona"] or None, options=form.options())
        except services.ServiceError as error:
            form.add_error("task", error.message)
        else:
            # Back to the conversation, where the turn just started shows. Without a #fragment: the
            # browser would only scroll to it on the same page, not load it again.
            return _redirect(request, reverse("session-detail", args=[session.id]))
    if request.htmx:
        return render(request, "sessions/detail.html#continue-form", {"form": form, "session": session}, status=400)
    return _session_page(request, session_id, form, status=400)


@login_required
@post_only("session-detail", "session_id")
def session_rename(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = selectors.session_for_user(request.user, session_id)
    form = SessionRenameForm(request.POST)
    if form.is_valid():
        try:
            services.session_rename(user=request.user, session_id=session.id, title=form.cleaned_data["title"])
        except services.ServiceError as error:
            form.add_error("title", error.message)
        else:
            messages.success(request, "Conversation renamed.")
            return _redirect(request, reverse("session-detail", args=[session.id]))
    return _session_page(request, session.id, status=400, rename_form=form)


# --- Memories ------------------------------------------------------------------------------------

def _memory_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    tier = request.GET.get("tier", "")
    if tier not in Memory.Tier.values:
        tier = ""
    memories = list(selectors.memories_for_user(request.user, tier=tier or None))
    groups = [{"tier": value, "label": label, "memories": [m for m in memories if m.tier == value]}
              for value, label in Memory.Tier.choices if not tier or tier == value]
    return {"section": "memories", "tier": tier, "groups": groups, "tiers": Memory.Tier.choices,
            "form": MemoryForm(), "editing": None, "edit_form": None, **extra}


@login_required
@require_GET
def memory_list(request: HttpRequest) -> HttpResponse:
    if request.htmx and request.htmx.target == "memory-board":
        return render(request, "memories/index.html#memory-board", _memory_context(request))
    return render(request, "memories/index.html", _memory_context(request))


@login_required
@post_only("memories")
def memory_create(request: HttpRequest) -> HttpResponse:
    form = MemoryForm(request.POST)
    if form.is_valid():
        try:
            services.memory_save(user=request.user, content=form.cleaned_data["content"],
                                 tier=form.cleaned_data["tier"])
        except services.ServiceError as error:
            form.add_error("content", error.message)
        else:
            if request.htmx:
                # A fresh form in place of the one sent, and the board with the new memory.
                context = _memory_context(request)
                return HttpResponse(render_to_string("memories/index.html#memory-form", context, request)
                                    + render_to_string("memories/index.html#memory-board", {**context, "oob": True},
                                                       request))
            messages.success(request, "Memory saved.")
            return redirect("memories")
    if request.htmx:
        return render(request, "memories/index.html#memory-form", {"form": form}, status=400)
    return render(request, "memories/index.html", _memory_context(request, form=form), status=400)


@login_required
@require_http_methods(["GET", "POST"])
def memory_edit(request: HttpRequest, memory_id: int) -> HttpResponse:
    memory = selectors.memory_for_user(request.user, memory_id)
    if request.method == "GET":
        form = MemoryForm(initial={"content": memory.content, "tier": memory.tier}, prefix=EDIT_PREFIX)
        status = 200
    else:
        form = MemoryForm(request.POST, prefix=EDIT_PREFIX)
        if form.is_valid():
            try:
                memory = services.memory_update(user=request.user, memory_id=memory.pk,
                                                content=form.cleaned_data["content"], tier=form.cleaned_data["tier"])
            except services.ServiceError as error:
                form.add_error("content", error.message)
            else:
                if request.htmx:  # its tier may have changed, so the whole board is redrawn
                    return retarget(render(request, "memories/index.html#memory-board", _memory_context(request)),
                                    "#memory-board")
                messages.success(request, "Memory updated.")
                return redirect("memories")
        status = 400
    if request.htmx:
        return render(request, "memories/index.html#memory-item", {"memory": memory, "editing": memory.pk,
                                                                   "edit_form": form}, status=status)
    return render(request, "memories/index.html",
                  _memory_context(request, editing=memory.pk, edit_form=form), status=status)


@login_required
@post_only("memories")
def memory_delete(request: HttpRequest, memory_id: int) -> HttpResponse:
    services.memory_delete(user=request.user, memory_id=memory_id)
    if request.htmx:
        return render(request, "memories/index.html#memory-board", _memory_context(request))
    messages.success(request, "Memory deleted.")
    return redirect("memories")


# --- Settings: tools -----------------------------------------------------------------------------

@login_required
@require_GET
def settings_home(request: HttpRequest) -> HttpResponse:
    return redirect("settings-tools")


def _tool_rows(form: ToolPolicyForm, context: PolicyContext) -> list[tuple[str, list[dict[str, Any]]]]:
    """The tools by category, each with its fields and what the policy does with it: the very
    decision the engine makes for a new job (outside a job, so nothing is approved for it yet)."""
    rows = [{"tool": decision.tool, "effective": decision, "override": form[override_field(decision.tool)],
             "confirmation": form[confirmation_field(decision.tool)]}
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
    return ToolPolicyForm(data, tools=list(registry), policy=selectors.risk_policy_for_user(request.user))


@login_required
@require_http_methods(["GET", "POST"])
def settings_tools(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "settings/tools.html", _tools_context(request, _policy_form(request)))
    form = _policy_form(request, request.POST)
    if form.is_valid():
        try:
            services.policy_update(user=request.user, max_risk=form.cleaned_data["max_risk"],
                                   overrides=form.overrides(), confirmations=form.confirmations())
        except services.ServiceError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Tool settings saved.")
            return _redirect(request, reverse("settings-tools"))
    return render(request, "settings/tools.html", _tools_context(request, form), status=400)


@login_required
@post_only("settings-tools")
def settings_tools_preview(request: HttpRequest) -> HttpResponse:
    """What the selections would do, before they are saved."""
    form = _policy_form(request, request.POST)
    context = _tools_context(request, form)
    status = 200 if form.is_valid() else 400
    if request.htmx:  # every swap is out of band: one cell per tool, and the summary
        return render(request, "settings/tools.html#effective-preview", {**context, "oob": True}, status=status)
    return render(request, "settings/tools.html", context, status=status)


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
        template = "settings/tokens.html#token-panel" if request.htmx else "settings/tokens.html"
        return render(request, template, _tokens_context(request, form=form), status=400)
    token, raw = services.token_create(user=request.user, name=form.cleaned_data["name"])
    # The raw value exists only in this response: it is never stored, so it cannot be shown again.
    context = _tokens_context(request, created=token, raw_token=raw)
    response = render(request, "settings/tokens.html#token-panel" if request.htmx else "settings/tokens.html",
                      context)
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
    context = _models_context(request, **extra)
    return render(request, f"settings/models.html#{partial}" if request.htmx else "settings/models.html", context,
                  status=status)


def _role_form(request: HttpRequest, data: Any = None, *, role: str | None = None,
               initial: dict[str, Any] | None = None) -> RoleForm:
    """The form for one of the user's roles, or (`role` None) for adding a chat role."""
    default_model = settings.CORTEX_ORCHESTRATOR_MODEL if role == roles.ORCHESTRATOR else settings.CORTEX_CHAT_MODEL
    return RoleForm(data, user=request.user, tools=list(registry), role=role, default_model=default_model,
                    initial=initial)


@login_required
@require_GET
def settings_models(request: HttpRequest) -> HttpResponse:
    if request.htmx and request.htmx.target in ("profile-form", "role-form"):  # an edit given up: a fresh form
        return render(request, f"settings/models.html#{request.htmx.target}", _models_context(request))
    return render(request, "settings/models.html", _models_context(request))


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
    return _redirect(request, reverse("settings-models"))


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
    return _redirect(request, reverse("settings-models"))


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
    return _redirect(request, reverse("settings-models"))


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
    return _redirect(request, reverse("settings-models"))


# --- Settings: personas --------------------------------------------------------------------------

def _personas_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "own": selectors.own_personas_for_user(request.user),
            "site_wide": selectors.site_personas(), "default": selectors.default_persona(request.user),
            "form": PersonaForm(), "editing": None, **extra}


def _personas_page(request: HttpRequest, status: int = 200, **extra: Any) -> HttpResponse:
    """The page, or with htmx only the form."""
    return render(request, "settings/personas.html#persona-form" if request.htmx else "settings/personas.html",
                  _personas_context(request, **extra), status=status)


@login_required
@require_GET
def settings_personas(request: HttpRequest) -> HttpResponse:
    if request.htmx and request.htmx.target == "persona-form":  # an edit given up: a fresh form
        return _personas_page(request)
    return render(request, "settings/personas.html", _personas_context(request))


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
    return _redirect(request, reverse("settings-personas"))


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
    return _redirect(request, reverse("settings-personas"))


@login_required
@post_only("settings-personas")
def persona_delete(request: HttpRequest, persona_id: int) -> HttpResponse:
    persona = selectors.own_persona_for_user(request.user, persona_id)
    services.persona_delete(owner=request.user, persona_id=persona.pk)
    messages.success(request, f"Persona “{persona.name}” deleted.")
    return _redirect(request, reverse("settings-personas"))
