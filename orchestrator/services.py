"""Every write a person or a client asks for. Views, the API, consumers, admin actions and
management commands all call these functions; none of them writes models directly. The engine
writes through `engine.state` and never imports this module; both change a job's status only
through `transitions`.

Decisions on a job (confirm, deny, cancel) are compare-and-set transitions inside one
transaction on the locked job row: of two simultaneous decisions exactly one applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from django.utils import timezone

from . import context, crypto, events, netguard, roles, rows, selectors, transitions
from .engine import sanitise
from .engine.loop import workspace_for
from .models import (
    ACTIVE_STATUSES,
    ApiToken,
    Job,
    JobOrigin,
    JobStatus,
    Memory,
    ModelProfile,
    Persona,
    RoleAssignment,
    Session,
    ToolCall,
    ToolCallStatus,
    ToolPolicy,
)
from .policy import RiskPolicy
from .tools.registry import RISKS, ArgumentsInvalid, ToolContext, registry

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "ctx_"
SLUG = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(ServiceError):
    status = 400


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413


# --- API tokens --------------------------------------------------------------------------------

def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """Create a token; the raw value is returned once and only its digest is stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], prefix=raw[:12], digest=token_digest(raw))
    return token, raw


def token_authenticate(*, raw: str) -> AbstractBaseUser | None:
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    # As `ApiToken.objects.select_related("user").filter(…).first()` reads it (the digest is
    # unique), through a statement built once: every API request asks.
    found = rows.instances(ApiToken, {"digest": token_digest(raw), "revoked_at": None}, limit=1,
                           related=("user",))
    token = found[0] if found else None
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # Record use at most once a minute: a busy cron client should not write on every request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def token_revoke(*, user: AbstractBaseUser, token_id: int) -> ApiToken:
    token = selectors.token_for_user(user, token_id)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


# --- Tool policy -------------------------------------------------------------------------------

# The longest a call may be set to wait for a person before it expires.
MAX_CONFIRMATION_TTL = 30 * 86400


def policy_update(*, user: AbstractBaseUser, max_risk: str, overrides: dict[str, str],
                  confirmations: dict[str, str], confirmation_ttls: dict[str, int | None] | None = None) -> ToolPolicy:
    """`confirmation_ttls`: per tool, the seconds a call may wait for a person before it expires
    (None or absent: the site's default); None for the argument keeps the stored ones."""
    unknown = sorted((set(overrides) | set(confirmations) | set(confirmation_ttls or ())) - set(registry.names()))
    if unknown:
        raise Invalid(f"unknown tools: {', '.join(unknown)}")
    # Store only what differs from the default, so new defaults reach users who never chose.
    overrides = {k: v for k, v in overrides.items() if v != "default"}
    confirmations = {k: v for k, v in confirmations.items() if v != "default"}
    try:
        RiskPolicy(max_risk=max_risk, overrides=overrides, confirmations=confirmations)
    except ValueError as error:
        raise Invalid(str(error)) from None
    defaults: dict[str, Any] = {"max_risk": max_risk, "overrides": overrides, "confirmations": confirmations}
    if confirmation_ttls is not None:
        for name, seconds in confirmation_ttls.items():
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)
                                        or not 1 <= seconds <= MAX_CONFIRMATION_TTL):
                raise Invalid(f"the time limit for {name} must be between 1 and {MAX_CONFIRMATION_TTL} seconds")
        defaults["confirmation_ttls"] = {k: v for k, v in confirmation_ttls.items() if v is not None}
    policy, _ = ToolPolicy.objects.update_or_create(user=user, defaults=defaults)
    return policy


# --- Jobs: submitting and deciding -------------------------------------------------------------

