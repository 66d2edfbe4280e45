"""The engine's writes: claiming jobs, deciding the next step, recording what happened.

All of these are synchronous, short transactions. Each function that changes a job takes the
executor's `owner` id and acts only while that owner still holds the job's lease (else
`LeaseLost`), so an executor that was presumed dead can never overwrite its successor's work.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import events, rows, selectors, transitions
from ..context import final_answer_brief
from ..models import OPEN_CALL_STATUSES, Job, JobStatus, ToolCall, ToolCallStatus
from ..policy import Decision, PolicyContext, decide, decide_all
from ..crypto import SecretUnreadable
from ..roles import ORCHESTRATOR, RoleConfig, credentials
from ..providers.base import Finish, ModelResponse, Usage
from ..tools.registry import ArgumentsInvalid, Tool, registry
from ..transitions import finished_event
from . import sanitise

logger = logging.getLogger(__name__)

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
    public_only: bool = False  # the endpoint is checked against private addresses before each call


Action = Stop | RunTool | CallModel


@dataclass
class Memo:
    """What one drive of a job reads once: its owner's tool policy and groups, and the allow-list
    of the orchestrator role the job was submitted with.

    The tools offered to the model and the verdict on each call it then makes come from this one
    reading, so a call is judged against the very list the model was offered in that round. A
    policy change reaches a running job the next time an executor picks it up (after a
    confirmation, for instance), not in the middle of a drive.

    It also keeps the job as the drive last committed it, and the calls of its current round as
    they stand in the database: while the lease is held, nothing else changes them, so a step need
    not read them again (see `_step`)."""

    context: PolicyContext | None = None
    job: Job | None = None
    calls: list[ToolCall] | None = None
    saved: dict[str, Any] = field(default_factory=dict, repr=False)  # `job`'s fields as the step found them
    offer: list[Decision] | None = None

    def policy_of(self, job: Job) -> PolicyContext:
        if self.context is None:
            self.context = selectors.policy_context_for_user(job.user, allow_list=_role(job, ORCHESTRATOR).tools)
        # Standing approvals belong to the job, not its owner; they only turn "ask" into "run"
        # for an offered tool, so they never change what is offered.
        # The origin's ceiling (a schedule's, a hook's) is the job's own too, and only narrows.
        return replace(self.context, approved=frozenset(job.approved_tools),
                       origin_max_risk=job.origin_max_risk or None)

    def forget(self) -> None:
        self.job = self.calls = None

    def round_calls(self, job: Job) -> list[ToolCall]:
        if self.calls is None:
            # A call belongs to the round its turn opened (1 and up): a job in round 0 has none.
            self.calls = _round_calls(job) if job.rounds else []
        return self.calls


@contextmanager
def _step(owner: str, job_id: str, memo: Memo) -> Iterator[Job]:
    """One transaction of a drive, on its job locked and still held by `owner`.

    The job the drive last committed is locked by a guarded UPDATE that matches only while `owner`
    holds the lease of the same claim and no event was appended since (every transition appends
    one): then the copy in memory is the row, and nothing needs reading. When it does not match,
    the job is read afresh, locked, as any step did before, and `LeaseLost` raised if it is no
    longer ours. The events the step appends are inserted together, and only the fields it changed
    are written, once, at its end (`_save`)."""
    try:
        with transaction.atomic(), events.batched():
            job = memo.job
            if job is None or not transitions.hold(job, owner=owner):
                memo.forget()
                job = _lock(owner, job_id)
                memo.job = job
            memo.saved = _snapshot(job)
            yield job
            _save(job, memo)
    except BaseException:
        memo.forget()
        raise
    if not _held_by(job, owner):
        memo.forget()


# Every field of the job's row, compared with how the step found it to write only what changed:
# a field nobody changed is never written back from memory (the heartbeat moves `lease_expires_at`).
_STEP_FIELDS = tuple(field.attname for field in Job._meta.concrete_fields
                     if not field.primary_key and not field.generated and field.name != "updated_at")


def _snapshot(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in _STEP_FIELDS}


def _save(job: Job, memo: Memo) -> None:
    """Write what the step changed on the job (a field's value is replaced, never changed in place)."""
    changed = [name for name, before in memo.saved.items() if getattr(job, name) is not before]
    if changed:
        rows.update(job, [*changed, "updated_at"])


# A claim takes the first step of at most this many of the jobs it leases (`jobs_claim_and_step`).
FIRST_STEPS = 8


@dataclass(frozen=True)
class Claimed:
    """A job an executor now holds, with its first step when the claim took it (else None)."""

    job_id: str
    memo: Memo
    action: Action | None


def jobs_claim_and_step(*, owner: str, limit: int, busy: frozenset[str] = frozenset()) -> list[Claimed]:
    """`jobs_claim`, and the first step (`next_action`) of up to FIRST_STEPS of the jobs leased, in
    the claim's transaction: an executor starting a job then makes its first model call without
    another transaction and trip to the database thread. Each step keeps a savepoint of its own,
    so one that fails leaves the claim standing and that job's drive takes its first step itself
    (and meets the failure there). `busy`: jobs the executor still has a task for, whose first
    step must wait for that task to end (see `Executor._drive`)."""
    now = timezone.now()
    if limit <= 0 or not _claimable_now(now):
        return []
    claimed: list[Claimed] = []
    stepped = 0
    with transaction.atomic():
        for job_id in _claim(owner, limit, now):
            memo, action = Memo(), None
            if job_id not in busy and stepped < FIRST_STEPS:
                stepped += 1
                try:
                    action = next_action(owner=owner, job_id=job_id, memo=memo)
                except Exception:  # the drive takes this step again and handles what it raises
                    logger.warning("job %s: its first step failed with its claim", job_id, exc_info=True)
            claimed.append(Claimed(job_id, memo, action))
    return claimed


def jobs_claim(*, owner: str, limit: int) -> list[str]:
    """Lease up to `limit` runnable jobs: queued ones, and running ones whose holder went away."""
    now = timezone.now()
    if limit <= 0 or not _claimable_now(now):
        return []
    with transaction.atomic():
        return _claim(owner, limit, now)


def _claimable_now(now: datetime) -> bool:
    """Whether any job is runnable. Most claims find nothing (an executor also looks each time one
    of its jobs ends): find that out with a plain read, without taking SQLite's write lock or
    locking rows elsewhere."""
    return bool(rows.select(Job, ("pk",), transitions.claimable_rows(now), limit=1))


def _claim(owner: str, limit: int, now: datetime) -> list[str]:
    """The leasing itself, in the caller's transaction."""
    # `select_for_update(skip_locked=True).filter(claimable).order_by("created_at")[:limit]`, through
    # a statement built once (an executor asks often).
    ids = [job_id for (job_id,) in rows.select(Job, ("pk",), transitions.claimable_rows(now), order_by=("created_at",),
                                               limit=limit, lock="skip locked")]
    if ids:
        transitions.claim(Job.objects.filter(id__in=ids).filter(transitions.claimable(now)), owner=owner, now=now)
    return [str(job_id) for job_id in ids]


def jobs_heartbeat(*, owner: str, job_ids: list[str]) -> set[str]:
    """Extend the leases still held; return the ids that are no longer ours or no longer running."""
    if not job_ids:
        return set()
    transitions.renew(Job.objects.filter(_held(owner, job_ids)))
    return jobs_lost(owner=owner, job_ids=job_ids)


def jobs_lost(*, owner: str, job_ids: list[str]) -> set[str]:
    """The held jobs that were cancelled or taken over since we claimed them."""
    if not job_ids:
        return set()
    # `_held(owner, job_ids)`, through a statement built once: an executor asks often.
    still = rows.select(Job, ("pk",), {"pk": tuple(job_ids), "lease_owner": owner,
                                      "status": (JobStatus.QUEUED, JobStatus.RUNNING)})
    return set(job_ids) - {str(job_id) for (job_id,) in still}


def _held(owner: str, job_ids: list[str]) -> Q:
    return Q(id__in=job_ids, lease_owner=owner, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])


