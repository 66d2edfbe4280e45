"""The jobs list, submitting a job, a job's page and cancelling it."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from .. import job_page, selectors, services
from ..forms import (
    ArgumentsForm,
    JobSubmitForm,
)
from ..models import Job
from .common import login_required, page_or_fragment, post_only, redirect_after_write

# --- Jobs ----------------------------------------------------------------------------------------

def _job_list_context(request: HttpRequest, form: JobSubmitForm | None = None) -> dict[str, Any]:
    context = job_page.job_list_context(request.user, status=request.GET.get("status", ""),
                                        page_number=request.GET.get("page"))
    return {**context, "section": "jobs", "form": form or JobSubmitForm(user=request.user, autofocus=True)}


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    return page_or_fragment(request, "jobs/list.html", _job_list_context(request), fragment="job-list",
                            when=request.htmx.target == "job-list")


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
            return redirect_after_write(request, job_url(job))
    return page_or_fragment(request, "jobs/list.html", _job_list_context(request, form), fragment="job-form",
                            status=400)


def job_url(job: Job) -> str:
    return reverse("job-detail", args=[job.id])


def job_detail_page(request: HttpRequest, job: Job, *, status: int = 200,
                edit_forms: dict[int, ArgumentsForm] | None = None) -> HttpResponse:
    events = selectors.job_events(job)
    job.refresh_from_db()  # read after the events, so the state shown is never older than the history
    context = job_page.page_context(job, events, edit_forms=edit_forms)
    context.update(section="jobs", next=job_url(job))
    return render(request, "jobs/detail.html", context, status=status)


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    return job_detail_page(request, selectors.job_for_user(request.user, job_id))


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


