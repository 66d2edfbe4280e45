"""A job's status transitions, in one place.

    queued → running ⇄ awaiting_confirmation → complete | error | cancelled

Each transition acts on a job the caller's transaction has locked: it sets the status and the
fields that go with it (start or completion time, error, the executor's lease), closes the calls
the job leaves open, and appends the `job.status` event, which names the executor when one makes
the transition. The caller saves the job; a caller that saves only some fields saves at least
`FIELDS`.

A transition that ends a job or makes it wait also writes what it owes to the job's callback and
its owner's notification channels, and the deadlines of calls that may wait only so long
(`delivery.outbox`), in the same transaction: the event and its outbox rows commit together.

The lease functions act on rows: claiming runnable jobs for an executor, renewing its leases and
releasing them, unfinished, to any executor.

Nothing here imports the services or the engine: both build on this module.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import events, rows
from .delivery import outbox
from .models import OPEN_CALL_STATUSES, Job, JobStatus, Message, Session, ToolCall, ToolCallStatus

# Every field a transition may change on the job.
FIELDS = ("status", "error", "started_at", "completed_at", "response", "orchestrator_summary", "backend",
          "backend_label", "host", "lease_owner", "lease_expires_at", "last_seq", "updated_at")


def queue(job: Job) -> None:
    """→ queued: a job just saved waits for an executor."""
    events.append(job, ("job.status", {"status": JobStatus.QUEUED, "task": job.task}))
    events.wake_executors()


def start(job: Job, *, owner: str) -> None:
    """queued → running: an executor takes the job up for the first time."""
    job.status = JobStatus.RUNNING
    job.started_at = timezone.now()
    events.append(job, ("job.status", {"status": JobStatus.RUNNING, "executor": owner}))


def pause(job: Job, *, awaiting: Sequence[ToolCall]) -> None:
    """running → awaiting_confirmation: the executor lets go until a person decides on `awaiting`."""
    job.status = JobStatus.AWAITING_CONFIRMATION
    executor = _drop_lease(job)
    events.append(job, ("job.status", {"status": JobStatus.AWAITING_CONFIRMATION, "executor": executor,
                                       "tools": [call.as_pending() for call in awaiting]}))
    outbox.job_event(job, outbox.Event.AWAITING_CONFIRMATION, awaiting=awaiting)


def resume(job: Job) -> None:
    """awaiting_confirmation → running: no call waits for a person any more; any executor may go on."""
    job.status = JobStatus.RUNNING
    _drop_lease(job)
    events.append(job, ("job.status", {"status": JobStatus.RUNNING}))
    events.wake_executors()


def complete(job: Job, *, response: str, backend: str, backend_label: str, summary: str | None) -> None:
    """running → complete: store the answer and append the turn to the job's session."""
    now = timezone.now()
    off_record = bool(job.options.get("off_record"))
    job.status = JobStatus.COMPLETE
    job.response = response
    job.orchestrator_summary = summary
    job.backend = backend
    job.backend_label = backend_label
    job.host = platform.node()
    job.completed_at = now
    executor = _drop_lease(job)
    if job.session_id:
        # As `Message.objects.bulk_create` and `Session.objects.filter(pk=…).update(updated_at=now)`
        # write them, through statements built once.
        rows.insert([
            Message(session_id=job.session_id, job=job, role=Message.Role.USER, content=job.task,
                    off_record=off_record),
            Message(session_id=job.session_id, job=job, role=Message.Role.ASSISTANT, content=response,
                    backend=backend, backend_label=backend_label, host=job.host, off_record=off_record),
        ])
        rows.update_values(Session, job.session_id, {"updated_at": now})
    events.append(job, ("job.status", {"status": JobStatus.COMPLETE, "response": response, "backend": backend,
                                       "backend_label": backend_label, "executor": executor}))
    outbox.job_event(job, outbox.Event.FINISHED)