def job_release(*, owner: str, job_id: str) -> None:
    transitions.release(Job.objects.filter(id=job_id, lease_owner=owner))


def _lock(owner: str, job_id: str) -> Job:
    # `Job.objects.select_for_update().select_related("user").get(pk=job_id)`, through a statement
    # built once: every drive starts with it.
    found = rows.instances(Job, {"pk": job_id}, lock="update", related=("user",))
    if not found:
        raise Job.DoesNotExist("Job matching query does not exist.")
    [job] = found
    if not _held_by(job, owner):
        raise LeaseLost(job_id)
    return job


def _held_by(job: Job, owner: str) -> bool:
    return job.lease_owner == owner and job.status in (JobStatus.QUEUED, JobStatus.RUNNING)


def job_fail(*, owner: str, job_id: str, error: str, usage: Usage | None = None) -> None:
    """`usage`: a failed model call's, counted as one more call."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except LeaseLost:
            return
        if usage is not None:
            job.usage = _add_usage(job.usage, usage)
        transitions.fail(job, sanitise.storable(error))
        job.save()


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
    memo = memo or Memo()
    try:
        with _step(owner, job_id, memo) as job:
            return _next_action(job, owner, memo=memo)
    except (LeaseLost, Job.DoesNotExist):
        return Stop("lease lost")


def _next_action(job: Job, owner: str, *, memo: Memo) -> Action:
    """`next_action` on a job the caller's `_step` holds.

    The round's calls are read once per drive (`Memo.round_calls`) and kept up to date in memory
    after that: a step costs the same however many calls the round has finished."""
    if job.status == JobStatus.QUEUED:
        transitions.start(job, owner=owner)
    if job.claims > MAX_CLAIMS:
        transitions.fail(job, f"gave up after {MAX_CLAIMS} executors stopped while running this job")
        return Stop("poison")

    calls = memo.round_calls(job)
    open_calls = [c for c in calls if c.status in OPEN_CALL_STATUSES]
    _recover_interrupted(job, open_calls)

    ready = next((call for call in open_calls if call.status == ToolCallStatus.READY), None)
    if ready is not None:
        ready.status = ToolCallStatus.RUNNING
        ready.started_at = timezone.now()
        rows.update(ready, ["status", "started_at"])
        events.append(job, ("tool.started", {"id": ready.call_id, "name": ready.name, "args": ready.args}))
        return RunTool(ready.pk, ready.call_id, ready.name, ready.args or {}, job.user_id,
                       job.user.get_username(), off_record=bool(job.options.get("off_record")))

    awaiting = [call for call in open_calls if call.status == ToolCallStatus.AWAITING]
    if awaiting:
        transitions.pause(job, awaiting=awaiting)
        return Stop("awaiting confirmation")

    try:
        return _model_call(job, calls, memo)
    except SecretUnreadable as error:
        transitions.fail(job, f"cannot call the model: {error}")
        return Stop("model settings unusable")


def _round_calls(job: Job) -> list[ToolCall]:
    return list(job.tool_calls.filter(round=job.rounds).order_by("position"))


def _model_call(job: Job, calls: list[ToolCall], memo: Memo) -> CallModel:
    if _orchestrator_finished(job):
        return _final_answer_call(job)
    orchestrator = _role(job, "orchestrator")
    messages = job.transcript + _round_results(job, calls)
    final_only = job.rounds >= (orchestrator.max_rounds or settings.CORTEX_MAX_ROUNDS)
    tools = [] if final_only else _offered_tools(job, memo)
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
    found = credentials(role.profile_id)
    return replace(action, base_url=found.base_url, api_key=found.api_key, public_only=found.public_only)


def _orchestrator_finished(job: Job) -> bool:
    """The tool loop ended in text and the chat-role model is still to write the answer."""
    last = job.transcript[-1] if job.transcript else {}
    return last.get("role") == "assistant" and not last.get("tool_calls") and job.response is None


def _final_answer_call(job: Job) -> CallModel:
    chat = _role(job, "chat")
    history_length = job.options.get("history_messages", 0)
    history = job.transcript[:history_length]
    brief = final_answer_brief(job.task, job.transcript[history_length + 1:], job.orchestrator_summary or "")
    return _with_credentials(CallModel(
        model=chat.model, system=job.chat_system_prompt, messages=history + [{"role": "user", "content": brief}],
        purpose="final", round=job.rounds, timeout=chat.timeout, temperature=chat.temperature,
        max_tokens=chat.max_output_tokens), chat)


def _offered_tools(job: Job, memo: Memo) -> list[dict[str, Any]]:
    """The declarations of the tools the policy offers this job (see `Memo`)."""
    return [decision.tool.spec() for decision in _offer(job, memo)]


def _offer(job: Job, memo: Memo) -> list[Decision]:
    """What the policy offers the job, decided once per drive (see `Memo`)."""
    if memo.offer is None:
        memo.offer = [decision for decision in decide_all(registry, memo.policy_of(job)) if decision.offered]
    return memo.offer


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
    memo = memo or Memo()
    try:
        with _step(owner, job_id, memo) as job:
            _record_turn(job, action, response, backend, backend_label, memo)
            if not _held_by(job, owner):  # the turn completed or failed the job
                return Stop("finished")
            return _next_action(job, owner, memo=memo)
    except (LeaseLost, Job.DoesNotExist):
        return Stop("lease lost")


def _record_turn(job: Job, action: CallModel, response: ModelResponse, backend: str,
                 backend_label: str, memo: Memo) -> None:
    response, checks = sanitise.model_response(response, max_calls=settings.CORTEX_MAX_CALLS_PER_TURN)
    job.usage = _add_usage(job.usage, response.usage)
    if response.incomplete:
        # Cut off or withheld: not an answer to give, nor calls to run.
        events.append(job, ("model.turn", _turn_event(action, response, purpose=action.purpose)))
        job.response = response.text or None
        transitions.fail(job, _incomplete_error(job, action, response, backend_label))
        return
    if action.purpose == "final":
        events.append(job, ("model.turn", _turn_event(action, response, purpose="final")))
        if not response.text.strip():
            transitions.fail(job, f"the chat model ({backend_label}) returned an empty answer{_unusual_finish(response)}")
        else:
            transitions.complete(job, response=response.text, backend=backend, backend_label=backend_label,
                                 summary=job.orchestrator_summary)
        return
    calls = memo.round_calls(job)
    _normalise_call_ids(response, job.rounds + 1)
    job.transcript = job.transcript + _round_results(job, calls) + [response.as_message()]
    events.append(job, ("model.turn", _turn_event(action, response)))
    if not response.tool_calls:
        if not response.text.strip():
            transitions.fail(job, f"the model ({backend_label}) returned an empty answer{_unusual_finish(response)}")
        elif job.options.get("respond_with_final", True):
            job.orchestrator_summary = response.text  # the chat-role model writes the answer next
        else:
            transitions.complete(job, response=response.text, backend=backend, backend_label=backend_label,
                                 summary=response.text)
    elif action.final_only:
        transitions.fail(job, f"no final answer after {settings.CORTEX_MAX_ROUNDS} rounds of tool calls")
    else:
        job.rounds += 1
        calls = _record_calls(job, response, memo, checks)
        # A database that cannot return inserted ids leaves them to be read.
        memo.calls = None if any(call.pk is None for call in calls) else calls


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
        events.append(job, ("answer.reset", {}) if reset else ("answer.delta", {"text": sanitise.storable(text)}))
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


def _record_calls(job: Job, response: ModelResponse, memo: Memo,
                  checks: Sequence[sanitise.CheckedCall]) -> list[ToolCall]:
    """A row for each call the model made, with the policy's verdict on it.

    A call to anything the job was not offered in this round is refused, whatever its name and
    whatever the confirmation rules or approvals say. Its error result lists only the tools that
    were offered: the model learns nothing about the others. `checks`: each call's arguments as
    `sanitise.model_response` parsed them, or its problem."""
    context = memo.policy_of(job)
    offered = ", ".join(decision.name for decision in _offer(job, memo)) or "none"
    recorded = []
    for position, model_call in enumerate(response.tool_calls):
        decision = decide(model_call.name, registry.get(model_call.name), context)
        call = ToolCall(job=job, call_id=model_call.id, round=job.rounds, position=position,
                        name=model_call.name[:200], raw_arguments=model_call.arguments,
                        risk=decision.tool.risk if decision.tool else "")
        call.args, problem = _arguments(checks[position], decision.tool)
        if decision.verdict == "refuse":
            call.verdict, call.verdict_reason = ToolCall.Verdict.REFUSE, decision.because[:500]
            call.status, call.is_error, call.finished_at = ToolCallStatus.REFUSED, True, timezone.now()
            call.result = f"Error: {decision.because}. The tools offered to you: {offered}."
        elif problem is not None:
            call.verdict, call.status = ToolCall.Verdict.REFUSE, ToolCallStatus.FAILED
            call.result, call.is_error, call.finished_at = f"Error: {problem}", True, timezone.now()
        else:
            call.verdict, call.verdict_reason = decision.verdict, decision.because[:500]
            call.status = ToolCallStatus.READY if decision.verdict == "run" else ToolCallStatus.AWAITING
        recorded.append(call)
    rows.insert(recorded, ids=True)
    events.append(job, *[("tool.call", {"id": c.call_id, "name": c.name, "args": c.args, "risk": c.risk,
                                        "verdict": c.verdict, "status": c.status, "reason": c.verdict_reason,
                                        "result": c.result}) for c in recorded])
    return recorded


def _arguments(check: sanitise.CheckedCall, tool: Tool | None) -> tuple[Any, str | None]:
    """The call's arguments as parsed (None if they could not be), and what is wrong with them."""
    if check.problem is not None or tool is None:
        return check.args, check.problem
    try:
        tool.validate(check.args)
    except ArgumentsInvalid as error:
        return check.args, str(error)
    return check.args, None


