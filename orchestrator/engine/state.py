"""The engine's writes: claiming jobs, deciding the next step, recording what happened.

All of these are synchronous, short transactions. Each function that changes a job takes the
executor's `owner` id and acts only while that owner still holds the job's lease (else
`LeaseLost`), so an executor that was presumed dead can never overwrite its successor's work.
"""

from __future__ import annotations

import json
import platform
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import events, selectors
from ..models import Job, JobStatus, Message, Session, ToolCall, ToolCallStatus
from ..policy import offered, verdict
from ..providers.base import ModelResponse
from ..services import close_open_calls, finished_event
from ..tools.registry import ArgumentsInvalid, registry

# A job whose executor died this many times in a row is poison: stop retrying it.
MAX_CLAIMS = 20


class LeaseLost(Exception):
    pass


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class RunTool:
    call_pk: int
    call_id: str
    name: str
    args: dict[str, Any]
    user_id: int
    username: str


@dataclass(frozen=True)
class CallModel:
    model: str  # provider:model
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    final_only: bool = False
    round: int = 0


Action = Stop | RunTool | CallModel


def jobs_claim(*, owner: str, limit: int) -> list[str]:
    """Lease up to `limit` runnable jobs: queued ones, and running ones whose holder went away."""
    if limit <= 0:
        return []
    now = timezone.now()
    claimable = (Q(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                 & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
                 & (Q(not_before__isnull=True) | Q(not_before__lte=now)))
    with transaction.atomic():
        ids = list(Job.objects.select_for_update(skip_locked=True).filter(claimable)
                   .order_by("created_at").values_list("id", flat=True)[:limit])
        if ids:
            Job.objects.filter(id__in=ids).filter(claimable).update(
                lease_owner=owner, lease_expires_at=now + timedelta(seconds=settings.CORTEX_LEASE_SECONDS),
                claims=F("claims") + 1)
    return [str(job_id) for job_id in ids]


def jobs_heartbeat(*, owner: str, job_ids: list[str]) -> set[str]:
    """Extend the leases still held; return the ids that are no longer ours or no longer running."""
    if not job_ids:
        return set()
    expires = timezone.now() + timedelta(seconds=settings.CORTEX_LEASE_SECONDS)
    Job.objects.filter(_held(owner, job_ids)).update(lease_expires_at=expires)
    return jobs_lost(owner=owner, job_ids=job_ids)


def jobs_lost(*, owner: str, job_ids: list[str]) -> set[str]:
    """The held jobs that were cancelled or taken over since we claimed them."""
    if not job_ids:
        return set()
    still = Job.objects.filter(_held(owner, job_ids)).values_list("id", flat=True)
    return set(job_ids) - {str(job_id) for job_id in still}


def _held(owner: str, job_ids: list[str]) -> Q:
    return Q(id__in=job_ids, lease_owner=owner, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])


