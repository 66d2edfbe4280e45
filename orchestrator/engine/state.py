"""The engine's writes: claiming jobs, deciding the next step, recording what happened.

All of these are synchronous, short transactions. Each function that changes a job takes the
executor's `owner` id and acts only while that owner still holds the job's lease (else
`LeaseLost`), so an executor that was presumed dead can never overwrite its successor's work.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import events, selectors
from ..models import Job, JobStatus, Message, Session, ToolCall, ToolCallStatus
from ..policy import RiskPolicy, offered, verdict
from ..crypto import SecretUnreadable
from ..roles import RoleConfig, credentials
from ..providers.base import Finish, ModelResponse, Usage
from ..services import close_open_calls, finished_event
from ..tools.registry import ArgumentsInvalid, registry

# A job whose executor died this many times in a row is poison: stop retrying it.
MAX_CLAIMS = 20


class LeaseLost(Exception):
    """Another executor holds the job now (or it was cancelled): leave it alone."""


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
    off_record: bool = False


@dataclass(frozen=True)
class CallModel:
    model: str  # provider:model
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    final_only: bool = False
    round: int = 0
    purpose: str = "tool_loop"  # or "final": the chat-role model writes the answer
    timeout: float | None = None
    temperature: float | None = None
    max_tokens: int | None = None  # the role's output limit; None for the provider's default
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)


Action = Stop | RunTool | CallModel


@dataclass
class Memo:
    """What one drive of a job reads once: its owner's tool policy and roles.

    A policy change reaches a running job the next time an executor picks it up (after a
    confirmation, for instance), not in the middle of a drive."""

    policy: RiskPolicy | None = None
    roles: list[str] = field(default_factory=list)

    def policy_of(self, job: Job) -> tuple[RiskPolicy, list[str]]:
        if self.policy is None:
            self.policy = selectors.risk_policy_for_user(job.user)
            self.roles = selectors.roles_for_user(job.user)
        return self.policy, self.roles


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
    if not _held_by(job, owner):
        raise LeaseLost(job_id)
    return job


def _held_by(job: Job, owner: str) -> bool:
    return job.lease_owner == owner and job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


def _release(job: Job) -> None:
    job.lease_owner = ""
    job.lease_expires_at = None


def job_fail(*, owner: str, job_id: str, error: str, usage: Usage | None = None) -> None:
    """`usage`: a failed model call's, counted as one more call."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except LeaseLost:
            return
        if usage is not None:
            job.usage = _add_usage(job.usage, usage)
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


