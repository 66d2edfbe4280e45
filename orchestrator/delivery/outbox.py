"""What a job's transition leaves to be delivered, written in the transition's own transaction.

`job_event` is called by `transitions` on a job the caller's transaction holds: it writes a
`Delivery` row for the job's callback (when the job was submitted with one and wants this event)
and one for each notification channel the person chose for it, and a `ConfirmationDeadline` for
each call that starts waiting when a time limit applies. Nothing is sent here: the executor's
periodic tick sends (see `dispatch`), so a slow receiver never holds a job or a request up.

This module builds on the models only; it must not import the services or the engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.urls import reverse
from django.utils import timezone

from ..job_json import job_payload
from ..models import Job, ToolCall, ToolPolicy
from ..rows import instances as rows_of
from .models import ConfirmationDeadline, Delivery, Event, NotificationSettings

# Callback events: the three a person may be notified of, and a cancelled job.
CANCELLED = "job.cancelled"
CALLBACK_ENDS = (Event.FINISHED.value, Event.FAILED.value, CANCELLED)
SHORT_ARGS = 160
SHORT_TEXT = 200


def job_event(job: Job, event: str, *, awaiting: Sequence[ToolCall] = ()) -> None:
    """Record what `event` (an `Event` value, or "job.cancelled") owes to the job's callback and
    to its owner's notification channels; `awaiting`: the calls a paused job waits on."""
    now = timezone.now()
    rows: list[Delivery] = []
    callback = job.options.get("callback_url")
    if callback and (event in CALLBACK_ENDS or (event == Event.AWAITING_CONFIRMATION
                                                and job.options.get("callback_on_confirmation"))):
        rows.append(Delivery(user_id=job.user_id, job=job, channel=Delivery.Channel.CALLBACK, event=event,
                             target=callback, body=_json(job_payload(job)), next_attempt_at=now))
    # As `.filter(user_id=…).first()` reads it, through a statement built once.
    chosen = next(iter(rows_of(NotificationSettings, {"user": job.user_id}, order_by=("pk",), limit=1)), None)
    if chosen is not None and event in chosen.events:
        rows.extend(_notifications(job, event, chosen, awaiting, now))
    if rows:
        Delivery.objects.bulk_create(rows)
    if awaiting:
        _deadlines(job, awaiting, now)


def _json(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))


# --- Notifications -------------------------------------------------------------------------------

def public_url(path: str) -> str:
    return settings.CORTEX_PUBLIC_URL + path


def confirmation_link(job: Job, call: ToolCall) -> str:
    """Straight to the call's card on the job page, where it is approved or denied."""
    return public_url(reverse("job-detail", args=[job.id])) + f"#call-{call.pk}"


def short(value: Any, limit: int) -> str:
    """`value` (text, or JSON of anything else) on one line, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def message_for(job: Job, event: str, awaiting: Sequence[ToolCall]) -> tuple[str, str, str]:
    """(subject, text, link) of a notification: what happened, what waits (tool, risk, the
    arguments in short) and where to act. Never a secret, never a tool's output."""
    task = short(job.task, 80)
    job_link = public_url(reverse("job-detail", args=[job.id]))
    if event == Event.AWAITING_CONFIRMATION:
        lines = [f"A job waits for your decision: {task}", ""]
        for call in awaiting:
            lines.append(f"• {call.name} ({call.risk or 'unknown'} risk): {short(call.args, SHORT_ARGS)}")
            lines.append(f"  Approve or deny: {confirmation_link(job, call)}")
        first = awaiting[0] if awaiting else None
        link = confirmation_link(job, first) if first else job_link
        names = ", ".join(sorted({call.name for call in awaiting})) or "a tool call"
        return f"Confirmation waiting: {names}", "\n".join(lines), link
    if event == Event.FAILED:
        return (f"Job failed: {task}", f"The job “{task}” failed: {short(job.error or 'no reason given', SHORT_TEXT)}"
                f"\n\n{job_link}", job_link)
    return f"Job finished: {task}", f"The job “{task}” finished.\n\n{job_link}", job_link


def _notifications(job: Job, event: str, chosen: NotificationSettings, awaiting: Sequence[ToolCall],
                   now: Any) -> list[Delivery]:
    subject, text, link = message_for(job, event, awaiting)
    common = {"user_id": job.user_id, "job": job, "event": event, "subject": subject, "next_attempt_at": now}
    rows = []
    if chosen.email_enabled and chosen.email_address:
        rows.append(Delivery(channel=Delivery.Channel.EMAIL, target=chosen.email_address, body=text, **common))
    if chosen.ntfy_enabled and chosen.ntfy_server and chosen.ntfy_topic:
        target = f"{chosen.ntfy_server.rstrip('/')}/{chosen.ntfy_topic}"
        rows.append(Delivery(channel=Delivery.Channel.NTFY, target=target, body=_json(
            {"title": subject, "message": text, "click": link}), **common))
    if chosen.webhook_enabled and chosen.webhook_url:
        rows.append(Delivery(channel=Delivery.Channel.WEBHOOK, target=chosen.webhook_url, body=_json(
            {"event": event, "job_id": job.id, "title": subject, "message": text, "link": link,
             "tools": [{"id": call.call_id, "name": call.name, "risk": call.risk,
                        "args": short(call.args, SHORT_ARGS), "link": confirmation_link(job, call)}
                       for call in awaiting]}), **common))
    return rows


# --- Deadlines -----------------------------------------------------------------------------------

def ttl_for(*, tool: str, overrides: dict[str, Any], job_ttl: Any) -> int | None:
    """Seconds a call to `tool` may wait for a person, or None for no limit: the person's
    override for the tool, else the site's default; a job that brings its own limit (a schedule's
    or a hook's) is held to the shorter of the two."""
    ttl = overrides.get(tool) or settings.CORTEX_CONFIRMATION_TTL
    if isinstance(job_ttl, int) and job_ttl > 0:
        ttl = min(ttl, job_ttl) if ttl else job_ttl
    return int(ttl) if ttl else None


def _deadlines(job: Job, awaiting: Sequence[ToolCall], now: Any) -> None:
    overrides = (ToolPolicy.objects.filter(user_id=job.user_id).values_list("confirmation_ttls", flat=True)
                 .first() or {})
    rows = []
    for call in awaiting:
        ttl = ttl_for(tool=call.name, overrides=overrides, job_ttl=job.options.get("confirmation_ttl"))
        if ttl:
            rows.append(ConfirmationDeadline(call=call, job=job, ttl_seconds=ttl,
                                             expires_at=now + timedelta(seconds=ttl)))
    if rows:
        # A call asked again (its run was interrupted) gets a fresh deadline.
        ConfirmationDeadline.objects.bulk_create(rows, update_conflicts=True, unique_fields=["call"],
                                                 update_fields=["ttl_seconds", "expires_at", "fired_at", "expired"])
