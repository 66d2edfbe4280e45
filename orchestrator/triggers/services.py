"""Every write on schedules and hooks, and the two ways they start jobs: a due schedule fired by
the executor's periodic tick, and a signed delivery to a hook. Both go through the one submission
service, `orchestrator.services.job_submit`, with their origin and their `max_risk`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from .. import context, crypto, selectors as core_selectors, services
from ..models import Job, JobOrigin
from ..tools.registry import RISKS
from . import clock, cron, inbound, selectors
from .models import Hook, HookDelivery, Schedule, ScheduleRun

logger = logging.getLogger(__name__)

Invalid, NotFound = services.Invalid, services.NotFound

# The job options a schedule or hook may carry, as POST /orchestrate names them, with their types.
OPTION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "persona": str, "tier": int, "respond_with_final": bool, "include_long": bool, "include_mid": bool,
    "include_short": bool, "chat_role": str, "off_record": bool, "session_id": str,
}
MAX_TASK_TEMPLATE_CHARS = 20_000
# Deliveries that started no job are kept for each hook up to this many, the newest: anyone may
# post unsigned requests, and they must not fill the database. Accepted ones are all kept (their
# delivery ids are what a repeat is recognised by), and they are rate-limited.
KEEP_UNACCEPTED_DELIVERIES = 500


# --- Job options, shared by schedules and hooks ------------------------------------------------

def options_clean(*, user: AbstractBaseUser, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options as stored: only known fields, each of its type, checked against what the owner
    has (the persona and the conversation must be theirs); empty values left out."""
    cleaned: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if name not in OPTION_FIELDS:
            raise Invalid(f"unknown job option {name!r}; known: {', '.join(OPTION_FIELDS)}")
        if value is None or value == "":
            continue
        kind = OPTION_FIELDS[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Invalid(f"job option {name} must be {'true or false' if kind is bool else kind.__name__}")
        cleaned[name] = value
    if "tier" in cleaned and cleaned["tier"] not in (1, 2, 3):
        raise Invalid("tier must be 1, 2 or 3")
    if "chat_role" in cleaned and not services.SLUG.fullmatch(cleaned["chat_role"]):
        raise Invalid("chat_role must be a short name of letters, digits, - or _")
    if "persona" in cleaned and core_selectors.persona_by_name(user, cleaned["persona"]) is None:
        raise Invalid(f"unknown persona {cleaned['persona']!r}")
    if "session_id" in cleaned:
        try:
            core_selectors.session_for_user(user, cleaned["session_id"])
        except (Http404, ValueError):
            raise Invalid("session_id names no conversation of yours") from None
    return cleaned


@dataclass(frozen=True)
class FollowUp:
    """What a schedule's or hook's jobs tell, and how long their calls may wait for a person."""

    callback_url: str = ""
    callback_on_confirmation: bool = False
    confirmation_ttl: int | None = None


def follow_up_clean(*, user: AbstractBaseUser, callback_url: str | None = None,
                    callback_on_confirmation: bool = False, confirmation_ttl: int | None = None) -> FollowUp:
    """Checked as `POST /orchestrate` checks them, when the schedule or hook is saved: a person
    learns at once that an address is refused or a signing secret is missing, not when it fires."""
    checked = services.callback_check(user=user, callback_url=callback_url,
                                      callback_on_confirmation=callback_on_confirmation)
    ttl = None if confirmation_ttl is None else services.confirmation_ttl_check(confirmation_ttl)
    return FollowUp(checked.get("callback_url", ""), checked.get("callback_on_confirmation", False), ttl)


def _keep_follow_up(target: Schedule | Hook, follow_up: FollowUp) -> None:
    target.callback_url = follow_up.callback_url
    target.callback_on_confirmation = follow_up.callback_on_confirmation
    target.confirmation_ttl = follow_up.confirmation_ttl


def _submit(*, user: AbstractBaseUser, task: str, options: Mapping[str, Any], origin: str, max_risk: str,
            detail: dict[str, Any], follow_up: Mapping[str, Any], data_marker: str = "") -> Job:
    job_options = services.JobOptions(
        tier=options.get("tier"), respond_with_final=options.get("respond_with_final", True),
        include_long=options.get("include_long", True), include_mid=options.get("include_mid", True),
        include_short=options.get("include_short", True), chat_role=options.get("chat_role", "chat"),
        off_record=options.get("off_record", False))
    if not user.is_active:
        raise services.Forbidden("the owner's account is disabled")
    return services.job_submit(user=user, task=task, session_id=options.get("session_id"),
                               persona=options.get("persona"), options=job_options, origin=origin,
                               origin_max_risk=max_risk, origin_detail=detail, data_marker=data_marker,
                               **follow_up)


def _check_risk(max_risk: str) -> None:
    if max_risk not in RISKS:
        raise Invalid(f"max_risk must be one of {', '.join(RISKS)}")


# --- Schedules ---------------------------------------------------------------------------------

def schedule_save(*, user: AbstractBaseUser, name: str, cron_expression: str, time_zone: str, task: str,
                  options: Mapping[str, Any] | None = None, max_risk: str = "low", enabled: bool = True,
                  callback_url: str | None = None, callback_on_confirmation: bool = False,
                  confirmation_ttl: int | None = None, schedule_id: int | None = None) -> Schedule:
    """Create a schedule, or update the one named (every field replaced). A change of times (or
    enabling it) starts counting from now: nothing fires for times before the change."""
    name = " ".join((name or "").split())
    task = (task or "").strip()
    if not name or len(name) > 100:
        raise Invalid("a schedule needs a name of at most 100 characters")
    if not task:
        raise Invalid("a schedule needs a task")
    if len(task) > settings.CORTEX_MAX_TASK_CHARS:
        raise services.TooLarge(f"the task is at most {settings.CORTEX_MAX_TASK_CHARS} characters")
    cron_expression = " ".join((cron_expression or "").split())
    try:
        first = cron.next_times(cron_expression, time_zone, clock.now())[0]
    except cron.CronInvalid as error:
        raise Invalid(str(error)) from None
    _check_risk(max_risk)
    cleaned = options_clean(user=user, options=options)
    follow_up = follow_up_clean(user=user, callback_url=callback_url,
                                callback_on_confirmation=callback_on_confirmation, confirmation_ttl=confirmation_ttl)
    with transaction.atomic():
        if schedule_id is not None:
            schedule = Schedule.objects.select_for_update().filter(pk=schedule_id, user=user).first()
            if schedule is None:
                raise NotFound("schedule not found")
            times_changed = (schedule.cron, schedule.time_zone, schedule.enabled) != (cron_expression, time_zone,
                                                                                      enabled)
        else:
            schedule, times_changed = Schedule(user=user), True
        schedule.name, schedule.cron, schedule.time_zone, schedule.task = name, cron_expression, time_zone, task
        schedule.options, schedule.max_risk, schedule.enabled = cleaned, max_risk, enabled
        _keep_follow_up(schedule, follow_up)
        if times_changed or schedule.next_run_at is None:
            schedule.next_run_at = first if enabled else None
        schedule.save()
    return schedule


def schedule_set_enabled(*, user: AbstractBaseUser, schedule_id: Any, enabled: bool) -> Schedule:
    """Switch a schedule on (checked again, as when it is saved) or off (always possible, even when
    what it holds would no longer pass: a callback address the site now refuses, a persona gone)."""
    schedule = selectors.schedule_for_user(user, schedule_id)
    if not enabled:
        Schedule.objects.filter(pk=schedule.pk).update(enabled=False, next_run_at=None, updated_at=timezone.now())
        schedule.refresh_from_db()
        return schedule
    return schedule_save(user=user, name=schedule.name, cron_expression=schedule.cron,
                         time_zone=schedule.time_zone, task=schedule.task, options=schedule.options,
                         max_risk=schedule.max_risk, enabled=enabled, schedule_id=schedule.pk,
                         **schedule.follow_up_options())


def schedule_delete(*, user: AbstractBaseUser, schedule_id: Any) -> None:
    selectors.schedule_for_user(user, schedule_id).delete()


def schedule_run_now(*, user: AbstractBaseUser, schedule_id: Any) -> ScheduleRun:
    """Fire the schedule once now, as it would fire by itself; its times go on as before."""
    schedule = selectors.schedule_for_user(user, schedule_id)
    now = clock.now()
    with transaction.atomic():
        run = ScheduleRun.objects.create(schedule=schedule, due_at=now, fired_at=now, manual=True,
                                         fired_by=user.get_username())
        _start_job(schedule, run)
    return run


def schedule_preview(*, cron_expression: str, time_zone: str, count: int = 5) -> list[datetime]:
    """The next `count` due times, for a schedule not saved yet."""
    try:
        return cron.next_times(" ".join((cron_expression or "").split()), time_zone, clock.now(), count)
    except cron.CronInvalid as error:
        raise Invalid(str(error)) from None


def schedules_fire_due(*, owner: str, limit: int = 100) -> list[ScheduleRun]:
    """Fire every schedule whose time has come, each once for all the times it missed. Run by every
    executor's periodic tick: each schedule's due time is claimed by a compare-and-set on its
    `next_run_at` and a unique (schedule, due time) row, so exactly one executor fires it."""
    now = clock.now()
    due_ids = list(Schedule.objects.filter(enabled=True, next_run_at__lte=now)
                   .order_by("next_run_at").values_list("pk", flat=True)[:limit])
    fired = []
    for schedule_id in due_ids:
        try:
            run = _fire(schedule_id, owner=owner, now=now)
        except Exception:
            logger.exception("schedule %s: firing failed; it is tried again at the next tick", schedule_id)
            continue
        if run is not None:
            fired.append(run)
    return fired


def _fire(schedule_id: int, *, owner: str, now: datetime) -> ScheduleRun | None:
    with transaction.atomic():
        # PostgreSQL: another executor's claim in progress is skipped, not waited for. SQLite
        # takes the write lock at BEGIN (IMMEDIATE), so there only one claims at a time.
        schedule = (Schedule.objects.select_for_update(skip_locked=True, of=("self",)).select_related("user")
                    .filter(pk=schedule_id, enabled=True, next_run_at__lte=now).first())
        if schedule is None:
            return None
        try:
            firing = cron.due(schedule.cron, schedule.time_zone, schedule.next_run_at, now)
        except cron.CronInvalid as error:
            Schedule.objects.filter(pk=schedule.pk).update(enabled=False, next_run_at=None)
            logger.warning("schedule %s disabled: %s", schedule.pk, error)
            return None
        if firing is None:
            return None
        claimed = (Schedule.objects.filter(pk=schedule.pk, next_run_at=schedule.next_run_at)
                   .update(next_run_at=firing.following))
        if not claimed:
            return None
        late = firing.missed > 1 or (now - firing.at) > timedelta(seconds=settings.CORTEX_SCHEDULE_LATE_SECONDS)
        try:
            with transaction.atomic():
                run = ScheduleRun.objects.create(schedule=schedule, due_at=firing.at, fired_at=now, late=late,
                                                 missed=firing.missed, fired_by=owner)
        except IntegrityError:
            return None  # this due time has fired already
        _start_job(schedule, run)
    return run


def _start_job(schedule: Schedule, run: ScheduleRun) -> None:
    """The run's job, or why there is none (recorded on the run: a schedule goes on firing)."""
    when = run.due_at.astimezone(cron.zone(schedule.time_zone))
    detail = {"schedule": schedule.pk, "name": schedule.name, "due_at": when.isoformat(), "late": run.late,
              "missed": run.missed, "manual": run.manual}
    try:
        with transaction.atomic():
            run.job = _submit(user=schedule.user, task=cron.task_for(schedule.task, when), options=schedule.options,
                              origin=JobOrigin.SCHEDULE, max_risk=schedule.max_risk, detail=detail,
                              follow_up=schedule.follow_up_options())
    except services.ServiceError as error:
        run.error = error.message[:2000]
    run.save(update_fields=["job", "error"])


# --- Hooks -------------------------------------------------------------------------------------

def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _check_template(task_template: str) -> str:
    task_template = (task_template or "").strip()
    if not task_template:
        raise Invalid("a hook needs a task template")
    if len(task_template) > MAX_TASK_TEMPLATE_CHARS:
        raise services.TooLarge(f"the task template is at most {MAX_TASK_TEMPLATE_CHARS} characters")
    return task_template


def _check_limits(max_body_bytes: int | None, max_per_minute: int | None) -> tuple[int, int]:
    body = settings.CORTEX_HOOK_MAX_BYTES if max_body_bytes is None else max_body_bytes
    rate = settings.CORTEX_HOOK_PER_MINUTE if max_per_minute is None else max_per_minute
    if not 1024 <= body <= 10_000_000:
        raise Invalid("the body limit must be between 1024 bytes and 10 MB")
    if not 1 <= rate <= 10_000:
        raise Invalid("the rate limit must be between 1 and 10000 deliveries a minute")
    return body, rate


def hook_create(*, user: AbstractBaseUser, slug: str, task_template: str,
                options: Mapping[str, Any] | None = None, max_risk: str = "low",
                max_body_bytes: int | None = None, max_per_minute: int | None = None,
                callback_url: str | None = None, callback_on_confirmation: bool = False,
                confirmation_ttl: int | None = None) -> tuple[Hook, str]:
    """Create a hook; its secret is returned once (stored encrypted, never shown again)."""
    slug = (slug or "").strip()
    if not services.SLUG.fullmatch(slug):
        raise Invalid("a hook's slug is a short name of letters, digits, - or _")
    task_template = _check_template(task_template)
    _check_risk(max_risk)
    body, rate = _check_limits(max_body_bytes, max_per_minute)
    cleaned = options_clean(user=user, options=options)
    follow_up = follow_up_clean(user=user, callback_url=callback_url,
                                callback_on_confirmation=callback_on_confirmation, confirmation_ttl=confirmation_ttl)
    raw = _new_secret()
    hook = Hook(user=user, slug=slug, secret_encrypted=crypto.encrypt(raw), task_template=task_template,
                options=cleaned, max_risk=max_risk, max_body_bytes=body, max_per_minute=rate)
    _keep_follow_up(hook, follow_up)
    try:
        with transaction.atomic():
            hook.save(force_insert=True)
    except IntegrityError:
        raise Invalid(f"the slug {slug!r} is taken; choose another") from None
    return hook, raw


def hook_update(*, user: AbstractBaseUser, slug: str, task_template: str, options: Mapping[str, Any] | None,
                max_risk: str, enabled: bool, max_body_bytes: int | None = None,
                max_per_minute: int | None = None, callback_url: str | None = None,
                callback_on_confirmation: bool = False, confirmation_ttl: int | None = None) -> Hook:
    """Replace a hook's settings (its slug and secret stay as they are)."""
    hook = selectors.hook_for_user(user, slug)
    hook.task_template = _check_template(task_template)
    _check_risk(max_risk)
    hook.max_body_bytes, hook.max_per_minute = _check_limits(max_body_bytes, max_per_minute)
    hook.options, hook.max_risk, hook.enabled = options_clean(user=user, options=options), max_risk, enabled
    _keep_follow_up(hook, follow_up_clean(user=user, callback_url=callback_url,
                                          callback_on_confirmation=callback_on_confirmation,
                                          confirmation_ttl=confirmation_ttl))
    hook.save()
    return hook


def hook_rotate_secret(*, user: AbstractBaseUser, slug: str) -> tuple[Hook, str]:
    """A new secret, returned once; the old one stops working at once."""
    hook = selectors.hook_for_user(user, slug)
    raw = _new_secret()
    hook.secret_encrypted = crypto.encrypt(raw)
    hook.save(update_fields=["secret_encrypted", "updated_at"])
    return hook, raw


def hook_delete(*, user: AbstractBaseUser, slug: str) -> None:
    selectors.hook_for_user(user, slug).delete()


@dataclass(frozen=True)
class Received:
    """What a delivery came to: the HTTP status to answer, the job (new, or the first one for a
    repeated delivery id) and the delivery as recorded."""

    status: int
    detail: str
    delivery: HookDelivery | None = None
    job: Job | None = None
    retry_after: int | None = None


def _record(hook: Hook, verdict: str, status: int, detail: str, *, delivery_id: str = "", valid: bool = False,
            size: int = 0, job: Job | None = None) -> HookDelivery:
    delivery = HookDelivery.objects.create(hook=hook, delivery_id=delivery_id, signature_valid=valid,
                                           verdict=verdict, status_code=status, body_bytes=size, job=job,
                                           detail=detail[:500])
    if verdict != HookDelivery.Verdict.ACCEPTED:
        unaccepted = hook.deliveries.exclude(verdict=HookDelivery.Verdict.ACCEPTED).order_by("-id")
        oldest_kept = unaccepted.values_list("id", flat=True)[KEEP_UNACCEPTED_DELIVERIES - 1:KEEP_UNACCEPTED_DELIVERIES]
        if oldest_kept:
            unaccepted.filter(id__lt=oldest_kept[0]).delete()
    return delivery


def hook_receive(*, slug: str, headers: Mapping[str, str], content_length: int | None,
                 read: Callable[[int], bytes], content_type: str = "") -> Received:
    """One POST to /hooks/<slug>. The body is read only up to the hook's limit; the signature is
    checked before anything in the body is looked at; only then the delivery id (a repeat answers
    with the first job), the rate limit, and the job."""
    hook = Hook.objects.select_related("user").filter(slug=slug).first()
    if hook is None:
        raise NotFound("no such hook")
    if content_length is not None and content_length > hook.max_body_bytes:
        message = f"the body is larger than this hook's limit of {hook.max_body_bytes} bytes"
        return Received(413, message, _record(hook, HookDelivery.Verdict.TOO_LARGE, 413, message, size=content_length))
    body = read(hook.max_body_bytes + 1)
    if len(body) > hook.max_body_bytes:
        message = f"the body is larger than this hook's limit of {hook.max_body_bytes} bytes"
        return Received(413, message, _record(hook, HookDelivery.Verdict.TOO_LARGE, 413, message, size=len(body)))
    delivery_id = inbound.delivery_id(headers)
    try:
        secret = crypto.decrypt(hook.secret_encrypted)
    except crypto.SecretUnreadable:
        secret = ""  # no signature can match a secret nobody can read
    if not secret or not inbound.signature_valid(secret, body, headers):
        message = "the signature is missing or does not match"
        return Received(401, message, _record(hook, HookDelivery.Verdict.BAD_SIGNATURE, 401, message,
                                              delivery_id=delivery_id, size=len(body)))
    return _accept(hook, body, delivery_id, content_type)


def _accept(hook: Hook, body: bytes, delivery_id: str, content_type: str) -> Received:
    signed = {"delivery_id": delivery_id, "valid": True, "size": len(body)}
    with transaction.atomic():
        # One delivery of a hook at a time: its duplicate check and rate limit are exact.
        hook = Hook.objects.select_for_update(of=("self",)).select_related("user").get(pk=hook.pk)
        if not hook.enabled:
            message = "this hook is disabled"
            return Received(403, message, _record(hook, HookDelivery.Verdict.DISABLED, 403, message, **signed))
        if delivery_id:
            first = (hook.deliveries.filter(delivery_id=delivery_id, verdict=HookDelivery.Verdict.ACCEPTED)
                     .select_related("job").first())
            if first is not None:
                message = "this delivery was received before; no new job"
                return Received(200, message, _record(hook, HookDelivery.Verdict.DUPLICATE, 200, message,
                                                      job=first.job, **signed), job=first.job)
        since = timezone.now() - timedelta(minutes=1)
        recent = hook.deliveries.filter(verdict=HookDelivery.Verdict.ACCEPTED, received_at__gte=since).count()
        if recent >= hook.max_per_minute:
            message = f"this hook takes at most {hook.max_per_minute} deliveries a minute"
            return Received(429, message, _record(hook, HookDelivery.Verdict.RATE_LIMITED, 429, message, **signed),
                            retry_after=60)
        marker = context.new_data_marker()
        payload = inbound.parse(_form_payload(body) if _is_form(content_type) else body)
        task = inbound.render(hook.task_template, payload, lambda text: context.data_block(text, marker))
        detail = {"hook": hook.pk, "slug": hook.slug, "delivery_id": delivery_id}
        try:
            with transaction.atomic():
                job = _submit(user=hook.user, task=task, options=hook.options, origin=JobOrigin.HOOK,
                              max_risk=hook.max_risk, detail=detail, follow_up=hook.follow_up_options(),
                              data_marker=marker if inbound.placeholders(hook.task_template) else "")
        except services.ServiceError as error:
            status = 413 if error.status == 413 else 422
            return Received(status, error.message, _record(hook, HookDelivery.Verdict.REFUSED, status, error.message,
                                                           **signed))
        delivery = _record(hook, HookDelivery.Verdict.ACCEPTED, 202, "job queued", job=job, **signed)
    return Received(202, "job queued", delivery, job)


def _is_form(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def _form_payload(body: bytes) -> bytes:
    """GitHub's form-encoded deliveries carry the JSON in a `payload` field."""
    fields = parse_qs(body.decode("utf-8", "replace"))
    return fields["payload"][-1].encode() if "payload" in fields else body