def next_action(*, owner: str, job_id: str, memo: Memo | None = None) -> Action:
    """Decide the job's next step, taking the first ready tool call as started if there is one."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return Stop("lease lost")
        return _next_action(job, owner, memo=memo or Memo())


def _next_action(job: Job, owner: str, calls: list[ToolCall] | None = None, *, memo: Memo) -> Action:
    """`next_action` on a job the caller's transaction has locked and holds the lease of.

    `calls`: the calls of the job's current round, when the caller's transaction already holds
    them exactly as they stand in the database (spares reading them again)."""
    seq_before = job.last_seq
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.RUNNING
        job.started_at = timezone.now()
        events.append(job, ("job.status", {"status": JobStatus.RUNNING, "executor": owner}))
    if job.claims > MAX_CLAIMS:
        _fail(job, f"gave up after {MAX_CLAIMS} executors stopped while running this job")
        job.save()
        return Stop("poison")

    if calls is None:
        calls = _round_calls(job)
    _recover_interrupted(job, calls)

    ready = next((call for call in calls if call.status == ToolCallStatus.READY), None)
    if ready is not None:
        ready.status = ToolCallStatus.RUNNING
        ready.started_at = timezone.now()
        ready.save(update_fields=["status", "started_at"])
        events.append(job, ("tool.started", {"id": ready.call_id, "name": ready.name, "args": ready.args}))
        # Only these can have changed since the job was locked (or last saved in this transaction);
        # writing them alone spares re-encoding the transcript and options on every tool.
        job.save(update_fields=["status", "started_at", "last_seq", "updated_at"])
        return RunTool(ready.pk, ready.call_id, ready.name, ready.args or {}, job.user_id,
                       job.user.get_username(), off_record=bool(job.options.get("off_record")))

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
    try:
        return _model_call(job, calls, memo)
    except SecretUnreadable as error:
        _fail(job, f"cannot call the model: {error}")
        job.save()
        return Stop("model settings unusable")


def _round_calls(job: Job) -> list[ToolCall]:
    return list(job.tool_calls.filter(round=job.rounds).order_by("position"))


def _model_call(job: Job, calls: list[ToolCall], memo: Memo) -> CallModel:
    if _orchestrator_finished(job):
        return _final_answer_call(job)
    orchestrator = _role(job, "orchestrator")
    messages = job.transcript + _round_results(job, calls)
    final_only = job.rounds >= (orchestrator.max_rounds or settings.CORTEX_MAX_ROUNDS)
    tools = [] if final_only else _offered_tools(job, orchestrator.tools, memo)
    if final_only:
        messages = messages + [{"role": "user", "content": (
            "The tool budget for this task is used up. Answer now with what you have.")}]
    return _with_credentials(CallModel(
        model=orchestrator.model, system=job.system_prompt, messages=messages, tools=tools,
        final_only=final_only, round=job.rounds + 1, timeout=orchestrator.timeout,
        temperature=orchestrator.temperature, max_tokens=orchestrator.max_output_tokens), orchestrator)


def _role(job: Job, name: str) -> RoleConfig:
    stored = job.options.get("roles", {}).get(name)
    if stored:
        return RoleConfig.from_dict(stored)
    model = job.orchestrator_model if name == "orchestrator" else job.chat_model
    return RoleConfig(role=name, model=model, label_source="environment")


def _with_credentials(action: CallModel, role: RoleConfig) -> CallModel:
    base_url, api_key = credentials(role.profile_id)
    return replace(action, base_url=base_url, api_key=api_key)


def _orchestrator_finished(job: Job) -> bool:
    """The tool loop ended in text and the chat-role model is still to write the answer."""
    last = job.transcript[-1] if job.transcript else {}
    return last.get("role") == "assistant" and not last.get("tool_calls") and job.response is None


def _final_answer_call(job: Job) -> CallModel:
    chat = _role(job, "chat")
    history_length = job.options.get("history_messages", 0)
    history = job.transcript[:history_length]
    brief = final_answer_brief(job.task, job.transcript[history_length + 1:], job.gemini_summary or "")
    return _with_credentials(CallModel(
        model=chat.model, system=job.chat_system_prompt, messages=history + [{"role": "user", "content": brief}],
        purpose="final", round=job.rounds, timeout=chat.timeout, temperature=chat.temperature,
        max_tokens=chat.max_output_tokens), chat)


def final_answer_brief(task: str, loop: list[dict[str, Any]], summary: str) -> str:
    """What the chat-role model reads: the task, what the tools did, and the orchestrator's summary.

    Plain text rather than tool messages, so any backend can write the answer whichever backend
    ran the tools."""
    results = {m.get("tool_call_id"): m for m in loop if m.get("role") == "tool"}
    lines = []
    for message in loop:
        for call in message.get("tool_calls") or ():
            result = results.get(call["id"], {})
            outcome = "failed or was not allowed" if result.get("is_error") else "returned"
            content = str(result.get("content", ""))
            lines.append(f"- {call['name']}({call.get('arguments') or '{}'}) {outcome}: "
                         f"{content[:2000]}{' …' if len(content) > 2000 else ''}")
    parts = [f"The person asked:\n{task}"]
    if lines:
        parts.append("Tool calls made while working on it:\n" + "\n".join(lines))
    parts.append(f"{FINAL_SUMMARY_HEADING}\n{summary}")
    parts.append("Write the final answer to the person. Rely on the tool results above; do not invent "
                 "results; say plainly if something was denied or failed.")
    return "\n\n".join(parts)


FINAL_SUMMARY_HEADING = "The orchestrator's own summary:"


def _offered_tools(job: Job, allowed: tuple[str, ...], memo: Memo) -> list[dict[str, Any]]:
    """What the policy offers this user, narrowed to the role's allow-list when it has one."""
    policy, user_roles = memo.policy_of(job)
    return [tool.spec() for tool in registry
            if offered(tool, policy, user_roles)[0] and (not allowed or tool.name in allowed)]


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