def finish_call_and_continue(*, owner: str, job_id: str, call_pk: int, result: str, is_error: bool,
                             memo: Memo | None = None) -> Action:
    """Record a tool result, then decide the next step, in one transaction (see `record_turn_and_continue`)."""
    memo = memo or Memo()
    try:
        with _step(owner, job_id, memo) as job:
            _finish_call(job, call_pk, result, is_error, memo)
            return _next_action(job, owner, memo=memo)
    except (LeaseLost, Job.DoesNotExist):
        return Stop("lease lost")


def _finish_call(job: Job, call_pk: int, result: str, is_error: bool, memo: Memo) -> None:
    call = next((call for call in memo.round_calls(job) if call.pk == call_pk), None)
    if call is None:
        call = ToolCall.objects.get(pk=call_pk)
    if call.status != ToolCallStatus.RUNNING:
        return
    call.status = ToolCallStatus.FAILED if is_error else ToolCallStatus.SUCCEEDED
    call.result = sanitise.storable(result)
    call.is_error = is_error
    call.finished_at = timezone.now()
    rows.update(call, ["status", "result", "is_error", "finished_at"])
    events.append(job, ("tool.finished", finished_event(call)))


def record_retry(*, owner: str, job_id: str, attempt: int, wait: float, error: str,
                 usage: Usage | None = None) -> None:
    """A failed attempt about to be retried: counted, with what it cost when the provider said."""
    with transaction.atomic():
        try:
            job = _lock(owner, job_id)
        except (LeaseLost, Job.DoesNotExist):
            return
        job.usage = _add_usage(job.usage, usage or Usage())
        events.append(job, ("model.retry", {"attempt": attempt, "wait_seconds": round(wait, 2),
                                            "error": sanitise.storable(error)}))
        job.save(update_fields=["usage", "last_seq", "updated_at"])
