"""Every read scoped to a user. Views and the API get their objects only through these, so another
user's object is a 404 by construction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import BooleanField, Case, Count, Exists, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from . import roles, rows
from .models import (
    ActivityDay,
    ApiToken,
    Job,
    JobEvent,
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
from .context import SHORT_TERM_DAYS
from .policy import PolicyContext, RiskPolicy


def _uuid_or_404(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Http404("not found") from None


# The outcome a person sees besides the statuses: the job completed, but some of its calls did not
# give the model a result (denied, refused, failed, interrupted: each answered the model with an error).
COMPLETE_WITH_PROBLEMS = "complete_with_problems"
OUTCOMES = (*JobStatus.values, COMPLETE_WITH_PROBLEMS)


def outcome_of(status: str, problem_calls: int) -> str:
    return COMPLETE_WITH_PROBLEMS if status == JobStatus.COMPLETE and problem_calls else status


def _problem_calls() -> Subquery:
    return Subquery(ToolCall.objects.filter(job=OuterRef("pk"), is_error=True).order_by().values("job")
                    .annotate(count=Count("pk")).values("count"), output_field=IntegerField())


def with_problem_calls(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """Each job with `problem_calls`, the number of its calls that ended in an error: one
    subquery per row shown, never a query per job."""
    return jobs.annotate(problem_calls=Coalesce(_problem_calls(), Value(0)))


def jobs_for_user(user: AbstractBaseUser, *, status: str | None = None, outcome: str | None = None) -> QuerySet[Job]:
    """The user's jobs, newest first. `status` filters by status as the API knows it; `outcome` as
    the pages show it, where `complete` leaves out the jobs that are COMPLETE_WITH_PROBLEMS."""
    jobs = with_problem_calls(Job.objects.filter(user=user))
    if status:
        jobs = jobs.filter(status=status)
    if outcome == COMPLETE_WITH_PROBLEMS:
        jobs = jobs.filter(status=JobStatus.COMPLETE, problem_calls__gt=0)
    elif outcome == JobStatus.COMPLETE:
        jobs = jobs.filter(status=JobStatus.COMPLETE, problem_calls=0)
    elif outcome:
        jobs = jobs.filter(status=outcome)
    return jobs.order_by("-created_at")


def job_for_user(user: AbstractBaseUser, job_id: Any) -> Job:
    job = Job.objects.filter(user=user, pk=_uuid_or_404(job_id)).select_related("session", "persona").first()
    if job is None:
        raise Http404("job not found")
    return job


def job_id_for_user(user: AbstractBaseUser, job_id: Any) -> uuid.UUID:
    """The id of one of the user's jobs, else 404: what a stream of its events needs, without
    reading the job itself (its transcript may be long)."""
    found = Job.objects.filter(user=user, pk=_uuid_or_404(job_id)).values_list("pk", flat=True).first()
    if found is None:
        raise Http404("job not found")
    return found


def job_events_after(job: Job | uuid.UUID, after: int, limit: int = 500) -> list[JobEvent]:
    """`job`: the job, or its id."""
    return list(JobEvent.objects.filter(job=job, seq__gt=after).order_by("seq")[:limit])


def job_tool_calls(job: Job) -> list[ToolCall]:
    return list(job.tool_calls.order_by("round", "position"))


def pending_calls_for_user(user: AbstractBaseUser) -> QuerySet[ToolCall]:
    return (ToolCall.objects.filter(job__user=user, status=ToolCallStatus.AWAITING)
            .select_related("job").order_by("created_at"))


def _waiting_or_decided_since(decided_since: datetime) -> Q:
    """Calls that wait for a person, and those that waited and were decided since `decided_since`."""
    recent = Q(decided_at__gte=decided_since) | Q(decision="", finished_at__gte=decided_since)
    return Q(status=ToolCallStatus.AWAITING) | (Q(verdict="ask") & recent)


def inbox_calls_for_user(user: AbstractBaseUser, *, decided_since: datetime) -> list[ToolCall]:
    """The calls that wait for the user, and those decided since `decided_since`, in the order the
    inbox first showed them."""
    return list(ToolCall.objects.filter(_waiting_or_decided_since(decided_since), job__user=user)
                .select_related("job", "decided_by").order_by("created_at", "pk"))


def sessions_for_user(user: AbstractBaseUser) -> QuerySet[Session]:
    return Session.objects.filter(user=user).order_by("-updated_at")


def session_for_user(user: AbstractBaseUser, session_id: Any) -> Session:
    session = Session.objects.filter(user=user, pk=_uuid_or_404(session_id)).first()
    if session is None:
        raise Http404("session not found")
    return session


def personas_for_user(user: AbstractBaseUser) -> QuerySet[Persona]:
    return Persona.objects.filter(Q(owner=user) | Q(owner=None)).order_by("name")


def persona_by_name(user: AbstractBaseUser, name: str) -> Persona | None:
    """A user's own persona wins over a site-wide one of the same name."""
    return _own_first(Persona.objects.filter(Q(owner=user) | Q(owner=None), name=name))