@dataclass(frozen=True)
class JobOptions:
    tier: int | None = None
    respond_with_final: bool = True
    include_long: bool = True
    include_mid: bool = True
    include_short: bool = True
    chat_role: str = "chat"
    off_record: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def job_submit(*, user: AbstractBaseUser, task: str, session_id: str | None = None,
               persona: str | None = None, options: JobOptions | None = None, origin: str = JobOrigin.WEB,
               origin_max_risk: str | None = None, origin_detail: dict[str, Any] | None = None,
               data_marker: str = "", callback_url: str | None = None, callback_on_confirmation: bool = False,
               confirmation_ttl: int | None = None) -> Job:
    """Queue a job: the one way every origin (pages, API, schedules, hooks, …) starts one.

    `origin` records who or what started it; `origin_max_risk` caps the risk of the tools it is
    offered on top of the owner's policy (unattended origins). `data_marker`: the task holds outside
    data fenced by this marker (`context.data_block`), and the system prompts say it is data.

    With `callback_url`, the job's JSON is POSTed there, signed with the person's callback secret,
    when the job ends (and when it starts waiting for a confirmation, with `callback_on_confirmation`).
    `confirmation_ttl`: the job's own limit, in seconds, on how long a call may wait for a person (a
    schedule's or a hook's); the shorter of it and the usual one applies."""
    options = options or JobOptions()
    callback = callback_check(user=user, callback_url=callback_url, callback_on_confirmation=callback_on_confirmation)
    if confirmation_ttl is not None:
        callback["confirmation_ttl"] = confirmation_ttl_check(confirmation_ttl)
    task = task.strip() if isinstance(task, str) else ""
    if not task:
        raise Invalid("task must not be empty")
    # Checked here, not only by the forms and the API: schedules and hooks bring text of their own.
    if sanitise.unstorable_json(task) is not None:
        raise Invalid(f"task contains {sanitise.NOT_STORABLE}")
    if len(task) > settings.CORTEX_MAX_TASK_CHARS:
        raise TooLarge(f"task is {len(task)} characters long; the limit is {settings.CORTEX_MAX_TASK_CHARS}")
    if options.tier is not None and options.tier not in (1, 2, 3):
        raise Invalid("tier must be 1, 2 or 3")
    if not SLUG.fullmatch(options.chat_role or ""):
        raise Invalid("chat_role must be a short name of letters, digits, - or _")
    if origin not in JobOrigin.values:
        raise Invalid(f"origin must be one of {', '.join(JobOrigin.values)}")
    if origin_max_risk is not None and origin_max_risk not in RISKS:
        raise Invalid(f"max_risk must be one of {', '.join(RISKS)}")
    if data_marker and data_marker not in task:
        raise Invalid("the task holds no data fenced by the given marker")
    chosen_persona = _persona_for(user, persona)
    orchestrator, chat = roles.role_configs(user, roles.ORCHESTRATOR, options.chat_role)
    selection = context.MemorySelection(tier=options.tier or settings.CORTEX_DEFAULT_TIER,
                                        include_long=options.include_long, include_mid=options.include_mid,
                                        include_short=options.include_short)
    memories = context.memory_section(selectors.memories_for_prompt(user), selection,
                                      settings.CORTEX_MEMORY_CHARS)
    now = timezone.localtime()

    def prompt_for(role: roles.RoleConfig) -> str:
        return context.system_prompt(
            persona_prompt=chosen_persona.prompt if chosen_persona else "", memories=memories, now=now,
            inject_datetime=role.inject_datetime, inject_mode=role.inject_mode, off_record=options.off_record,
            system_append=role.system_append, data_marker=data_marker)

    with transaction.atomic(), events.batched():
        if session_id:
            session = selectors.session_for_user(user, session_id)
            history = _history(session)
        else:
            # As `Session.objects.create` writes it, through a statement built once.
            session, history = Session(user=user, title=task[:80]), []
            rows.insert([session])
        job = Job(
            user=user,
            task=task,
            session=session,
            persona=chosen_persona,
            options={**options.as_dict(), **callback, "history_messages": len(history),
                     "roles": {"orchestrator": orchestrator.as_dict(), "chat": chat.as_dict()}},
            orchestrator_model=orchestrator.model,
            chat_model=chat.model,
            transcript=history + [{"role": "user", "content": task}],
            system_prompt=prompt_for(orchestrator),
            chat_system_prompt=prompt_for(chat) if options.respond_with_final else "",
            origin=origin,
            origin_max_risk=origin_max_risk or "",
            origin_detail=origin_detail or {},
        )
        # Its first event is held by the batch until the job is inserted, already counting it.
        transitions.queue(job)
        rows.insert([job])  # as `job.save(force_insert=True)` writes it
    return job


