"""Changes of a job's state that the services and the engine share.

Nothing here imports the services or the engine: both build on this module.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from . import events
from .models import OPEN_CALL_STATUSES, Job, ToolCall


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
