from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from .expressions import UsageTokens


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.AWAITING_CONFIRMATION)
FINISHED_STATUSES = (JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.CANCELLED)


class Persona(models.Model):
    """A system prompt to speak with; site-wide when `owner` is empty, else a user's own."""

    name = models.SlugField(max_length=64)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="personas")
    prompt = models.TextField(blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="persona_unique_name_per_owner"),
            models.UniqueConstraint(fields=["name"], condition=Q(owner=None), name="persona_unique_sitewide_name"),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name if self.owner_id is None else f"{self.name} ({self.owner})"


class Session(models.Model):
    """A conversation: each job in it appends the task and the answer."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sessions")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="messages")
    job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    backend = models.CharField(max_length=200, blank=True)
    backend_label = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=200, blank=True)
    off_record = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]


class JobOrigin(models.TextChoices):
    """Who or what started a job."""

    WEB = "web", "the web page"
    API = "api", "the API"
    SCHEDULE = "schedule", "a schedule"
    HOOK = "hook", "a webhook"
    MCP = "mcp", "the MCP endpoint"
    COMMAND = "command", "the command line"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    status = models.CharField(max_length=32, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    task = models.TextField()
    session = models.ForeignKey(Session, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    persona = models.ForeignKey(Persona, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    # The request as submitted (tier, include_*, chat_role, respond_with_final, off_record, ...).
    options = models.JSONField(default=dict, blank=True)
    orchestrator_model = models.CharField(max_length=200)
    chat_model = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    chat_system_prompt = models.TextField(blank=True)
    # Provider-neutral transcript (see providers/base.py); the durable state of the tool loop.
    transcript = models.JSONField(default=list, blank=True)
    rounds = models.PositiveIntegerField(default=0)
    # Tools a person approved "for the rest of this job".
    approved_tools = models.JSONField(default=list, blank=True)
    origin = models.CharField(max_length=16, choices=JobOrigin.choices, default=JobOrigin.WEB)
    # The highest risk offered to this job whatever its owner's policy allows (unattended origins);
    # empty: the owner's policy alone.
    origin_max_risk = models.CharField(max_length=16, blank=True)
    # What the origin says about itself: a schedule's id and due time (and whether it fired late),
    # a hook's slug and delivery id.
    origin_detail = models.JSONField(default=dict, blank=True)

    response = models.TextField(null=True, blank=True)
    # The orchestrator model's own summary, whichever provider wrote it (the API's `gemini_summary`).
    orchestrator_summary = models.TextField(null=True, blank=True)
    backend = models.CharField(max_length=200, blank=True)
    backend_label = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=200, blank=True)
    error = models.TextField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    # Input plus output tokens, kept by the database from `usage`, for the activity dashboard's index.
    tokens = models.GeneratedField(expression=UsageTokens(), output_field=models.IntegerField(), db_persist=True)

    # Indexed first in `job_activity`, which serves every query by time as well as an index of its own.
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Executor lease: who holds the running job and until when.
    lease_owner = models.CharField(max_length=100, blank=True, db_index=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    claims = models.PositiveIntegerField(default=0)
    last_seq = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="job_user_recent"),
            # The activity dashboard groups the jobs of a period by day, status and model, sums their
            # tokens and joins their calls by id: these answer all of that from the index alone.
            models.Index(fields=["created_at", "status", "orchestrator_model", "id", "tokens"], name="job_activity"),
            models.Index(fields=["user", "created_at", "status", "orchestrator_model", "id", "tokens"],
                         name="job_user_activity"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class JobEvent(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_event_unique_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.type}"

    def as_dict(self) -> dict:
        return self.as_row_dict(self.seq, self.type, self.at, self.data)

    @staticmethod
    def as_row_dict(seq: int, type: str, at: Any, data: Any) -> dict:
        """An event as the JSON stream and API send it, from its row's values."""
        return {"seq": seq, "type": type, "at": at.isoformat(), "data": data}


class ToolCallStatus(models.TextChoices):
    AWAITING = "awaiting", "awaiting confirmation"
    READY = "ready", "ready to run"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


OPEN_CALL_STATUSES = (ToolCallStatus.AWAITING, ToolCallStatus.READY, ToolCallStatus.RUNNING)


