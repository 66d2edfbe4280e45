from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

RISK_CHOICES = [("low", "low"), ("medium", "medium"), ("high", "high")]


class JobFollowUp(models.Model):
    """What a schedule's or hook's jobs tell, and how long they wait: a callback URL each job's JSON
    is POSTed to (signed with the owner's callback secret), and a limit on how long a call of theirs
    may wait for a person before it is denied as expired."""

    callback_url = models.CharField(max_length=500, blank=True)
    # Also POST when a job starts waiting for a confirmation, not only when it ends.
    callback_on_confirmation = models.BooleanField(default=False)
    # Seconds; the shorter of it and the site's or the tool's limit applies. Empty: theirs alone.
    confirmation_ttl = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True

    def follow_up_options(self) -> dict:
        """The keyword arguments of `job_submit` these stand for."""
        return {"callback_url": self.callback_url or None, "callback_on_confirmation": self.callback_on_confirmation,
                "confirmation_ttl": self.confirmation_ttl}


class Schedule(JobFollowUp):
    """A person's job that starts itself at the times of a cron expression, in a time zone."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=100)
    cron = models.CharField(max_length=200)
    time_zone = models.CharField(max_length=64, default="UTC")
    # May hold {date}, {time} and {weekday}, filled in for each due time.
    task = models.TextField()
    # The job options as POST /orchestrate takes them: persona, tier, chat_role, session_id,
    # respond_with_final, off_record.
    options = models.JSONField(default=dict, blank=True)
    # The highest risk its jobs are offered, on top of the owner's own policy.
    max_risk = models.CharField(max_length=16, choices=RISK_CHOICES, default="low")
    enabled = models.BooleanField(default=True)
    # The next due time not yet fired; moved on, compare-and-set, by whoever fires it.
    next_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="schedule_due")]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.time_zone})"


class ScheduleRun(models.Model):
    """One firing of a schedule: unique per due time, so however many executors look, a due time
    fires once."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    due_at = models.DateTimeField()
    fired_at = models.DateTimeField()
    # Fired after downtime: `missed` due times passed unfired and this one run stands for them all.
    late = models.BooleanField(default=False)
    missed = models.PositiveIntegerField(default=1)
    manual = models.BooleanField(default=False)  # "Run now"
    job = models.ForeignKey("orchestrator.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)  # why no job was created
    fired_by = models.CharField(max_length=100, blank=True)  # the executor (or person) that fired it

    class Meta:
        ordering = ["-due_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["schedule", "due_at"], name="schedule_run_once_per_due_time")]

    def __str__(self) -> str:
        return f"{self.schedule.name} @ {self.due_at:%Y-%m-%d %H:%M}"


class Hook(JobFollowUp):
    """An inbound webhook: POST /hooks/<slug>, signed with its secret, starts a job."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="hooks")
    slug = models.SlugField(max_length=64, unique=True)
    # Encrypted at rest (orchestrator.crypto): verifying an HMAC needs the secret itself.
    secret_encrypted = models.TextField()
    # May hold {payload} and dotted fields such as {payload.repository.full_name}.
    task_template = models.TextField()
    options = models.JSONField(default=dict, blank=True)
    max_risk = models.CharField(max_length=16, choices=RISK_CHOICES, default="low")
    enabled = models.BooleanField(default=True)
    max_body_bytes = models.PositiveIntegerField(default=262_144)
    max_per_minute = models.PositiveIntegerField(default=30)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class HookDelivery(models.Model):
    """Every POST to a hook, whatever became of it."""

    class Verdict(models.TextChoices):
        ACCEPTED = "accepted", "accepted"
        BAD_SIGNATURE = "bad_signature", "bad or missing signature"
        DUPLICATE = "duplicate", "repeated delivery"
        TOO_LARGE = "too_large", "body too large"
        RATE_LIMITED = "rate_limited", "too many deliveries"
        DISABLED = "disabled", "hook disabled"
        REFUSED = "refused", "refused"

    hook = models.ForeignKey(Hook, on_delete=models.CASCADE, related_name="deliveries")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    delivery_id = models.CharField(max_length=200, blank=True)
    signature_valid = models.BooleanField(default=False)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    status_code = models.PositiveSmallIntegerField()
    body_bytes = models.PositiveIntegerField(default=0)
    job = models.ForeignKey("orchestrator.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "hook deliveries"
        constraints = [
            # A delivery id starts at most one job: the second of two racing deliveries fails here.
            models.UniqueConstraint(fields=["hook", "delivery_id"], condition=Q(verdict="accepted") & ~Q(delivery_id=""),
                                    name="hook_delivery_accepted_once"),
        ]
        indexes = [models.Index(fields=["hook", "verdict", "received_at"], name="hook_delivery_recent")]

    def __str__(self) -> str:
        return f"{self.hook.slug} {self.received_at:%Y-%m-%d %H:%M:%S} {self.verdict}"