def callback_check(*, user: AbstractBaseUser, callback_url: str | None,
                   callback_on_confirmation: bool) -> dict[str, Any]:
    """The callback options as a job keeps them, or `Invalid`: an http(s) address that passes the
    private-address guard (unless the site allows private addresses) and a callback secret of the
    person's to sign with. Checked for every job, and when a schedule or hook that starts jobs with
    them is saved."""
    url, on_confirmation = (callback_url or "").strip(), callback_on_confirmation
    if not url:
        if on_confirmation:
            raise Invalid("callback_on_confirmation needs a callback_url")
        return {}
    from .delivery import services as delivery_services  # it builds on this module: imported when used

    delivery_services.target_check(url=url, what="callback_url")
    if not delivery_services.has_callback_secret(user=user):
        raise Invalid("callback_url needs a callback secret to sign with: create one under Settings → Callbacks "
                      "first")
    return {"callback_url": url, "callback_on_confirmation": bool(on_confirmation)}


def confirmation_ttl_check(seconds: Any) -> int:
    """A job's own limit on how long a call may wait for a person, in whole seconds."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= MAX_CONFIRMATION_TTL:
        raise Invalid(f"confirmation_ttl must be between 1 and {MAX_CONFIRMATION_TTL} seconds")
    return seconds


def _persona_for(user: AbstractBaseUser, name: str | None) -> Persona | None:
    if name:
        persona = selectors.persona_by_name(user, name)
        if persona is None:
            raise Invalid(f"unknown persona {name!r}")
        return persona
    return selectors.default_persona(user)


def _history(session: Session) -> list[dict[str, Any]]:
    """The session's earlier turns, newest kept first when the budget runs out."""
    budget = settings.CORTEX_HISTORY_CHARS
    kept: list[dict[str, Any]] = []
    for message in session.messages.order_by("-created_at", "-id").only("role", "content"):
        budget -= len(message.content)
        if budget < 0:
            break
        kept.append({"role": message.role, "content": message.content})
    kept.reverse()
    # A transcript must open with the person speaking.
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def _locked_job(user: AbstractBaseUser, job_id: Any) -> Job:
    selectors.job_for_user(user, job_id)  # 404 for anyone else's job
    return Job.objects.select_for_update().get(pk=job_id)


def _awaiting_calls(job: Job, tool_call_id: str | None, args_digest: str | None = None) -> list[ToolCall]:
    """The calls a decision applies to. With `args_digest`, the one call named must be exactly as
    the person (or client) was shown it, else nothing is decided."""
    if args_digest is not None and tool_call_id is None:
        raise Invalid("args_digest needs a tool_call_id")
    if job.status != JobStatus.AWAITING_CONFIRMATION:
        raise Conflict(f"job is {job.status}, not awaiting confirmation")
    calls = list(job.tool_calls.filter(status=ToolCallStatus.AWAITING).order_by("round", "position"))
    if tool_call_id is not None:
        calls = [call for call in calls if call.call_id == tool_call_id]
        if not calls:
            if job.tool_calls.filter(call_id=tool_call_id).exists():
                raise Conflict(f"tool call {tool_call_id} is not awaiting confirmation")
            raise NotFound(f"no tool call {tool_call_id} in this job")
    if not calls:
        raise Conflict("no tool call is awaiting confirmation")
    if args_digest is not None and any(call.args_digest != args_digest for call in calls):
        raise Conflict(f"tool call {tool_call_id} is not the call you were shown: its arguments changed since "
                       "(or the digest is another call's); nothing was changed. Look at the call again and decide "
                       "on what it says now.")
    return calls


def _edited_args(job: Job, call: ToolCall, args: Any) -> dict[str, Any]:
    """Edited arguments checked by the tool's schema and its own rules (a workspace path may not
    leave the workspace), so what is approved is what can run."""
    tool = registry.get(call.name)
    if tool is None:
        raise Invalid(f"the tool {call.name} no longer exists; approve or deny the call as it is")
    context = ToolContext(user_id=job.user_id, username=job.user.get_username(), job_id=str(job.id),
                          workspace=workspace_for(job.user_id), settings=settings,
                          off_record=bool(job.options.get("off_record")))
    try:
        return tool.check_args(args, context)
    except ArgumentsInvalid as error:
        raise Invalid(str(error)) from None


