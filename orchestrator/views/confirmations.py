"""Decisions on waiting tool calls (approve, deny, edit the arguments) and the inbox of waiting calls."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from .. import job_page, selectors, services
from ..forms import (
    ApproveForm,
    ArgumentsForm,
    DenyForm,
)
from ..models import Job, ToolCall
from ..tools.registry import registry
from .common import login_required, next_url, post_only
from .jobs import job_detail_page, job_url

# --- Confirmations -------------------------------------------------------------------------------

def _decide(request: HttpRequest, job: Job, call: ToolCall, decide: Callable[[], Job], done: str,
            form: ArgumentsForm | None = None) -> HttpResponse:
    """Apply a decision. The card answers in place: decided, with its controls disabled, or, when the
    call was decided elsewhere or is no longer as shown, with a clear message and nothing changed."""
    url = next_url(request, job_url(job))
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
        return _card(request, job, call, next_url(request, job_url(job)), form=form, status=400)
    return job_detail_page(request, job, status=400, edit_forms={call.pk: form})


@login_required
@require_GET
def confirmation_inbox(request: HttpRequest) -> HttpResponse:
    inbox = job_page.inbox_for(request.user)
    return render(request, "confirmations/inbox.html", {
        "section": "confirmations", "cards": inbox.cards, "next": request.path,
        "inbox_signature": inbox.signature})