def record_turn_and_continue(*, owner: str, job_id: str, action: CallModel, response: ModelResponse,
                             backend: str, backend_label: str, memo: Memo | None = None) -> Action:
    """Record a model turn, then decide the next step, in one transaction.

    Every state this commits is one the two separate transactions would have committed in turn,
    so what a crash can leave behind is unchanged; it saves a commit, a second read of the job
    and a round trip to the database thread on every model turn."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return Stop("lease lost")
        memo = memo or Memo()
        calls = _record_turn(job, action, response, backend, backend_label, memo)
        if not _held_by(job, owner):  # the turn completed or failed the job
            return Stop("finished")
        return _next_action(job, owner, calls, memo=memo)


def _record_turn(job: Job, action: CallModel, response: ModelResponse, backend: str,
                 backend_label: str, memo: Memo) -> list[ToolCall] | None:
    """Returns the calls of the job's round as it now stands, when known without another read."""
    job.usage = _add_usage(job.usage, response.usage)
    if response.incomplete:
        # Cut off or withheld: not an answer to give, nor calls to run.
        events.append(job, ("model.turn", _turn_event(action, response, purpose=action.purpose)))
        job.response = response.text or None
        _fail(job, _incomplete_error(job, action, response, backend_label))
        job.save()
        return None
    if action.purpose == "final":
        events.append(job, ("model.turn", _turn_event(action, response, purpose="final")))
        if not response.text.strip():
            _fail(job, f"the chat model ({backend_label}) returned an empty answer{_unusual_finish(response)}")
        else:
            _complete(job, response=response.text, backend=backend, backend_label=backend_label,
                      summary=job.gemini_summary)
        job.save()
        return None
    calls = _round_calls(job)
    _normalise_call_ids(response, job.rounds + 1)
    job.transcript = job.transcript + _round_results(job, calls) + [response.as_message()]
    events.append(job, ("model.turn", _turn_event(action, response)))
    if not response.tool_calls:
        if not response.text.strip():
            _fail(job, f"the model ({backend_label}) returned an empty answer{_unusual_finish(response)}")
        elif job.options.get("respond_with_final", True):
            job.gemini_summary = response.text  # the chat-role model writes the answer next
        else:
            _complete(job, response=response.text, backend=backend, backend_label=backend_label,
                      summary=response.text)
    elif action.final_only:
        _fail(job, f"no final answer after {settings.CORTEX_MAX_ROUNDS} rounds of tool calls")
    else:
        job.rounds += 1
        calls = _record_calls(job, response, memo)
        if any(call.pk is None for call in calls):  # a database that cannot return inserted ids
            calls = None
    job.save()
    return calls


def _unusual_finish(response: ModelResponse) -> str:
    """The provider's reason for stopping, when it was not the plain end of an answer."""
    if response.finish_reason in ("", Finish.STOP):
        return ""
    return f" (finish reason: {response.raw_finish_reason or response.finish_reason})"


def _incomplete_error(job: Job, action: CallModel, response: ModelResponse, backend_label: str) -> str:
    """What `job.error` says about an answer cut off at the output limit or blocked."""
    who = f"the chat model ({backend_label})" if action.purpose == "final" else f"the model ({backend_label})"
    why = response.raw_finish_reason or response.finish_reason
    calls = len(response.tool_calls)
    not_run = f"; {'its tool call was' if calls == 1 else f'its {calls} tool calls were'} not run" if calls else ""
    if response.finish_reason == Finish.BLOCKED:
        return f"{who} was blocked before it finished its answer (finish reason: {why}){not_run}"
    role = _role(job, "chat" if action.purpose == "final" else "orchestrator").role
    limit = (f"the output limit of {response.output_limit:,} tokens" if response.output_limit
             else "the model server's own output limit (the role sets none)")
    return (f"{who} was cut off at {limit} before it finished its answer (finish reason: {why}){not_run}. "
            f"Raise the {role} role's max output tokens in the model settings.")