def fail(job: Job, error: str) -> None:
    """queued or running → error: the calls still open are cancelled."""
    close_open_calls(job, ToolCallStatus.CANCELLED, "The job failed before this call ran.")
    job.status = JobStatus.ERROR
    job.error = error[:5000]
    job.completed_at = timezone.now()
    executor = _drop_lease(job)
    events.append(job, ("job.status", {"status": JobStatus.ERROR, "error": job.error, "executor": executor}))
    outbox.job_event(job, outbox.Event.FAILED)


def cancel(job: Job, *, by: str) -> None:
    """An active job → cancelled: the calls still open are cancelled, and the executor driving the
    job, wherever it runs, is told to stop."""
    now = timezone.now()
    close_open_calls(job, ToolCallStatus.CANCELLED, "The job was cancelled before this call finished.")
    job.status = JobStatus.CANCELLED
    job.completed_at = now
    job.error = f"cancelled by {by}"
    _drop_lease(job)
    events.append(job, ("job.status", {"status": JobStatus.CANCELLED, "by": by}))
    outbox.job_event(job, outbox.CANCELLED)
    events.wake_executors(cancel=str(job.id))


def _drop_lease(job: Job) -> str:
    """Returns the executor that held the job ("" for none)."""
    holder = job.lease_owner
    job.lease_owner = ""
    job.lease_expires_at = None
    return holder


# --- Leases --------------------------------------------------------------------------------------

def claimable(now: datetime) -> Q:
    """Runnable jobs no executor holds: queued ones, and running ones whose holder went away."""
    return (Q(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
            & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
            & (Q(not_before__isnull=True) | Q(not_before__lte=now)))


def claimable_rows(now: datetime) -> dict[str, Any]:
    """`claimable(now)` as `rows.select` matches it."""
    return {"status": (JobStatus.QUEUED, JobStatus.RUNNING), "lease_expires_at": rows.Below(now, or_null=True),
            "not_before": rows.Below(now, or_equal=True, or_null=True)}


def claim(jobs: QuerySet[Job], *, owner: str, now: datetime) -> None:
    jobs.update(lease_owner=owner, lease_expires_at=_lease_end(now), claims=F("claims") + 1)


def renew(jobs: QuerySet[Job]) -> None:
    jobs.update(lease_expires_at=_lease_end(timezone.now()))


def hold(job: Job, *, owner: str) -> bool:
    """Lock a job for the caller's transaction if `owner` still holds it exactly as `job` was last
    saved: the same claim (`claims` counts them, so a lease lost and taken again does not match)
    and no event appended since (every transition appends one). Writes nothing else."""
    return rows.update(job, ["updated_at"], where={
        "lease_owner": owner, "claims": job.claims, "last_seq": job.last_seq,
        "status": (JobStatus.QUEUED, JobStatus.RUNNING)}) == 1


def release(jobs: QuerySet[Job]) -> None:
    """Hand the jobs back unfinished: any executor may claim them at once."""
    jobs.update(lease_owner="", lease_expires_at=None)


def _lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.CORTEX_LEASE_SECONDS)


# --- The calls a transition closes ---------------------------------------------------------------

def close_open_calls(job: Job, status: str, result: str) -> None:
    """Give every call without a result one, so the transcript stays well formed."""
    now = timezone.now()
    for call in job.tool_calls.filter(status__in=OPEN_CALL_STATUSES):
        call.status = status
        call.result = result
        call.is_error = True
        call.finished_at = now
        call.save(update_fields=["status", "result", "is_error", "finished_at"])
        events.append(job, ("tool.finished", finished_event(call)))


def finished_event(call: ToolCall) -> dict[str, Any]:
    result = call.result or ""
    return {"id": call.call_id, "name": call.name, "status": call.status, "is_error": call.is_error,
            "result": result[:4000], "truncated": len(result) > 4000, "duration_ms": call.duration_ms}