def _after_decision(job: Job) -> None:
    """Once no call awaits a person, hand the job back to the executors."""
    if not job.tool_calls.filter(status=ToolCallStatus.AWAITING).exists():
        transitions.resume(job)


def job_confirm(*, user: AbstractBaseUser, job_id: Any, tool_call_id: str | None = None,
                args: dict[str, Any] | None = None, remember: str | None = None,
                args_digest: str | None = None) -> Job:
    """Approve the awaiting calls (or the one named), optionally with edited arguments. With
    `args_digest` (see `ToolCall.args_digest`) the call must still be exactly as shown."""
    if remember not in (None, "job"):
        raise Invalid('remember must be "job" when given')
    if args is not None and tool_call_id is None:
        raise Invalid("edited args need a tool_call_id")
    with transaction.atomic():
        job = _locked_job(user, job_id)
        calls = _awaiting_calls(job, tool_call_id, args_digest)
        now = timezone.now()
        for call in calls:
            decision = ToolCall.Decision.APPROVED
            if args is not None:
                edited = _edited_args(job, call, args)
                if edited != call.args:
                    call.original_args = call.args
                    call.args = edited
                    decision = ToolCall.Decision.EDITED
            call.status = ToolCallStatus.READY
            call.decision = decision
            call.decided_by = user
            call.decided_at = now
            call.remember = remember == "job"
            call.save(update_fields=["status", "decision", "decided_by", "decided_at", "remember", "args",
                                     "original_args"])
            if remember == "job" and call.name not in job.approved_tools:
                job.approved_tools = [*job.approved_tools, call.name]
            events.append(job, ("tool.decided", _decision_event(call, user)))
        _after_decision(job)
        job.save(update_fields=[*transitions.FIELDS, "approved_tools"])
    return job


def job_deny(*, user: AbstractBaseUser, job_id: Any, tool_call_id: str | None = None, reason: str = "",
             args_digest: str | None = None) -> Job:
    reason = (reason or "").strip()[:2000]
    with transaction.atomic():
        job = _locked_job(user, job_id)
        calls = _awaiting_calls(job, tool_call_id, args_digest)
        now = timezone.now()
        for call in calls:
            call.status = ToolCallStatus.DENIED
            call.decision = ToolCall.Decision.DENIED
            call.decided_by = user
            call.decided_at = now
            call.finished_at = now
            call.reason = reason
            call.is_error = True
            call.result = "The person denied this tool call" + (f": {reason}" if reason else ".")
            call.save(update_fields=["status", "decision", "decided_by", "decided_at", "finished_at", "reason",
                                     "is_error", "result"])
            events.append(job, ("tool.decided", _decision_event(call, user)))
        _after_decision(job)
        job.save(update_fields=transitions.FIELDS)
    return job


def _decision_event(call: ToolCall, user: AbstractBaseUser | None) -> dict[str, Any]:
    """`user` None: decided by the system (an expired call)."""
    return {"id": call.call_id, "name": call.name, "decision": call.decision,
            "by": user.get_username() if user is not None else "the system",
            "args": call.args, "original_args": call.original_args, "reason": call.reason,
            "remember": call.remember}


