"""Notifications shown by the browser itself, while a Cortex page is open: the person's stream
(`/ws/me/`) sends what happened to their jobs since the page opened, for the events they chose,
and the page hands each to the browser's Notification API (see cortex.js)."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.urls import reverse

from ..models import JobEvent, JobStatus
from .models import Event, NotificationSettings
from .outbox import SHORT_ARGS, short

# The job status each event is told by.
STATUSES = {JobStatus.AWAITING_CONFIRMATION: Event.AWAITING_CONFIRMATION, JobStatus.ERROR: Event.FAILED,
            JobStatus.COMPLETE: Event.FINISHED}
BATCH = 20


@dataclass(frozen=True)
class BrowserNotification:
    tag: str  # one per event: several open pages show it once
    title: str
    body: str
    url: str


def chosen_events(user: AbstractBaseUser) -> frozenset[str]:
    """The events the person wants shown in the browser; empty when they do not."""
    chosen = NotificationSettings.objects.filter(user=user, browser_enabled=True).values_list("events", flat=True)
    return frozenset(chosen.first() or ())


def latest_event_id(user: AbstractBaseUser) -> int:
    return JobEvent.objects.filter(job__user=user).order_by("-id").values_list("id", flat=True).first() or 0


def notifications_after(user: AbstractBaseUser, after: int, events: frozenset[str]) -> tuple[list[BrowserNotification], int]:
    """What to show for the person's job status events after `after`, and the new cursor."""
    found = list(JobEvent.objects.filter(job__user=user, id__gt=after, type="job.status")
                 .select_related("job").order_by("id")[:BATCH])
    shown = []
    for event in found:
        kind = STATUSES.get(event.data.get("status"))
        if kind is None or kind not in events:
            continue
        job = event.job
        url = reverse("job-detail", args=[job.id])
        task = short(job.task, 80)
        if kind == Event.AWAITING_CONFIRMATION:
            tools = event.data.get("tools") or []
            body = "\n".join(f"{tool.get('name')} ({tool.get('risk') or 'unknown'} risk): "
                             f"{short(tool.get('args'), SHORT_ARGS)}" for tool in tools)
            shown.append(BrowserNotification(f"cortex-{event.pk}", f"Waiting for you: {task}", body, url))
        elif kind == Event.FAILED:
            shown.append(BrowserNotification(f"cortex-{event.pk}", f"Job failed: {task}",
                                             short(event.data.get("error") or "", 200), url))
        else:
            shown.append(BrowserNotification(f"cortex-{event.pk}", f"Job finished: {task}", "", url))
    return shown, (found[-1].pk if found else after)
