"""Conversations: the list, one conversation, continuing it and renaming it."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from .. import selectors, services
from ..forms import (
    JobSubmitForm,
    SessionRenameForm,
)
from ..models import JobStatus
from .common import login_required, page_or_fragment, post_only, redirect_after_write

SESSIONS_PER_PAGE = 20


# --- Sessions ------------------------------------------------------------------------------------

@login_required
@require_GET
def session_list(request: HttpRequest) -> HttpResponse:
    sessions = selectors.sessions_for_user(request.user).annotate(
        turns=Count("messages", distinct=True), job_count=Count("jobs", distinct=True))
    page = Paginator(sessions, SESSIONS_PER_PAGE).get_page(request.GET.get("page"))
    return page_or_fragment(request, "sessions/list.html", {"section": "sessions", "page": page},
                            fragment="session-list", when=request.htmx.target == "session-list")


def _continue_form(request: HttpRequest, data: Any = None) -> JobSubmitForm:
    form = JobSubmitForm(data, user=request.user)
    # The conversation is the one in the address, whatever the form says.
    del form.fields["session"]
    return form


def _session_page(request: HttpRequest, session_id: uuid.UUID, form: JobSubmitForm | None = None,
                  status: int = 200, rename_form: SessionRenameForm | None = None,
                  fragment: str | None = None) -> HttpResponse:
    session = selectors.session_for_user(request.user, session_id)
    form = form or _continue_form(request)
    return page_or_fragment(request, "sessions/detail.html", {
        "section": "sessions", "session": session, "messages_list": session.messages.all(),
        "active_jobs": session.jobs.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING,
                                                         JobStatus.AWAITING_CONFIRMATION]),
        "form": form, "rename_form": rename_form or SessionRenameForm(initial={"title": session.title})},
        fragment=fragment, status=status)


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
            return redirect_after_write(request, reverse("session-detail", args=[session.id]))
    return _session_page(request, session_id, form, status=400, fragment="continue-form")


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
            return redirect_after_write(request, reverse("session-detail", args=[session.id]))
    return _session_page(request, session.id, status=400, rename_form=form)