def default_persona(user: AbstractBaseUser) -> Persona | None:
    """The user's own default persona, else the site-wide default."""
    # As `_own_first(...)` reads it, through a statement built once: a submission reads it each time.
    found = rows.instances(Persona, {"owner": (user.pk, None), "is_default": True},
                           order_by=("owner nulls last", "name"), limit=1)
    return found[0] if found else None


def _own_first(personas: QuerySet[Persona]) -> Persona | None:
    """In one read, the user's own persona among `personas` before a site-wide one."""
    return personas.order_by(F("owner").asc(nulls_last=True), "name").first()


def memories_for_user(user: AbstractBaseUser, *, tier: str | None = None) -> QuerySet[Memory]:
    memories = Memory.objects.filter(user=user)
    if tier:
        memories = memories.filter(tier=tier)
    return memories.order_by("-updated_at")


def memories_for_prompt(user: AbstractBaseUser) -> dict[str, list[str]]:
    """Memory contents by tier, newest first; short-term ones only from the last week."""
    recent = timezone.now() - timedelta(days=SHORT_TERM_DAYS)
    by_tier: dict[str, list[str]] = {"long": [], "mid": [], "short": []}
    for tier, content, updated_at in rows.select(Memory, ("tier", "content", "updated_at"), {"user": user.pk},
                                                 order_by=("-updated_at",), limit=500):
        if tier == "short" and updated_at < recent:
            continue
        by_tier[tier].append(content)
    return by_tier


def memory_for_user(user: AbstractBaseUser, memory_id: Any) -> Memory:
    memory = Memory.objects.filter(user=user, pk=memory_id).first() if str(memory_id).isdigit() else None
    if memory is None:
        raise Http404("memory not found")
    return memory


def tokens_for_user(user: AbstractBaseUser) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def token_for_user(user: AbstractBaseUser, token_id: Any) -> ApiToken:
    token = ApiToken.objects.filter(user=user, pk=token_id).first() if str(token_id).isdigit() else None
    if token is None:
        raise Http404("token not found")
    return token


def risk_policy_for_user(user: AbstractBaseUser) -> RiskPolicy:
    # As `.filter(user=user).first()` reads them, through a statement built once.
    stored = rows.select(ToolPolicy, ("max_risk", "overrides", "confirmations"), {"user": user.pk},
                         order_by=("pk",), limit=1)
    if not stored:
        return RiskPolicy()
    [(max_risk, overrides, confirmations)] = stored
    return RiskPolicy(max_risk=max_risk, overrides=dict(overrides), confirmations=dict(confirmations))


def confirmation_ttls_for_user(user: AbstractBaseUser) -> dict[str, int]:
    """Per tool, the seconds a call may wait for the person before it expires (their own limits)."""
    return dict(ToolPolicy.objects.filter(user=user).values_list("confirmation_ttls", flat=True).first() or {})