def confirmation_expire(*, deadline_id: int) -> bool:
    """The system's decision on a call that waited past its deadline: denied, with a reason that
    says it expired and after how long; the model is told, and the job goes on once nothing else
    waits. The deadline is claimed in the same transaction, so it fires once however many
    executors look; a person's decision that committed first leaves nothing to deny, and one that
    comes after finds the call decided (409). Returns whether the call expired."""
    from .delivery.models import ConfirmationDeadline

    with transaction.atomic():
        now = timezone.now()
        if not ConfirmationDeadline.objects.filter(pk=deadline_id, fired_at=None).update(fired_at=now):
            return False  # fired already
        deadline = ConfirmationDeadline.objects.get(pk=deadline_id)
        job = Job.objects.select_for_update().get(pk=deadline.job_id)
        call = ToolCall.objects.get(pk=deadline.call_id)
        if job.status != JobStatus.AWAITING_CONFIRMATION or call.status != ToolCallStatus.AWAITING:
            return False
        waited = _duration(deadline.ttl_seconds)
        call.status = ToolCallStatus.DENIED
        call.decision = ToolCall.Decision.DENIED
        call.decided_by = None
        call.decided_at = now
        call.finished_at = now
        call.reason = f"expired: nobody decided within {waited}"
        call.is_error = True
        call.result = (f"Nobody decided on this tool call within {waited}, so it expired and was denied. "
                       "It did not run; carry on without it.")
        call.save(update_fields=["status", "decision", "decided_by", "decided_at", "finished_at", "reason",
                                 "is_error", "result"])
        events.append(job, ("tool.decided", {**_decision_event(call, None), "expired": True,
                                             "ttl_seconds": deadline.ttl_seconds}))
        ConfirmationDeadline.objects.filter(pk=deadline_id).update(expired=True)
        _after_decision(job)
        job.save(update_fields=transitions.FIELDS)
    return True


def _duration(seconds: int) -> str:
    """2 seconds, 5 minutes, 1 hour 30 minutes."""
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount} {unit}{'s' if amount != 1 else ''}")
    return " ".join(parts[:2]) or "0 seconds"


def job_cancel(*, user: AbstractBaseUser, job_id: Any) -> Job:
    with transaction.atomic():
        job = _locked_job(user, job_id)
        if job.status not in ACTIVE_STATUSES:
            raise Conflict(f"job is already {job.status}")
        transitions.cancel(job, by=user.get_username())
        job.save(update_fields=transitions.FIELDS)
    return job


# --- Memory --------------------------------------------------------------------------------------

def memory_save(*, user: AbstractBaseUser, content: str, tier: str = Memory.Tier.MID,
                source_job_id: Any = None) -> Memory:
    content = (content or "").strip()
    if not content:
        raise Invalid("memory content must not be empty")
    if tier not in Memory.Tier.values:
        raise Invalid(f"tier must be one of {', '.join(Memory.Tier.values)}")
    return Memory.objects.create(user=user, content=content[:10000], tier=tier, source_job_id=source_job_id)


def session_rename(*, user: AbstractBaseUser, session_id: Any, title: str) -> Session:
    """A conversation's new title; it keeps its place in the list (renaming is not a turn)."""
    session = selectors.session_for_user(user, session_id)
    title = " ".join((title or "").split())
    if not title:
        raise Invalid("a conversation's title must not be empty")
    session.title = title[:200]
    session.save(update_fields=["title"])
    return session


def memory_update(*, user: AbstractBaseUser, memory_id: int, content: str, tier: str) -> Memory:
    memory = selectors.memory_for_user(user, memory_id)
    content = (content or "").strip()
    if not content:
        raise Invalid("memory content must not be empty")
    if tier not in Memory.Tier.values:
        raise Invalid(f"tier must be one of {', '.join(Memory.Tier.values)}")
    memory.content, memory.tier = content[:10000], tier
    memory.save(update_fields=["content", "tier", "updated_at"])
    return memory


def memory_delete(*, user: AbstractBaseUser, memory_id: int) -> None:
    selectors.memory_for_user(user, memory_id).delete()


# --- Model profiles and roles ------------------------------------------------------------------

def _may_change_model_settings(by: AbstractBaseUser | None, owner: AbstractBaseUser | None) -> None:
    """Site-wide model settings are for staff (and the operator: `by` None, the command line); a
    person's own are theirs."""
    if by is None or by.is_staff:
        return
    if owner is None:
        raise Forbidden("only staff may change site-wide model settings")
    if owner.pk != by.pk:
        raise Forbidden("you may only change your own model settings")


def profile_endpoint_check(*, owner: AbstractBaseUser | None, base_url: str) -> None:
    """A person's own endpoint must be public (unless the site allows private addresses): the server
    connects to it, and must not be steered into its own network."""
    if not base_url or not roles.endpoint_is_guarded(owner):
        return
    try:
        netguard.check_endpoint_blocking(base_url)
    except netguard.Unreachable as error:
        raise Invalid(f"the base URL cannot be used: {error}") from None


