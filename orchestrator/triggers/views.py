"""Settings → Schedules and Settings → Hooks, and the hooks' own address, POST /hooks/<slug>."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from ..services import ServiceError
from ..views import login_required, page_or_fragment, post_only, redirect_after_write
from . import selectors, services
from .forms import HookForm, ScheduleForm
from .models import Hook, Schedule


def _refused(form: ScheduleForm | HookForm, error: ServiceError) -> None:
    """The service's refusal, next to the field it names (the callback and its time limit are
    checked by the services, as for POST /orchestrate), or above the form."""
    named = error.message.split(" ", 1)[0]
    form.add_error(named if named in ("callback_url", "callback_on_confirmation", "confirmation_ttl") else None,
                   error.message)


# --- Schedules ---------------------------------------------------------------------------------


def _preview(data: Any) -> dict[str, Any]:
    """The next five due times of the cron and time zone in `data`, or why there are none."""
    cron_expression, time_zone = (data.get("cron") or "").strip(), (data.get("time_zone") or "").strip()
    if not cron_expression:
        return {"next_runs": [], "preview_error": ""}
    try:
        times = services.schedule_preview(cron_expression=cron_expression, time_zone=time_zone)
    except ServiceError as error:
        return {"next_runs": [], "preview_error": error.message}
    # In the schedule's own time zone, which the page's (the site's) need not be.
    return {"next_runs": [{"iso": when.isoformat(), "label": when.strftime("%a %Y-%m-%d %H:%M %Z")} for when in times],
            "preview_error": ""}


def _schedules_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "schedules": selectors.schedules_for_user(request.user), **extra}


def _schedule_form_context(request: HttpRequest, form: ScheduleForm, editing: Schedule | None) -> dict[str, Any]:
    data = form.data if form.is_bound else {"cron": form["cron"].value(), "time_zone": form["time_zone"].value()}
    context = {"section": "settings", "form": form, "editing": editing, **_preview(data)}
    if editing is not None:
        context["runs"] = selectors.runs_of(editing)
        context["offered"] = selectors.offered_under(request.user, editing.max_risk)
    return context


def _schedule_save(request: HttpRequest, editing: Schedule | None) -> HttpResponse:
    form = ScheduleForm(request.POST, user=request.user)
    if "preview" not in request.POST and form.is_valid():
        data = form.cleaned_data
        try:
            schedule = services.schedule_save(
                user=request.user, name=data["name"], cron_expression=data["cron"], time_zone=data["time_zone"],
                task=data["task"], options=form.job_options(), max_risk=data["max_risk"], enabled=data["enabled"],
                schedule_id=editing.pk if editing else None, **form.follow_up())
        except ServiceError as error:
            _refused(form, error)
        else:
            messages.success(request, f"Schedule “{schedule.name}” saved.")
            return redirect_after_write(request, reverse("schedule-edit", args=[schedule.pk]))
    status = 200 if "preview" in request.POST else 400
    return render(request, "triggers/schedule.html", _schedule_form_context(request, form, editing), status=status)


@login_required
@require_GET
def schedule_list(request: HttpRequest) -> HttpResponse:
    return render(request, "triggers/schedules.html", _schedules_context(request))


@login_required
@require_http_methods(["GET", "POST"])
def schedule_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _schedule_save(request, None)
    form = ScheduleForm(user=request.user)
    return render(request, "triggers/schedule.html", _schedule_form_context(request, form, None))


@login_required
@require_http_methods(["GET", "POST"])
def schedule_edit(request: HttpRequest, schedule_id: int) -> HttpResponse:
    schedule = selectors.schedule_for_user(request.user, schedule_id)
    if request.method == "POST":
        return _schedule_save(request, schedule)
    form = ScheduleForm(initial=ScheduleForm.initial_for(schedule), user=request.user)
    return render(request, "triggers/schedule.html", _schedule_form_context(request, form, schedule))


@login_required
@post_only("schedule-create")
def schedule_preview(request: HttpRequest) -> HttpResponse:
    """The next five due times of the cron and time zone being typed, before anything is saved."""
    return page_or_fragment(request, "triggers/schedule.html",
                            _schedule_form_context(request, ScheduleForm(request.POST, user=request.user), None),
                            fragment="next-runs")


@login_required
@post_only("schedule-edit", "schedule_id")
def schedule_run_now(request: HttpRequest, schedule_id: int) -> HttpResponse:
    run = services.schedule_run_now(user=request.user, schedule_id=schedule_id)
    if run.job_id:
        messages.success(request, "The schedule ran now: its job is queued.")
    else:
        messages.error(request, f"The schedule could not start a job: {run.error}")
    return redirect_after_write(request, reverse("schedule-edit", args=[schedule_id]))


@login_required
@post_only("schedule-edit", "schedule_id")
def schedule_toggle(request: HttpRequest, schedule_id: int) -> HttpResponse:
    enabled = request.POST.get("enabled") == "true"
    try:
        schedule = services.schedule_set_enabled(user=request.user, schedule_id=schedule_id, enabled=enabled)
    except ServiceError as error:
        messages.error(request, f"The schedule stays disabled: {error.message}. Edit it to fix this.")
    else:
        messages.success(request, f"Schedule “{schedule.name}” {'enabled' if enabled else 'disabled'}.")
    back = reverse("schedules") if request.POST.get("next") == "list" else reverse("schedule-edit", args=[schedule_id])
    return redirect_after_write(request, back)


@login_required
@post_only("schedules")
def schedule_delete(request: HttpRequest, schedule_id: int) -> HttpResponse:
    schedule = selectors.schedule_for_user(request.user, schedule_id)
    services.schedule_delete(user=request.user, schedule_id=schedule.pk)
    messages.success(request, f"Schedule “{schedule.name}” deleted.")
    return redirect_after_write(request, reverse("schedules"))


# --- Hooks -------------------------------------------------------------------------------------

def _hooks_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    form = extra.pop("form", None) or HookForm(user=request.user, initial=_new_hook_initial())
    return {"section": "settings", "hooks": selectors.hooks_for_user(request.user), "form": form,
            "created": None, "secret": None, **extra}


def _new_hook_initial() -> dict[str, Any]:
    return {"max_body_bytes": settings.CORTEX_HOOK_MAX_BYTES, "max_per_minute": settings.CORTEX_HOOK_PER_MINUTE,
            "max_risk": "low", "enabled": True, "respond_with_final": True, "chat_role": "chat"}


def _shown_once(response: HttpResponse) -> HttpResponse:
    # The secret exists only in this response: it must not be kept by a cache or shown by Back.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def hook_list(request: HttpRequest) -> HttpResponse:
    return render(request, "triggers/hooks.html", _hooks_context(request))


@login_required
@post_only("hooks")
def hook_create(request: HttpRequest) -> HttpResponse:
    form = HookForm(request.POST, user=request.user)
    if form.is_valid():
        data = form.cleaned_data
        try:
            hook, secret = services.hook_create(
                user=request.user, slug=data["slug"], task_template=data["task_template"], options=form.job_options(),
                max_risk=data["max_risk"], max_body_bytes=data["max_body_bytes"],
                max_per_minute=data["max_per_minute"], **form.follow_up())
        except ServiceError as error:
            _refused(form, error)
        else:
            context = _hooks_context(request, created=hook, secret=secret,
                                     address=request.build_absolute_uri(reverse("hook-receive", args=[hook.slug])))
            return _shown_once(page_or_fragment(request, "triggers/hooks.html", context, fragment="hook-panel"))
    return page_or_fragment(request, "triggers/hooks.html", _hooks_context(request, form=form),
                            fragment="hook-panel", status=400)


def _hook_context(request: HttpRequest, hook: Hook, form: HookForm | None = None, **extra: Any) -> dict[str, Any]:
    return {"section": "settings", "hook": hook, "deliveries": selectors.deliveries_of(hook),
            "offered": selectors.offered_under(request.user, hook.max_risk),
            "form": form or HookForm(initial=HookForm.initial_for(hook), user=request.user, editing=hook),
            "address": request.build_absolute_uri(reverse("hook-receive", args=[hook.slug])), "secret": None,
            **extra}


@login_required
@require_http_methods(["GET", "POST"])
def hook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    hook = selectors.hook_for_user(request.user, slug)
    if request.method == "GET":
        return render(request, "triggers/hook.html", _hook_context(request, hook))
    form = HookForm(request.POST, user=request.user, editing=hook)
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.hook_update(user=request.user, slug=hook.slug, task_template=data["task_template"],
                                 options=form.job_options(), max_risk=data["max_risk"], enabled=data["enabled"],
                                 max_body_bytes=data["max_body_bytes"], max_per_minute=data["max_per_minute"],
                                 **form.follow_up())
        except ServiceError as error:
            _refused(form, error)
        else:
            messages.success(request, f"Hook “{hook.slug}” saved.")
            return redirect_after_write(request, reverse("hook-detail", args=[hook.slug]))
    return render(request, "triggers/hook.html", _hook_context(request, hook, form), status=400)


@login_required
@post_only("hook-detail", "slug")
def hook_rotate(request: HttpRequest, slug: str) -> HttpResponse:
    hook, secret = services.hook_rotate_secret(user=request.user, slug=slug)
    return _shown_once(render(request, "triggers/hook.html", _hook_context(request, hook, secret=secret)))


@login_required
@post_only("hooks")
def hook_delete(request: HttpRequest, slug: str) -> HttpResponse:
    services.hook_delete(user=request.user, slug=slug)
    messages.success(request, f"Hook “{slug}” deleted.")
    return redirect_after_write(request, reverse("hooks"))


@csrf_exempt  # a sender signs its deliveries with the hook's secret; it has no cookie to forge
@require_http_methods(["POST"])
def hook_receive(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0) or None
    except ValueError:
        length = None
    try:
        received = services.hook_receive(slug=slug, headers=request.headers, content_length=length,
                                         read=request.read, content_type=request.content_type or "")
    except ServiceError as error:
        return JsonResponse({"detail": error.message}, status=error.status)
    body: dict[str, Any] = {"detail": received.detail}
    if received.job is not None:
        body |= {"job_id": str(received.job.id), "status": received.job.status}
    response = JsonResponse(body, status=received.status)
    if received.retry_after:
        response["Retry-After"] = str(received.retry_after)
    return response