def groups_for_user(user: AbstractBaseUser) -> list[str]:
    """The permission groups a tool may be limited to: everyone is in "user", staff in "staff",
    superusers in "admin", and each user in their Django groups."""
    groups = ["user"]
    if user.is_staff:
        groups.append("staff")
    if user.is_superuser:
        groups.append("admin")
    # `user.groups.values_list("name", flat=True)`, through a statement built once (every drive
    # asks): the user's memberships joined to their groups, whose fields are (id, name).
    memberships = user._meta.get_field("groups").remote_field.through
    groups.extend(name for _, name in rows.select(memberships, (), {"user": user.pk}, related=("group",)))
    return groups


def policy_context_for_user(user: AbstractBaseUser, *, policy: RiskPolicy | None = None,
                            allow_list: Iterable[str] | None = None) -> PolicyContext:
    """What `policy.decide` weighs besides the tool, for this user.

    `policy`: settings not saved yet (a preview), instead of the stored ones. `allow_list`: the
    orchestrator role's tool list a job was submitted with, instead of the user's current one."""
    if allow_list is None:
        allow_list = roles.role_config(user, roles.ORCHESTRATOR).tools
    return PolicyContext(policy=risk_policy_for_user(user) if policy is None else policy, user_id=user.pk,
                         groups=frozenset(groups_for_user(user)),
                         allow_list=frozenset(allow_list))


# --- Reads for the web pages -------------------------------------------------------------------

def tool_call_for_job(job: Job, call_pk: Any) -> ToolCall:
    call = job.tool_calls.filter(pk=call_pk).first() if str(call_pk).isdigit() else None
    if call is None:
        raise Http404("tool call not found")
    return call


def job_events(job: Job) -> list[Any]:
    """Every event of a job, oldest first: what a page renders before its stream takes over. Rows
    of `seq`, `type`, `data` and `at` rather than `JobEvent`s: a long job's page reads a thousand
    events and more, and building a model instance for each costs more than the rest of the read."""
    return list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "type", "data", "at", named=True))


def job_answer_deltas(job: Job) -> str:
    """The answer streamed so far: the deltas since the last completed model turn, or since the
    stream last started over."""
    start = (JobEvent.objects.filter(job=job, type__in=("model.turn", "answer.reset")).order_by("-seq")
             .values_list("seq", flat=True).first()) or 0
    deltas = JobEvent.objects.filter(job=job, type="answer.delta", seq__gt=start).order_by("seq")
    return "".join(str(data.get("text", "")) for data in deltas.values_list("data", flat=True))


def job_outcome_counts(user: AbstractBaseUser) -> dict[str, int]:
    """How many of the user's jobs have each outcome (see `jobs_for_user`), in one query, so that a
    job finishing meanwhile is counted once, under the outcome it had when the counts were read."""
    troubled = Exists(ToolCall.objects.filter(job=OuterRef("pk"), is_error=True))
    rows = (Job.objects.filter(user=user).order_by()
            .annotate(troubled=Case(When(status=JobStatus.COMPLETE, then=troubled), default=Value(False),
                                    output_field=BooleanField()))
            .values_list("status", "troubled").annotate(count=Count("id")))
    counts: dict[str, int] = {}
    for status, with_problems, count in rows:
        outcome = COMPLETE_WITH_PROBLEMS if with_problems else status
        counts[outcome] = counts.get(outcome, 0) + count
    return counts


def problem_call_count(job: Job) -> int:
    return job.tool_calls.filter(is_error=True).count()


def confirmation_calls_of_job(job: Job, *, decided_since: datetime) -> list[ToolCall]:
    """The job's calls that wait for a person, and those decided since `decided_since`, in order."""
    return list(job.tool_calls.filter(_waiting_or_decided_since(decided_since))
                .select_related("decided_by").order_by("round", "position"))


# --- Model profiles, roles and personas ----------------------------------------------------------

