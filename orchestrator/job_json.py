"""A job as JSON: what `GET /orchestrate/<id>` answers, and what a completion callback sends."""

from __future__ import annotations

from typing import Any

from . import selectors
from .models import Job, JobStatus, ToolCallStatus


def job_payload(job: Job) -> dict[str, Any]:
    calls = list(job.tool_calls.all())
    pending = None
    if job.status == JobStatus.AWAITING_CONFIRMATION:
        awaiting = [call.as_pending() for call in calls if call.status == ToolCallStatus.AWAITING]
        last_text = next((m.get("content") for m in reversed(job.transcript) if m.get("role") == "assistant"), "")
        pending = {"tools": awaiting, "message": last_text or
                   f"{len(awaiting)} tool call(s) wait for your confirmation."}
    return {
        "job_id": job.id,
        "status": job.status,
        "outcome": selectors.outcome_of(job.status, sum(call.is_error for call in calls)) if job.is_finished else None,
        "task": job.task,
        "created_at": job.created_at.isoformat(),
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "session_id": str(job.session_id) if job.session_id else None,
        "response": job.response,
        "tool_calls": [call.as_summary() for call in calls] or None,
        "backend": job.backend or None,
        "backend_label": job.backend_label or None,
        "host": job.host or None,
        "gemini_summary": job.orchestrator_summary,  # named as in the original API
        "error": job.error,
        "pending_confirmation": pending,
        "origin": job.origin,
        "origin_detail": job.origin_detail or None,
    }