def job_release(*, owner: str, job_id: str) -> None:
    Job.objects.filter(id=job_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


def _lock(owner: str, job_id: str) -> Job:
    job = Job.objects.select_for_update().select_related("user").get(pk=job_id)
    if job.lease_owner != owner or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise LeaseLost(job_id)
    return job


def _release(job: Job) -> None:
    job.lease_owner = ""
    job.lease_expires_at = None


def job_fail(*, owner: str, job_id: str, error: str) -> None:
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except LeaseLost:
            return
        _fail(job, error)
        job.save()


def _fail(job: Job, error: str) -> None:
    close_open_calls(job, ToolCallStatus.CANCELLED, "The job failed before this call ran.")
    job.status = JobStatus.ERROR
    job.error = error[:5000]
    job.completed_at = timezone.now()
    _release(job)
    events.append(job, ("job.status", {"status": JobStatus.ERROR, "error": job.error}))


def _round_results(job: Job, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool-result messages for the round the transcript's last assistant turn opened."""
    last = job.transcript[-1] if job.transcript else None
    if not last or last.get("role") != "assistant" or not last.get("tool_calls"):
        return []
    return [{"role": "tool", "tool_call_id": call.call_id, "name": call.name,
             "content": call.result or "", "is_error": call.is_error}
            for call in calls if call.round == job.rounds]


def next_action(*, owner: str, job_id: str) -> Action:
    """Decide the job's next step, taking the first ready tool call as started if there is one."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return Stop("lease lost")
        seq_before = job.last_seq
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.RUNNING
            job.started_at = timezone.now()
            events.append(job, ("job.status", {"status": JobStatus.RUNNING, "executor": owner}))
        if job.claims > MAX_CLAIMS:
            _fail(job, f"gave up after {MAX_CLAIMS} executors stopped while running this job")
            job.save()
            return Stop("poison")

        calls = list(job.tool_calls.filter(round=job.rounds).order_by("position"))
        _recover_interrupted(job, calls)

        ready = next((call for call in calls if call.status == ToolCallStatus.READY), None)
        if ready is not None:
            ready.status = ToolCallStatus.RUNNING
            ready.started_at = timezone.now()
            ready.save(update_fields=["status", "started_at"])
            events.append(job, ("tool.started", {"id": ready.call_id, "name": ready.name, "args": ready.args}))
            job.save()
            return RunTool(ready.pk, ready.call_id, ready.name, ready.args or {}, job.user_id,
                           job.user.get_username())

        awaiting = [call for call in calls if call.status == ToolCallStatus.AWAITING]
        if awaiting:
            job.status = JobStatus.AWAITING_CONFIRMATION
            _release(job)
            events.append(job, ("job.status", {"status": JobStatus.AWAITING_CONFIRMATION,
                                               "tools": [call.as_pending() for call in awaiting]}))
            job.save()
            return Stop("awaiting confirmation")

        if job.last_seq != seq_before:  # every change above appended an event
            job.save()
        messages = job.transcript + _round_results(job, calls)
        final_only = job.rounds >= settings.CORTEX_MAX_ROUNDS
        tools = [] if final_only else _offered_tools(job)
        if final_only:
            messages = messages + [{"role": "user", "content": (
                "The tool budget for this task is used up. Answer now with what you have.")}]
        return CallModel(model=job.orchestrator_model, system=job.system_prompt, messages=messages,
                         tools=tools, final_only=final_only, round=job.rounds + 1)


def _offered_tools(job: Job) -> list[dict[str, Any]]:
    policy = selectors.risk_policy_for_user(job.user)
    roles = selectors.roles_for_user(job.user)
    return [tool.spec() for tool in registry if offered(tool, policy, roles)[0]]


def _recover_interrupted(job: Job, calls: list[ToolCall]) -> None:
    """Calls marked started but never finished belong to an executor that died mid-run."""
    for call in calls:
        if call.status != ToolCallStatus.RUNNING:
            continue
        tool = registry.get(call.name)
        if tool is not None and tool.idempotent:
            call.status = ToolCallStatus.READY
            call.save(update_fields=["status"])
            events.append(job, ("tool.retrying", {"id": call.call_id, "name": call.name,
                                                  "reason": "interrupted; safe to run again"}))
        elif call.verdict == ToolCall.Verdict.ASK:
            # A person approved it once; whether it took effect is unknown, so a person decides again.
            call.status = ToolCallStatus.AWAITING
            call.interrupted = True
            call.save(update_fields=["status", "interrupted"])
            events.append(job, ("tool.interrupted", {"id": call.call_id, "name": call.name,
                                                     "to": "person"}))
        else:
            call.status = ToolCallStatus.INTERRUPTED
            call.interrupted = True
            call.is_error = True
            call.finished_at = timezone.now()
            call.result = ("This call was interrupted by a restart. It may or may not have taken effect, "
                           "and it was not run again because the tool is not safe to repeat.")
            call.save(update_fields=["status", "interrupted", "is_error", "finished_at", "result"])
            events.append(job, ("tool.finished", finished_event(call)))


def record_turn(*, owner: str, job_id: str, action: CallModel, response: ModelResponse,
                backend: str, backend_label: str) -> None:
    """Persist a model's answer before anything acts on it: the transcript, the calls, the verdicts."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        calls = list(job.tool_calls.filter(round=job.rounds).order_by("position"))
        _normalise_call_ids(response, job.rounds + 1)
        job.transcript = job.transcript + _round_results(job, calls) + [response.as_message()]
        job.usage = _add_usage(job.usage, response)
        events.append(job, ("model.turn", {
            "round": action.round, "model": action.model, "text": response.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
            "usage": {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens},
        }))
        if not response.tool_calls:
            if not response.text.strip():
                _fail(job, f"the model ({backend_label}) returned an empty answer")
            else:
                _complete(job, response=response.text, backend=backend, backend_label=backend_label,
                          summary=response.text)
        elif action.final_only:
            _fail(job, f"no final answer after {settings.CORTEX_MAX_ROUNDS} rounds of tool calls")
        else:
            job.rounds += 1
            _record_calls(job, response)
        job.save()


def _normalise_call_ids(response: ModelResponse, round_number: int) -> None:
    """Some local models omit call ids or repeat them; every call needs its own for its result."""
    seen: set[str] = set()
    for position, call in enumerate(response.tool_calls):
        if not call.id or call.id in seen:
            call.id = f"call_{round_number}_{position}_{uuid.uuid4().hex[:8]}"
        seen.add(call.id)


def _add_usage(usage: dict[str, int], response: ModelResponse) -> dict[str, int]:
    return {
        "input_tokens": usage.get("input_tokens", 0) + response.usage.input_tokens,
        "output_tokens": usage.get("output_tokens", 0) + response.usage.output_tokens,
        "model_calls": usage.get("model_calls", 0) + 1,
    }


def _record_calls(job: Job, response: ModelResponse) -> None:
    policy = selectors.risk_policy_for_user(job.user)
    roles = selectors.roles_for_user(job.user)
    rows = []
    for position, model_call in enumerate(response.tool_calls):
        tool = registry.get(model_call.name)
        call = ToolCall(job=job, call_id=model_call.id, round=job.rounds, position=position,
                        name=model_call.name[:200], raw_arguments=model_call.arguments,
                        risk=tool.risk if tool else "")
        problem = None
        try:
            parsed = json.loads(model_call.arguments) if model_call.arguments.strip() else {}
        except json.JSONDecodeError as error:
            parsed, problem = None, f"the arguments are not valid JSON ({error.msg} at position {error.pos})"
        call.args = parsed
        if tool is None:
            problem = (f"there is no tool named {model_call.name!r}. "
                       f"Available tools: {', '.join(registry.names())}")
        elif problem is None:
            try:
                tool.validate(parsed)
            except ArgumentsInvalid as error:
                problem = str(error)
        if problem is not None:
            call.verdict, call.status = ToolCall.Verdict.REFUSE, ToolCallStatus.FAILED
            call.result, call.is_error, call.finished_at = f"Error: {problem}", True, timezone.now()
        else:
            decision, because = verdict(tool, policy, roles, job.approved_tools)
            call.verdict = decision
            call.reason = because
            if decision == "refuse":
                call.status, call.is_error, call.finished_at = ToolCallStatus.REFUSED, True, timezone.now()
                call.result = f"Error: {because}."
            else:
                call.status = ToolCallStatus.READY if decision == "run" else ToolCallStatus.AWAITING
        rows.append(call)
    ToolCall.objects.bulk_create(rows)
    events.append(job, *[("tool.call", {"id": c.call_id, "name": c.name, "args": c.args, "risk": c.risk,
                                        "verdict": c.verdict, "status": c.status, "reason": c.reason,
                                        "result": c.result}) for c in rows])


def finish_call(*, owner: str, job_id: str, call_pk: int, result: str, is_error: bool) -> None:
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        call = ToolCall.objects.get(pk=call_pk)
        if call.status != ToolCallStatus.RUNNING:
            return
        call.status = ToolCallStatus.FAILED if is_error else ToolCallStatus.SUCCEEDED
        call.result = result
        call.is_error = is_error
        call.finished_at = timezone.now()
        call.save(update_fields=["status", "result", "is_error", "finished_at"])
        events.append(job, ("tool.finished", finished_event(call)))
        job.save(update_fields=["last_seq", "updated_at"])


def record_retry(*, owner: str, job_id: str, attempt: int, wait: float, error: str) -> None:
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        events.append(job, ("model.retry", {"attempt": attempt, "wait_seconds": round(wait, 2), "error": error}))
        job.save(update_fields=["last_seq", "updated_at"])


def _complete(job: Job, *, response: str, backend: str, backend_label: str, summary: str | None) -> None:
    """Store the answer and append the turn to the job's session."""
    now = timezone.now()
    off_record = bool(job.options.get("off_record"))
    job.status = JobStatus.COMPLETE
    job.response = response
    job.gemini_summary = summary
    job.backend = backend
    job.backend_label = backend_label
    job.host = platform.node()
    job.completed_at = now
    _release(job)
    if job.session_id:
        Message.objects.bulk_create([
            Message(session_id=job.session_id, job=job, role=Message.Role.USER, content=job.task,
                    off_record=off_record),
            Message(session_id=job.session_id, job=job, role=Message.Role.ASSISTANT, content=response,
                    backend=backend, backend_label=backend_label, host=job.host, off_record=off_record),
        ])
        Session.objects.filter(pk=job.session_id).update(updated_at=now)
    events.append(job, ("job.status", {"status": JobStatus.COMPLETE, "response": response,
                                       "backend": backend, "backend_label": backend_label}))