def arguments_digest(*, pk: int, call_id: str, name: str, args: Any) -> str:
    """SHA-256 (hex) of the canonical JSON (sorted keys, no whitespace, UTF-8 as is) of one call's
    identity and arguments. A decision carries the digest of what the person was shown; it matches
    only that call (its row, whatever id the model gave it) with exactly those arguments."""
    canonical = json.dumps({"args": args, "call": pk, "id": call_id, "name": name},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ToolCall(models.Model):
    class Verdict(models.TextChoices):
        RUN = "run"
        ASK = "ask"
        REFUSE = "refuse"

    class Decision(models.TextChoices):
        APPROVED = "approved"
        EDITED = "edited"
        DENIED = "denied"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tool_calls")
    call_id = models.CharField(max_length=200)  # the id the model gave the call
    round = models.PositiveIntegerField()
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    raw_arguments = models.TextField(blank=True)
    args = models.JSONField(null=True, blank=True)
    original_args = models.JSONField(null=True, blank=True)
    risk = models.CharField(max_length=16, blank=True)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    verdict_reason = models.CharField(max_length=500, blank=True)  # why the policy decided so
    status = models.CharField(max_length=16, choices=ToolCallStatus.choices, db_index=True)
    interrupted = models.BooleanField(default=False)
    result = models.TextField(null=True, blank=True)
    is_error = models.BooleanField(default=False)

    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="tool_decisions")
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)  # the person's, when they deny
    remember = models.BooleanField(default=False)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "round", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "round", "position"], name="tool_call_unique_position"),
        ]
        indexes = [
            # The few calls that ended in an error, by job: which complete jobs had a problem.
            models.Index(fields=["job"], condition=Q(is_error=True), name="tool_call_errors"),
            # The dashboard's calls of a period by tool and what became of them, read from the index alone.
            models.Index(fields=["created_at", "name", "decision", "decided_by", "verdict", "status", "decided_at"],
                         name="tool_call_activity"),
            # The confirmations that were decided, with how long each waited: the dashboard's median.
            models.Index(fields=["created_at", "decided_at"], condition=Q(verdict="ask", decided_at__isnull=False),
                         name="tool_call_decided"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((self.finished_at - self.started_at).total_seconds() * 1000)
        return None

    @property
    def args_digest(self) -> str:
        return arguments_digest(pk=self.pk, call_id=self.call_id, name=self.name, args=self.args)

    def as_pending(self) -> dict:
        return {"id": self.call_id, "name": self.name, "args": self.args, "risk": self.risk,
                "interrupted": self.interrupted, "args_digest": self.args_digest}

    def as_summary(self) -> dict:
        return {"id": self.call_id, "name": self.name, "args": self.args, "risk": self.risk,
                "status": self.status, "decision": self.decision or None, "result": self.result,
                "is_error": self.is_error, "duration_ms": self.duration_ms}


class Memory(models.Model):
    class Tier(models.TextChoices):
        LONG = "long", "long term"
        MID = "mid", "mid term"
        SHORT = "short", "short term"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memories")
    tier = models.CharField(max_length=8, choices=Tier.choices, default=Tier.MID)
    content = models.TextField()
    source_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "memories"

    def __str__(self) -> str:
        return f"[{self.tier}] {self.content[:60]}"


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)  # shown in lists, to tell tokens apart
    digest = models.CharField(max_length=64, unique=True)  # sha256 of the whole token
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"


class ToolPolicy(models.Model):
    """A user's risk and confirmation policy. Absent rows mean the defaults."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tool_policy")
    max_risk = models.CharField(max_length=16, default="high")
    # {tool_name: "include" | "exclude"}
    overrides = models.JSONField(default=dict, blank=True)
    # {tool_name: "run" | "ask" | "never"}
    confirmations = models.JSONField(default=dict, blank=True)
    # {tool_name: seconds}: how long a call to the tool waits for a person before it expires,
    # instead of the site's CORTEX_CONFIRMATION_TTL.
    confirmation_ttls = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "tool policies"

    def __str__(self) -> str:
        return f"policy of {self.user}"


class ModelProfile(models.Model):
    """A model to call: provider, model name, endpoint, key (encrypted at rest) and limits.
    Site-wide when `owner` is empty, else a user's own."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="model_profiles")
    name = models.CharField(max_length=100)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500, blank=True)
    api_key_encrypted = models.TextField(blank=True)
    max_rounds = models.PositiveIntegerField(null=True, blank=True)
    timeout_seconds = models.FloatField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="profile_unique_name_per_owner"),
            models.UniqueConstraint(fields=["name"], condition=Q(owner=None), name="profile_unique_sitewide_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider}:{self.model})"

    @property
    def model_string(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)


class RoleAssignment(models.Model):
    """Which model plays a role (`orchestrator`, `chat`, or any other chat role) and how its prompt
    is assembled. A user's assignment wins over the site-wide one (empty owner)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="role_assignments")
    role = models.SlugField(max_length=64)
    profile = models.ForeignKey(ModelProfile, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="assignments")
    system_append = models.TextField(blank=True)
    inject_datetime = models.BooleanField(default=True)
    inject_mode = models.BooleanField(default=True)
    # Tool names this role may offer; empty means every tool the policy allows.
    tools = models.JSONField(default=list, blank=True)
    # The most tokens one answer of this role may have; empty for the provider's default.
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["role"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "role"], name="role_unique_per_owner"),
            models.UniqueConstraint(fields=["role"], condition=Q(owner=None), name="role_unique_sitewide"),
        ]

    def __str__(self) -> str:
        return f"{self.role} → {self.profile or 'environment default'}"


class ActivityDay(models.Model):
    """The activity dashboard's figures for one day that has ended: its finished jobs by outcome and
    their tokens by model, for one person (`owner`) or for everyone (no owner), with the day's
    bounds taken in `zone`. No job is submitted on a day that has ended and a finished job no
    longer changes, so the dashboard counts such a day once, stores it, and then reads it back
    instead of the day's jobs, looking again only at the `pending` ones (and counting those that
    have finished since in with the rest). Deleting a job forgets the days it could belong to
    (`dashboard.forget_days_of`)."""

    zone = models.CharField(max_length=64)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="+")
    day = models.DateField()
    jobs = models.JSONField(default=dict)  # finished jobs by outcome: {"complete": 3, …}
    tokens = models.JSONField(default=dict)  # their input plus output tokens by orchestrator model
    pending = models.JSONField(default=list)  # ids of the day's jobs not finished yet when it was stored

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["zone", "owner", "day"], name="activity_day_per_owner"),
            models.UniqueConstraint(fields=["zone", "day"], condition=Q(owner=None), name="activity_day_everyone"),
        ]

    def __str__(self) -> str:
        return f"{self.day} in {self.zone} ({self.owner or 'everyone'})"