def profiles_for_user(user: AbstractBaseUser) -> QuerySet[ModelProfile]:
    """The user's own profiles, then the site-wide ones."""
    return ModelProfile.objects.filter(Q(owner=user) | Q(owner=None)).order_by(F("owner").asc(nulls_last=True),
                                                                               "name")


def own_profile_for_user(user: AbstractBaseUser, profile_id: Any) -> ModelProfile:
    """A profile the user may change: only their own."""
    profile = ModelProfile.objects.filter(owner=user, pk=profile_id).first() if str(profile_id).isdigit() else None
    if profile is None:
        raise Http404("profile not found")
    return profile


def usable_profile_for_user(user: AbstractBaseUser, profile_id: Any) -> ModelProfile:
    """A profile the user may use (and test): their own or a site-wide one."""
    profile = (ModelProfile.objects.filter(Q(owner=user) | Q(owner=None), pk=profile_id).first()
               if str(profile_id).isdigit() else None)
    if profile is None:
        raise Http404("profile not found")
    return profile


def role_names_for_user(user: AbstractBaseUser) -> list[str]:
    """`orchestrator`, `chat`, and every role the user or the site has assigned."""
    assigned = RoleAssignment.objects.filter(Q(owner=user) | Q(owner=None)).values_list("role", flat=True)
    extra = sorted(set(assigned) - {roles.ORCHESTRATOR, roles.CHAT})
    return [roles.ORCHESTRATOR, roles.CHAT, *extra]


def role_configs_for_user(user: AbstractBaseUser) -> list[roles.RoleConfig]:
    """The effective configuration of each of the user's roles, and where it comes from."""
    return [roles.role_config(user, name) for name in role_names_for_user(user)]


def role_for_user(user: AbstractBaseUser, role: str) -> roles.RoleConfig:
    """The effective configuration of one of the user's roles (see `role_names_for_user`), else 404."""
    if role not in role_names_for_user(user):
        raise Http404("role not found")
    return roles.role_config(user, role)


def role_is_assigned_site_wide(role: str) -> bool:
    return RoleAssignment.objects.filter(owner=None, role=role).exists()


def own_assignment_for_user(user: AbstractBaseUser, role: str) -> RoleAssignment:
    assignment = RoleAssignment.objects.filter(owner=user, role=role).select_related("profile").first()
    if assignment is None:
        raise Http404("assignment not found")
    return assignment


def own_personas_for_user(user: AbstractBaseUser) -> QuerySet[Persona]:
    return Persona.objects.filter(owner=user).order_by("name")


def site_personas() -> QuerySet[Persona]:
    return Persona.objects.filter(owner=None).order_by("name")


def own_persona_for_user(user: AbstractBaseUser, persona_id: Any) -> Persona:
    persona = Persona.objects.filter(owner=user, pk=persona_id).first() if str(persona_id).isdigit() else None
    if persona is None:
        raise Http404("persona not found")
    return persona


# --- The activity dashboard ----------------------------------------------------------------------

def activity_sees_everyone(user: AbstractBaseUser, *, site_wide: bool) -> bool:
    """Only staff may see the whole site's activity; anyone else asking for it sees their own."""
    return site_wide and user.is_staff


@dataclass(frozen=True)
class ActivityScope:
    """What the dashboard counts for a person: their own jobs and calls, or with `site_wide`
    everyone's for staff, and the stored day summaries of the same scope (`owner` None for
    everyone's)."""

    jobs: QuerySet[Job]
    calls: QuerySet[ToolCall]
    days: QuerySet[ActivityDay]
    owner: AbstractBaseUser | None


def activity_scope(user: AbstractBaseUser, *, site_wide: bool = False) -> ActivityScope:
    if activity_sees_everyone(user, site_wide=site_wide):
        return ActivityScope(Job.objects.all(), ToolCall.objects.all(), ActivityDay.objects.filter(owner=None), None)
    return ActivityScope(Job.objects.filter(user=user), ToolCall.objects.filter(job__user=user),
                         ActivityDay.objects.filter(owner=user), user)