def _turn_event(action: CallModel, response: ModelResponse, purpose: str = "tool_loop") -> dict[str, Any]:
    return {
        "round": action.round, "model": action.model, "purpose": purpose, "text": response.text,
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
        "usage": {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens},
        "finish_reason": response.raw_finish_reason or response.finish_reason,
    }


def record_delta(*, owner: str, job_id: str, text: str, reset: bool = False) -> None:
    """A piece of the answer as it streams (or, on a retried stream, word to start over)."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        events.append(job, ("answer.reset", {}) if reset else ("answer.delta", {"text": text}))
        job.save(update_fields=["last_seq", "updated_at"])


def _normalise_call_ids(response: ModelResponse, round_number: int) -> None:
    """Some local models omit call ids or repeat them; every call needs its own for its result."""
    seen: set[str] = set()
    for position, call in enumerate(response.tool_calls):
        if not call.id or call.id in seen:
            call.id = f"call_{round_number}_{position}_{uuid.uuid4().hex[:8]}"
        seen.add(call.id)


def _add_usage(usage: dict[str, int], call: Usage) -> dict[str, int]:
    """The job's usage with one more model call (answered or failed) counted in."""
    return {
        "input_tokens": usage.get("input_tokens", 0) + call.input_tokens,
        "output_tokens": usage.get("output_tokens", 0) + call.output_tokens,
        "model_calls": usage.get("model_calls", 0) + 1,
    }


def _record_calls(job: Job, response: ModelResponse, memo: Memo) -> list[ToolCall]:
    policy, roles = memo.policy_of(job)
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
            call.verdict_reason = because[:500]
            if decision == "refuse":
                call.status, call.is_error, call.finished_at = ToolCallStatus.REFUSED, True, timezone.now()
                call.result = f"Error: {because}."
            else:
                call.status = ToolCallStatus.READY if decision == "run" else ToolCallStatus.AWAITING
        rows.append(call)
    ToolCall.objects.bulk_create(rows)
    events.append(job, *[("tool.call", {"id": c.call_id, "name": c.name, "args": c.args, "risk": c.risk,
                                        "verdict": c.verdict, "status": c.status, "reason": c.verdict_reason,
                                        "result": c.result}) for c in rows])
    return rows


def finish_call_and_continue(*, owner: str, job_id: str, call_pk: int, result: str, is_error: bool,
                             memo: Memo | None = None) -> Action:
    """Record a tool result, then decide the next step, in one transaction (see `record_turn_and_continue`)."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return Stop("lease lost")
        calls = _round_calls(job)  # the call being finished is one of them
        _finish_call(job, call_pk, result, is_error, calls)
        return _next_action(job, owner, calls, memo=memo or Memo())


def _finish_call(job: Job, call_pk: int, result: str, is_error: bool, calls: Sequence[ToolCall] = ()) -> None:
    call = next((c for c in calls if c.pk == call_pk), None) or ToolCall.objects.get(pk=call_pk)
    if call.status != ToolCallStatus.RUNNING:
        return
    call.status = ToolCallStatus.FAILED if is_error else ToolCallStatus.SUCCEEDED
    call.result = result
    call.is_error = is_error
    call.finished_at = timezone.now()
    call.save(update_fields=["status", "result", "is_error", "finished_at"])
    events.append(job, ("tool.finished", finished_event(call)))
    job.save(update_fields=["last_seq", "updated_at"])


def record_retry(*, owner: str, job_id: str, attempt: int, wait: float, error: str,
                 usage: Usage | None = None) -> None:
    """A failed attempt about to be retried: counted, with what it cost when the provider said."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        job.usage = _add_usage(job.usage, usage or Usage())
        events.append(job, ("model.retry", {"attempt": attempt, "wait_seconds": round(wait, 2), "error": error}))
        job.save(update_fields=["usage", "last_seq", "updated_at"])


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