def profile_save(*, by: AbstractBaseUser | None, owner: AbstractBaseUser | None, name: str, provider: str,
                 model: str, base_url: str = "", api_key: str | None = None, max_rounds: int | None = None,
                 timeout_seconds: float | None = None, temperature: float | None = None,
                 profile_id: int | None = None) -> ModelProfile:
    """Create or update a profile (site-wide when `owner` is None) on behalf of `by` (None: the
    operator). `api_key=None` keeps the stored key; "" removes it."""
    from .providers import PROVIDERS

    _may_change_model_settings(by, owner)

    name, model, base_url = (name or "").strip(), (model or "").strip(), (base_url or "").strip()
    if not name or len(name) > 100:
        raise Invalid("a profile needs a name of at most 100 characters")
    if provider not in PROVIDERS:
        raise Invalid(f"provider must be one of {', '.join(PROVIDERS)}")
    if not model:
        raise Invalid("a profile needs a model name")
    if base_url and not re.match(r"^https?://[^\s/]+", base_url):
        raise Invalid("the base URL must start with http:// or https://")
    if max_rounds is not None and not 1 <= max_rounds <= 100:
        raise Invalid("max rounds must be between 1 and 100")
    if timeout_seconds is not None and not 1 <= timeout_seconds <= 3600:
        raise Invalid("the timeout must be between 1 and 3600 seconds")
    if temperature is not None and not 0 <= temperature <= 2:
        raise Invalid("the temperature must be between 0 and 2")
    profile_endpoint_check(owner=owner, base_url=base_url)
    if profile_id is not None:
        profile = ModelProfile.objects.filter(pk=profile_id, owner=owner).first()
        if profile is None:
            raise NotFound("profile not found")
    else:
        profile = ModelProfile(owner=owner)
    clash = ModelProfile.objects.filter(owner=owner, name=name).exclude(pk=profile.pk)
    if clash.exists():
        raise Invalid(f"there is already a profile named {name!r}")
    profile.name, profile.provider, profile.model, profile.base_url = name, provider, model, base_url
    profile.max_rounds, profile.timeout_seconds, profile.temperature = max_rounds, timeout_seconds, temperature
    if api_key is not None:
        profile.api_key_encrypted = crypto.encrypt(api_key.strip())
    profile.save()
    return profile


def profile_delete(*, by: AbstractBaseUser | None, owner: AbstractBaseUser | None, profile_id: int) -> None:
    _may_change_model_settings(by, owner)
    deleted, _ = ModelProfile.objects.filter(pk=profile_id, owner=owner).delete()
    if not deleted:
        raise NotFound("profile not found")


# A role's output limit: enough for a word or two at least; the largest any model accepts today.
MIN_OUTPUT_TOKENS, MAX_OUTPUT_TOKENS = 16, 1_000_000


def role_assign(*, by: AbstractBaseUser | None, owner: AbstractBaseUser | None, role: str, profile_id: int | None,
                system_append: str = "", inject_datetime: bool = True, inject_mode: bool = True,
                tools: list[str] | None = None, max_output_tokens: int | None = None) -> RoleAssignment:
    """Which profile plays `role` (site-wide when `owner` is None), on behalf of `by` (None: the operator)."""
    _may_change_model_settings(by, owner)
    if not SLUG.fullmatch(role or ""):
        raise Invalid("a role is a short name of letters, digits, - or _")
    if max_output_tokens is not None and not MIN_OUTPUT_TOKENS <= max_output_tokens <= MAX_OUTPUT_TOKENS:
        raise Invalid(f"max output tokens must be between {MIN_OUTPUT_TOKENS} and {MAX_OUTPUT_TOKENS:,}")
    profile = None
    if profile_id is not None:
        # A user may pick their own profiles and the site-wide ones; the site only its own.
        mine = Q(owner=owner) | Q(owner=None) if owner else Q(owner=None)
        profile = ModelProfile.objects.filter(mine, pk=profile_id).first()
        if profile is None:
            raise NotFound("profile not found")
    unknown = sorted(set(tools or ()) - set(registry.names()))
    if unknown:
        raise Invalid(f"unknown tools: {', '.join(unknown)}")
    assignment, _ = RoleAssignment.objects.update_or_create(
        owner=owner, role=role,
        defaults={"profile": profile, "system_append": (system_append or "")[:10000],
                  "inject_datetime": inject_datetime, "inject_mode": inject_mode, "tools": sorted(set(tools or ())),
                  "max_output_tokens": max_output_tokens})
    return assignment


def role_unassign(*, by: AbstractBaseUser | None, owner: AbstractBaseUser | None, role: str) -> None:
    _may_change_model_settings(by, owner)
    RoleAssignment.objects.filter(owner=owner, role=role).delete()


# --- Personas ----------------------------------------------------------------------------------

def persona_save(*, owner: AbstractBaseUser | None, name: str, prompt: str, is_default: bool = False,
                 persona_id: int | None = None) -> Persona:
    """Create or update a persona (site-wide when `owner` is None). At most one default per owner."""
    name = (name or "").strip()
    if not SLUG.fullmatch(name):
        raise Invalid("a persona name is a short name of letters, digits, - or _")
    if len(prompt or "") > 20000:
        raise Invalid("a persona prompt is at most 20000 characters")
    with transaction.atomic():
        if persona_id is not None:
            persona = Persona.objects.filter(pk=persona_id, owner=owner).first()
            if persona is None:
                raise NotFound("persona not found")
        else:
            persona = Persona(owner=owner)
        if Persona.objects.filter(owner=owner, name=name).exclude(pk=persona.pk).exists():
            raise Invalid(f"there is already a persona named {name!r}")
        if is_default:
            Persona.objects.filter(owner=owner, is_default=True).exclude(pk=persona.pk).update(is_default=False)
        persona.name, persona.prompt, persona.is_default = name, (prompt or "").strip(), is_default
        persona.save()
    return persona


def persona_delete(*, owner: AbstractBaseUser | None, persona_id: int) -> None:
    deleted, _ = Persona.objects.filter(pk=persona_id, owner=owner).delete()
    if not deleted:
        raise NotFound("persona not found")


# --- Connection checks -------------------------------------------------------------------------

def profile_check(*, user: AbstractBaseUser, profile_id: int) -> str:
    """Try a profile's endpoint and key with a cheap call; the provider's words either way.

    Under ASGI the check runs on the server's event loop; under WSGI (and in tests) on a loop that
    ends with this call. Either way the provider's check opens and closes a client of its own, so
    nothing is left bound to a loop that is gone."""
    from .providers import ProviderError, resolve
    from .providers.base import CHECK_TIMEOUT

    profile = selectors.usable_profile_for_user(user, profile_id)
    try:
        found = roles.credentials(profile.pk)
        provider, model = resolve(profile.model_string, base_url=found.base_url, api_key=found.api_key,
                                   public_only=found.public_only)
    except (crypto.SecretUnreadable, ProviderError) as error:
        raise Invalid(str(error)) from None

    # The SDKs' timeouts bound each network step; an endpoint trickling bytes could outlast them all.
    deadline = CHECK_TIMEOUT * 1.5

    async def check() -> str:
        async with asyncio.timeout(deadline):
            if found.public_only:
                await netguard.check_endpoint(found.base_url or "")
            return await provider.check(model, timeout=CHECK_TIMEOUT)

    try:
        return async_to_sync(check)()
    except netguard.Unreachable as error:
        raise Invalid(f"the base URL cannot be used: {error}") from None
    except ProviderError as error:
        raise Invalid(error.message) from None
    except TimeoutError:
        raise Invalid(f"no complete answer within {deadline:g} seconds") from None
    except Exception:  # a web page, or JSON of another shape: the SDK cannot read the answer
        logger.warning("the connection test of profile %s got an unreadable answer", profile.pk, exc_info=True)
        where = found.base_url or "the provider's endpoint"
        raise Invalid(f"{where} answered, but not as the {profile.provider} API does: is the base URL right? "
                      "OpenAI-compatible endpoints usually end in /v1.") from None
